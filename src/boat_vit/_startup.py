"""What happens as the package loads, before torch does.

How OpenMP threads wait (:func:`choose_openmp_waiting`; why: :mod:`boat_vit.engine.threads`). Ctrl-C while the
``boat-vit`` command starts: importing torch, timm and the models takes seconds, and an interrupt then ends in
one line and status 130, as it does once the command runs, not in a traceback. Only the command is quiet: a
program that imports boat_vit gets its ``KeyboardInterrupt`` as usual.
"""
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["INTERRUPTED", "SPIN_COUNT", "WAIT_SETTINGS", "choose_openmp_waiting", "quiet_interrupt",
           "started_as_command"]

COMMAND = "boat-vit"  # the console script
MODULE = "boat_vit"  # python -m boat_vit, torchrun -m boat_vit
INTERRUPTED = 130  # exit status after Ctrl-C, as shells report SIGINT
SPIN_COUNT = 2000  # spins (tens of microseconds) a waiting OpenMP thread makes before it sleeps
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def choose_openmp_waiting() -> None:
    """Waiting OpenMP threads spin briefly, then sleep: sets ``OMP_WAIT_POLICY=PASSIVE`` and
    ``GOMP_SPINCOUNT`` (GNU OpenMP's spin count, which takes precedence) unless the environment sets either,
    or torch is already loaded (OpenMP reads them once, as torch loads)."""
    if "torch" not in sys.modules and not any(name in os.environ for name in WAIT_SETTINGS):
        os.environ.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=str(SPIN_COUNT))


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
