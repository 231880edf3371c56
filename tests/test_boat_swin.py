"""BOAT-Swin as a timm model: released weights reproduce exactly, any input and batch, the timm contract."""
import logging
import math
import sys
import types

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg, group_parameters
from timm.models._manipulate import reinit_non_persistent_buffers
from timm.models.swin_transformer import SwinTransformer
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import boat_vit.layers
import boat_vit.models.boat_swin  # noqa: F401  (registers the models)
from boat_vit.clustering import DEFAULT_GROUP_SIZE, DEFAULT_ITERATIONS
from boat_vit.models import weights_filter
from boat_vit.models.boat_swin import BoatSwinTransformer, BoatSwinTransformerBlock
from boat_vit.weights import load_weights

TINY = "boat_swin_tiny_patch4_window7_224"
ENTRYPOINTS = (TINY, "boat_swin_small_patch4_window7_224", "boat_swin_base_patch4_window7_224")
# the reference model of tests/data/reference/boat_swin_mini.pt
REFERENCE_MINI = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_classes=10)
# a small model for behaviour checks at small inputs (112x112: maps 28, 14, 7, 4)
SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_classes=10, img_size=112)
SMALL_INPUT = (3, 112, 112)
EXACT_64 = 1e-9  # float64 agreement with the released code
CLOSE_32 = 1e-5  # float32 agreement between computations that round differently


def _small(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(TINY, **dict(SMALL, **kwargs)).eval()


def _save_released(path, state_dict: dict, monkeypatch) -> None:
    """Writes ``state_dict`` the way the released BOAT-Swin training saved it: with a yacs CfgNode config."""

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module = types.ModuleType("yacs.config")
    module.CfgNode = CfgNode
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
        patch.setitem(sys.modules, "yacs.config", module)
        config = CfgNode(MODEL=CfgNode(TYPE="swin", NAME="boat_swin_mini"), TRAIN=CfgNode(EPOCHS=300))
        torch.save({"model": state_dict, "config": config, "epoch": 299, "max_accuracy": 0.0}, path)


def _logits_and_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        tokens = model.forward_features(images)
        return model.forward_head(tokens), model.forward_head(tokens, pre_logits=True)


# --- the released weights -------------------------------------------------------------------------------


def test_released_file_reproduces_reference_through_timm_pretrained(reference, tmp_path, monkeypatch):
    ref = reference("boat_swin_mini")
    path = tmp_path / "boat_swin_mini.pth"
    _save_released(path, ref["state_dict"], monkeypatch)

    model = timm.create_model(
        TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **REFERENCE_MINI
    )
    logits, features = _logits_and_features(model.double().eval(), ref["input"].double())

    torch.testing.assert_close(logits, ref["output"], rtol=0, atol=EXACT_64)
    torch.testing.assert_close(features, ref["features"], rtol=0, atol=EXACT_64)


def test_released_file_loads_through_load_weights_and_not_through_checkpoint_path(reference, tmp_path, monkeypatch):
    ref = reference("boat_swin_mini")
    path = tmp_path / "boat_swin_mini.pth"
    _save_released(path, ref["state_dict"], monkeypatch)

    model = timm.create_model(TINY, **REFERENCE_MINI)
    report = load_weights(model, path, weights_filter(model))
    assert not report.initial and not report.unused
    logits, _ = _logits_and_features(model.double().eval(), ref["input"].double())
    torch.testing.assert_close(logits, ref["output"], rtol=0, atol=EXACT_64)
    # checkpoint_path= takes the model's own layout only (timm loads it strictly, without a filter)
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model(TINY, checkpoint_path=str(path), **REFERENCE_MINI)


def test_plain_swin_checkpoint_keeps_fresh_fsla_and_lists_it(reference, tmp_path, monkeypatch, caplog):
    ref = reference("boat_swin_mini")
    plain = {k: v for k, v in ref["state_dict"].items() if ".attnC." not in k and ".norm4." not in k}
    path = tmp_path / "swin_mini.pth"
    _save_released(path, plain, monkeypatch)

    torch.manual_seed(0)
    fresh = timm.create_model(TINY, **REFERENCE_MINI)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        model = timm.create_model(
            TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **REFERENCE_MINI
        )

    fsla_keys = [k for k in model.state_dict() if ".fsla." in k or ".norm_fsla." in k]
    assert len(fsla_keys) == 3 * 8  # blocks 1 of stages 1-3; qkv, proj, get_v (weight, bias) and the norm
    assert f"these {len(fsla_keys)} keys keep their fresh initialisation: {', '.join(fsla_keys)}" in caplog.text
    loaded, fresh_state = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(loaded[k], fresh_state[k]) for k in fsla_keys)
    assert torch.equal(loaded["layers.1.downsample.reduction.weight"], ref["state_dict"]["layers.0.downsample.reduction.weight"])
    assert torch.equal(loaded["head.fc.weight"], ref["state_dict"]["head.weight"])


