"""Released-code reference vectors, regenerated from the portable files in ``tests/data/reference/``.

The files hold the float64 outputs of the released BOAT code (see the README there) but no weights and no
inputs: both follow from a splitmix64 rule, implemented here once. :func:`load_reference` returns what the
tests use: ``config``, ``state_dict`` (released key layout, float32), ``input`` (float32) and the stored
outputs (``output`` and, where present, ``features`` or ``stage3``).
"""
import math
import re
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"

# splitmix64 (Steele, Lea, Flood 2014; constants as in Vigna's reference C code)
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MIX1 = 0xBF58476D1CE4E5B9
SPLITMIX_MIX2 = 0x94D049BB133111EB
SPLITMIX_SHIFTS = (30, 27, 31)
SEED_SHIFT = 32  # element i of stream `seed` starts from (seed << 32) + i
FLOAT64_MANTISSA_BITS = 53  # the top 53 bits of the 64-bit output make one float64 in [0, 1)
UINT64_BITS = 64
UINT64_MASK = (1 << UINT64_BITS) - 1

# the weight and input rule of the portable files
SEEDS_PER_MODEL = 1000  # parameter k of a model draws from stream weight_seed * 1000 + k
NORM_WEIGHT_SPREAD = 0.2  # norm weights: 1 + 0.2 u
NORM_BIAS_SPREAD = 0.1  # norm biases: 0.1 u
INV_UNIFORM_VARIANCE = 3.0  # 1 / Var(u) for u uniform on [-1, 1): sqrt(3 / fan_in) u has variance 1 / fan_in

# buffers of the released (Microsoft) Swin layout, which the portable files do not list
SWIN_MASKED = -100.0  # the released shifted-window attention mask: -100 across regions, 0 within
_SWIN_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_SWIN_BIAS_TABLE, _SWIN_INDEX = "attn.relative_position_bias_table", "attn.relative_position_index"


def splitmix64(z: np.ndarray) -> np.ndarray:
    """Applies the splitmix64 step to each element (arithmetic modulo 2**64).

    Args:
        z: uint64 array of states.

    Returns:
        uint64 array of the mixed outputs.
    """
    first, second, third = (np.uint64(s) for s in SPLITMIX_SHIFTS)
    z = z + np.uint64(SPLITMIX_GAMMA)
    z = (z ^ (z >> first)) * np.uint64(SPLITMIX_MIX1)
    z = (z ^ (z >> second)) * np.uint64(SPLITMIX_MIX2)
    return z ^ (z >> third)


def uniform(n: int, seed: int) -> np.ndarray:
    """Element ``i`` is splitmix64 of ``(seed << 32) + i``, as a float64 in [-1, 1).

    Args:
        n: number of values.
        seed: stream number (non-negative).

    Returns:
        float64 array of shape ``(n,)``.
    """
    start = np.uint64((seed << SEED_SHIFT) & UINT64_MASK)
    with np.errstate(over="ignore"):  # wrap-around is the point
        z = splitmix64(np.arange(n, dtype=np.uint64) + start)
    top = (z >> np.uint64(UINT64_BITS - FLOAT64_MANTISSA_BITS)).astype(np.float64)
    return top / 2.0**FLOAT64_MANTISSA_BITS * 2.0 - 1.0


def reference_parameter(name: str, shape: Sequence[int], index: int, weight_seed: int) -> torch.Tensor:
    """Parameter number ``index`` of a reference model, by the portable weight rule.

    Args:
        name: parameter name in the reference model (the rule treats 1-D ``*norm*`` parameters apart).
        shape: parameter shape.
        index: position in the reference model's ``named_parameters()`` order.
        weight_seed: the file's ``weight_seed``.

    Returns:
        float32 tensor of ``shape``.
    """
    numel = math.prod(shape)
    u = uniform(numel, weight_seed * SEEDS_PER_MODEL + index).reshape(shape)
    if len(shape) == 1 and "norm" in name:
        value = 1.0 + NORM_WEIGHT_SPREAD * u if name.endswith("weight") else NORM_BIAS_SPREAD * u
    else:
        fan_in = numel // shape[0] if len(shape) > 1 else numel
        value = u * math.sqrt(INV_UNIFORM_VARIANCE / fan_in)
    return torch.from_numpy(value.astype(np.float32))


