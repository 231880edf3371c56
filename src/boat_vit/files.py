"""Files: reading checkpoints safely and writing any file atomically. Every file boat-vit reads as a
checkpoint or writes goes through here.

Reading. The released checkpoints are pickles that hold more than tensors: the BOAT-Swin ones are
``{'model': state_dict, 'config': <yacs CfgNode>, 'optimizer': ..., ...}``, the BOAT-CSWin ones are timm
``CheckpointSaver`` files ``{'state_dict': ..., 'state_dict_ema': ..., 'args': <argparse.Namespace>, ...}``.
They are read with ``torch.load(weights_only=True)``, which never imports or runs code named in a pickle:
besides tensors and plain containers it accepts only the classes allowlisted here, read as plain data.

* ``yacs.config.CfgNode`` (a ``dict`` subclass) becomes a :class:`collections.OrderedDict`; yacs is never
  imported.
* ``argparse.Namespace`` stays a Namespace (a plain attribute bag; timm's own loader allows it too).

Importing this module registers both with :func:`torch.serialization.add_safe_globals`, so timm's loaders
(``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` and
``checkpoint_path=PATH``) read the released files as they are. Any other class or function in a pickle
(``os.system``, ``yacs.config.load_cfg``, a training script's class, ...) is refused with
:class:`~boat_vit.errors.UnsafeCheckpointError`.

Writing. :func:`atomic_write` fills a temporary file created exclusively in the target's folder (never
through a planted link), flushes it to disk and renames it over the target: a reader sees the old file or
the new one, never half of one. New files get the permissions of the process's umask. :func:`check_output`
says before any work whether a file may be written: its folder exists and takes files, and nothing is in
its place unless replacing it was asked for (a symbolic link counts: it is replaced, never followed). :func:`atomic_folder`
and :func:`check_output_folder` do the same for a folder of files.
"""
import argparse
import json
import os
import pickle
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import safetensors.torch
import torch

from .errors import (
    Argument,
    CheckpointError,
    MessagePart,
    OutputError,
    OutputExistsError,
    UnsafeCheckpointError,
    first_line,
)

__all__ = [
    "SAFETENSORS_SUFFIX",
    "TEMPORARY_SUFFIX",
    "atomic_folder",
    "atomic_write",
    "check_output",
    "check_output_folder",
    "read_checkpoint",
    "save_safetensors",
    "save_torch",
    "write_json",
    "write_text",
]

SAFETENSORS_SUFFIX = ".safetensors"
NOT_A_CHECKPOINT = "not a torch.save or safetensors file, or a damaged one"
TEMPORARY_SUFFIX = ".tmp"  # of the files atomic_write renames into place
NEW_FILE_MODE = 0o666  # before the umask, as open() creates files
WRITE_CHECK_PREFIX = ".write-check."  # of the empty file check_output creates and removes
NEW_FOLDER_MODE = 0o777  # before the umask, as mkdir() creates folders
YACS_CFG_NODE = "yacs.config.CfgNode"

PathLike = Union[str, os.PathLike]


class _PlainConfigNode:
    """Stand-in for ``yacs.config.CfgNode`` in pickles: every node is created as a plain ``OrderedDict``.

    The weights-only unpickler creates a pickled object as ``cls.__new__(cls)`` and then fills in its items
    and attributes; returning an ``OrderedDict`` keeps all of it plain data.
    """

    def __new__(cls, *args: Any) -> OrderedDict:
        return OrderedDict()


SAFE_GLOBALS: list[Any] = [argparse.Namespace, (_PlainConfigNode, YACS_CFG_NODE)]


def _allow_safe_globals() -> None:
    """(Re-)registers :data:`SAFE_GLOBALS`.

    Done before every read: a ``torch.serialization.safe_globals([...])`` context (timm's loader uses one
    for ``argparse.Namespace``) removes its globals on exit even where they were registered before.
    """
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


_allow_safe_globals()


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Reads a ``torch.save`` or safetensors file without running any code from it.

    Args:
        path: The file. ``.safetensors`` files are read with safetensors, anything else with
            ``torch.load(weights_only=True)`` and the plain-data stand-ins of this module.
        map_location: Where to put the tensors.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the pickle names a class or function outside the allowed plain data.
        CheckpointError: the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return safetensors.torch.load_file(path, device=str(map_location))
        except Exception as err:  # safetensors raises its own error types for a bad header or truncated data
            raise CheckpointError(f"cannot read {path} as a safetensors file: {first_line(err)}") from err
    _allow_safe_globals()
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path) or _refused_global(err)
        if names:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle needs {', '.join(sorted(names))}, which is neither a "
                "tensor nor plain data; checkpoint loading never imports or runs code named in a file"
            ) from err
        detail = _unpickler_detail(err)
        raise CheckpointError(f"cannot read {path} as a checkpoint: {NOT_A_CHECKPOINT} ({detail})") from err
    except Exception as err:  # bad magic number, truncated zip, pickle opcodes that make no sense (IndexError, ...)
        raise CheckpointError(f"cannot read {path} as a checkpoint: {NOT_A_CHECKPOINT} "
                              f"({type(err).__name__}: {first_line(err)})") from err


def _unpickler_detail(error: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to read the file unsafely."""
    lines = [line.strip() for line in str(error).splitlines()]
    return next((line.rstrip(".") for line in lines if "GLOBAL" in line or line.startswith("Unsupported")),
                "an object it cannot read as data")


def _refused_global(error: BaseException) -> list[str]:
    """The global named by the unpickler's refusal (a legacy-format file), if it names one."""
    for line in str(error).splitlines():
        words = line.split()
        if "GLOBAL" in words and words.index("GLOBAL") + 1 < len(words):
            return [words[words.index("GLOBAL") + 1].rstrip(".")]
    return []


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of a zip-format ``torch.save`` file that reading refuses (empty if it cannot tell)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, pickle.UnpicklingError):
        return []


