"""FeatureSpaceLocalAttention: exactness against the released code, the simple reference, and invariants."""
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from boat_vit import FeatureSpaceLocalAttention, balanced_clustering

from reference_fsla import reference_fsla

EXACT = 1e-9  # float64 agreement with the released code (measured: below 1e-14)


def _layer(dim=16, heads=2, seed=0, **kwargs) -> FeatureSpaceLocalAttention:
    torch.manual_seed(seed)
    layer = FeatureSpaceLocalAttention(dim, heads, **kwargs).double().eval()
    with torch.no_grad():  # non-zero biases and conv so every term is exercised
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


def _input(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("num_tokens", [196, 784, 3136])
def test_matches_released_code(reference, num_tokens):
    data = reference(f"fsla_n{num_tokens}")
    config = data["config"]
    layer = FeatureSpaceLocalAttention(config["dim"], config["num_heads"]).double()
    layer.load_state_dict({k: v.double() for k, v in data["state_dict"].items()})
    side = math.isqrt(num_tokens)
    x = data["input"].double().view(-1, side, side, config["dim"])
    out = layer(x).view(data["output"].shape)
    assert (out - data["output"]).abs().max().item() < EXACT


@pytest.mark.parametrize(
    "height, width",
    [(5, 7), (7, 7), (10, 10), (9, 11), (13, 17), (14, 14), (16, 16), (3, 40)],
)
def test_matches_simple_reference_at_any_size(height, width):
    """Covers one group, no padding, and padded layouts (99 = 2 x 50 - 1, 221 = 4 x 56 - 3, ...)."""
    layer = _layer()
    x = _input(2, height, width, 16)
    with torch.no_grad():
        assert (layer(x) - reference_fsla(layer, x)).abs().max().item() < 1e-12


def test_sequences_without_value_conv():
    layer = _layer(value_conv=False, group_size=8, overlap=3)
    x = _input(3, 45, 16)
    with torch.no_grad():
        out = layer(x)
        assert out.shape == x.shape
        assert (out - reference_fsla(layer, x)).abs().max().item() < 1e-12
    assert layer.get_v is None


def test_one_group_is_plain_attention():
    layer = _layer(group_size=64)
    x = _input(2, 6, 7, 16)  # 42 tokens <= 64: one group, no overlap
    with torch.no_grad():
        q, k, v = layer.qkv(x.view(2, 42, 16)).view(2, 42, 3, 2, 8).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 42, 16)
        lepe = layer.get_v(v.transpose(1, 2).reshape(2, 6, 7, 16).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        expected = layer.proj(attended + lepe.reshape(2, 42, 16)).view_as(x)
        assert (layer(x) - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("height, width", [(14, 14), (13, 17)])
def test_batch_independence(height, width):
    layer = _layer()
    x = _input(5, height, width, 16)
    with torch.no_grad():
        together = layer(x)
        for i in range(5):
            assert (layer(x[i : i + 1]) - together[i : i + 1]).abs().max().item() < 1e-12


def test_gradients_reach_parameters_not_clustering():
    layer = _layer().float().train()
    x = _input(2, 14, 14, 16, dtype=torch.float32).requires_grad_()
    out, clustering = layer.forward_with_clusters(x)
    out.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    # the same backward with the clustering given as a constant: identical, so none flows through it
    layer.zero_grad()
    x2 = x.detach().clone().requires_grad_()
    layer(x2, clustering).square().sum().backward()
    for before, after in zip(grads, [p.grad for p in layer.parameters()] + [x2.grad]):
        assert torch.equal(before, after)


def test_returned_clustering_is_the_one_used():
    layer = _layer()
    x = _input(2, 14, 14, 16)
    with torch.no_grad():
        out, clustering = layer.forward_with_clusters(x)
        q = layer.qkv(x.view(2, 196, 16)).view(2, 196, 3, 2, 8)[:, :, 0].transpose(1, 2)
        assert torch.equal(clustering.order, balanced_clustering(q).order)
        assert torch.equal(layer(x, clustering), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(dtype):
    layer = _layer().to(dtype)
    x = _input(2, 14, 14, 16).to(dtype)
    with torch.no_grad():
        out, clustering = layer.forward_with_clusters(x)
        assert out.dtype == dtype and torch.isfinite(out).all()
        # with the same groups, the low-precision output follows float64 within its rounding
        exact = layer.double()(x.double(), clustering)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 0.1}[dtype]
    assert (out.double() - exact).abs().max().item() < tolerance * exact.abs().max().item()


def test_deterministic():
    layer = _layer().float()
    x = _input(3, 28, 28, 16, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))


def test_scale_override_and_repr():
    layer = FeatureSpaceLocalAttention(32, 4, qk_scale=1.0)
    assert layer.scale == 1.0
    assert FeatureSpaceLocalAttention(32, 4).scale == 8**-0.5
    assert "group_size=49" in repr(layer) and "overlap=20" in repr(layer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=30, num_heads=4), "multiple of num_heads"),
        (dict(dim=32, num_heads=4, group_size=1), "group_size must be >= 2"),
        (dict(dim=32, num_heads=4, group_size=10, overlap=10), "overlap must be in"),
        (dict(dim=32, num_heads=4, overlap=-1), "overlap must be in"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureSpaceLocalAttention(**kwargs)


@pytest.mark.parametrize(
    "value_conv, shape, message",
    [
        (True, (2, 49, 16), r"expected input \(B, H, W, C\) with C=16, got shape \(2, 49, 16\)"),
        (True, (2, 7, 7, 8), r"with C=16, got shape \(2, 7, 7, 8\)"),
        (False, (49, 16), r"\(B, N, C\) or \(B, H, W, C\) with C=16, got shape \(49, 16\)"),
        (True, (0, 7, 7, 16), "empty input"),
    ],
)
def test_input_errors(value_conv, shape, message):
    layer = FeatureSpaceLocalAttention(16, 2, value_conv=value_conv)
    with pytest.raises(ValueError, match=message):
        layer(torch.randn(*shape))


def test_meta_device_construction():
    layer = FeatureSpaceLocalAttention(32, 4, device="meta")
    assert all(p.is_meta for p in layer.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    layer = _layer()
    x = _input(2, 28, 28, 16)
    with torch.no_grad():
        assert (layer.cuda()(x.cuda()).cpu() - layer.cpu()(x)).abs().max().item() < 1e-10


def test_traces_as_one_graph():
    """torch.compile sees the whole layer, clustering included: no graph break."""
    layer = FeatureSpaceLocalAttention(16, 2).eval()
    with torch.no_grad():
        explanation = torch._dynamo.explain(layer)(torch.randn(2, 10, 11, 16))  # padded: 110 tokens
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize(
    "value_conv, shape, dtype",
    [
        (True, (3, 11, 9, 16), torch.float32),
        (True, (2, 14, 14, 16), torch.float64),
        (True, (2, 5, 5, 16), torch.float32),
        (False, (2, 99, 16), torch.float64),
    ],
    ids=["padded", "two-levels", "one-group", "sequences"],
)
def test_torchscript_is_exact(value_conv, shape, dtype):
    """The scripted layer computes bit for bit what the eager one does, clustering included."""
    layer = _layer(value_conv=value_conv).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(layer)
    x = _input(*shape, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(scripted(x), layer(x))
    wrong = (2, 5, 16) if value_conv else (5, 16)
    with pytest.raises(torch.jit.Error, match=re.escape(f"got shape {wrong}")):  # the eager message
        scripted(_input(*wrong, dtype=dtype))
