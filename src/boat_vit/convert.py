"""``boat-vit convert IN OUT --model NAME``: a released checkpoint -> a clean safetensors file in our layout.

The input is read safely (:mod:`boat_vit.checkpoint`), converted by the model's ``checkpoint_filter_fn`` and
checked by loading it strictly into the model; the output holds exactly the model's state dict, so
``timm.create_model(NAME, checkpoint_path=OUT)`` loads it.
"""
import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import safetensors.torch
import timm
import torch

from .checkpoint import SAFETENSORS_SUFFIX, CheckpointError, load_state_dict_file, PathLike

__all__ = ["convert_checkpoint", "add_parser"]

_logger = logging.getLogger(__name__)

# modules whose import registers the BOAT models with timm
MODEL_MODULES: tuple[str, ...] = ("boat_vit.models.boat_swin", "boat_vit.models.boat_cswin")
BOAT_MODEL_PATTERN = "boat_*"
KEYS_SHOWN = 5  # mismatching keys quoted in an error
ERROR_STATUS = 2  # as the other boat-vit commands: bad input ends with a one-line message


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    model_name: str,
    key: Optional[str] = None,
    model_args: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Converts a checkpoint file for ``model_name`` into a safetensors file in the model's own layout.

    Args:
        src: The released (or any ``torch.save`` / safetensors) checkpoint.
        dst: The output, ending in ``.safetensors``; written atomically (temporary file, then rename).
        model_name: A timm model name, e.g. ``boat_swin_tiny_patch4_window7_224``.
        key: Checkpoint entry holding the weights (see :func:`boat_vit.checkpoint.select_state_dict`);
            default: EMA weights first, as timm.
        model_args: Extra model arguments (e.g. ``num_classes``) for checkpoints of a non-default config.
        overwrite: Replace an existing ``dst``.

    Returns:
        The metadata written into the file.

    Raises:
        FileNotFoundError: ``src`` is missing.
        FileExistsError: ``dst`` exists and ``overwrite`` is false.
        CheckpointError: unreadable / unsafe input, or weights that do not fit the model.
        ValueError: unknown model or bad output name.
    """
    src, dst = Path(src), Path(dst)
    model_args = dict(model_args or {})
    if dst.suffix != SAFETENSORS_SUFFIX:
        raise ValueError(f"output must end in {SAFETENSORS_SUFFIX} (timm picks the loader by suffix): {dst}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output exists (pass --overwrite to replace it): {dst}")
    for module in MODEL_MODULES:
        importlib.import_module(module)
    if not timm.is_model(model_name):
        raise ValueError(f"unknown model {model_name!r}; BOAT models: {', '.join(timm.list_models(BOAT_MODEL_PATTERN))}")

    state_dict, used_key = load_state_dict_file(src, key)
    model = timm.create_model(model_name, **model_args)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    _load_strictly(model, state_dict, src, model_name)

    metadata = {
        "format": "pt",
        "model": model_name,
        "model_args": json.dumps(model_args, sort_keys=True),
        "source": src.name,
        "source_key": used_key,
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _save_atomic(tensors, dst, metadata)
    _logger.info("Wrote %d tensors for %s to %s", len(tensors), model_name, dst)
    return metadata


def _load_strictly(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], src: Path, model_name: str) -> None:
    """Loads ``state_dict`` into ``model``, raising a short :class:`CheckpointError` on any mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{src} does not fit {model_name} (another size or family? see --model and --model-args): "
            f"{len(missing)} missing keys {missing[:KEYS_SHOWN]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:KEYS_SHOWN]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:KEYS_SHOWN]}"
        )
    model.load_state_dict(state_dict)


def _save_atomic(tensors: dict[str, torch.Tensor], dst: Path, metadata: dict[str, str]) -> None:
    """Writes a safetensors file next to ``dst`` and renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``convert`` sub-command."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a released checkpoint to a safetensors file in boat-vit's layout",
        description=(
            "Reads a released BOAT checkpoint (or a Swin/CSWin/timm one) without running code from it, "
            "converts it to the layout of --model and writes a safetensors file that "
            "timm.create_model(MODEL, checkpoint_path=OUT) loads."
        ),
    )
    parser.add_argument("input", metavar="IN", type=Path, help="checkpoint file to convert")
    parser.add_argument("output", metavar="OUT", type=Path, help="safetensors file to write")
    parser.add_argument("--model", required=True, help="timm model name, e.g. boat_swin_tiny_patch4_window7_224")
    parser.add_argument(
        "--key",
        default=None,
        help="checkpoint entry holding the weights ('model', 'state_dict', 'state_dict_ema', ...; '' for a "
        "plain state dict); default: EMA weights if present",
    )
    parser.add_argument(
        "--model-args",
        type=_json_object,
        default={},
        help='JSON object of extra model arguments, e.g. \'{"num_classes": 10}\'',
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``boat-vit convert``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metadata = convert_checkpoint(
            args.input, args.output, args.model, key=args.key, model_args=args.model_args, overwrite=args.overwrite
        )
    except (OSError, ValueError, TypeError) as err:
        print(f"boat-vit convert: error: {err}", file=sys.stderr)
        return ERROR_STATUS
    source = f"entry {metadata['source_key']!r}" if metadata["source_key"] else "the whole file"
    print(f"wrote {args.output} ({args.model}, weights from {source} of {args.input})")
    return 0
