"""BOAT-CSWin: exactness against the released code, the timm model contract, any input size and batch."""
import argparse
import ast
import logging
import re
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import boat_vit.models.boat_cswin as boat_cswin  # registers the models with timm
import boat_vit.models.boat_swin as boat_swin
from boat_vit.models import weights_filter
from boat_vit.models._stages import stage_indices
from boat_vit.models.boat_cswin import BoatCSWin, CrossShapedAttention, checkpoint_filter_fn
from boat_vit.weights import load_weights, read_state_dict, select_state_dict

# The configuration of tests/data/reference/boat_cswin_mini.pt, in our argument names.
MINI = dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16), num_classes=10)
# A small model for behaviour tests: FSLA in the even blocks of every stage, one block without it.
SMALL = dict(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4), num_classes=7)

SIZES = [(224, 224), (256, 256), (384, 384), (512, 512), (320, 480), (97, 131)]


def small(**kwargs) -> BoatCSWin:
    torch.manual_seed(0)
    return timm.create_model("boat_cswin_tiny_224", **dict(SMALL, **kwargs)).eval()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(model: torch.nn.Module, size: int = 224) -> float:
    """MACs of one image (torch's flop counter / 2), counted on the meta device (SDPA is decomposed there)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2e9


def stage_sizes(height: int, width: int) -> list:
    """Token-map sizes of the four stages: 7x7 stride-4 stem (padding 2), then 3x3 stride-2 merges."""
    h, w = (height - 3) // 4 + 1, (width - 3) // 4 + 1
    sizes = [(h, w)]
    for _ in range(3):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


# ---- released-format checkpoints and the reference vectors ------------------------------------------------


def write_released_checkpoint(path, state_dict, key="state_dict") -> None:
    """A checkpoint in the released CSWin format: timm-0.3.4 CheckpointSaver, training args as a Namespace."""
    args = argparse.Namespace(model="CSWin_64_12211_tiny_224", lr=2e-3, drop_path=0.2, model_ema=True)
    torch.save({"epoch": 309, "arch": "CSWin_64_12211_tiny_224", key: state_dict, "args": args}, path)


@pytest.fixture(scope="module")
def mini_reference(reference, tmp_path_factory):
    """The reference vectors and the mini model loaded from them through timm's public loading path."""
    ref = reference("boat_cswin_mini")
    assert ref["config"]["depth"] == list(MINI["depths"]) and ref["config"]["embed_dim"] == MINI["embed_dim"]
    path = tmp_path_factory.mktemp("ckpt") / "boat_cswin_mini.pth"
    write_released_checkpoint(path, ref["state_dict"])
    # num_classes in the overlay says what the file holds (timm drops a classifier the cfg says is 1000-way)
    model = timm.create_model(
        "boat_cswin_tiny_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=MINI["num_classes"]),
        **MINI,
    )
    return ref, model.double().eval()


