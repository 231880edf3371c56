"""The options every training run shares, their checks, and continuing a run with the options it started with."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import Argument, ConfigError
from ..models import check_architecture_arguments
from .distributed import default_device
from .run_checkpoint import RunCheckpoint

__all__ = [
    "AT_LEAST_ONE",
    "NOT_NEGATIVE",
    "POSITIVE",
    "PROBABILITY",
    "RUN_OPTIONS",
    "RUN_OPTION_BOUNDS",
    "Bounds",
    "RunOptions",
    "check_bounds",
    "given_options",
    "merge_resumed",
    "preset_options",
    "resumed_config",
]


@dataclass
class RunOptions:
    """Options every training task shares: where and how it runs, and its seed."""

    amp: bool = False
    amp_dtype: Optional[str] = None  # default: bfloat16 on CPU, float16 on CUDA
    device: str = default_device()
    seed: int = 0
    workers: int = 2
    threads: Optional[int] = None  # intra-op threads; default: engine.threads.default_threads
    resume: Optional[str] = None  # a run directory or its last.pth: continue that run
    overwrite: bool = False  # replace a run already in the output folder
    progress: bool = True


# Options that may differ when a run continues: where and how it runs, not what it computes.
RUN_OPTIONS = ("resume", "overwrite", "output", "device", "workers", "threads", "progress")


@dataclass(frozen=True)
class Bounds:
    """The values an option may take: ``low`` and ``high`` (``None``: unbounded), each included unless open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below and not (isinstance(value, float) and math.isnan(value))

    def __str__(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)


AT_LEAST_ONE = Bounds(1)
NOT_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
PROBABILITY = Bounds(0, 1)
RUN_OPTION_BOUNDS = dict(workers=NOT_NEGATIVE, threads=AT_LEAST_ONE)


def check_bounds(config: Any, bounds: Mapping[str, Bounds]) -> None:
    """Raises a :class:`ConfigError` naming the first option of ``config`` (a dataclass) outside its ``bounds``."""
    for name, allowed in bounds.items():
        values = getattr(config, name)
        for value in values if isinstance(values, (tuple, list)) else (values,):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not allowed.admits(value):
                raise ConfigError(Argument(name), f" must be {allowed}, got {values!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def merge_resumed(saved: Mapping[str, Any], explicit: Mapping[str, Any], source: str,
                  fields: Sequence[str]) -> dict[str, Any]:
    """The options of a resumed run: those it was started with, the run options of ``explicit`` on top.

    A run continues exactly only with the options it started with, so an explicit option other than a
    :data:`RUN_OPTIONS` one must equal the saved value.

    Args:
        saved: The options stored in the run's checkpoint.
        explicit: The options given now (``None`` values are not given).
        source: The checkpoint, for messages.
        fields: The option names of the configuration.

    Raises:
        ConfigError: an option differs from the saved run's.
    """
    changed = [k for k, v in explicit.items()
               if v is not None and k not in RUN_OPTIONS and not _same(v, saved.get(k))]
    if changed:
        parts: list = [Argument("resume", source), " continues a run with its own options; these differ: "]
        for number, name in enumerate(changed):
            parts += ["; " if number else "", Argument(name, explicit[name]), f" (the run has {saved.get(name)!r})"]
        raise ConfigError(*parts, " (drop them, or start a new run)")
    merged = {k: v for k, v in saved.items() if k in fields}
    merged.update({k: v for k, v in explicit.items() if v is not None and k in RUN_OPTIONS})
    return merged


def given_options(config_class: type, overrides: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The options of ``overrides`` that are given (not ``None``), all of them fields of ``config_class``.

    Raises:
        ConfigError: an option ``config_class`` does not have (``what``: the kind of options, for the message).
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(values) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ConfigError(f"unknown {what}: {sorted(unknown)}")
    return values


def preset_options(presets: Mapping[str, Mapping[str, Any]], name: Optional[str]) -> dict[str, Any]:
    """The options of the preset ``name`` of ``presets`` (none for ``None``).

    Raises:
        ConfigError: ``name`` is not one of ``presets``.
    """
    if name is None:
        return {}
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    return dict(presets[name])


def resumed_config(config_class: type, values: Mapping[str, Any], task: str,
                   resumed: Optional[RunCheckpoint] = None, model_kwargs: Optional[str] = None) -> Any:
    """The configuration (``config_class``, a dataclass with ``check()``) of the ``task`` run resumed from
    ``values["resume"]``: the options it started with, with the run options of ``values`` (:func:`merge_resumed`).

    An explicit option that would change what the run computes is an error; run options
    (:data:`RUN_OPTIONS`: where and how it runs) apply.

    Args:
        config_class: The task's configuration.
        values: The options given.
        task: The kind of run.
        resumed: The run's checkpoint where the caller has read it already (read here otherwise).
        model_kwargs: The option holding the model's keyword arguments: read from a file, they may only set
            the architecture (:func:`~boat_vit.models.check_architecture_arguments`).

    Raises:
        ConfigError: the options given are out of range, or differ from the run's.
        CheckpointError: not a checkpoint of a ``task`` run that can be continued.
        ValueError: the run's model keyword arguments set more than the architecture.
    """
    config_class(**values).check()  # the options given, before they meet the run's
    checkpoint = resumed if resumed is not None else RunCheckpoint.read(values["resume"], task=task)
    checkpoint.check_continuable()
    fields = [f.name for f in dataclasses.fields(config_class)]
    config = config_class(**merge_resumed(checkpoint.config, values, values["resume"], fields))
    config.check()
    if model_kwargs is not None:
        setattr(config, model_kwargs, check_architecture_arguments(getattr(config, model_kwargs), values["resume"]))
    return config
