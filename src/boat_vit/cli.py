"""The ``boat-vit`` command line: a thin shell over importable functions.

Each sub-command lives in its own module that provides ``add_parser(subparsers)``; the parser it adds sets
``func`` to the function that runs the command with the parsed arguments.
"""
import argparse
import importlib
import sys
from typing import Optional, Sequence

from .train import NonFiniteLossError

USAGE_ERROR = 2
# module (relative to boat_vit) of every sub-command, in the order `--help` lists them
SUBCOMMAND_MODULES: tuple[str, ...] = ("train", "evaluate", "convert", "bench", "visualize", "seg.train", "seg.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boat-vit", description="BOAT vision transformers: models, weights, training and tools."
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(f"boat_vit.{module}").add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``boat-vit`` with ``argv`` (default: the process arguments); returns the exit status.

    Bad input (missing files, wrong values, a diverging run) ends with a one-line message and status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (FileNotFoundError, ValueError, NonFiniteLossError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
