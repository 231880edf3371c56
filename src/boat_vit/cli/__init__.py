"""The ``boat-vit`` command line (also ``python -m boat_vit`` and ``torchrun -m boat_vit``).

The top of the package: every command is a thin shell over importable functions, and nothing in the
package imports this one. Commands are grouped by task: :mod:`.classification` (train, eval, predict),
:mod:`.segmentation` (seg-train, seg-eval, seg-predict) and :mod:`.tools` (convert, bench, show-clusters).
"""
import argparse
import sys
from typing import Optional, Sequence

from ..engine import NonFiniteLossError
from . import classification, segmentation, tools

__all__ = ["USAGE_ERROR", "build_parser", "main"]

USAGE_ERROR = 2  # exit status of bad input, as argparse's


def build_parser() -> argparse.ArgumentParser:
    """The ``boat-vit`` parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="boat-vit", description="BOAT vision transformers: models, weights, training and tools."
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for group in (classification, segmentation, tools):
        group.add_parsers(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``boat-vit`` with ``argv`` (default: the process arguments); returns the exit status.

    Bad input (missing files, wrong values, a diverging run) ends with a one-line message and status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (FileNotFoundError, FileExistsError, ValueError, NonFiniteLossError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
