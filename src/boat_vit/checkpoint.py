"""Deprecated: the old home of checkpoint reading, writing and loading. Use :mod:`boat_vit.files` (reading
checkpoints safely, writing files atomically) and :mod:`boat_vit.weights` (weights into models).

Every name of this module still works and warns once where it is used.
"""
import warnings
from typing import Any, Optional

from . import files, weights

_MOVED = {
    "atomic_write": files.atomic_write,
    "save_safetensors": files.save_safetensors,
    "load_checkpoint_file": files.read_checkpoint,
    "TEMPORARY_SUFFIX": files.TEMPORARY_SUFFIX,
    "STATE_DICT_KEYS": weights.STATE_DICT_KEYS,
    "WeightsReport": weights.WeightsReport,
    "select_state_dict": weights.select_state_dict,
    "load_state_dict_file": weights.read_state_dict,
    "fill_missing_from_model": weights.fill_missing_from_model,
}


def _load_weights(model: Any, path: Any, key: Optional[str] = None, reset_head: bool = False,
                  allow_partial: bool = False) -> weights.WeightsReport:
    from .models import weights_filter

    return weights.load_weights(model, path, weights_filter(model), key=key, reset_head=reset_head,
                                allow_partial=allow_partial)


def _convert_checkpoint(src: Any, dst: Any, model: Any, key: Optional[str] = None, overwrite: bool = False,
                        metadata: Optional[dict] = None) -> dict:
    from .models import weights_filter

    return weights.convert_checkpoint(src, dst, model, weights_filter(model), key=key, overwrite=overwrite,
                                      metadata=metadata)


_MOVED.update(load_weights=_load_weights, convert_checkpoint=_convert_checkpoint)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"boat_vit.checkpoint.{name} is deprecated; use boat_vit.files or boat_vit.weights",
                  DeprecationWarning, stacklevel=2)
    return _MOVED[name]