def released_paired_fsla(layer, x: torch.Tensor) -> torch.Tensor:
    """The released stage-4 FSLA (one group of N <= 49 tokens): images 2j and 2j+1 of the batch trade keys
    and values, image 2j gets the first ``overlap`` tokens of 2j+1 and 2j+1 the last ``overlap`` of 2j."""
    batch, height, width, channels = x.shape
    n, heads, overlap = height * width, layer.num_heads, layer.overlap
    q, k, v = layer.qkv(x.reshape(batch, n, channels)).view(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)

    def with_sibling(t):
        pairs = t.view(batch // 2, 2, heads, n, -1)
        borrowed = torch.stack([pairs[:, 1, :, :overlap], pairs[:, 0, :, n - overlap :]], dim=1)
        return torch.cat([t, borrowed.view(batch, heads, overlap, -1)], dim=2)

    out = torch.softmax(q @ with_sibling(k).transpose(-1, -2) * layer.scale, dim=-1) @ with_sibling(v)
    lepe = layer.get_v(v.transpose(-1, -2).reshape(batch, channels, height, width))
    out = out.transpose(1, 2).reshape(batch, n, channels) + lepe.flatten(2).transpose(1, 2)
    return layer.proj(out).view(batch, height, width, channels)


def test_reference_stage3_exact_through_timm_loading(mini_reference):
    ref, model = mini_reference
    with torch.no_grad():
        (stage3,) = model.forward_intermediates(ref["input"].double(), indices=[2], intermediates_only=True)
    tokens = stage3.flatten(2).transpose(1, 2)  # (B, C, H, W) -> the released (B, H*W, C)
    assert tokens.shape == ref["stage3"].shape == (2, 196, 128)
    torch.testing.assert_close(tokens, ref["stage3"], rtol=0, atol=1e-9)


def test_reference_logits_exact_with_released_stage4_pairing(mini_reference, monkeypatch):
    # Emulating the released cross-image pairing in the one stage-4 FSLA reproduces the reference logits:
    # the stage-4 pairing is the only difference between our model and the released one.
    ref, model = mini_reference
    fsla = model.stages[3].blocks[0].fsla
    monkeypatch.setattr(fsla, "forward", lambda x: released_paired_fsla(fsla, x))
    with torch.no_grad():
        logits = model(ref["input"].double())
    torch.testing.assert_close(logits, ref["output"], rtol=0, atol=1e-9)


def test_reference_logit_difference_from_fixed_stage4_pairing(mini_reference):
    # Ours: stage 4 (7x7 = 49 tokens) is one FSLA group of the image's own 49 keys; the released code adds
    # 20 keys/values of the neighbouring image. Measured on the regenerated weights (float64, so exactly
    # reproducible): max |logit diff| 0.0779 (image 0: 0.0779, image 1: 0.0619), relative L2 0.0419, same
    # top-1. The bounds sit within about 3x of the measurement to guard the number, and the lower bound shows
    # the difference is real: we do not reproduce the pairing.
    ref, model = mini_reference
    with torch.no_grad():
        logits = model(ref["input"].double())
    diff = logits - ref["output"]
    max_abs = diff.abs().max().item()
    rel_l2 = (diff.norm() / ref["output"].norm()).item()
    assert 0.05 < max_abs < 0.2, max_abs
    assert 0.02 < rel_l2 < 0.12, rel_l2
    assert torch.equal(logits.argmax(-1), ref["output"].argmax(-1))


def test_reference_ema_weights_preferred(reference, tmp_path):
    # timm's loader (and our filter) take `state_dict_ema` when a checkpoint has both, as the released
    # evaluation does: the EMA weights here are the reference weights, the plain ones are perturbed.
    ref = reference("boat_cswin_mini")
    perturbed = {k: v + 1 if v.is_floating_point() else v for k, v in ref["state_dict"].items()}
    path = tmp_path / "both.pth"
    args = argparse.Namespace(model_ema=True)
    torch.save({"state_dict": perturbed, "state_dict_ema": ref["state_dict"], "args": args}, path)
    model = timm.create_model(
        "boat_cswin_tiny_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **MINI
    )
    loaded = model.state_dict()["patch_embed.proj.weight"]
    torch.testing.assert_close(loaded, ref["state_dict"]["stage1_conv_embed.0.weight"], rtol=0, atol=0)


def test_choose_checkpoint_entry_after_a_timm_load(reference, tmp_path):
    ref = reference("boat_cswin_mini")
    perturbed = {k: v + 1 if v.is_floating_point() else v for k, v in ref["state_dict"].items()}
    path = tmp_path / "both.pth"
    torch.save({"state_dict": perturbed, "state_dict_ema": ref["state_dict"], "args": argparse.Namespace()}, path)
    timm.create_model(  # a timm file load first, as in a user's session
        "boat_cswin_tiny_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **MINI
    )
    model = timm.create_model("boat_cswin_tiny_224", **MINI)
    # the file's state dict, chosen as timm does (EMA weights first), through the filter
    filtered = checkpoint_filter_fn(read_state_dict(path)[0], model)
    assert torch.equal(filtered["patch_embed.proj.weight"], ref["state_dict"]["stage1_conv_embed.0.weight"])
    # choosing the other entry: load it safely, hand timm the state dict
    chosen, key = read_state_dict(path, key="state_dict")
    assert key == "state_dict"
    model = timm.create_model(
        "boat_cswin_tiny_224", pretrained=True, pretrained_cfg_overlay=dict(state_dict=chosen, num_classes=10), **MINI
    )
    assert torch.equal(model.state_dict()["patch_embed.proj.weight"], perturbed["stage1_conv_embed.0.weight"])


def test_released_file_loads_through_load_weights_and_not_through_checkpoint_path(mini_reference, tmp_path):
    ref, loaded = mini_reference
    path = tmp_path / "released.pth"
    write_released_checkpoint(path, ref["state_dict"])
    model = timm.create_model("boat_cswin_tiny_224", **MINI)
    report = load_weights(model, path, weights_filter(model))
    assert not report.initial and not report.unused
    for k, v in loaded.state_dict().items():
        assert torch.equal(model.double().state_dict()[k], v), k
    # checkpoint_path= takes the model's own layout only (timm loads it strictly, without a filter)
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model("boat_cswin_tiny_224", checkpoint_path=str(path), **MINI)


# ---- checkpoint filter ---------------------------------------------------------------------------------------


def _released_block(match: "re.Match") -> str:
    return f"stage{int(match.group(1)) + 1}.{match.group(2)}."


def released_layout(model: BoatCSWin) -> dict:
    """The model's weights renamed back to the released layout (inverse of the filter's renaming)."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("patch_embed.proj.", "stage1_conv_embed.0.")
        key = key.replace("patch_embed.norm.", "stage1_conv_embed.2.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"merge{m.group(1)}.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", _released_block, key)
        key = key.replace(".attn.qkv.", ".qkv.").replace(".attn.proj.", ".proj.").replace(".fsla.", ".content_attn.")
        key = key.replace(".norm_fsla.", ".norm3.")
        key = re.sub(r"\.attn\.lepe\.(\d+)\.", r".attns.\1.get_v.", key)
        out[key.replace("head.fc.", "head.")] = value
    return out


def test_filter_maps_released_layout_and_passes_ours_through():
    model = small()
    released = released_layout(model)
    assert "stage1_conv_embed.0.weight" in released and "stage4.0.content_attn.qkv.weight" in released
    assert "merge1.conv.weight" in released and "stage2.1.attns.1.get_v.weight" in released
    wrapped, _ = select_state_dict({"module." + k: v for k, v in released.items()})  # as a DDP model saves it
    for state_dict in (released, model.state_dict(), wrapped):
        filtered = checkpoint_filter_fn(state_dict, model)
        assert filtered.keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert torch.equal(filtered[k], v), k


def test_plain_cswin_checkpoint_loads_with_fresh_fsla_and_lists_missing(caplog):
    plain = small(fsla_stages=False)
    boat = small()  # seeded like `plain`, so this is its own fresh initialisation
    fresh = {k: v.clone() for k, v in boat.state_dict().items()}
    plain_ckpt = released_layout(plain)
    assert not any("content_attn" in k or "norm3" in k for k in plain_ckpt)
    with caplog.at_level(logging.WARNING, logger=boat_cswin.__name__):
        filtered = checkpoint_filter_fn(plain_ckpt, boat)
    result = boat.load_state_dict(filtered, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    fsla_keys = [k for k in fresh if ".fsla." in k or ".norm_fsla." in k]
    assert len(fsla_keys) == 4 * 8  # 4 FSLA blocks x (qkv, proj, get_v, norm_fsla) x (weight, bias)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"no FSLA weights; these {len(fsla_keys)} keys keep their fresh initialisation" in message
    assert all(k in message for k in fsla_keys)
    for k, v in boat.state_dict().items():
        expected = fresh[k] if k in fsla_keys else plain.state_dict()[k]
        assert torch.equal(v, expected), k


def test_boat_checkpoint_into_fsla_off_model_drops_fsla_with_warning(caplog):
    boat, plain = small(), small(fsla_stages=False)
    with caplog.at_level(logging.WARNING, logger=boat_cswin.__name__):
        filtered = checkpoint_filter_fn(released_layout(boat), plain)
    assert filtered.keys() == plain.state_dict().keys()
    assert "dropping 32 keys" in " ".join(r.getMessage() for r in caplog.records)


def test_filter_drops_derived_buffers():
    model = small()
    state_dict = dict(model.state_dict())
    state_dict["stages.0.blocks.0.attn.attn_mask"] = torch.zeros(3)
    state_dict["stages.0.downsample.relative_position_index"] = torch.zeros(3, dtype=torch.long)
    assert checkpoint_filter_fn(state_dict, model).keys() == model.state_dict().keys()


# ---- sizes, parameters and MACs ------------------------------------------------------------------------------

# BRIEF §2: params counted from the released code; the FSLA-off numbers are Microsoft's CSWin.
PARAMS = {
    "boat_cswin_tiny_224": (26.39, 22.32),
    "boat_cswin_small_224": (40.11, 34.64),
    "boat_cswin_base_224": (89.63, 77.38),
}
# GMACs at 224 from the released code (BOAT) and of the plain CSWin.
MACS = {
    "boat_cswin_tiny_224": (5.20, 4.32),
    "boat_cswin_small_224": (8.05, 6.80),
    "boat_cswin_base_224": (17.59, 14.96),
}


def check_params(name: str) -> None:
    boat, plain = PARAMS[name]
    assert round(count_params(timm.create_model(name, device="meta")) / 1e6, 2) == boat
    assert round(count_params(timm.create_model(name, device="meta", fsla_stages=False)) / 1e6, 2) == plain


def check_macs(name: str) -> None:
    boat, plain = MACS[name]
    # Ours counts 0.01-0.02 GMACs fewer than the released code, for two reasons that account for the gap
    # exactly: our clustering needs 3 of the released 5 (N x C x 2) matmuls per level (its centre updates are
    # not matmuls), and the stage-4 FSLA has 49 instead of 69 keys (no cross-image sibling). Measured:
    # T 5.1879 + 0.0108 + 0.0010 = 5.1997; S 8.0297 + 0.0145 + 0.0010 = 8.0452; B 17.5695 + 0.0217 + 0.0015
    # = 17.5927: the released 5.20 / 8.05 / 17.59. FSLA off: 4.3242 / 6.8007 / 14.9553 (CSWin 4.32 / 6.80 / 14.96).
    assert boat - 0.025 < gmacs(timm.create_model(name, device="meta")) < boat
    assert gmacs(timm.create_model(name, device="meta", fsla_stages=False)) == pytest.approx(plain, abs=0.005)


def test_param_counts_tiny():
    check_params("boat_cswin_tiny_224")


def test_macs_tiny():
    check_macs("boat_cswin_tiny_224")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["boat_cswin_small_224", "boat_cswin_base_224"])
def test_param_counts_and_macs_small_base(name):
    check_params(name)
    check_macs(name)


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_any_input_size(size):
    model = small()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        logits = model(x)
    expected = stage_sizes(*size)
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(final), logits)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_any_input_size_full_tiny(size):
    model = timm.create_model("boat_cswin_tiny_224").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


def test_strict_img_size():
    model = small(strict_img_size=True, img_size=112)
    assert model(torch.randn(1, 3, 112, 112)).shape == (1, 7)
    with pytest.raises(ValueError, match=r"input size \(96, 112\) != img_size \(112, 112\)"):
        model(torch.randn(1, 3, 96, 112))
    model.set_input_size(img_size=(96, 112))
    assert model(torch.randn(1, 3, 96, 112)).shape == (1, 7)


# ---- stripe attention padding rule ---------------------------------------------------------------------------


def naive_cross_shaped(attn: CrossShapedAttention, x: torch.Tensor) -> torch.Tensor:
    """One stripe at a time over the real tokens only: each token attends to the tokens of its own
    (possibly shorter) stripe, LePE is the 3x3 depthwise convolution of the stripe's values alone."""
    batch, height, width, channels = x.shape
    branches = attn.num_branches
    heads, part = attn.num_heads // branches, channels // branches
    qkv = attn.qkv(x).view(batch, height, width, 3, channels)
    outputs = []
    for b in range(branches):
        sub = qkv[..., b * part : (b + 1) * part]
        out = torch.zeros(batch, height, width, part, dtype=x.dtype)
        if branches == 1:
            spans = [(slice(None), slice(None))]
        elif b == 0:  # vertical stripes
            spans = [(slice(None), slice(s, s + attn.split_size)) for s in range(0, width, attn.split_size)]
        else:  # horizontal stripes
            spans = [(slice(s, s + attn.split_size), slice(None)) for s in range(0, height, attn.split_size)]
        for rows, cols in spans:
            stripe = sub[:, rows, cols]  # (B, h, w, 3, c)
            h, w = stripe.shape[1:3]
            q, k, v = stripe.reshape(batch, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
            o = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1) @ v  # (B, heads, hw, d)
            o = o.transpose(1, 2).reshape(batch, h, w, part)
            v_img = stripe[..., 2, :].permute(0, 3, 1, 2)
            out[:, rows, cols] = o + attn.lepe[b](v_img).permute(0, 2, 3, 1)
        outputs.append(out)
    return attn.proj(torch.cat(outputs, dim=-1))


@pytest.mark.parametrize(
    "split,branches,height,width",
    [(7, 2, 14, 14), (7, 2, 9, 17), (7, 2, 4, 5), (2, 2, 13, 6), (1, 2, 5, 3), (7, 1, 7, 7), (7, 1, 3, 5)],
)
def test_stripe_attention_padding_equals_shorter_stripes(split, branches, height, width):
    torch.manual_seed(0)
    attn = CrossShapedAttention(32, 4, split_size=split, num_branches=branches).double()
    x = torch.randn(3, height, width, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), naive_cross_shaped(attn, x), rtol=0, atol=1e-12)


