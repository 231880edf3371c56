"""The ``boat-vit`` command line (also ``python -m boat_vit`` and ``torchrun -m boat_vit``).

The top of the package: every command is a thin shell over importable functions, and nothing in the
package imports this one. Commands are grouped by task: :mod:`.classification` (train, eval, predict),
:mod:`.segmentation` (seg-train, seg-eval, seg-predict), :mod:`.detection` (det-train, det-eval,
det-predict) and :mod:`.tools` (convert, export, bench, show-clusters).

Bad input never ends in a traceback: it is one line, ``boat-vit COMMAND: error: ...`` naming the option,
file or value at fault, and exit status 2.
"""
import argparse
import sys
import warnings
from typing import NoReturn, Optional, Sequence, Union

from .._startup import COMMAND, INTERRUPTED, quiet_interrupt

with quiet_interrupt():  # the commands import torch, timm, smp: seconds in which Ctrl-C must be quiet too
    from ..engine import NonFiniteLossError
    from ..errors import BoatVitError
    from . import classification, detection, segmentation, tools
    from .options import USAGE_ERROR, flag_spelling

__all__ = ["USAGE_ERROR", "build_parser", "main"]

# What a command raises for bad input or a run that cannot go on; anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, NonFiniteLossError)
# torch's notes on idioms of timm's position-table resampling (weights of another window size, a resized Swin):
# they concern timm, and would come before a command's one line
TIMM_RESAMPLING_WARNINGS = ("Using a non-tuple sequence for multidimensional indexing",
                            "There were extra data copy when converting non-contiguous tensor")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``PROG: error: MESSAGE (see PROG --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``boat-vit`` parser with every sub-command."""
    parser = OneLineParser(prog="boat-vit", description="BOAT vision transformers: models, weights, training and "
                                                        "tools.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for group in (classification, segmentation, detection, tools):
        group.add_parsers(subparsers)
    for command in subparsers.choices.values():
        command.set_defaults(prog=command.prog)  # errors name the command
    return parser


def _one_line(error: Union[BaseException, str]) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``boat-vit`` with ``argv`` (default: the process arguments); returns the exit status.

    Bad input (missing or unreadable files, wrong values, a diverging run) ends with a one-line message and
    status 2.
    """
    args = argparse.Namespace(prog=COMMAND)
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            for message in TIMM_RESAMPLING_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            return args.func(args) or 0
    except BoatVitError as error:  # worded for Python: name the flags instead of the arguments
        print(f"{args.prog}: error: {_one_line(error.message(flag_spelling(args)))}", file=sys.stderr)
        return USAGE_ERROR
    except USER_ERRORS as error:
        print(f"{args.prog}: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
