"""Command-line options that several commands share, and argument types with one-line errors."""
import argparse
import json
import sys
from typing import Any, Callable

from ..engine import AMP_DTYPES, RunOptions, default_device
from ..errors import Argument

__all__ = [
    "add_amp_arguments",
    "add_device_argument",
    "add_run_arguments",
    "add_threads_argument",
    "DeprecatedSpelling",
    "USAGE_ERROR",
    "flag_spelling",
    "json_object",
    "non_negative_int",
    "options_of",
    "positive_float",
    "positive_int",
]


COMMAND_KEYS = ("func", "prog", "flags")  # what the parser adds besides the options


class DeprecatedSpelling(argparse.Action):
    """An old spelling of an option: stores the value under the new option's name and warns on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use --{self.dest.replace('_', '-')}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def flag_spelling(args: argparse.Namespace) -> Callable[[Argument], str]:
    """How a command spells an argument named in a library error: its flag (``--reset-head``), with the value
    where it is not a switch (``--resume RUN``).

    A command names the flags whose Python argument has another name in ``set_defaults(flags={...})``.
    """
    flags = getattr(args, "flags", {})

    def spell(argument: Argument) -> str:
        flag = flags.get(argument.name, f"--{argument.name.replace('_', '-')}")
        if not argument.has_value or argument.value is True:
            return flag
        return f"{flag} {argument.value}"

    return spell


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options of a command, without the parser's own entries."""
    return {k: v for k, v in vars(args).items() if k not in COMMAND_KEYS}


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (``{...}``) from the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"embed_dim\": 48}}', got {text!r}")
    return value


def _bounded_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = _bounded_int(1)
non_negative_int = _bounded_int(0)
USAGE_ERROR = 2  # exit status of bad input, as argparse's


def positive_float(text: str) -> float:
    """A number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads`` (default: the cores this process may use, less its data workers)."""
    parser.add_argument("--threads", type=positive_int, help="intra-op CPU threads (default: the cores this process "
                                                              "may use, by affinity and cgroup quota, less its data "
                                                              "workers; OMP_NUM_THREADS also sets it)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: cuda where available, else cpu)."""
    parser.add_argument("--device", help=f"cpu, cuda or cuda:N (default {default_device()}); torchrun processes use "
                                         "cuda:LOCAL_RANK")


def add_amp_arguments(parser: argparse.ArgumentParser) -> None:
    """``--amp`` and ``--amp-dtype``."""
    parser.add_argument("--amp", action="store_true", default=None,
                        help="mixed precision: bfloat16 on CPU, float16 (with a grad scaler in training) on CUDA")
    parser.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), help="override the mixed-precision dtype")


def add_run_arguments(parser: argparse.ArgumentParser, defaults: RunOptions) -> None:
    """The :class:`~boat_vit.engine.RunOptions` of every training command."""
    add_amp_arguments(parser)
    add_device_argument(parser)
    add = parser.add_argument
    add("--seed", type=int, help=f"seed of weights, data order and augmentation (default {defaults.seed})")
    add("--workers", type=non_negative_int, help=f"data loading processes per training process (default "
                                                f"{defaults.workers})")
    add_threads_argument(parser)
    add("--resume", help="continue a run from its run directory or a last.pth checkpoint, with the options it "
                         "started with (only run options such as --workers, --threads, --device may change)")
    add("--overwrite", action="store_true", default=None, help="start afresh in an --output folder that holds a "
                                                               "run (its files are replaced as the new run writes)")
    add("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