def test_stripe_attention_gradients_match_naive():
    torch.manual_seed(0)
    attn = CrossShapedAttention(32, 4, split_size=7, num_branches=2).double()
    x = torch.randn(2, 9, 17, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 9, 17, 32, dtype=torch.float64)
    grads = []
    for fn in (attn, lambda t: naive_cross_shaped(attn, t)):
        attn.zero_grad()
        x.grad = None
        (fn(x) * weight).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in attn.parameters()])
    for ours, naive in zip(*grads):
        torch.testing.assert_close(ours, naive, rtol=0, atol=1e-10)


# ---- batch ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (97, 131)])
def test_batch_independence_and_odd_batches(size):
    model = small().double()
    x = torch.randn(3, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
        shuffled = model(x[[2, 0, 1]])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-10)
    torch.testing.assert_close(shuffled, together[[2, 0, 1]], rtol=0, atol=1e-10)


def test_batch_independence_at_224_stage4_single_group():
    # at 224 stage 4 has 49 tokens: the released code paired images here, ours must not
    model = small().double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        pair = model(x)
        first = model(x[:1])
    torch.testing.assert_close(pair[:1], first, rtol=0, atol=1e-10)


# ---- timm contract -------------------------------------------------------------------------------------------


def test_grad_checkpointing_identical_in_training():
    x = torch.randn(2, 3, 64, 64)
    results = []
    for enable in (False, True):
        model = small(drop_path_rate=0.3).train()
        model.set_grad_checkpointing(enable)
        assert all(stage.grad_checkpointing == enable for stage in model.stages)
        torch.manual_seed(1)  # same drop-path draws
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out0, grads0), (out1, grads1) = results
    assert torch.equal(out0, out1)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_features_only():
    torch.manual_seed(0)
    model = timm.create_model("boat_cswin_tiny_224", features_only=True, **SMALL).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.module_name() == ["stages.0", "stages.1", "stages.2", "stages.3"]
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 24, 32), (2, 32, 12, 16), (2, 64, 6, 8), (2, 128, 3, 4)]

    torch.manual_seed(0)
    full = small()
    with torch.no_grad():
        expected = full.forward_intermediates(x, intermediates_only=True)
    for f, e in zip(feats, expected):
        torch.testing.assert_close(f, e, rtol=0, atol=0)

    torch.manual_seed(0)
    some = timm.create_model("boat_cswin_tiny_224", features_only=True, out_indices=(1, 3), **SMALL)
    assert some.feature_info.reduction() == [8, 32]