def reference_input(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The reference input by the portable rule: ``sqrt(3) * uniform``, unit variance, rounded to float32.

    Args:
        shape: input shape.
        seed: the file's ``input_seed``.

    Returns:
        float32 tensor of ``shape``.
    """
    value = uniform(math.prod(shape), seed).reshape(shape) * math.sqrt(INV_UNIFORM_VARIANCE)
    return torch.from_numpy(value.astype(np.float32))


def swin_relative_position_index(window: int) -> torch.Tensor:
    """Index into the relative-position bias table for each (query, key) pair of a ``window`` x ``window`` window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offset = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2 window - 2]
    return offset[0] * (2 * window - 1) + offset[1]


def swin_shift_mask(resolution: int, window: int) -> torch.Tensor:
    """The released shifted-window attention mask, ``(windows, window**2, window**2)``, float32."""
    shift = window // 2
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    regions = torch.zeros(resolution, resolution)
    for label, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        regions[rows, cols] = label
    per_window = resolution // window
    windows = regions.view(per_window, window, per_window, window).transpose(1, 2).reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, SWIN_MASKED)


def released_swin_buffers(state_dict: Dict[str, torch.Tensor], config: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """Adds the released Swin's persistent buffers to its parameters, in the released key order.

    Every window attention has a ``relative_position_index`` after its bias table; every shifted block (odd
    block of a stage whose map is larger than a window) has an ``attn_mask`` before its own parameters.

    Args:
        state_dict: the parameters, in ``named_parameters()`` order.
        config: the reference constructor arguments (``img_size``, ``patch_size``, ``window_size``).

    Returns:
        The state dict as the released model's ``state_dict()`` lists it.
    """
    window, first_map = config["window_size"], config["img_size"] // config["patch_size"]
    items, seen_blocks = [], set()
    for name, value in state_dict.items():
        block = _SWIN_BLOCK.match(name)
        if block and block.group(0) not in seen_blocks:
            seen_blocks.add(block.group(0))
            resolution = first_map >> int(block.group(1))
            if int(block.group(2)) % 2 == 1 and resolution > window:
                items.append((f"{block.group(0)}attn_mask", swin_shift_mask(resolution, window)))
        items.append((name, value))
        if name.endswith(_SWIN_BIAS_TABLE):
            items.append((name.replace(_SWIN_BIAS_TABLE, _SWIN_INDEX), swin_relative_position_index(window)))
    return dict(items)


def reference_state_dict(parameters: Sequence[Tuple[str, Sequence[int]]], weight_seed: int) -> Dict[str, torch.Tensor]:
    """All parameters of a reference model by the portable weight rule, in the listed order."""
    return {name: reference_parameter(name, shape, k, weight_seed) for k, (name, shape) in enumerate(parameters)}


def load_reference(stem: str, directory: Path = REFERENCE_DIR) -> Dict[str, Any]:
    """Loads a portable reference file and regenerates its weights and input.

    Args:
        stem: file name without ``.pt``: ``fsla_n{196,784,3136}``, ``boat_swin_mini`` or ``boat_cswin_mini``.
        directory: where the portable files are.

    Returns:
        The file's entries (``config``, outputs, seeds, ...) plus ``state_dict`` in the released layout
        (buffers included) and ``input``; new tensors on every call, so a test may modify them.
    """
    data = torch.load(directory / f"{stem}.pt", weights_only=True)
    state_dict = reference_state_dict(data["parameters"], data["weight_seed"])
    if "window_size" in data["config"] and "depths" in data["config"]:  # the released Swin layout
        state_dict = released_swin_buffers(state_dict, data["config"])
    return {**data, "state_dict": state_dict, "input": reference_input(data["input_shape"], data["input_seed"])}
