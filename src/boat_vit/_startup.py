"""Ctrl-C while the ``boat-vit`` command starts: importing torch, timm and the models takes seconds, and an
interrupt then ends in one line and status 130, as it does once the command runs, not in a traceback.

Only the command is quiet: a program that imports boat_vit gets its ``KeyboardInterrupt`` as usual.
"""
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["INTERRUPTED", "quiet_interrupt", "started_as_command"]

COMMAND = "boat-vit"  # the console script
MODULE = "boat_vit"  # python -m boat_vit, torchrun -m boat_vit
INTERRUPTED = 130  # exit status after Ctrl-C, as shells report SIGINT


def started_as_command() -> bool:
    """Whether this process runs the ``boat-vit`` command (the console script or ``python -m boat_vit``)."""
    if os.path.basename(sys.argv[0]) == COMMAND:
        return True
    argv = getattr(sys, "orig_argv", sys.argv)  # the interpreter's own arguments (Python 3.10+)
    return "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == [MODULE]


@contextmanager
def quiet_interrupt() -> Iterator[None]:
    """Ends the process with one line and status 130 on Ctrl-C inside the block, where it runs the command."""
    try:
        yield
    except KeyboardInterrupt:
        if not started_as_command():
            raise
        print(f"{COMMAND}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