def test_forward_intermediates():
    model = small()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        features = model.forward_features(x)
        assert len(feats) == 4 and all(f.ndim == 4 for f in feats)
        torch.testing.assert_close(final, features, rtol=0, atol=0)
        # norm=True applies the final norm to the last stage's map: that is forward_features
        _, normed = model.forward_intermediates(x, indices=1, norm=True)
        assert len(normed) == 1
        torch.testing.assert_close(normed[0], features, rtol=0, atol=0)
        torch.testing.assert_close(feats[3], model.forward_intermediates(x, indices=[3])[1][0], rtol=0, atol=0)
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert [tuple(f.shape) for f in early] == [(2, 16, 16, 24), (2, 32, 8, 12)]
        torch.testing.assert_close(early[1], feats[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    for indices in (5, 0, [4], [-5]):
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(x, indices=indices)
    assert stage_indices(4, [-1, 0]) == ([3, 0], 3) and stage_indices(4, 2) == ([2, 3], 3)

    pruned = small()
    assert pruned.prune_intermediate_layers(indices=[1]) == [1]
    assert len(pruned.stages) == 2 and pruned.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_intermediates(x, intermediates_only=True)[-1], feats[1])


def test_forward_head_and_reset_classifier():
    model = small()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 128, 2, 2)
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean((2, 3)))
        torch.testing.assert_close(model(x), model.get_classifier()(pooled))
        model.reset_classifier(5)
        assert model.num_classes == 5 and model(x).shape == (2, 5)
        assert 0.015 < model.get_classifier().weight.std() < 0.025  # (truncated) normal, std 0.02, as released
        assert torch.equal(model.get_classifier().bias, torch.zeros(5))
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (2, 128, 2, 2)


