"""The portable reference rule: splitmix64 streams, the weight and input rules, the released Swin buffers."""
import math

import numpy as np
import pytest
import torch

from reference_vectors import (
    INV_UNIFORM_VARIANCE,
    NORM_BIAS_SPREAD,
    NORM_WEIGHT_SPREAD,
    SPLITMIX_GAMMA,
    SWIN_MASKED,
    load_reference,
    splitmix64,
    uniform,
)

STEMS = ("fsla_n196", "fsla_n784", "fsla_n3136", "boat_swin_mini", "boat_cswin_mini")
# the first three outputs of splitmix64 from state 0 (Vigna's reference C code, prng.di.unimi.it/splitmix64.c)
PUBLISHED_FROM_ZERO = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)


def _integer_uniform(seed: int, index: int) -> float:
    """One value of the rule in plain Python integers, written out independently of the numpy version."""
    mask = (1 << 64) - 1
    z = ((seed << 32) + index + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 11) / 2**53 * 2 - 1


def test_splitmix64_matches_published_outputs():
    states = np.array([k * SPLITMIX_GAMMA % 2**64 for k in range(len(PUBLISHED_FROM_ZERO))], dtype=np.uint64)
    assert [int(z) for z in splitmix64(states)] == list(PUBLISHED_FROM_ZERO)


@pytest.mark.parametrize("seed", [0, 1, 7, 41_003, 2**32 - 1])  # the last: + gamma wraps past 2**64
def test_uniform_matches_integer_arithmetic(seed):
    values = uniform(70, seed)
    assert values.dtype == np.float64 and values.shape == (70,)
    assert values.tolist() == [_integer_uniform(seed, i) for i in range(70)]


def test_uniform_range_and_moments():
    values = uniform(100_000, 3)
    assert values.min() >= -1 and values.max() < 1
    assert abs(values.mean()) < 0.01 and abs(values.var() - 1 / 3) < 0.01


@pytest.mark.parametrize("stem", STEMS)
def test_portable_file_regenerates_the_entries_the_tests_use(stem):
    ref = load_reference(stem)
    assert {"config", "state_dict", "input", "output"} <= set(ref)
    assert tuple(ref["input"].shape) == tuple(ref["input_shape"]) and ref["input"].dtype == torch.float32
    assert ref["output"].dtype == torch.float64
    # input rule: sqrt(3) u, unit variance, float32
    bound = math.sqrt(INV_UNIFORM_VARIANCE)
    assert -bound <= ref["input"].min() and ref["input"].max() <= bound
    assert abs(ref["input"].double().std().item() - 1) < 0.02
    # weights: every listed parameter, with the listed shape, in the listed (named_parameters) order
    params = [(k, v) for k, v in ref["state_dict"].items() if not k.endswith(("relative_position_index", "attn_mask"))]
    assert [(k, tuple(v.shape)) for k, v in params] == [(k, tuple(s)) for k, s in ref["parameters"]]
    for name, value in params:
        assert value.dtype == torch.float32
        if value.dim() == 1 and "norm" in name:
            centre, spread = (1.0, NORM_WEIGHT_SPREAD) if name.endswith("weight") else (0.0, NORM_BIAS_SPREAD)
            assert (value - centre).abs().max() <= spread, name
        else:
            fan_in = value.numel() // value.shape[0] if value.dim() > 1 else value.numel()
            assert value.abs().max() <= math.sqrt(INV_UNIFORM_VARIANCE / fan_in) * (1 + 1e-6), name
    # new tensors on every call: a test that perturbs its copy cannot disturb another
    assert load_reference(stem)["input"].data_ptr() != ref["input"].data_ptr()


def test_released_swin_layout_has_its_buffers():
    ref = load_reference("boat_swin_mini")
    state = ref["state_dict"]
    indices = [k for k in state if k.endswith("attn.relative_position_index")]
    masks = [k for k in state if k.endswith("attn_mask")]
    assert len(indices) == sum(ref["config"]["depths"])  # one per window attention
    assert masks == [f"layers.{s}.blocks.1.attn_mask" for s in range(3)]  # stage 4 (7x7) has no shift
    window = ref["config"]["window_size"]
    index = state[indices[0]]
    assert index.dtype == torch.int64 and index.shape == (window**2, window**2)
    assert sorted(index.unique().tolist()) == list(range((2 * window - 1) ** 2))
    assert torch.equal(index.diagonal(), torch.full((window**2,), (2 * window - 1) ** 2 // 2))  # zero offset
    mask = state[masks[0]]
    assert mask.shape == ((56 // window) ** 2, window**2, window**2) and torch.equal(mask, mask.transpose(1, 2))
    assert set(mask.unique().tolist()) == {0.0, SWIN_MASKED}
    assert not mask[0].any() and mask[-1].any()  # only windows at the rolled border mix regions
    # the released order: the mask leads its block, each index follows its bias table
    keys = list(state)
    assert keys[keys.index(masks[0]) + 1] == "layers.0.blocks.1.norm1.weight"
    assert keys[keys.index(indices[0]) - 1] == "layers.0.blocks.0.attn.relative_position_bias_table"

