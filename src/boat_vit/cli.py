"""The ``boat-vit`` command line: a thin shell over importable functions.

Each sub-command lives in its own module that provides ``add_parser(subparsers)``; the parser it adds sets
``func`` to the function that runs the command with the parsed arguments.
"""
import argparse
import importlib
import sys
from typing import Optional, Sequence

# module (relative to boat_vit) of every sub-command, in the order `--help` lists them
SUBCOMMAND_MODULES: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boat-vit", description="BOAT vision transformers: models, weights, training and tools."
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(f"boat_vit.{module}").add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``boat-vit`` with ``argv`` (default: the process arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
