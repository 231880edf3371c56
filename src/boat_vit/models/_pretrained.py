"""Pretrained weights by download: ``pretrained=True`` through timm's download-and-cache path.

The families' pretrained configs name the released checkpoints by URL with ``custom_load``
(:func:`~boat_vit.models._metadata.released_weights`). On ``pretrained=True`` timm downloads the file into its
cache (``download_cached_file``: ``$TORCH_HOME/hub/checkpoints``, or ``cache_dir``) and hands it to the
model's ``load_pretrained``, which reads it with boat-vit's safe reader (no pickled code runs; EMA weights
first, as timm picks them) and passes the state dict on to timm's own ``load_pretrained``: the family's
filter, a new classifier where ``num_classes`` differs from the weights' (kept as the model initialised it),
the first convolution adapted to ``in_chans``, a strict load unless ``pretrained_strict=False``.

Before timm's path runs, the family's entrypoint fetches the file through the same timm function, with a
progress bar, so that a failed download is one line naming the URL and the way round it
(:class:`~boat_vit.errors.DownloadError`) and a file that arrived incomplete (or is no weights file at all)
leaves the cache; timm then finds the file in its cache. :func:`download_pretrained` gives that file by
model name (the command line's ``--pretrained``).
"""
import http.client
import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional, Sequence, Union
from urllib.parse import urlparse

import torch.nn as nn
from timm.models import build_model_with_cfg, get_pretrained_cfg, load_pretrained, resolve_pretrained_cfg
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import download_cached_file, get_cache_dir

from ..errors import Argument, CheckpointError, ConfigError, DownloadError
from ..files import PathLike, read_checkpoint
from ..weights import FilterFn, checked_filter, read_state_dict

__all__ = ["LOCAL_COPY", "build_boat_model", "download_pretrained", "load_pretrained_file"]

_logger = logging.getLogger(__name__)

UrlSpec = Union[str, Sequence[str]]  # timm's pretrained-config url: a URL, or (URL, file name in the cache)


class _LocalCopy(str):
    """The value that loads a downloaded copy instead: ``dict(file=PATH)`` in a Python message (its repr),
    ``PATH`` after a command-line flag (its text)."""

    def __repr__(self) -> str:
        return f"dict(file={self})"


# What a message offers instead of a download: ``pretrained_cfg_overlay=dict(file=PATH)`` (a command names its
# weights-file flag for ``pretrained_cfg_overlay``).
LOCAL_COPY = Argument("pretrained_cfg_overlay", _LocalCopy("PATH"))

# timm hands a downloaded file to ``model.load_pretrained(path)`` alone; the entrypoint's ``pretrained_strict``
# reaches the model's loader through this variable, set while the entrypoint builds the model.
_PRETRAINED_STRICT: ContextVar[bool] = ContextVar("pretrained_strict", default=True)


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _cache_path(url: UrlSpec, cache_dir: Optional[PathLike]) -> tuple[str, Path]:
    """The URL and the file timm's ``download_cached_file`` keeps it in."""
    if isinstance(url, str):
        return url, Path(cache_dir or get_cache_dir()) / Path(urlparse(url).path).name
    url, name = url
    return url, Path(cache_dir or get_cache_dir()) / name


