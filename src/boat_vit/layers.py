"""Feature-space local attention (FSLA): attention inside content-based token groups, and a public way to
record the groups a model used (:func:`record_clusters`)."""
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .clustering import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_ITERATIONS,
    DEFAULT_TEMPERATURE,
    Clustering,
    GroupPlan,
    balanced_clustering,
    format_shape,
    norm_balanced_clustering,
    random_balanced_clustering,
    sibling_overlap_slots,
    single_group_clustering,
)

__all__ = [
    "GROUPINGS",
    "ClusterRecord",
    "FeatureSpaceLocalAttention",
    "find_fsla_layers",
    "record_clusters",
    "recording_clusters",
    "select_fsla_layer",
]

DEFAULT_OVERLAP = 20  # sibling tokens borrowed as extra keys/values at group size 49
VALUE_CONV_KERNEL = 3
# How FSLA forms its groups: by content (BOAT), at random with the same layout, one group of all tokens, or by
# query norm with the same layout ("ink vs background")
GROUPINGS = ("content", "random", "global", "norm")
DEFAULT_RANDOM_SEED = 0  # seed of the random groups in eval mode
_FSLA_NAME = re.compile(r"(?:^|\.)(\d+)\.blocks\.(\d+)\.")  # stage and block in a module name


@register_notrace_module  # FX: the group layout is Python control flow on the token count
class FeatureSpaceLocalAttention(nn.Module):
    """Multi-head attention inside balanced content clusters (BOAT's FSLA).

    Per image and head, the queries are clustered into equal groups (:mod:`boat_vit.clustering`); each
    token attends to the tokens of its group plus ``overlap`` boundary tokens of the sibling group. A 3x3
    depthwise convolution over the values laid out as an image is added to the attention output (the
    layer's only positional signal), then the output projection.

    Inputs are ``(B, H, W, C)`` token maps or, with ``value_conv=False``, ``(B, N, C)`` sequences. The
    output has the input's shape. An image's output never depends on the other images of the batch.

    The layer scripts with ``torch.jit.script`` and exports (``torch.export``, ONNX) for a fixed token count;
    ``torch.fx`` tracing keeps it whole, as a leaf module registered with timm (``register_notrace_module``).

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
        grouping: ``'content'`` (BOAT: balanced clustering of the queries). Ablation controls:
            ``'random'``: the same group layout and overlap with tokens assigned to groups at random (no
            content); in training mode drawn afresh per call and per image and head from torch's default
            generator (seeded runs are reproducible), in eval mode one fixed draw per head from
            ``random_seed``, shared by all images, so evaluation is deterministic and batch-independent.
            ``'global'``: one group of all tokens, i.e. global attention with the same projections and
            value convolution. ``'norm'``: the same group layout and overlap, per image and head the
            queries ranked by their norm and cut into groups in that order (content reduced to one
            number per token: ink vs background; :func:`~boat_vit.clustering.norm_balanced_clustering`).
        random_seed: Seed of the eval-mode random groups.
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
        grouping: str = "content",
        random_seed: int = DEFAULT_RANDOM_SEED,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
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
        self.grouping = grouping
        self.random_seed = random_seed
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
            + ("" if self.grouping == "content" else f", grouping={self.grouping}")
        )

    def _check_input(self, x: torch.Tensor) -> None:
        expected = "(B, H, W, C)" if self.get_v is not None else "(B, N, C) or (B, H, W, C)"
        ndims = (4,) if self.get_v is not None else (3, 4)
        if x.ndim not in ndims or x.shape[-1] != self.dim:
            raise ValueError(
                f"FeatureSpaceLocalAttention expected input {expected} with C={self.dim}, "
                f"got shape {format_shape(x.shape)}"
            )
        if x.shape[0] == 0 or x[0].numel() == 0:
            raise ValueError(f"FeatureSpaceLocalAttention got an empty input of shape {format_shape(x.shape)}")

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
    ) -> Tuple[torch.Tensor, Clustering]:
        """Like :meth:`forward`, also returning the clustering used (sequence ``b * num_heads + h``)."""
        self._check_input(x)
        shape = x.shape
        batch, channels = shape[0], shape[-1]
        tokens = x.reshape(batch, -1, channels)
        num_tokens = tokens.shape[1]
        heads, head_dim = self.num_heads, self.head_dim

        # One projection; rows (b, token, part, head) of head_dim features with part 0/1/2 for q/k/v
        qkv = self.qkv(tokens)
        num_seq = batch * heads
        if clustering is None and (self.grouping == "random" or self.grouping == "global"):
            clustering = self._content_free_groups(batch, num_tokens, x.device)
        if clustering is None:
            queries = qkv.view(batch, num_tokens, 3, heads, head_dim)[:, :, 0].transpose(1, 2)
            if self.grouping == "norm":
                clustering = self._norm_groups(queries)
            else:
                clustering = balanced_clustering(queries, self.group_size, self.iterations, self.temperature)
        plan = clustering.plan

        lepe: Optional[torch.Tensor] = None
        if self.get_v is not None:  # depthwise convolution of the values as a (B, C, H, W) view
            lepe = self.get_v(qkv[..., 2 * channels :].reshape(shape).permute(0, 3, 1, 2))

        # Gather q, k and v of every sequence into slot order; padding slots repeat a real row (their queries
        # are dropped, their keys masked).
        seq = torch.arange(num_seq, device=x.device)
        token = clustering.order.clamp(max=num_tokens - 1)
        q_rows = (((seq // heads)[:, None] * num_tokens + token) * 3 * heads + (seq % heads)[:, None]).flatten()
        rows = qkv.view(-1, head_dim)
        q = rows.index_select(0, q_rows)
        k = rows.index_select(0, q_rows + heads)
        v = rows.index_select(0, q_rows + 2 * heads)
        if not torch.jit.is_scripting():  # TorchScript frees tensors after their last use by itself
            qkv = rows = None  # released before the attention (peak memory)
        q, k, v, mask = self._sibling_windows(q, k, v, plan)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        if not torch.jit.is_scripting():
            q = k = v = None  # released before the way back

        # Back to token order: row (b, token, head) of the output is slot inverse[b * heads + head, token].
        out_rows = (seq[:, None] * plan.num_slots + clustering.inverse).view(batch, heads, num_tokens)
        out = out.reshape(-1, head_dim).index_select(0, out_rows.transpose(1, 2).flatten())
        out = out.view(batch, num_tokens, channels)
        if lepe is not None:
            out = out.add_(lepe.permute(0, 2, 3, 1).reshape(out.shape))
        out = self.proj_drop(self.proj(out))
        return out.reshape(shape), clustering

    @torch.jit.unused  # the ablation controls run eagerly only
    def _content_free_groups(self, batch: int, num_tokens: int, device: torch.device) -> Clustering:
        """The ablation groupings ``'random'`` and ``'global'`` (class docstring), sequence ``b * heads + h``."""
        if self.grouping == "global":
            return single_group_clustering(batch * self.num_heads, num_tokens, device)
        if self.training:
            return random_balanced_clustering(batch * self.num_heads, num_tokens, self.group_size, device=device)
        generator = torch.Generator().manual_seed(self.random_seed)
        per_head = random_balanced_clustering(self.num_heads, num_tokens, self.group_size, generator, device)
        return Clustering(per_head.plan, per_head.order.repeat(batch, 1), per_head.inverse.repeat(batch, 1))

    @torch.jit.unused  # the ablation controls run eagerly only
    def _norm_groups(self, queries: torch.Tensor) -> Clustering:
        """The ablation grouping ``'norm'`` (class docstring) of ``(B, heads, N, head_dim)`` queries."""
        return norm_balanced_clustering(queries, self.group_size)

    def _sibling_windows(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: GroupPlan
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Arranges slot-order rows for attention without copying keys and values.

        A group's keys are its own slots plus the sibling overlap (:func:`sibling_overlap_slots`). In a
        sibling pair (A, B) these are contiguous slot ranges: A's own slots then B's first ``overlap``, and
        A's last ``overlap`` real slots then B's own. So keys and values are overlapping windows (``unfold``)
        of the pair's slots; with padding the windows are one slot longer and a mask drops the extras.

        Args:
            q, k, v: ``(S * num_slots, head_dim)`` rows in slot order.
            plan: The group layout.

        Returns:
            ``q`` as ``(pairs, 2, group_size, head_dim)``, ``k`` and ``v`` as ``(pairs, 2, window, head_dim)``
            views, and ``None`` or a boolean ``(pairs, 2, 1, window)`` mask of the keys to attend to.
        """
        size, head_dim = plan.group_size, q.shape[-1]
        if not plan.num_levels:  # a single group: plain attention, no sibling
            return q.view(-1, 1, size, head_dim), k.view(-1, 1, size, head_dim), v.view(-1, 1, size, head_dim), None
        window = size + self.overlap + (1 if plan.num_padding else 0)
        step = 2 * size - window
        q = q.view(-1, 2, size, head_dim)
        k = k.view(-1, 2 * size, head_dim).unfold(1, window, step).transpose(-1, -2)
        v = v.view(-1, 2 * size, head_dim).unfold(1, window, step).transpose(-1, -2)
        if not plan.num_padding:
            return q, k, v, None
        # keys wanted by each group, as positions in its pair's 2 * size slots
        device = q.device
        group = torch.arange(plan.num_groups, device=device)[:, None]
        pair_start = (group // 2) * 2 * size
        own = torch.arange(size, device=device)[None, :]
        wanted = torch.zeros(plan.num_groups, 2 * size, dtype=torch.bool, device=device)
        own_real = own < plan.real_counts(plan.num_levels, device)[:, None]
        wanted.scatter_(1, (group % 2) * size + own, own_real)
        wanted.scatter_(1, sibling_overlap_slots(plan, self.overlap, device) - pair_start, True)
        position = (group % 2) * step + torch.arange(window, device=device)[None, :]
        mask = wanted.gather(1, position).view(1, -1, 2, 1, window)
        num_pairs = q.shape[0]
        return q, k, v, mask.expand(num_pairs // mask.shape[1], -1, -1, -1, -1).reshape(num_pairs, 2, 1, window)


# ---- recording the groups a model used ---------------------------------------------------------------
# recording_clusters replaces a layer's ``forward`` (an instance attribute, inside the ``with`` block only) by
# a function that calls the layer's own forward_with_clusters with the same arguments, keeps the Clustering it
# returns and passes the output on: the layer computes everything once, the model's output is unchanged, and
# the recorded groups are exactly the groups the layer used.


@dataclass(frozen=True)
class ClusterRecord:
    """The clustering one FSLA layer used in one forward pass.

    Attributes:
        layer: Module name of the layer in the model.
        clustering: What the layer returned: sequence ``b * num_heads + h`` is image ``b``, head ``h``.
        token_map: ``(H, W)`` of the layer's input; token ``i`` is the patch at ``divmod(i, W)``.
        num_heads: Heads of the layer.
        overlap: Sibling tokens each group borrows as extra keys and values.
    """

    layer: str
    clustering: Clustering
    token_map: tuple[int, int]
    num_heads: int
    overlap: int

    @property
    def num_tokens(self) -> int:
        return self.token_map[0] * self.token_map[1]

    def _sequence(self, head: int, image: int) -> int:
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        return image * self.num_heads + head

    def group_map(self, head: int, image: int = 0) -> torch.Tensor:
        """``(H, W)`` group index of every patch."""
        slots = self.clustering.inverse[self._sequence(head, image)]
        return (slots // self.clustering.plan.group_size).view(self.token_map)

    def attended(self, head: int, row: int, col: int, image: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """What patch ``(row, col)`` attends to: ``(H, W)`` masks of its group and of the sibling overlap."""
        height, width = self.token_map
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"patch ({row}, {col}) is outside the {height}x{width} token map of {self.layer}")
        sequence = self._sequence(head, image)
        plan, order = self.clustering.plan, self.clustering.order[sequence]
        group = int(self.group_map(head, image)[row, col])
        overlap_slots = sibling_overlap_slots(plan, self.overlap, order.device)[group]
        masks = []
        for tokens in (self.clustering.groups[sequence, group], order[overlap_slots]):
            mask = torch.zeros(self.num_tokens + plan.num_padding, dtype=torch.bool, device=order.device)
            mask[tokens] = True
            masks.append(mask[: self.num_tokens].view(self.token_map))  # padding slots point past the tokens
        return masks[0], masks[1]


@contextmanager
def recording_clusters(module: FeatureSpaceLocalAttention, name: str = "") -> Iterator[list[ClusterRecord]]:
    """Records the clustering of every call of FSLA layer ``module`` inside the block (exactly what it used).

    Yields:
        The list the records are appended to, one per call.
    """
    if not isinstance(module, FeatureSpaceLocalAttention):
        raise ValueError(f"{name or type(module).__name__} is not a FeatureSpaceLocalAttention layer")
    records: list[ClusterRecord] = []

    def forward(x: torch.Tensor, clustering: Optional[Clustering] = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{name} got a token sequence {tuple(x.shape)}; the patch layout needs (B, H, W, C)")
        out, used = module.forward_with_clusters(x, clustering)
        records.append(ClusterRecord(name, used, (x.shape[1], x.shape[2]), module.num_heads, module.overlap))
        return out

    module.forward = forward
    try:
        yield records
    finally:
        del module.forward


def find_fsla_layers(model: nn.Module) -> dict[tuple[int, int], str]:
    """``{(stage, block): module name}`` of every FSLA layer, from names like ``layers.0.blocks.1.fsla``."""
    layers = {}
    for name, module in model.named_modules():
        match = _FSLA_NAME.search(name)
        if isinstance(module, FeatureSpaceLocalAttention) and match:
            layers[int(match.group(1)), int(match.group(2))] = name
    return dict(sorted(layers.items()))


def select_fsla_layer(model: nn.Module, stage: Optional[int] = None, block: Optional[int] = None) -> str:
    """Name of the FSLA layer of ``stage`` / ``block``; by default the first stage's first FSLA block."""
    layers = find_fsla_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no FeatureSpaceLocalAttention layer")
    stage = next(iter(layers))[0] if stage is None else stage
    in_stage = [b for s, b in layers if s == stage]
    block = (in_stage[0] if in_stage else -1) if block is None else block
    if (stage, block) not in layers:
        available = ", ".join(f"--stage {s} --block {b}" for s, b in layers)
        raise ValueError(f"no FSLA layer at stage {stage} block {block}; this model has: {available}")
    return layers[stage, block]


@torch.inference_mode()
def record_clusters(model: nn.Module, images: torch.Tensor, layer: str) -> tuple[ClusterRecord, torch.Tensor]:
    """Runs ``model`` once on ``images``; returns the clustering of FSLA layer ``layer`` and the output."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"the model has no module {layer!r}")
    with recording_clusters(modules[layer], layer) as records:
        output = model(images)
    if len(records) != 1:
        raise ValueError(f"{layer} ran {len(records)} times in one forward pass; expected once")
    return records[0], output