class _WriteErrorRecorder:
    """A file wrapper that remembers the operating-system error of a failed write.

    ``torch.save`` reports a failed write (a full disk) as a ``RuntimeError`` without the cause; the
    recorded ``OSError`` names it (``errno.ENOSPC``).
    """

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Writes ``path`` all at once: a reader sees the old file or the new one, never half of one.

    ``write(file)`` fills a temporary file created exclusively (never through a planted link) in the same
    folder, with the permissions the umask gives a new file; the file is flushed to disk and renamed over
    ``path``. On any error the temporary file is removed.

    Returns:
        ``path``.

    Raises:
        OSError: the file cannot be written (``errno.ENOSPC`` for a full disk, also where the writer
            reported it otherwise); the error names ``path``, never the temporary file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        os.fchmod(fd, NEW_FILE_MODE & ~_umask())
        with os.fdopen(fd, mode) as file:
            recorder = _WriteErrorRecorder(file)
            try:
                write(recorder)
            except Exception as error:
                if recorder.error is not None and recorder.error is not error:
                    raise recorder.error from None
                raise
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_folder(path: PathLike, fill: Callable[[Path], None]) -> Path:
    """Writes the folder ``path`` all at once: a reader sees the old folder or the new one, never half of one.

    ``fill(folder)`` fills a temporary folder created exclusively next to ``path``, with the permissions the
    umask gives a new folder; its files are flushed to disk and the folder is renamed to ``path``. Whatever
    was at ``path`` is replaced: renamed aside first, removed once the new folder is in place. On any error
    the temporary folder is removed and ``path`` is left as it was.

    Returns:
        ``path``.

    Raises:
        OSError: the folder cannot be written; the error names ``path``, never the temporary folder.
    """
    path = Path(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX))
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    aside = tmp.with_name(f"{tmp.name}.old")
    try:
        os.chmod(tmp, NEW_FOLDER_MODE & ~_umask())
        fill(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if os.path.lexists(path):
            os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except OSError:
            if os.path.lexists(aside):
                os.rename(aside, path)
            raise
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    elif os.path.lexists(aside):
        aside.unlink()
    return path


def save_torch(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def save_safetensors(tensors: dict[str, torch.Tensor], path: PathLike,
                     metadata: Optional[dict[str, str]] = None) -> Path:
    """A safetensors file of ``tensors`` (contiguous CPU copies) through :func:`atomic_write`."""
    data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, lambda file: file.write(data))


def write_text(path: PathLike, text: str) -> Path:
    """``text`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda file: file.write(text), mode="w")


def write_json(path: PathLike, value: Any) -> Path:
    """``value`` as indented JSON (other values as their ``str``) through :func:`atomic_write`."""
    return write_text(path, json.dumps(value, indent=2, default=str))


def _named(path: Path, argument: Optional[str]) -> Sequence[MessagePart]:
    """How a message names an output: the argument that gave it with its value, or the path alone."""
    return (Argument(argument, str(path)),) if argument else (str(path),)


def _check_folder_takes_entries(folder: Path, named: Sequence[MessagePart]) -> None:
    """Raises :class:`~boat_vit.errors.OutputError` unless ``folder`` exists and a new entry can be made in it."""
    if not folder.is_dir():
        raise OutputError(*named, f": the folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=WRITE_CHECK_PREFIX, suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise OutputError(*named, f": cannot write to {folder}: {error.strerror or error}") from None
    os.close(fd)
    os.unlink(probe)


def check_output(path: PathLike, overwrite: bool = False, argument: Optional[str] = None) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file may be written there: to check before the work.

    Its folder must exist and take new files, no folder may be in its place and, unless ``overwrite``,
    nothing at all (a symbolic link counts, followed or not: :func:`atomic_write` replaces the link itself).

    Args:
        path: The file to write.
        overwrite: An existing file may be replaced.
        argument: The argument that gave ``path``, named in messages (``None``: the path alone).

    Raises:
        OutputExistsError: something is at ``path`` and ``overwrite`` is false.
        OutputError: the folder is missing or cannot be written, or ``path`` is a folder.
    """
    path = Path(path)
    named = _named(path, argument)
    if path.is_dir() and not path.is_symlink():
        raise OutputError(*named, " is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(*named, " exists; pass ", Argument("overwrite", True), " to replace it")
    _check_folder_takes_entries(path.parent, named)
    return path


def check_output_folder(path: PathLike, overwrite: bool = False, argument: Optional[str] = None) -> Path:
    """``path`` as a :class:`~pathlib.Path` if :func:`atomic_folder` may write a folder there: to check before
    the work.

    Its parent folder must exist and take new entries, no file may be in its place and, unless ``overwrite``,
    nothing at all (a symbolic link counts: :func:`atomic_folder` replaces the link itself, never what it
    points to).

    Args:
        path: The folder to write.
        overwrite: An existing folder (or link) may be replaced.
        argument: The argument that gave ``path``, named in messages (``None``: the path alone).

    Raises:
        OutputExistsError: something is at ``path`` and ``overwrite`` is false.
        OutputError: the parent folder is missing or cannot be written, or ``path`` is a file.
    """
    path = Path(path)
    named = _named(path, argument)
    if path.is_file() and not path.is_symlink():
        raise OutputError(*named, " is a file; give a folder name")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(*named, " exists; pass ", Argument("overwrite", True), " to replace it")
    _check_folder_takes_entries(path.parent, named)
    return path
