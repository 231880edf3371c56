"""Per-stage arguments and feature indices shared by the BOAT model families."""
from typing import Any, List, Optional, Tuple, Union

from timm.layers import to_ntuple

__all__ = ["per_stage", "stage_indices"]


def per_stage(value: Any, num_stages: int, name: str) -> Tuple[Any, ...]:
    """One value per stage, as timm's ``to_ntuple``, from a scalar or a sequence of ``num_stages`` values.

    Raises:
        ValueError: ``value`` is a sequence of another length.
    """
    values = to_ntuple(num_stages)(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} needs one value per stage ({num_stages}), got {values}")
    return values


def stage_indices(num_stages: int, indices: Optional[Union[int, List[int]]] = None) -> Tuple[List[int], int]:
    """Stages to take features from (``forward_intermediates``): all, the last ``n``, or listed ones.

    Args:
        num_stages: Stages of the model.
        indices: ``None`` for all stages, an int ``n`` for the last ``n``, or stage indices (negative ones
            count from the end).

    Returns:
        The absolute indices, in the given order, and the largest one.

    Raises:
        ValueError: An index or count is out of range.
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"the last {indices} stages are out of range (1 to {num_stages})")
        taken = list(range(num_stages - indices, num_stages))
    else:
        taken = [i + num_stages if i < 0 else i for i in indices]
        if not taken or not all(0 <= i < num_stages for i in taken):
            raise ValueError(f"stage indices {list(indices)} are out of range ({-num_stages} to {num_stages - 1})")
    return taken, max(taken)
