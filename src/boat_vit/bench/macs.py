"""Multiply-accumulates of a forward pass, counted by ``torch.utils.flop_counter`` (FLOPs / 2).

PyTorch's CPU fused attention kernel is counted like its CUDA kernels (two matrix products), which the
counter does not do by itself.
"""
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs"]


def _cpu_fused_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu``: ``q @ k^T`` and ``weights @ v``."""
    *lead, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    rows = 1
    for size in lead:
        rows *= size
    return 2 * rows * queries * keys * (head_dim + value_dim)


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_fused_attention_flops}


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``model`` on ``example`` (no gradient)."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops() // 2
