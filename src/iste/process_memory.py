"""This process's memory as the operating system counts it: resident set now, its high-water
mark, and the high-water mark of one call (and the reader of Linux's /proc ``kB`` fields that
also gives the machine's available memory).

On Linux the high-water mark is ``VmHWM`` of ``/proc/self/status``, which writing 5 to
``/proc/self/clear_refs`` resets to the current resident set. ``getrusage().ru_maxrss`` is the
fallback elsewhere: a child process starts with its parent's (measured: a child of a 600 MB
process reports 625 MB at start) and it cannot be reset, so it is only an upper bound of a
call's peak.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Callable, TypeVar

__all__ = ["proc_kib_bytes", "rss_bytes", "maxrss_bytes", "vm_hwm_bytes", "peak_rss_bytes",
           "reset_peak_rss", "peak_rss_during", "address_space_left", "malloc_trim",
           "FreedMemoryLimit"]

T = TypeVar("T")


def rss_bytes() -> int | None:
    """The resident set now (Linux ``/proc/self/statm``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def maxrss_bytes() -> int:
    """``ru_maxrss`` in bytes: the process's peak, not resettable (see the module docstring)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def proc_kib_bytes(path: str, field: str) -> int | None:
    """Bytes of a ``field:  N kB`` line of a Linux /proc file (``/proc/self/status``,
    ``/proc/meminfo``), or None where there is no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def vm_hwm_bytes() -> int | None:
    """Linux's ``VmHWM``, or None where there is none."""
    return proc_kib_bytes("/proc/self/status", "VmHWM")


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark: ``VmHWM`` on Linux (its own, even in a
    child that was forked from a large parent), ``ru_maxrss`` elsewhere."""
    hwm = vm_hwm_bytes()
    return maxrss_bytes() if hwm is None else hwm


def reset_peak_rss() -> bool:
    """Reset Linux's VmHWM to the current resident set; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return vm_hwm_bytes() is not None
    except OSError:
        return False


def peak_rss_during(fn: Callable[[], T]) -> tuple[T, int | None]:
    """``fn()`` and this process's resident-set high-water mark while it ran, in bytes: VmHWM
    reset to the current size just before (so the memory held when ``fn`` starts counts, as
    it does for a user's job); None where it cannot be reset, as the process's peak so far
    would not be ``fn``'s."""
    if not reset_peak_rss():
        return fn(), None
    result = fn()
    return result, vm_hwm_bytes()


def address_space_left(proc: str = "/proc/self") -> int | None:
    """Bytes of address space this process may still map under its ``RLIMIT_AS`` (``ulimit
    -v``, ``prlimit --as``): the limit less ``VmSize``; None without a limit (or where the
    size cannot be read). Past it every allocation fails."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    size = proc_kib_bytes(f"{proc}/status", "VmSize")
    return None if size is None else max(0, limit - size)


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: hands the free pages of every malloc arena back to the
    system; None off glibc."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return lambda: trim(0)


class FreedMemoryLimit:
    """Keeps at most about ``slack`` bytes of freed memory in this process: :meth:`check`
    trims the heap (:func:`malloc_trim`) once the resident set has grown by more than
    ``slack`` since the last trim (or the first look), and counts it in ``trims``.

    Why: a long-running process whose tensors come in many sizes (the viewer: every encoded
    region and key texture its own) fragments glibc's heap; freed memory it cannot reuse
    stays resident. Measured with the viewer's renderer, a tiny model and a 16 MB feature
    cache (the live tensors constant): 1067 -> 1637 MiB over 700 SR tiles, 1048 after one
    ``malloc_trim``; the served viewer grew 1450 -> 1939 MiB over tiles 400-2200. Trimming
    after every tile would have the next ones fault their memory in afresh, the cost
    :func:`iste.runtime.keep_freed_memory` avoids, so memory is trimmed only past ``slack``.
    Not thread-safe: one thread calls :meth:`check`. ``rss`` and ``trim`` are for tests."""

    def __init__(self, slack: int, *, rss: Callable[[], int | None] = rss_bytes,
                 trim: Callable[[], object] | None = None):
        self.slack, self._rss = slack, rss
        self._trim = trim if trim is not None else malloc_trim()
        self._base = rss() if self._trim is not None else None
        self.trims = 0

    def check(self) -> bool:
        """Trim where the resident set is more than ``slack`` above its base (its size after
        the last trim, or the least seen since); returns whether it did."""
        now = self._rss() if self._trim is not None else None
        if now is None:
            return False
        if self._base is None or now < self._base:
            self._base = now
        if now - self._base <= self.slack:
            return False
        self._trim()
        self.trims += 1
        self._base = self._rss()
        return True
