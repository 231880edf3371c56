"""Balanced hierarchical clustering of token sequences: the grouping behind feature-space local attention.

Every sequence (in BOAT: one image and one attention head) is split into ``2**L`` groups of equal size by
``L`` levels of balanced two-way splits. One split of a group:

1. two centres: the means of the first and of the second half of the group's current token order,
   L2-normalised (at the first level the current order is the raster order);
2. ``iterations`` refinements: cosine similarity of every token to both centres, soft assignment
   ``softmax(temperature * cos)``, new centre = soft-weighted sum of the raw tokens, L2-normalised;
3. score ``(1 + cos0) / (1 + cos1)``, ascending sort; the first half becomes child A, the second child B.

Token counts (the rule for any ``N >= 1``, see :func:`plan_groups`):

* ``N <= group_size``: one group holding every token (plain attention, no sibling, no overlap).
* otherwise ``L = floor(log2(N / group_size))``, the most levels that keep groups at least
  ``group_size`` tokens, and groups of ``ceil(N / 2**L)`` slots. The ``P = slots * 2**L - N < 2**L``
  missing slots are padding. Each split gives child A ``ceil(r / 2)`` of the group's ``r`` real tokens
  (the lowest scores) and child B the rest, so real counts of the leaf groups differ by at most one and
  each leaf holds at most one padding slot. Padding never enters a centre, and every group keeps its real
  tokens first and its padding last.
* ``N = group_size * 2**L`` has no padding and reproduces the released BOAT code exactly.

Controls for ablations: :func:`random_balanced_clustering` keeps this layout (plan, group sizes, padding)
but assigns tokens to slots at random; :func:`norm_balanced_clustering` keeps it and fills the groups in
order of feature norm (one number per token instead of its direction); :func:`single_group_clustering`
puts all tokens in one group.

No gradient flows through the clustering. Half-precision inputs are clustered in float32, float64 stays
float64, under autocast too (it is switched off inside the clustering; TorchScript code cannot switch it
off, so a scripted model called under autocast clusters in half precision). Every operation is batched over
sequences and groups; Python loops run over levels and refinement iterations only, plus, on CPU, over
cache-sized blocks of whole sequences (decided by shapes alone; results do not depend on it).

Compilers and exporters: the module compiles with ``torch.jit.script`` (TorchScript), and traces with
``torch.compile``, ``torch.export`` and the ONNX exporter. The group layout is Python arithmetic on the token
count, so traced graphs are specialised to a token count (a dynamic batch is fine). Scripted, compiled and
exported code splits all sequences at once (no cache-sized blocks); exported code sorts row-wise, which
export targets express (ONNX TopK) and which breaks exact ties differently (:func:`_sort_within_groups`).
"""
import math
from collections.abc import Iterator
from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "GroupPlan",
    "Clustering",
    "plan_groups",
    "balanced_clustering",
    "format_shape",
    "random_balanced_clustering",
    "norm_balanced_clustering",
    "single_group_clustering",
    "sibling_overlap_slots",
]

DEFAULT_GROUP_SIZE = 49
DEFAULT_ITERATIONS = 2
DEFAULT_TEMPERATURE = 100.0
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize
# Most (sequence, slot) rows split at a time: with D = 32, 32k-64k rows run fastest on a 2-core CPU with a
# 32 MB L3 (fewer leave operations single-threaded, more spill the cache)
_CHUNK_ROWS = 1 << 16


