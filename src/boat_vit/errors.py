"""The errors boat-vit raises for input it cannot use, worded for a Python caller.

A message names the arguments at fault (or the one that changes the outcome) through :class:`Argument`
parts, so a front end can word the same error in its own terms: ``str(error)`` spells them as Python
(``reset_head=True``), ``error.message(spell)`` with any other spelling (the command line names its flags).

Every error is also the built-in exception a caller would expect (:class:`ConfigError` is a ``ValueError``,
:class:`RunDirectoryError` an ``OSError``, ...).
"""
import enum
from dataclasses import dataclass
from typing import Any, Callable, Union

__all__ = [
    "Argument",
    "BoatVitError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "ExportMismatchError",
    "NonFiniteLossError",
    "OutputError",
    "OutputExistsError",
    "RunDirectoryError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "first_line",
    "python_spelling",
]

class _Unset(enum.Enum):
    """The value of an :class:`Argument` named alone (an enum member: it keeps its identity through pickling)."""

    UNSET = enum.auto()


@dataclass(frozen=True)
class Argument:
    """An argument named in a message: ``name`` alone, or ``name`` with the ``value`` to pass."""

    name: str
    value: Any = _Unset.UNSET

    @property
    def has_value(self) -> bool:
        return self.value is not _Unset.UNSET


def python_spelling(argument: Argument) -> str:
    """``name``, or ``name=value`` as a Python call spells it."""
    return f"{argument.name}={argument.value!r}" if argument.has_value else argument.name


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its type's name where it has none)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


MessagePart = Union[str, Argument]


class BoatVitError(Exception):
    """An error of boat-vit whose message is text and :class:`Argument` parts."""

    def __init__(self, *parts: MessagePart):
        self.parts = parts
        super().__init__(self.message())

    def message(self, spell: Callable[[Argument], str] = python_spelling) -> str:
        """The message with every argument spelled by ``spell``."""
        return "".join(spell(part) if isinstance(part, Argument) else str(part) for part in self.parts)

    def __reduce__(self):  # pickles (between processes) as the message with its parts
        return type(self), self.parts


class ConfigError(BoatVitError, ValueError):
    """Arguments that cannot run together, or a value outside what an argument takes."""


class DataError(BoatVitError, ValueError):
    """A data set that cannot be used: missing folders, unreadable or inconsistent samples."""


class CheckpointError(BoatVitError, ValueError):
    """A file that is not a checkpoint, or does not hold what was asked for."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that names code outside the plain data that reading allows."""


class WeightsMismatchError(CheckpointError):
    """Weights that do not fit a model: other shapes, a classifier of another size, or too few of them."""


class DownloadError(BoatVitError, OSError):
    """Weights that could not be downloaded: no network, a dead link, or a file that arrived incomplete."""


class ExportMismatchError(BoatVitError, RuntimeError):
    """An exported model that disagrees with eager PyTorch beyond the tolerances, or fails on a check input."""


class OutputExistsError(BoatVitError, FileExistsError):
    """An output file that exists and is kept: replacing it was not asked for."""


class OutputError(BoatVitError, OSError):
    """An output file that cannot be written: its folder is missing or not writable, or a folder is in its place."""


class RunDirectoryError(BoatVitError, OSError):
    """A run directory that cannot be used: a file, not writable, full, or holding a run not to be replaced."""


class NonFiniteLossError(BoatVitError, RuntimeError):
    """The loss or an evaluation became NaN or infinite; the last good checkpoint is left untouched."""
