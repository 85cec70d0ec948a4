"""The memory an image's decoding takes, against what this process may still allocate: the
one rule every reader of a file's pixels (plain images, a slide's stored tiles and frames)
checks from the file's header before decoding.
"""

from __future__ import annotations

import os

from iste.data.imageformats import DECODE_BYTES
from iste.process_memory import address_space_left, proc_kib_bytes
from iste.runtime import cgroup_memory_available

__all__ = ["host_memory_available", "decode_memory_problem"]


def host_memory_available(proc: str = "/proc/self") -> int:
    """Bytes a new allocation of this process may take in host memory: the least of the
    machine's MemAvailable (Linux; else its physical memory), what the tightest memory limit
    over the process's cgroups leaves (a container's, a batch job's, ``systemd-run -p
    MemoryMax=``: past it the kernel kills the process without a word) and the address space
    its ``RLIMIT_AS`` leaves (``ulimit -v``: past it allocations fail). ``proc``: the
    process's proc folder (its cgroups and limits)."""
    available = proc_kib_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = 1 << 34
    limits = (cgroup_memory_available(proc), address_space_left(proc))
    return min([available, *(n for n in limits if n is not None)])


def decode_memory_problem(hw: tuple[int, int]) -> str | None:
    """Why decoding ``hw`` (H, W) pixels of an image, or of one stored tile or strip of a
    slide, would not fit in the memory available, from the size alone: "decoding W x H px
    takes about N GiB; M GiB are available" where :data:`~iste.data.imageformats.
    DECODE_BYTES` a pixel exceed :func:`host_memory_available`; else
    None. The one rule every reader of a file's pixels checks before decoding them."""
    need = hw[0] * hw[1] * DECODE_BYTES
    if need <= (available := host_memory_available()):
        return None
    return (f"decoding {hw[1]} x {hw[0]} px takes about {need / 2**30:.3g} GiB; "
            f"{available / 2**30:.3g} GiB are available")