def _fetch(url: UrlSpec, model_name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """The cached file of ``url``, downloaded (with a progress bar) through timm's cache on first use.

    Raises:
        DownloadError: the download failed, or what arrived is not a readable weights file (then removed).
    """
    link, cached = _cache_path(url, cache_dir)
    if cached.is_file():
        return cached
    try:  # torch.hub's download: a temporary file in the cache folder, renamed when complete, removed on failure
        download_cached_file(url, check_hash=True, progress=True, cache_dir=cache_dir)
    except (OSError, http.client.HTTPException, ValueError, RuntimeError) as error:  # RuntimeError: hash mismatch
        raise DownloadError(f"cannot download the weights of {model_name} from {link} ({_one_line(error)}); "
                            "download the file by hand and pass ", LOCAL_COPY) from error
    try:  # a response cut short still ends "successfully": only reading the file tells
        read_checkpoint(cached)
    except CheckpointError as error:
        cached.unlink(missing_ok=True)
        raise DownloadError(f"the download of the weights of {model_name} from {link} is not a whole weights file "
                            f"({_one_line(error)}) and was removed from the cache; try again, or download the file "
                            "by hand and pass ", LOCAL_COPY) from error
    return cached


def download_pretrained(name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """The weights file of model ``name``'s pretrained config (``model`` or ``model.tag``), downloaded into
    timm's cache on first use, as ``timm.create_model(name, pretrained=True)`` downloads it.

    Raises:
        ConfigError: the pretrained config names no URL to download.
        DownloadError: the download failed.
    """
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as error:  # a tag the model does not have
        raise ConfigError(f"{name}: {_one_line(error)}") from None
    if cfg is None or not cfg.url:
        on_hub = cfg is not None and cfg.hf_hub_id
        hub = f" (its weights are on the Hugging Face Hub, {cfg.hf_hub_id})" if on_hub else ""
        raise ConfigError(f"{name} has no weights to download: its pretrained config names no URL{hub}; pass ",
                          LOCAL_COPY)
    return _fetch(cfg.url, cfg.architecture or name, cache_dir)


def build_boat_model(model_cls: type, variant: str, pretrained: bool, filter_fn: FilterFn, **kwargs: Any) -> nn.Module:
    """``timm.models.build_model_with_cfg`` for a BOAT family, with its weights fetched first where
    ``pretrained`` downloads them.

    Args:
        model_cls: The family's model class (it has ``load_pretrained``).
        variant: The entrypoint's name.
        pretrained: Load pretrained weights (timm's argument).
        filter_fn: The family's checkpoint filter; wrapped with :func:`~boat_vit.weights.checked_filter`.
        **kwargs: The entrypoint's arguments for ``build_model_with_cfg`` and the model.
    """
    strict = kwargs.get("pretrained_strict", True)
    if pretrained:
        overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
        if overlay.get("url"):  # another URL (a mirror): read by the family's loader too, whatever layout it has
            overlay.setdefault("custom_load", True)
        kwargs["pretrained_cfg_overlay"] = overlay
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay).to_dict()
        if cfg["custom_load"] and _resolve_pretrained_source(cfg)[0] == "url":
            _fetch(cfg["url"], variant, kwargs.get("cache_dir"))
    token = _PRETRAINED_STRICT.set(strict)
    try:
        return build_model_with_cfg(model_cls, variant, pretrained,
                                    pretrained_filter_fn=checked_filter(filter_fn, not strict), **kwargs)
    finally:
        _PRETRAINED_STRICT.reset(token)


def load_pretrained_file(model: nn.Module, path: PathLike, filter_fn: FilterFn) -> None:
    """Loads a pretrained weights file into ``model`` the way timm loads pretrained weights: the families'
    ``load_pretrained`` (timm's custom-load hook).

    The file is read safely (:func:`~boat_vit.weights.read_state_dict`: EMA weights first); then timm's
    ``load_pretrained`` filters it (``filter_fn`` with the half-of-the-weights rule), starts a classifier
    afresh where ``model.num_classes`` differs from the pretrained config's, adapts the first convolution to
    ``model.in_chans`` and loads strictly (unless the entrypoint had ``pretrained_strict=False``).
    """
    state_dict, entry = read_state_dict(path)
    strict = _PRETRAINED_STRICT.get()
    cfg = dict(model.pretrained_cfg, state_dict=state_dict, source=None)  # timm's path for a state dict in hand
    load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                    filter_fn=checked_filter(filter_fn, not strict), strict=strict)
    _logger.info("Loaded pretrained weights from %s%s", path, f" (entry {entry!r})" if entry else "")
