"""Any device and any precision, before a GPU is at hand.

On the ``meta`` device tensors have shapes and dtypes but no data, and an operation that mixes a meta tensor
with a tensor on another device fails: running forward and backward there shows that every tensor the code
creates follows its input's device (what a CUDA run needs), without a GPU. Under float16 and bfloat16
autocast on CPU, outputs and gradients must stay finite and close to float32, and FSLA must cluster its
half-precision queries in float32 (as :mod:`boat_vit.clustering` documents).
"""
import contextlib

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from boat_vit import FeatureSpaceLocalAttention, balanced_clustering
from boat_vit.layers import find_fsla_layers, recording_clusters
from boat_vit.seg import BoatUPerNet
from boat_vit.seg.inference import segment
from tiny_data import CSWIN, SWIN, TINY_CSWIN, TINY_SWIN

META = torch.device("meta")
AMP_DTYPES = pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
FAMILIES = pytest.mark.parametrize("name, kwargs", [(SWIN, TINY_SWIN), (CSWIN, TINY_CSWIN)], ids=["swin", "cswin"])
NUM_CLASSES = 5
# Largest difference from float32 under autocast, relative to the largest float32 value (measured on these
# models: float16 about 2e-3, bfloat16 about 1e-2); and the least cosine similarity of the gradients.
OUTPUT_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
GRADIENT_COSINE = {torch.float16: 0.99, torch.bfloat16: 0.95}
# Token maps of the FSLA tests: one group; 4 groups of 49 (no padding); 4 groups with padding
TOKEN_MAPS = [(5, 7), (14, 14), (13, 17)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small models run fastest so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_model(name: str, kwargs: dict, **extra) -> nn.Module:
    return timm.create_model(name, num_classes=NUM_CLASSES, strict_img_size=False, drop_path_rate=0.0,
                             **kwargs, **extra)


def _assert_meta_grads(module: nn.Module) -> None:
    """Every parameter has a gradient of its own shape on the meta device."""
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} has no gradient"
        assert parameter.grad.is_meta and parameter.grad.shape == parameter.shape, name


# ---------------------------------------------------------------------------------------------- meta device