def test_in_chans_one():
    model = small(in_chans=1)
    assert model.patch_embed.proj.weight.shape == (16, 1, 7, 7)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        model(torch.randn(2, 3, 64, 64))


def test_meta_device_construction():
    model = timm.create_model("boat_cswin_tiny_224", device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert count_params(model) == 26_390_952
    # materialise on CPU and run
    small_meta = timm.create_model("boat_cswin_tiny_224", device="meta", **SMALL)
    small_meta = small_meta.to_empty(device="cpu")
    small_meta.apply(BoatCSWin._init_weights)
    for module in small_meta.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    assert small_meta(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_unknown_kwarg_is_an_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'window_size'"):
        timm.create_model("boat_cswin_tiny_224", window_size=7, **SMALL)


def test_timm_kwarg_names():
    model = timm.create_model(
        "boat_cswin_tiny_224", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), split_size=(1, 2, 3, 7),
        mlp_ratio=2.0, drop_path_rate=0.1, num_classes=3, img_size=128,
    )
    assert model.num_classes == 3 and model.img_size == (128, 128)
    assert [s.blocks[0].attn.split_size for s in model.stages] == [1, 2, 3, 7]
    assert model.stages[0].blocks[0].mlp.fc1.out_features == 32
    assert model.stages[3].blocks[0].drop_path.drop_prob == pytest.approx(0.1)
    assert [s.blocks[0].attn.num_branches for s in model.stages] == [2, 2, 2, 1]


def test_fsla_off_variant_and_per_stage_switch():
    plain = small(fsla_stages=False)
    names = [n for n, _ in plain.named_parameters()]
    assert not any(".fsla." in n or ".norm_fsla." in n for n in names)
    boat = small()
    fsla_blocks = [(i, j) for i, s in enumerate(boat.stages) for j, b in enumerate(s.blocks) if b.fsla is not None]
    assert fsla_blocks == [(0, 0), (1, 0), (2, 0), (3, 0)]  # even blocks of every stage, stage 4 included
    mixed = small(fsla_stages=(True, False, True, False))
    assert [any(b.fsla is not None for b in s.blocks) for s in mixed.stages] == [True, False, True, False]
    assert mixed.fsla_stages == (True, False, True, False)
    with pytest.raises(ValueError, match="one value per stage"):
        small(fsla_stages=(True, False))
    # FSLA adds exactly its own layers and norms
    extra = sum(p.numel() for n, p in boat.named_parameters() if ".fsla." in n or ".norm_fsla." in n)
    assert count_params(boat) - count_params(plain) == extra > 0


def test_fsla_is_a_deprecated_spelling_of_fsla_stages():
    with pytest.warns(FutureWarning, match=r"fsla=\.\.\.\) is deprecated; use fsla_stages="):
        old = small(fsla=(True, False, True, False))
    new = small(fsla_stages=(True, False, True, False))
    assert old.fsla_stages == new.fsla_stages == (True, False, True, False)
    assert old.state_dict().keys() == new.state_dict().keys()


def test_models_import_only_public_timm_names():
    for module in (boat_cswin, boat_swin):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        private = [name for name in imported if name.startswith("timm") and "._" in name]
        assert not private, f"{module.__name__} imports timm's private modules {private}"


def test_fsla_scale_is_released_one():
    model = small()
    assert all(b.fsla.scale == 1.0 for s in model.stages for b in s.blocks if b.fsla is not None)
    assert model.stages[2].blocks[0].attn.scale == pytest.approx(16**-0.5)  # stripe attention: head_dim ** -0.5


def test_group_matcher_and_no_weight_decay():
    from timm.models import group_parameters

    model = small()
    groups = group_parameters(model, model.group_matcher(coarse=False))
    grouped = [n for names in groups.values() for n in names]
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())
    assert groups[0] == [n for n, _ in model.named_parameters() if n.startswith("patch_embed")]
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, the four stages, then what no pattern names (final norm, head)
    assert coarse[5] == ["norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"]
    # fine: stem, then the blocks in order, each merge block grouped with the block before it
    fine_names = list(groups.values())
    assert any("stages.1.downsample.conv.weight" in names for names in fine_names)
    nwd = model.no_weight_decay()
    assert isinstance(nwd, set) and nwd <= {n for n, _ in model.named_parameters()}


def test_pretrained_cfg_metadata():
    cfg = timm.create_model("boat_cswin_tiny_224", device="meta").pretrained_cfg
    assert cfg["paper_ids"] == "arXiv:2201.13027"
    assert cfg["origin_url"] == "https://github.com/mahaoyuHKU/pytorch-boat"
    assert cfg["license"] == "mit"
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.9
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert not cfg["url"] and cfg["classifier"] == "head.fc" and cfg["first_conv"] == "patch_embed.proj"
    for name in ("boat_cswin_tiny_224", "boat_cswin_small_224", "boat_cswin_base_224"):
        assert name in timm.list_models("boat_cswin*")
    with pytest.raises(RuntimeError):
        timm.create_model("boat_cswin_tiny_224", pretrained=True, **SMALL)  # no URL: a file must be given


@pytest.mark.slow
def test_torch_compile_same_outputs():
    model = small()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