def test_choosing_the_entry_through_timm_state_dict_overlay(reference):
    ref = reference("boat_swin_mini")
    model = timm.create_model(
        TINY, pretrained=True, pretrained_cfg_overlay=dict(state_dict=dict(ref["state_dict"]), num_classes=10), **REFERENCE_MINI
    )
    assert torch.equal(model.layers[0].blocks[1].fsla.get_v.weight, ref["state_dict"]["layers.0.blocks.1.attnC.get_v.weight"])


def test_pretrained_cfg_metadata():
    assert timm.list_models("boat_swin*") == sorted(ENTRYPOINTS)
    cfg = get_pretrained_cfg(TINY)
    assert cfg.paper_ids == "arXiv:2201.13027"
    assert cfg.origin_url == "https://github.com/mahaoyuHKU/pytorch-boat"
    assert (cfg.license, cfg.input_size, cfg.crop_pct, cfg.interpolation) == ("mit", (3, 224, 224), 0.875, "bicubic")
    assert (cfg.mean, cfg.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (cfg.first_conv, cfg.classifier, cfg.num_classes) == ("patch_embed.proj", "head.fc", 1000)
    assert not cfg.has_weights  # weights live on an external host
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model(TINY, pretrained=True, **SMALL)


# --- architecture -------------------------------------------------------------------------------------


def test_fsla_placement_as_released():
    model = timm.create_model(TINY, device="meta", **REFERENCE_MINI)  # at 224: maps 56, 28, 14, 7
    with_fsla = [(i, j) for i, stage in enumerate(model.layers) for j, block in enumerate(stage.blocks) if block.fsla]
    assert with_fsla == [(0, 1), (1, 1), (2, 1)]  # shifted blocks; stage 4 (7x7) has no shift
    block = model.layers[0].blocks[1]
    assert block.fsla.scale == (32 // 1) ** -0.5 and (block.fsla.group_size, block.fsla.overlap) == (49, 20)

    ablation = timm.create_model(TINY, device="meta", fsla_stages=(True, False, True, False), **REFERENCE_MINI)
    assert [i for i, s in enumerate(ablation.layers) for b in s.blocks if b.fsla] == [0, 2]


def test_fsla_branch_has_no_drop_path():
    torch.manual_seed(0)
    block = BoatSwinTransformerBlock(16, (14, 14), num_heads=2, shift_size=3, drop_path=1.0).train()
    x = torch.randn(2, 14, 14, 16)
    # drop path 1 drops the window attention and MLP branches of every sample; the FSLA branch stays
    torch.testing.assert_close(block(x), x + block.fsla(block.norm_fsla(x)), rtol=0, atol=0)


def test_fsla_off_is_timm_swin():
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", **SMALL).eval()
    plain = timm.create_model(TINY, fsla_stages=False, **SMALL).eval()
    assert plain.state_dict().keys() == swin.state_dict().keys()
    plain.load_state_dict(swin.state_dict())
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        assert torch.equal(plain(images), swin(images))


# what BoatSwinTransformer adds to timm's Swin modules; everything else must be timm's, attribute for attribute
BOAT_ATTRIBUTES = {"fsla_stages", "fsla", "norm_fsla"}
# deliberate differences: with dynamic sizes BOAT-Swin pads the image to a multiple of the patch size
BOAT_VALUES = {("patch_embed", "dynamic_img_pad")}
TORCH_MODULE_STATE = set(vars(nn.Module()))  # parameters, buffers, submodules, hooks: compared otherwise


@pytest.mark.parametrize("kwargs", [{}, dict(dynamic_img_size=True, window_size=(7, 7, 4, 4), drop_path_rate=0.2)])
def test_fsla_off_builds_exactly_timm_swin(kwargs):
    """boat_swin.py rebuilds timm's ``SwinTransformer.__init__`` (pyproject pins timm below 1.1): this test fails
    loudly when timm's Swin changes under it (attributes, modules, parameter order and initial values)."""
    torch.manual_seed(0)
    swin = SwinTransformer(**SMALL, **kwargs)
    torch.manual_seed(0)
    plain = BoatSwinTransformer(fsla_stages=False, **SMALL, **kwargs)
    swin_modules, plain_modules = dict(swin.named_modules()), dict(plain.named_modules())
    assert list(plain_modules) == list(swin_modules)
    for name, module in swin_modules.items():
        ours = plain_modules[name]
        assert type(ours).__mro__[-len(type(module).__mro__):] == type(module).__mro__, name
        assert set(vars(ours)) - BOAT_ATTRIBUTES == set(vars(module)), name
        for key, value in vars(module).items():
            if key in TORCH_MODULE_STATE or isinstance(value, nn.Module) or (name, key) in BOAT_VALUES:
                continue
            assert vars(ours)[key] == value, f"{name}.{key}"
    # same parameters and buffers, in the same order, with the same initial values (same RNG consumption)
    expected, actual = swin.state_dict(), plain.state_dict()
    assert list(actual) == list(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        assert torch.equal(plain.eval()(images), swin.eval()(images))


def test_unknown_kwarg_is_an_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'window_sz'"):
        timm.create_model(TINY, window_sz=7, **SMALL)
    with pytest.raises(ValueError, match="fsla_stages needs one value per stage"):
        timm.create_model(TINY, fsla_stages=(True, False), **SMALL)


def test_param_count_tiny_and_fsla_off():
    def millions(name, **kwargs):
        return round(sum(p.numel() for p in timm.create_model(name, device="meta", **kwargs).parameters()) / 1e6, 2)

    assert millions(TINY) == 30.27
    assert millions(TINY, fsla_stages=False) == millions("swin_tiny_patch4_window7_224") == 28.29


def _released_macs(model: nn.Module, monkeypatch) -> float:
    """GMACs of one 224x224 image, counting the clustering the way the released code computes it.

    FlopCounterMode does not count the CPU SDPA kernel: it gets torch's own SDPA formula. The clustering
    here needs fewer matmuls than the released one (``2 * iterations + 1`` matmuls of ``N x d x 2`` per
    level and sequence), so its measured MACs are swapped for the released count.
    """
    calls = []
    clustering = boat_vit.layers.balanced_clustering

    def recording(queries, *args, **kwargs):
        calls.append((queries.shape, args, kwargs))
        return clustering(queries, *args, **kwargs)

    monkeypatch.setattr(boat_vit.layers, "balanced_clustering", recording)
    sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        model.eval()(torch.randn(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2
    for shape, args, kwargs in calls:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            clustering(torch.randn(shape), *args, **kwargs)
        batch, heads, tokens, head_dim = shape
        levels = int(math.log2(tokens // DEFAULT_GROUP_SIZE))
        macs += (2 * DEFAULT_ITERATIONS + 1) * tokens * head_dim * 2 * batch * heads * levels
        macs -= counter.get_total_flops() / 2
    return round(macs / 1e9, 2)


@pytest.mark.parametrize(
    "name, params, gmacs",
    [
        (TINY, 30.27, 5.20),
        pytest.param("boat_swin_small_patch4_window7_224", 55.16, 10.22, marks=pytest.mark.slow),
        pytest.param("boat_swin_base_patch4_window7_224", 97.61, 17.96, marks=pytest.mark.slow),
    ],
)
def test_params_and_macs_match_released(name, params, gmacs, monkeypatch):
    model = timm.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params
    assert _released_macs(model, monkeypatch) == gmacs


# --- any input, any batch -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (384, 384), (512, 512), (320, 480), (97, 131)])
def test_any_input_size(size):
    model = _small(strict_img_size=False)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(images)
        intermediates = model.forward_intermediates(images, intermediates_only=True)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    stride, expected = 4, []
    height, width = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
    for channels in (16, 32, 64, 128):
        expected.append((2, channels, height, width))
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    assert [tuple(t.shape) for t in intermediates] == expected


def test_dynamic_size_changes_nothing_at_the_built_size():
    strict, dynamic = _small(), _small(dynamic_img_size=True)
    dynamic.load_state_dict(strict.state_dict())
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        assert torch.equal(dynamic(images), strict(images))
    with pytest.raises(AssertionError, match="doesn't match model"):
        strict(torch.randn(1, 3, 128, 128))


def test_set_input_size():
    model = _small()
    model.set_input_size(img_size=(160, 128), window_size=7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 128)).shape == (1, 10)
    assert model.patch_embed.img_size == (160, 128)


@pytest.mark.parametrize("size", [(112, 112), (97, 131)])
def test_batch_independence_and_odd_batches(size):
    model = _small(strict_img_size=False).double()
    images = torch.randn(3, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        batched = model(images)
        alone = torch.cat([model(image[None]) for image in images])
        pairs = model(images[1:])
    torch.testing.assert_close(alone, batched, rtol=0, atol=EXACT_64)
    torch.testing.assert_close(pairs, batched[1:], rtol=0, atol=EXACT_64)


# --- the timm contract ----------------------------------------------------------------------------------


def test_grad_checkpointing_gives_identical_outputs_and_grads():
    model = _small(drop_path_rate=0.0).train()
    images = torch.randn(2, *SMALL_INPUT)

    def run():
        model.zero_grad()
        out = model(images)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    plain_out, plain_grads = run()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.layers)
    out, grads = run()
    assert torch.equal(out, plain_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


def test_features_only():
    model = _small()
    torch.manual_seed(0)  # the same initialisation as _small()
    features = timm.create_model(TINY, features_only=True, out_indices=(1, 2, 3), **SMALL).eval()
    assert features.feature_info.reduction() == [8, 16, 32]
    assert features.feature_info.channels() == [32, 64, 128]
    assert features.feature_info.module_name() == ["layers.1", "layers.2", "layers.3"]
    assert all(model.get_submodule(name) is model.layers[i + 1] for i, name in enumerate(features.feature_info.module_name()))
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        maps = features(images)
        expected = model.forward_intermediates(images, indices=(1, 2, 3), intermediates_only=True)
    assert features.output_fmt == "NHWC"  # as timm's Swin: channels last (smp's tu- encoders permute it)
    assert [tuple(m.shape) for m in maps] == [(2, 14, 14, 32), (2, 7, 7, 64), (2, 4, 4, 128)]
    for feature_map, nchw in zip(maps, expected):
        assert torch.equal(feature_map.permute(0, 3, 1, 2), nchw)


def test_forward_intermediates():
    model = _small()
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(images, indices=2, norm=True)
        assert torch.equal(final, model.forward_features(images))
        assert [tuple(t.shape) for t in intermediates] == [(2, 64, 7, 7), (2, 128, 4, 4)]
        assert torch.equal(intermediates[-1], final.permute(0, 3, 1, 2))
    kept = model.prune_intermediate_layers(indices=(1,))
    assert kept == [1] and len(model.layers) == 2


def test_reset_classifier():
    model = _small()
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(images), pre_logits=True)
        model.reset_classifier(5)
        assert model(images).shape == (2, 5)
        model.reset_classifier(0)
        assert torch.equal(model(images), pooled)
    assert model.get_classifier().__class__ is nn.Identity


def test_in_chans_one():
    model = _small(in_chans=1)
    assert model.patch_embed.proj.weight.shape == (16, 1, 4, 4)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 112, 112)).shape == (2, 10)


def test_meta_device_construction():
    reference = _small()
    model = timm.create_model(TINY, device="meta", **SMALL)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model.to_empty(device="cpu")
    reinit_non_persistent_buffers(model)
    model.load_state_dict(reference.state_dict())
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), reference(images))


def test_group_matcher_and_no_weight_decay():
    model = _small()
    groups = group_parameters(model, model.group_matcher())
    grouped = [name for names in groups.values() for name in names]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    fsla_group = next(g for g, names in groups.items() if "layers.0.blocks.1.fsla.qkv.weight" in names)
    assert "layers.0.blocks.1.attn.qkv.weight" in groups[fsla_group]  # FSLA goes with its block
    no_decay = model.no_weight_decay()
    assert no_decay and all(name.endswith("relative_position_bias_table") for name in no_decay)


# --- compilers (slow; export: tests/test_export.py) -----------------------------------------------------


@pytest.mark.slow
def test_torch_compile_same_outputs():
    model = _small()
    images = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(images), model(images), rtol=0, atol=CLOSE_32)