def test_meta_device_catches_a_tensor_made_without_the_input_device():
    """The premise of the meta tests: a tensor created on the default device next to a meta input fails."""

    class PositionOffsets(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.arange(x.shape[-1])  # no device=x.device

    with pytest.raises((RuntimeError, NotImplementedError), match="meta|device"):
        PositionOffsets()(torch.randn(2, 3, device=META))


@pytest.mark.parametrize("grouping", ["content", "random", "global"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("token_map", TOKEN_MAPS, ids=lambda size: f"{size[0]}x{size[1]}")
def test_fsla_forward_backward_on_meta(grouping, training, token_map):
    layer = FeatureSpaceLocalAttention(16, 2, grouping=grouping, attn_drop=0.1, proj_drop=0.1, device=META)
    layer.train(training)
    x = torch.randn(3, *token_map, 16, device=META, requires_grad=True)
    out, clustering = layer.forward_with_clusters(x)
    assert out.is_meta and out.shape == x.shape and out.dtype == x.dtype
    assert clustering.order.is_meta and clustering.inverse.is_meta
    assert clustering.inverse.shape == (3 * 2, token_map[0] * token_map[1])
    out.sum().backward()
    assert x.grad.is_meta and x.grad.shape == x.shape
    _assert_meta_grads(layer)


def test_fsla_sequences_and_float64_on_meta():
    """``(B, N, C)`` sequences (no value convolution), in float64: the clustering keeps float64."""
    layer = FeatureSpaceLocalAttention(16, 2, value_conv=False, device=META, dtype=torch.float64)
    x = torch.randn(2, 230, 16, device=META, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.is_meta and out.shape == x.shape and out.dtype == torch.float64
    out.sum().backward()
    _assert_meta_grads(layer)


@FAMILIES
@pytest.mark.parametrize("size", [(64, 64), (60, 92)], ids=["64x64", "60x92"])
def test_models_forward_backward_on_meta(name, kwargs, size):
    """Both families, built on the meta device, in training mode (drop path on), at a regular and a padded size."""
    model = timm.create_model(name, num_classes=NUM_CLASSES, strict_img_size=False, drop_path_rate=0.1,
                              device=META, **kwargs).train()
    images = torch.randn(2, 3, *size, device=META)
    logits = model(images)
    assert logits.is_meta and logits.shape == (2, NUM_CLASSES)
    F.cross_entropy(logits, torch.zeros(2, dtype=torch.long, device=META)).backward()
    _assert_meta_grads(model)


@FAMILIES
def test_features_and_checkpointing_on_meta(name, kwargs):
    """Feature maps (strides 4-32), intermediates and gradient checkpointing follow the input device too."""
    features = timm.create_model(name, features_only=True, strict_img_size=False, device=META, **kwargs)
    maps = features(torch.randn(1, 3, 64, 96, device=META))
    for feature_map, stride in zip(maps, (4, 8, 16, 32)):  # NHWC (Swin) or NCHW (CSWin)
        assert feature_map.is_meta and (64 // stride, 96 // stride) in (feature_map.shape[1:3], feature_map.shape[2:])

    model = _small_model(name, kwargs, device=META)
    model.set_grad_checkpointing(True)
    final, intermediates = model.forward_intermediates(torch.randn(2, 3, 64, 64, device=META))
    assert final.is_meta and len(intermediates) == len(kwargs["depths"])
    model.forward_head(final).sum().backward()
    assert all(p.grad is not None and p.grad.is_meta for n, p in model.named_parameters() if not n.startswith("head"))


def test_upernet_forward_backward_and_inference_on_meta():
    with torch.device(META):
        model = BoatUPerNet(SWIN, NUM_CLASSES, TINY_SWIN, decoder_channels=16, aux_channels=8)
    assert all(p.is_meta for p in model.parameters())
    images = torch.randn(2, 3, 70, 90, device=META)  # padded to a multiple of 32 inside
    logits, aux = model.train()(images, with_aux=True)
    assert logits.is_meta and logits.shape == (2, NUM_CLASSES, 70, 90)
    assert aux.shape == (2, NUM_CLASSES, 6, 6)  # stride 16 of the padded 96x96
    (logits.sum() + aux.sum()).backward()
    _assert_meta_grads(model)
    probabilities = segment(model.eval(), images, NUM_CLASSES, (70, 90), mode="slide", crop=(64, 64),
                            stride=(48, 48), scales=(0.75, 1.0), flip=True)
    assert probabilities.is_meta and probabilities.shape == (2, NUM_CLASSES, 70, 90)


@FAMILIES
def test_export_traces_on_meta(name, kwargs):
    """``torch.export`` (the graph ONNX export is made from) traces a meta model with a dynamic batch."""
    model = _small_model(name, kwargs, device=META).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64, device=META),), dynamic_shapes=({0: batch},))
    output = next(node for node in program.graph.nodes if node.op == "output").args[0][0]
    shape = output.meta["val"].shape
    assert str(shape[0]) == "s0" or not isinstance(shape[0], int), f"batch was specialised: {shape}"
    assert shape[1] == NUM_CLASSES and output.meta["val"].device == META


# ---------------------------------------------------------------------------------------------- autocast on CPU


def _relative_difference(low: torch.Tensor, exact: torch.Tensor) -> float:
    return ((low.float() - exact).abs().max() / exact.abs().max()).item()


@AMP_DTYPES
@pytest.mark.parametrize("token_map", TOKEN_MAPS[1:], ids=lambda size: f"{size[0]}x{size[1]}")
def test_fsla_autocast_clusters_in_float32(amp_dtype, token_map):
    torch.manual_seed(0)
    layer = FeatureSpaceLocalAttention(16, 2)
    x = torch.randn(2, *token_map, 16)
    num_tokens = token_map[0] * token_map[1]
    with torch.autocast("cpu", dtype=amp_dtype):
        out, clustering = layer.forward_with_clusters(x)
        queries = layer.qkv(x.view(2, num_tokens, 16)).view(2, num_tokens, 3, 2, 8)[:, :, 0].transpose(1, 2)
    assert queries.dtype == amp_dtype and out.dtype == amp_dtype
    assert torch.isfinite(out).all()
    # the groups are those of the half-precision queries clustered in float32
    assert torch.equal(clustering.order, balanced_clustering(queries.float()).order)
    # with these groups, the output follows float32 within the precision's rounding
    exact = layer(x, clustering)
    assert _relative_difference(out, exact) < OUTPUT_TOLERANCE[amp_dtype]


def _loss_and_grads(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, context) -> tuple:
    model.zero_grad()
    with context:
        logits = model(images)
    F.cross_entropy(logits.float(), targets).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logits, grads


@AMP_DTYPES
@FAMILIES
def test_models_autocast_close_to_float32(amp_dtype, name, kwargs):
    torch.manual_seed(0)
    model = _small_model(name, kwargs).eval()  # eval: no dropout, so both passes compute the same function
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    exact, exact_grads = _loss_and_grads(model, images, targets, contextlib.nullcontext())
    logits, grads = _loss_and_grads(model, images, targets, torch.autocast("cpu", dtype=amp_dtype))
    assert logits.dtype == amp_dtype
    assert torch.isfinite(logits).all() and torch.isfinite(grads).all()
    assert _relative_difference(logits, exact) < OUTPUT_TOLERANCE[amp_dtype]
    assert F.cosine_similarity(grads, exact_grads, dim=0).item() > GRADIENT_COSINE[amp_dtype]


@AMP_DTYPES
@FAMILIES
def test_models_autocast_cluster_in_float32(amp_dtype, name, kwargs):
    """Inside a model under autocast, every FSLA layer receives half-precision activations and clusters in
    float32: its groups are those of its own queries clustered in float32."""
    torch.manual_seed(0)
    model = _small_model(name, kwargs).eval()
    layers = dict(model.named_modules())
    names = list(find_fsla_layers(model).values())
    inputs = {}
    hooks = [layers[n].register_forward_pre_hook(lambda m, args, n=n: inputs.__setitem__(n, args[0])) for n in names]
    with contextlib.ExitStack() as stack, torch.no_grad(), torch.autocast("cpu", dtype=amp_dtype):
        records = [stack.enter_context(recording_clusters(layers[n], n)) for n in names]
        model(torch.randn(2, 3, 64, 64))
        for n, record in zip(names, records):
            layer, x = layers[n], inputs[n]
            tokens = x.reshape(x.shape[0], -1, x.shape[-1])
            queries = layer.qkv(tokens).view(*tokens.shape[:2], 3, layer.num_heads, layer.head_dim)[:, :, 0]
            assert queries.dtype == amp_dtype, n
            expected = balanced_clustering(queries.transpose(1, 2).float(), layer.group_size)
            assert torch.equal(record[0].clustering.order, expected.order), n
    for hook in hooks:
        hook.remove()
    assert names, "the small model has FSLA layers"


@AMP_DTYPES
def test_upernet_autocast_close_to_float32(amp_dtype):
    torch.manual_seed(0)
    model = BoatUPerNet(SWIN, NUM_CLASSES, TINY_SWIN, decoder_channels=16, aux_channels=8).eval()
    images = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        exact = model(images)
        with torch.autocast("cpu", dtype=amp_dtype):
            logits = model(images)
    assert logits.dtype == amp_dtype and torch.isfinite(logits).all()
    assert _relative_difference(logits, exact) < OUTPUT_TOLERANCE[amp_dtype]


@AMP_DTYPES
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_clustering_ignores_autocast(amp_dtype, device_type):
    """``balanced_clustering`` computes the same groups inside an autocast region as outside it (float32),
    also where autocast is on for another device than the input's."""
    queries = torch.randn(3, 2, 230, 8).to(amp_dtype)
    expected = balanced_clustering(queries.float())
    with torch.autocast(device_type, dtype=amp_dtype, enabled=device_type == "cpu" or torch.cuda.is_available()):
        assert torch.equal(balanced_clustering(queries).order, expected.order)
        assert torch.equal(balanced_clustering(queries.float()).order, expected.order)
