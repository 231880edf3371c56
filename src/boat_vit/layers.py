"""Feature-space local attention (FSLA): attention inside content-based token groups."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clustering import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_ITERATIONS,
    DEFAULT_TEMPERATURE,
    Clustering,
    GroupPlan,
    balanced_clustering,
    sibling_overlap_slots,
)

__all__ = ["FeatureSpaceLocalAttention"]

DEFAULT_OVERLAP = 20  # sibling tokens borrowed as extra keys/values at group size 49
VALUE_CONV_KERNEL = 3


class FeatureSpaceLocalAttention(nn.Module):
    """Multi-head attention inside balanced content clusters (BOAT's FSLA).

    Per image and head, the queries are clustered into equal groups (:mod:`boat_vit.clustering`); each
    token attends to the tokens of its group plus ``overlap`` boundary tokens of the sibling group. A 3x3
    depthwise convolution over the values laid out as an image is added to the attention output (the
    layer's only positional signal), then the output projection.

    Inputs are ``(B, H, W, C)`` token maps or, with ``value_conv=False``, ``(B, N, C)`` sequences. The
    output has the input's shape. An image's output never depends on the other images of the batch.

    Args:
        dim: Channels ``C``.
        num_heads: Attention heads; must divide ``dim``.
        group_size: Target tokens per cluster.
        overlap: Sibling tokens borrowed as extra keys/values; ``< group_size``.
        qkv_bias: Bias of the qkv projection.
        qk_scale: Attention logit scale; ``None`` means ``head_dim ** -0.5``.
        attn_drop: Dropout on attention weights.
        proj_drop: Dropout after the output projection.
        value_conv: Add the depthwise convolution of the values (needs 2-D token maps).
        iterations: Centre refinements per clustering split.
        temperature: Soft-assignment sharpness of the clustering.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        value_conv: bool = True,
        iterations: int = DEFAULT_ITERATIONS,
        temperature: float = DEFAULT_TEMPERATURE,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2, got {group_size}")
        if not 0 <= overlap < group_size:
            raise ValueError(f"overlap must be in [0, group_size={group_size}), got {overlap}")
        factory = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.group_size = group_size
        self.overlap = overlap
        self.scale = self.head_dim**-0.5 if qk_scale is None else float(qk_scale)
        self.iterations = iterations
        self.temperature = temperature
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **factory)
        self.attn_drop = attn_drop
        self.get_v = (
            nn.Conv2d(dim, dim, VALUE_CONV_KERNEL, padding=VALUE_CONV_KERNEL // 2, groups=dim, **factory)
            if value_conv
            else None
        )
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, group_size={self.group_size}, "
            f"overlap={self.overlap}, scale={self.scale:.4g}"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        expected = "(B, H, W, C)" if self.get_v is not None else "(B, N, C) or (B, H, W, C)"
        ndims = (4,) if self.get_v is not None else (3, 4)
        if x.ndim not in ndims or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expected input {expected} with C={self.dim}, got shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0 or x[0].numel() == 0:
            raise ValueError(f"{type(self).__name__} got an empty input of shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, clustering: Optional[Clustering] = None) -> torch.Tensor:
        """Applies FSLA.

        Args:
            x: ``(B, H, W, C)`` token map, or ``(B, N, C)`` without the value convolution.
            clustering: Precomputed clustering of the ``B * num_heads`` query sequences; computed when
                ``None``.
        """
        out, _ = self.forward_with_clusters(x, clustering)
        return out

    def forward_with_clusters(
        self, x: torch.Tensor, clustering: Optional[Clustering] = None
    ) -> tuple[torch.Tensor, Clustering]:
        """Like :meth:`forward`, also returning the clustering used (sequence ``b * num_heads + h``)."""
        self._check_input(x)
        shape = x.shape
        batch, channels = shape[0], shape[-1]
        tokens = x.reshape(batch, -1, channels)
        num_tokens = tokens.shape[1]
        heads, head_dim = self.num_heads, self.head_dim

        # q, k and v as separate (B, N, C) planes: rows (b, token, head) of head_dim features each, and v is
        # directly the channels-last image of the value convolution
        q, k, v = (F.linear(tokens, w, b) for w, b in zip(*self._qkv_parts()))
        num_seq = batch * heads
        if clustering is None:
            clustering = balanced_clustering(
                q.view(batch, num_tokens, heads, head_dim).transpose(1, 2),
                self.group_size,
                self.iterations,
                self.temperature,
            )
        plan = clustering.plan
        device = x.device

        # Row of (b, token, head) in a plane; padding slots point at a real row (queries dropped, keys masked).
        seq = torch.arange(num_seq, device=device)
        token = clustering.order.clamp(max=num_tokens - 1)
        q_rows = ((seq // heads)[:, None] * num_tokens + token) * heads + (seq % heads)[:, None]
        key_slots, mask = self._key_layout(plan, device)
        k_rows = q_rows.index_select(1, key_slots.flatten()).flatten()
        group_shape = (num_seq, plan.num_groups, -1, head_dim)
        values = v
        q, k, v = (
            plane.view(-1, head_dim).index_select(0, index).view(group_shape)
            for plane, index in ((q, q_rows.flatten()), (k, k_rows), (v, k_rows))
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )

        # Back to token order: row (b, token, head) of the output is slot inverse[b * heads + head, token].
        out_rows = (seq[:, None] * plan.num_slots + clustering.inverse).view(batch, heads, num_tokens)
        out = out.reshape(-1, head_dim).index_select(0, out_rows.transpose(1, 2).flatten())
        out = out.view(batch, num_tokens, channels)
        if self.get_v is not None:
            # (B, C, H, W) view of channels-last values, the fast layout for a depthwise convolution
            lepe = self.get_v(values.view(shape).permute(0, 3, 1, 2))
            out = out.add_(lepe.permute(0, 2, 3, 1).reshape(out.shape))
        out = self.proj_drop(self.proj(out))
        return out.reshape(shape), clustering

    def _key_layout(self, plan: GroupPlan, device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Key slots of every group (its own slots, then the sibling overlap) and the mask of real keys.

        Returns:
            ``(groups, keys)`` slot indices, and ``None`` without padding or else a boolean
            ``(groups, 1, keys)`` mask that is False at padding slots.
        """
        own = torch.arange(plan.num_slots, device=device).view(plan.num_groups, plan.group_size)
        overlap = sibling_overlap_slots(plan, self.overlap if plan.num_levels else 0, device)
        key_slots = torch.cat([own, overlap], dim=1)
        if not plan.num_padding:
            return key_slots, None
        position = torch.arange(key_slots.shape[1], device=device)[None, :]
        real = plan.real_counts(plan.num_levels, device)[:, None]
        return key_slots, ((position < real) | (position >= plan.group_size))[:, None, :]

    def _qkv_parts(self) -> tuple[tuple[torch.Tensor, ...], tuple[Optional[torch.Tensor], ...]]:
        """Weights and biases of the q, k and v projections (row blocks of ``qkv``)."""
        weights = self.qkv.weight.chunk(3)
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        return weights, biases