class GroupPlan:
    """How ``num_tokens`` tokens are laid out in ``2**num_levels`` groups of ``group_size`` slots.

    A plain class, not a dataclass: TorchScript compiles neither frozen dataclasses nor dataclasses that it
    first meets in a type annotation.
    """

    def __init__(self, num_tokens: int, num_levels: int, group_size: int) -> None:
        self.num_tokens = num_tokens
        self.num_levels = num_levels
        self.group_size = group_size

    def __repr__(self) -> str:
        return f"GroupPlan(num_tokens={self.num_tokens}, num_levels={self.num_levels}, group_size={self.group_size})"

    @property
    def num_groups(self) -> int:
        return 1 << self.num_levels

    @property
    def num_slots(self) -> int:
        """Tokens plus padding: ``group_size * num_groups``."""
        return self.group_size * self.num_groups

    @property
    def num_padding(self) -> int:
        return self.num_slots - self.num_tokens

    def real_counts(self, level: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """Real (non-padding) tokens in each of the ``2**level`` groups of a level, shape ``(2**level,)``."""
        counts = torch.tensor([self.num_tokens], device=device)
        for _ in range(level):
            counts = torch.stack([(counts + 1) // 2, counts // 2], dim=-1).flatten()
        return counts


class Clustering:
    """Result of :func:`balanced_clustering` for ``S`` sequences of ``N`` tokens (leading dims flattened).

    A plain class for TorchScript, as :class:`GroupPlan`.

    Attributes:
        plan: The group layout.
        order: ``(S, num_slots)`` token index of every slot, grouped: slots ``[g * group_size, (g + 1) *
            group_size)`` form group ``g``. Padding slots hold indices ``>= N``.
        inverse: ``(S, N)`` slot of every token, so ``order.gather(1, inverse) == arange(N)``.
    """

    def __init__(self, plan: GroupPlan, order: torch.Tensor, inverse: torch.Tensor) -> None:
        self.plan = plan
        self.order = order
        self.inverse = inverse

    @property
    def groups(self) -> torch.Tensor:
        """``(S, num_groups, group_size)`` token indices per group (padding ``>= N``)."""
        return self.order.view(self.order.shape[0], self.plan.num_groups, self.plan.group_size)


def plan_groups(num_tokens: int, group_size: int = DEFAULT_GROUP_SIZE) -> GroupPlan:
    """Chooses levels and group size for ``num_tokens`` tokens and a target group size (module docstring)."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if num_tokens <= group_size:
        return GroupPlan(num_tokens, 0, num_tokens)
    num_levels = 0
    while group_size << (num_levels + 1) <= num_tokens:
        num_levels += 1
    return GroupPlan(num_tokens, num_levels, -(-num_tokens // (1 << num_levels)))


def _split_slots(plan: GroupPlan, level: int, device: torch.device) -> torch.Tensor:
    """Per group of ``level``: the current slot of each child slot, ``(2**level, n)``.

    A sorted group holds its ``r`` real tokens first, padding last. Child A takes the first ``ceil(r/2)``
    real tokens and fills up with padding; child B takes the remaining real tokens and padding.
    """
    n = plan.num_slots >> level
    half = n // 2
    real = plan.real_counts(level, device)[:, None]
    real_a = (real + 1) // 2
    pad_a = half - real_a
    slot = torch.arange(n, device=device)[None, :]
    pos_b = slot - half  # position inside child B
    child_a = torch.where(slot < real_a, slot, real + slot - real_a)
    child_b = torch.where(pos_b < real - real_a, real_a + pos_b, real + pad_a + pos_b - (real - real_a))
    return torch.where(slot < half, child_a, child_b)


def _sort_within_groups(score: torch.Tensor) -> torch.Tensor:
    """Ascending sort of every row of non-negative ``score``; returns flat row-major indices ``(G, n)``.

    float32 rows are sorted in one flat pass over 64-bit keys ``(row << 32) | bits(score)``: the bits of a
    non-negative float32 order like its value, and one flat integer sort beats many small float sorts on
    CPU. Other dtypes, and scripted code (TorchScript has no dtype view), use a stable row-wise sort: the same
    order. While exporting (ONNX, ``torch.export``) it is a plain row-wise sort, which export targets can
    express (TopK); it differs only in how exact ties are broken.
    """
    num_rows, n = score.shape
    if not torch.jit.is_scripting():  # TorchScript compiles neither branch
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            return score.sort(dim=-1).indices + torch.arange(0, num_rows * n, n, device=score.device)[:, None]
        if score.dtype == torch.float32:
            row_keys = torch.arange(0, num_rows << 32, 1 << 32, device=score.device)[:, None]
            keys = row_keys + score.contiguous().view(torch.int32)  # bits < 2**31, so + is |
            return keys.flatten().sort(stable=True).indices.view(num_rows, n)
    return score.sort(dim=-1, stable=True).indices + torch.arange(0, num_rows * n, n, device=score.device)[:, None]


def balanced_clustering(
    x: torch.Tensor,
    group_size: int = DEFAULT_GROUP_SIZE,
    iterations: int = DEFAULT_ITERATIONS,
    temperature: float = DEFAULT_TEMPERATURE,
) -> Clustering:
    """Groups the tokens of every sequence into equal-size groups by content (module docstring).

    Args:
        x: ``(*, N, D)`` features; every index of the leading dimensions is an independent sequence, and
            ``S`` below is their product (e.g. ``(B, heads, N, D)`` gives ``S = B * heads``).
        group_size: Target tokens per group (49 in BOAT).
        iterations: Centre refinements per split.
        temperature: Sharpness of the soft assignment.

    Returns:
        The group layout, the grouped token order and its inverse.
    """
    if x.ndim < 2 or x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(
            f"expected (*, tokens, features) with tokens, features >= 1, got shape {format_shape(x.shape)}"
        )
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    device = x.device
    if not torch.jit.is_scripting():  # scripted code cannot leave an eager autocast region (module docstring)
        if _autocast_enabled(device.type):  # its matmuls would run the splits in half precision
            with torch.autocast(device.type, enabled=False):
                return balanced_clustering(x, group_size, iterations, temperature)
    num_tokens, dim = x.shape[-2], x.shape[-1]
    num_seq = x.numel() // (num_tokens * dim)
    plan = plan_groups(num_tokens, group_size)
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        if not plan.num_levels or not num_seq:
            order = torch.arange(plan.num_slots, device=device).repeat(num_seq, 1)
        else:
            # On CPU, chunks of whole sequences, each split through all levels before the next, so that a
            # chunk's rows stay in cache across the passes of a level; the row buffers serve every chunk.
            if torch.jit.is_scripting():
                parts = [x.detach()]
            else:
                parts = list(_sequence_chunks(x.detach(), _sequences_per_chunk(num_seq, plan.num_slots, device)))
            sizes = [part.numel() // (num_tokens * dim) for part in parts]
            work = torch.empty(max(sizes), plan.num_slots, dim, dtype=work_dtype, device=device)
            # a second row buffer for the gathers between levels (one level needs none: work stands in)
            spare = torch.empty_like(work) if plan.num_levels > 1 else work
            orders: List[torch.Tensor] = []
            for part, size in zip(parts, sizes):
                rows = work[:size]
                slots = rows.view(list(part.shape[:-2]) + [plan.num_slots, dim])
                slots[..., :num_tokens, :].copy_(part)
                slots[..., num_tokens:, :].zero_()  # padding rows
                orders.append(_split_levels(rows, plan, iterations, temperature, spare))
            order = torch.cat(orders)
        slot = torch.arange(plan.num_slots, device=device).expand(num_seq, -1)
        inverse = torch.empty_like(order).scatter_(1, order, slot)[:, :num_tokens]
    return Clustering(plan, order, inverse)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for devices without autocast, such as ``meta``)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def format_shape(shape: List[int]) -> str:
    """``(2, 3, 4)``-style text of a shape, the same eager and scripted (TorchScript shapes are lists)."""
    return "(" + ", ".join([str(size) for size in shape]) + ("," if len(shape) == 1 else "") + ")"


def _sequences_per_chunk(num_seq: int, num_slots: int, device: torch.device) -> int:
    """How many sequences to split together.

    All of them on accelerators and while compiling or exporting (one graph; scripted code too); on CPU about
    ``_CHUNK_ROWS`` rows' worth, which keeps a chunk in cache.
    """
    if device.type != "cpu" or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return num_seq
    return max(1, _CHUNK_ROWS // num_slots)


def _sequence_chunks(x: torch.Tensor, max_sequences: int) -> Iterator[torch.Tensor]:
    """Splits the sequences of ``x`` ``(*, N, D)`` into consecutive views of similar size.

    Each view holds at most ``max_sequences`` sequences, or one where a single sequence is more.
    """
    if x.ndim == 2 or math.prod(x.shape[:-2]) <= max_sequences:
        yield x
        return
    per_slice = math.prod(x.shape[1:-2])
    if per_slice > max_sequences:  # one index of the first dimension is already too much: split it further
        for index in range(x.shape[0]):
            yield from _sequence_chunks(x[index], max_sequences)
        return
    num_chunks = -(-x.shape[0] // (max_sequences // per_slice))
    size = -(-x.shape[0] // num_chunks)
    for start in range(0, x.shape[0], size):
        yield x[start : start + size]


def _split_levels(
    work: torch.Tensor,
    plan: GroupPlan,
    iterations: int,
    temperature: float,
    spare: torch.Tensor,
    eps: float = _NORM_EPS,
) -> torch.Tensor:
    """All levels of splits for a chunk of sequences (module docstring); returns their ``(S, num_slots)`` order.

    Args:
        work: ``(S, num_slots, D)`` features, padding rows zero; overwritten.
        plan: The group layout.
        iterations: Centre refinements per split.
        temperature: Sharpness of the soft assignment.
        spare: Gather target of at least ``work``'s size, used in turn with ``work`` (read only with more than
            one level).
        eps: Floor of the token norms (an argument, not a global: TorchScript reads no global numbers).
    """
    num_seq, dim = work.shape[0], work.shape[-1]
    device = work.device
    work = work.view(-1, dim)
    inv_norm = torch.linalg.vector_norm(work, dim=-1).clamp_min(eps).reciprocal()  # cosine = dot * inv_norm
    spare = spare.view(-1, dim)[: work.shape[0]]
    tiny = _smallest_normal(work.dtype)
    order = torch.arange(plan.num_slots, device=device).repeat(num_seq)
    for level in range(plan.num_levels):
        n = plan.num_slots >> level
        groups = work.view(-1, n, dim)
        is_padding: Optional[torch.Tensor] = None
        if plan.num_padding:
            real = plan.real_counts(level, device).repeat(num_seq)[:, None]
            slot = torch.arange(n, device=device)[None, :]
            is_padding = slot >= real
            in_first = slot < (real + 1) // 2
            halves = torch.stack([in_first, ~in_first], dim=1).to(work.dtype)  # padding rows are 0
            half_sums = halves.bmm(groups)
        else:
            half_sums = groups.view(-1, 2, n // 2, dim).sum(dim=2)
        total = half_sums.sum(dim=1)
        centres = F.normalize(half_sums, dim=-1)  # the means of both halves, normalised
        inv_norm_groups = inv_norm.view(-1, 1, n)
        for _ in range(iterations):
            # softmax over the two centres is a sigmoid of the scaled cosine difference
            direction = (centres[:, :1] - centres[:, 1:]) * temperature
            weight_first = torch.matmul(direction, groups.transpose(1, 2)).mul_(inv_norm_groups).sigmoid_()
            sum_first = weight_first.bmm(groups)[:, 0]
            centres = F.normalize(torch.stack([sum_first, total - sum_first], dim=1), dim=-1)
        cos = torch.matmul(centres, groups.transpose(1, 2)).mul_(inv_norm_groups)
        # (1 + cos0) / (1 + cos1), kept positive and finite so that padding (inf) sorts last
        shifted = cos.add_(1).clamp_min_(tiny)
        score = shifted[:, 0] / shifted[:, 1]
        if is_padding is not None:
            score = score.masked_fill(is_padding, float("inf"))
        rows = _sort_within_groups(score)
        if plan.num_padding:
            split = _split_slots(plan, level, device)
            rows = rows.view(num_seq, -1, n).gather(2, split.expand(num_seq, -1, -1))
        rows = rows.flatten()
        order = order.index_select(0, rows)
        if level + 1 < plan.num_levels:
            work, spare = torch.index_select(work, 0, rows, out=spare), work
            inv_norm = inv_norm.index_select(0, rows)
    return order.view(num_seq, -1)


def _smallest_normal(dtype: torch.dtype) -> float:
    """``torch.finfo(dtype).tiny`` of the working dtypes, written out: TorchScript has no ``finfo``."""
    return 2.2250738585072014e-308 if dtype == torch.float64 else 1.1754943508222875e-38


def random_balanced_clustering(
    num_seq: int,
    num_tokens: int,
    group_size: int = DEFAULT_GROUP_SIZE,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Clustering:
    """Random groups with the layout of :func:`balanced_clustering`: a control without content.

    Same plan (:func:`plan_groups`), same real-token count per group, padding in the same slots; only the
    assignment of tokens to slots is a uniformly random permutation, drawn independently per sequence.

    Args:
        num_seq: Sequences ``S``.
        num_tokens: Tokens ``N`` per sequence.
        group_size: Target tokens per group.
        generator: Source of randomness (drawn on its own device, then moved); ``None``: torch's default
            generator of ``device``.
        device: Device of the result.
    """
    plan = plan_groups(num_tokens, group_size)
    draw_device = generator.device if generator is not None else device
    with torch.no_grad():
        tokens = torch.rand(num_seq, num_tokens, generator=generator, device=draw_device).argsort(dim=1).to(device)
    return _clustering_in_order(plan, tokens)


def norm_balanced_clustering(x: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> Clustering:
    """Groups ranked by feature norm, with the layout of :func:`balanced_clustering`: a one-number control.

    Every sequence's tokens are sorted by their L2 norm (ascending, ties in token order) and cut into the
    plan's groups in that order, so each group is a band of norms: on an image of strokes on a plain
    background this separates ink from background and nothing else. The sibling overlap then joins
    neighbouring bands.

    Args:
        x: ``(*, N, D)`` features (leading dimensions are sequences, as in :func:`balanced_clustering`).
        group_size: Target tokens per group.
    """
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ValueError(f"expected (*, tokens, features) with tokens >= 1, got shape {format_shape(x.shape)}")
    num_tokens = x.shape[-2]
    with torch.no_grad():
        norms = x.detach().reshape(-1, num_tokens, x.shape[-1]).float().norm(dim=-1)
        tokens = norms.argsort(dim=1, stable=True)
    return _clustering_in_order(plan_groups(num_tokens, group_size), tokens)


def _clustering_in_order(plan: GroupPlan, tokens: torch.Tensor) -> Clustering:
    """The clustering that fills the real slots of ``plan``'s groups with ``tokens`` (``(S, N)``) in order."""
    num_seq, num_tokens = tokens.shape
    device = tokens.device
    with torch.no_grad():
        slot = torch.arange(plan.group_size, device=device)
        is_real = (slot[None, :] < plan.real_counts(plan.num_levels, device)[:, None]).flatten()
        order = torch.empty(num_seq, plan.num_slots, dtype=torch.long, device=device)
        order[:, is_real] = tokens
        order[:, ~is_real] = torch.arange(num_tokens, plan.num_slots, device=device)
        inverse = torch.empty_like(order).scatter_(1, order, torch.arange(plan.num_slots, device=device).expand_as(order))
    return Clustering(plan, order, inverse[:, :num_tokens])


def single_group_clustering(num_seq: int, num_tokens: int, device: Optional[torch.device] = None) -> Clustering:
    """One group holding all tokens in token order: attention over the whole sequence (global attention)."""
    order = torch.arange(num_tokens, device=device).expand(num_seq, -1)
    return Clustering(GroupPlan(num_tokens, 0, num_tokens), order, order)


def sibling_overlap_slots(plan: GroupPlan, overlap: int, device: torch.device | None = None) -> torch.Tensor:
    """Slots (into one sequence's ``num_slots``) of the extra keys each group borrows from its sibling.

    Groups ``2j`` (child A) and ``2j + 1`` (child B) are siblings of the last split. A borrows B's first
    ``overlap`` tokens (lowest scores of B, nearest the split), B borrows A's last ``overlap`` real tokens.
    With one group there is no sibling and the result has no columns.

    Returns:
        ``(num_groups, overlap)`` slot indices, or ``(1, 0)`` for a single group.
    """
    if plan.num_levels == 0:
        return torch.zeros(1, 0, dtype=torch.long, device=device)
    real = plan.real_counts(plan.num_levels, device)[:, None]
    start = torch.arange(plan.num_groups, device=device)[:, None] * plan.group_size
    offset = torch.arange(overlap, device=device)[None, :]
    is_a = (torch.arange(plan.num_groups, device=device) % 2 == 0)[:, None]
    sibling = torch.where(is_a, start + plan.group_size, start - plan.group_size)
    sibling_real = torch.where(is_a, real.roll(-1, 0), real.roll(1, 0))
    return torch.where(is_a, sibling + offset, sibling + sibling_real - overlap + offset)
