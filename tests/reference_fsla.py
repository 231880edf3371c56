"""A deliberately simple FSLA, one sequence and one group at a time, to check the vectorised fast path.

It follows the documented rule of :mod:`boat_vit.clustering` literally (lists of real tokens, no padding
slots, no masks), so agreement with the fast path also shows that padding never reaches a real token.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F


def reference_levels(num_tokens: int, group_size: int) -> int:
    """Most levels that keep every group at least ``group_size`` tokens (0 when N <= group_size)."""
    levels = 0
    while num_tokens >= group_size * 2 ** (levels + 1):
        levels += 1
    return levels


def reference_groups(
    x: torch.Tensor,
    group_size: int = 49,
    iterations: int = 2,
    temperature: float = 100.0,
    score_gaps: Optional[list] = None,
):
    """Leaf groups of one sequence ``x`` of shape ``(N, D)``: a list of token-index lists, in group order.

    With ``score_gaps`` (a list), appends for every split the smallest relative gap between consecutive sorted
    scores: where it is at rounding level, the order of a split is decided by rounding, not by the rule.
    """
    groups = [list(range(x.shape[0]))]
    for _ in range(reference_levels(x.shape[0], group_size)):
        children = []
        for tokens in groups:
            feats = x[tokens]
            half = math.ceil(len(tokens) / 2)
            centres = F.normalize(torch.stack([feats[:half].mean(0), feats[half:].mean(0)]), dim=-1)
            for _ in range(iterations):
                soft = torch.softmax(F.normalize(feats, dim=-1) @ centres.T * temperature, dim=-1)
                centres = F.normalize(soft.T @ feats, dim=-1)
            cos = F.normalize(feats, dim=-1) @ centres.T
            score = (1 + cos[:, 0]) / (1 + cos[:, 1])
            ordered = torch.sort(score, stable=True)
            if score_gaps is not None and len(tokens) > 1:
                score_gaps.append((ordered.values.diff() / ordered.values[1:]).min().item())
            ranked = [tokens[i] for i in ordered.indices.tolist()]
            children += [ranked[:half], ranked[half:]]
        groups = children
    return groups


def reference_fsla(layer, x: torch.Tensor) -> torch.Tensor:
    """Output of ``layer`` (a FeatureSpaceLocalAttention) for ``x`` ``(B, H, W, C)`` or ``(B, N, C)``."""
    shape = x.shape
    batch, channels = shape[0], shape[-1]
    heads, head_dim = layer.num_heads, layer.head_dim
    tokens = x.reshape(batch, -1, channels)
    qkv = layer.qkv(tokens).view(batch, -1, 3, heads, head_dim)
    out = torch.zeros(batch, tokens.shape[1], heads, head_dim, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            q, k, v = qkv[b, :, 0, h], qkv[b, :, 1, h], qkv[b, :, 2, h]
            groups = reference_groups(q, layer.group_size, layer.iterations, layer.temperature)
            for g, members in enumerate(groups):
                keys = list(members)
                if len(groups) > 1:
                    sibling = groups[g ^ 1]
                    keys += sibling[: layer.overlap] if g % 2 == 0 else sibling[len(sibling) - layer.overlap :]
                weights = torch.softmax(q[members] @ k[keys].T * layer.scale, dim=-1)
                out[b, members, h] = weights @ v[keys]
    out = out.reshape(batch, -1, channels)
    if layer.get_v is not None:
        values = qkv[:, :, 2].reshape(shape).permute(0, 3, 1, 2)
        out = out + layer.get_v(values).permute(0, 2, 3, 1).reshape(out.shape)
    return layer.proj(out).reshape(shape)
