"""Memory of a CPU process (Linux): resident and peak sizes, the C allocator's settings, isolated runs.

Two allocator settings matter for measurements on CPU (glibc ``malloc``):

* **retain** (:func:`retain_freed_memory`) keeps freed memory in the process. By default glibc unmaps
  large freed blocks and trims its heap past an adaptive threshold, so a pass that allocates tens of MB of
  temporaries pays a page fault per 4 KiB it touches on some calls and not others, depending on what the
  process allocated before: timings swing by a third between runs. Retaining is the steady state of a
  caching allocator such as jemalloc or tcmalloc; timings use it.
* **release** (:func:`release_freed_memory`) returns every large freed block to the system at once, so the
  resident size follows what is allocated; peak-memory measurements use it, each in a fresh process
  (:func:`run_isolated`), where nothing allocated before can hide in the heap.
"""
import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import resource
import sys
from typing import Any, Callable, Optional

__all__ = [
    "ALLOCATORS",
    "ALLOCATOR_HELP",
    "peak_bytes",
    "release_freed_memory",
    "reset_peak_resident",
    "resident_bytes",
    "retain_freed_memory",
    "run_isolated",
    "use_allocator",
]

KIB = 1024
ALLOCATORS = ("retain", "glibc")
ALLOCATOR_HELP = (
    "retain (default): keep freed memory in the process, so no contender pays page faults for recycled "
    "buffers; glibc: the C library's default, whose page-fault costs depend on what the process allocated before"
)
RELEASE_THRESHOLD = 1 << 16  # bytes: blocks above this are mmapped and go back to the system when freed
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_MALLOPT_MAX = 2**31 - 1  # mallopt takes an int
_MMAP_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at start-up (for a fresh process)
_RESET_PEAK_RSS = "5"  # written to /proc/self/clear_refs: peak RSS := current RSS (Linux >= 4.0)


def resident_bytes(peak: bool = False) -> int:
    """This process's current (``VmRSS``) or peak (``VmHWM``) resident set size in bytes (Linux)."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * KIB
    raise OSError(f"/proc/self/status has no {key}")


def reset_peak_resident() -> bool:
    """Sets this process's peak resident size to its current size; False where the system cannot (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write(_RESET_PEAK_RSS)
        resident_bytes(peak=True)
    except OSError:
        return False
    return True


def _lifetime_peak_bytes() -> int:
    """``ru_maxrss`` in bytes: it is in KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB


def peak_bytes(fn: Callable[[], object], baseline: Optional[int] = None) -> int:
    """Peak resident bytes while ``fn()`` runs, above ``baseline`` (default: the resident size before the call).

    Where the peak cannot be reset (not Linux) it is the process's lifetime peak, an upper bound.
    """
    gc.collect()
    if reset_peak_resident():
        start = resident_bytes() if baseline is None else baseline
        fn()
        return resident_bytes(peak=True) - start
    start = _lifetime_peak_bytes() if baseline is None else baseline
    fn()
    return _lifetime_peak_bytes() - start


def _mallopt(pairs: tuple[tuple[int, int], ...]) -> bool:
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(bool(mallopt(parameter, value)) for parameter, value in pairs)


def retain_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse (module docstring); False where the C library is not glibc."""
    return _mallopt(((_M_MMAP_THRESHOLD, _MALLOPT_MAX), (_M_TRIM_THRESHOLD, _MALLOPT_MAX)))


def release_freed_memory() -> bool:
    """Makes glibc return large freed blocks at once (module docstring); False where it is not glibc."""
    return _mallopt(((_M_MMAP_THRESHOLD, RELEASE_THRESHOLD),))


def use_allocator(choice: str) -> str:
    """Applies an ``--allocator`` choice (:data:`ALLOCATORS`); returns the one in effect.

    ``retain`` falls back to ``glibc`` (with a note on stderr) where the C library cannot be told.
    """
    if choice not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {choice!r}")
    if choice == "retain":
        if retain_freed_memory():
            return "retain"
        print("note: the 'retain' allocator needs glibc; running with the default allocator", file=sys.stderr)
    return "glibc"


def _isolated_main(queue, fn: Callable[..., Any], args: tuple) -> None:
    try:
        queue.put((True, fn(*args)))
    except BaseException as error:  # report it in the parent, which has the user's context
        queue.put((False, f"{type(error).__name__}: {error}"))


def run_isolated(fn: Callable[..., Any], *args: Any, threads: int = 1) -> Any:
    """``fn(*args)`` in a fresh process that releases freed memory (module docstring); returns its result.

    ``fn`` must be importable (a module-level function); ``threads`` sets the child's torch threads.

    Raises:
        RuntimeError: the child failed (its error is in the message).
    """
    import torch

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    saved = os.environ.get(_MMAP_THRESHOLD_VARIABLE)
    os.environ[_MMAP_THRESHOLD_VARIABLE] = str(RELEASE_THRESHOLD)  # the child's allocator starts this way
    try:
        child = context.Process(target=_isolated_main, args=(queue, _with_threads, (fn, threads, args)))
        child.start()
    finally:
        if saved is None:
            del os.environ[_MMAP_THRESHOLD_VARIABLE]
        else:
            os.environ[_MMAP_THRESHOLD_VARIABLE] = saved
    ok, result = queue.get()
    child.join()
    if not ok:
        raise RuntimeError(f"isolated run of {fn.__name__} failed: {result}")
    del torch
    return result


def _with_threads(fn: Callable[..., Any], threads: int, args: tuple) -> Any:
    import torch

    torch.set_num_threads(threads)
    torch.zeros(1).add_(1)  # start the runtime before anything is measured
    return fn(*args)
