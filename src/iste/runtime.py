"""Where and how computation runs: the device pick, and how iste uses the CPU (OpenMP's wait
policy, the number of threads and the size of oneDNN's primitive caches, fixed at start-up).

Every package (engine, slides, eval, train, serve, cli) reads these from here; none of them
imports the public API module (:mod:`iste.api`) for it. This module does not import torch at
import time (its start-up part must run before torch loads).

Why: torch runs every large operation as an OpenMP parallel region, and an image's query pass
is thousands of them (a 256 x 256 output at the default chunk: ~1 400 operations, each split
over the threads and joined at a barrier). By default GNU OpenMP threads *spin* at each
barrier; when another process holds a core, the spinning thread takes CPU time from the
thread whose part is still running, and every barrier waits for a scheduler time slice.
Measured on a shared 2-core machine (docs/performance.md): under load, 2 spinning threads ran
a 64 x 64 x4 image at 1-2 % of the best setting, 2 passive threads (threads sleep at
barriers) at 90-100 %; but on a quiet machine a passive barrier costs a wake-up, and
passive ran ~1.5x slower than the spin. The engine therefore no longer puts a barrier in
every query operation: the query chunks run side by side, one chunk per thread with one
intra-op thread each, and so do the blocks of ISTE's STF key tables
(:mod:`iste.engine.parallel`); only the encoder (few, large convolutions) keeps intra-op
threads and their barriers. With that, passive waiting ran at 0.79-1.06x the old spin on a
quiet machine (run to run; not reliably at par) and kept 74-95 % of the best setting beside a
busy process, where the old spin kept 2-42 % and a bounded spin (``GOMP_SPINCOUNT=30000``)
did not do consistently better (docs/performance.md).

So, before torch is imported (OpenMP reads its environment once, when torch loads it):

- ``OMP_WAIT_POLICY=PASSIVE`` unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``;
- ``OMP_NUM_THREADS`` from ``ISTE_THREADS`` if given, else from a cgroup CPU quota smaller
  than the physical cores this process may use (a container limited to 2 CPUs on a 64-core
  host would otherwise start 64 threads); never when the user set ``OMP_NUM_THREADS``;
- oneDNN's primitive cache and ideep's (torch's layer over oneDNN) at
  :data:`PRIMITIVE_CACHE` primitives each, unless the user sized them
  (:data:`PRIMITIVE_CACHE_ENV`). Why: both keep every primitive (a compiled kernel for one
  operation at one shape, 0.3-0.6 MB here with its buffers) of the last 1 024 shapes, and each
  image size or tile size brings its own: a process fed images of many sizes (a notebook,
  ``iste serve``) grew 259 -> 1 394 MB over 200 ``iste.upscale`` calls and was still
  growing, against a plateau near 500 MB at 128 each. One call uses 16-44 distinct
  primitives (a training step of SwinIR ISTE 39), so 128 keeps repeated sizes' kernels
  (docs/performance.md, session 38). Both read their variable at their first primitive,
  so a process that has run a torch operation keeps the size it started with.

The thread count is *not* lowered when other processes are busy: with the passive policy
all cores' threads kept >= 90 % of the best setting in every load measured (one competing
process, and 15-20 runnable processes on 2 cores), and under heavy load fewer threads also
mean a smaller share of the CPU (the scheduler shares time per thread). One exception: the
viewer encodes large crops tile by tile, and beside one busy process its encoder's barriers
made a whole view 0.61-0.77x of one thread's speed; it encodes on one thread while other
processes hold the cores (:class:`CoreWatch`, :func:`one_thread_if_contended`).

:func:`configure_environment` runs in ``iste/__init__`` (so both the CLI and the API get it)
and never imports torch. If torch was imported before iste, the wait policy comes too late
for this process: set ``OMP_WAIT_POLICY=PASSIVE`` in the environment, or import iste first
(the cache bound still applies there until torch has run an operation).
:func:`set_threads` sets torch's intra-op threads (``--threads`` > ``ISTE_THREADS``) and may
run at any time.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import threading
import time
import warnings
from typing import Iterator, MutableMapping

from iste.text import decimal, error_line

__all__ = ["pick_device", "set_threads", "startup", "bf16_is_fast", "warn_if_bf16_is_emulated",
           "keep_freed_memory", "out_of_memory_message", "CoreWatch", "one_thread_if_contended",
           "cgroup_memory_available", "warn_unusable_thread_variables"]

THREADS_ENV = "ISTE_THREADS"
WAIT_POLICY = "PASSIVE"
PRIMITIVE_CACHE = 128
"""Primitives (kernels for one operation at one shape) that oneDNN's cache and ideep's each
keep; at their defaults, 1 024 each, a process fed images of many sizes grew by 1.1 GB
over 200 calls (docs/performance.md, session 38)."""
PRIMITIVE_CACHE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": ("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                                                           "DNNL_PRIMITIVE_CACHE_CAPACITY"),
                       "LRU_CACHE_CAPACITY": ("LRU_CACHE_CAPACITY",)}
"""The variable iste sets for each cache -> the variables by which a user may have sized it
(oneDNN still reads its old prefix, ``DNNL_``)."""
_PROC = "/proc/self"


def pick_device(device=None):
    """``device`` if given, else CUDA when available, else CPU: a ``torch.device``. ValueError
    for a device name torch does not know, a device this machine does not have (CUDA, MPS,
    XLA ...: another type is tried with a one-element tensor) or "meta"; TypeError for a value
    that is not a device name, index or ``torch.device``."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        if isinstance(device, int) and device >= 0:  # an accelerator's index, and none here:
            # torch said "Cannot access accelerator device when none is available"
            raise ValueError(f"device {device!r}: no CUDA device here ({_why_no_cuda()})") \
                from None
        raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:N ...): {exc}") from None
    except TypeError:  # torch's message lists its overloads over a dozen lines
        raise TypeError(f"device must be a name (cpu, cuda, cuda:N ...), an index or a "
                        f"torch.device, got {type(device).__name__}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA device here ({_why_no_cuda()})")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) here")
    elif dev.type == "meta":
        raise ValueError(f"device {device!r} holds no data: use cpu or cuda")
    elif dev.type != "cpu":
        try:
            torch.zeros(1, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(f"device {device!r} is not available here ({error_line(exc)}); "
                             "use cpu or cuda") from None
    return dev


def _why_no_cuda(environ: MutableMapping[str, str] = os.environ) -> str:
    """Why torch sees no CUDA device: a CPU build of torch, a ``CUDA_VISIBLE_DEVICES`` that
    names none (empty or -1: a scheduler's CPU job, or a user's own setting), else no GPU or
    driver. A CUDA build under ``CUDA_VISIBLE_DEVICES=""`` was told to install the CUDA build."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__}; install the CUDA build of torch for a GPU"
    if "CUDA_VISIBLE_DEVICES" in environ:
        return (f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} shows this process "
                "no GPU")
    return f"torch {torch.__version__} finds no GPU: is its driver installed and loaded?"


_CPU_ALLOCATOR_FAILURES = ("not enough memory", "can't allocate memory")
"""What torch's CPU allocator says when an allocation fails: "DefaultCPUAllocator: not enough
memory: you tried to allocate N bytes" (torch < 2.6), "... can't allocate memory: you tried to
allocate N bytes. Error code 12" (later; under ``ulimit -v`` or a full machine)."""


def out_of_memory_message(err: BaseException) -> str | None:
    """One line for a process that ran out of memory (torch's OutOfMemoryError on a GPU,
    MemoryError, the CPU allocator's failure), or None for any other error."""
    import torch

    text = error_line(err)
    if not (isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError))  # every torch >= 1.13
            or isinstance(err, RuntimeError) and any(s in text for s in _CPU_ALLOCATOR_FAILURES)):
        return None
    text = text[text.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in text else text
    return (f"out of memory ({text}): rerun holding less at once (upscale: a smaller --tile "
            "for a slide, a smaller --chunk or fewer --threads; train: a smaller batch) or "
            "where there is more memory; a slide job's finished tiles are kept and resume")


MAX_THREADS_PER_CPU = 4
"""The most threads a run may ask for per CPU of the machine: more only wait for each other
(and thousands made OpenMP hang, abort with 'Thread creation failed' or crash the process)."""


def parse_threads(value: object, source: str) -> int:
    """A thread count from ``value`` (an int or its text), >= 1 and at most
    :data:`MAX_THREADS_PER_CPU` per CPU of this machine; ValueError naming ``source``."""
    try:
        threads = decimal(str(value), whole=True)  # not int(): ISTE_THREADS=1_6 ran 16
    except ValueError:
        raise ValueError(f"{source} must be a whole number >= 1, got {value!r}") from None
    if threads < 1:
        raise ValueError(f"{source} must be a whole number >= 1, got {value!r}")
    cpus = os.cpu_count() or 1
    if threads > MAX_THREADS_PER_CPU * cpus:
        raise ValueError(f"{source} {threads} is more than {MAX_THREADS_PER_CPU} per CPU of "
                         f"this machine ({cpus} CPUs): threads beyond the CPUs only wait for "
                         "each other")
    return threads


def cgroup_cpu_quota(proc: str = _PROC) -> int | None:
    """CPUs allowed by the tightest CPU quota over this process's cgroups, rounded up; None
    when there is none (or no cgroups: not Linux).

    The cgroups are those ``PROC/cgroup`` names, found where ``PROC/mountinfo`` mounts their
    hierarchy: cgroup v2 (``cpu.max``, "QUOTA PERIOD") and v1's cpu controller
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). The process's own cgroup and each one
    above it, up to the mount, are read: a limit set on a parent (systemd's ``CPUQuota=``, a
    batch scheduler's job cgroup with its steps below) binds every cgroup under it, and a
    container's own cgroup shows as the mount's root.
    """
    quotas = [q for folder, v2 in _cgroup_folders(proc, "cpu")
              for q in (_v2_quota(folder) if v2 else _v1_quota(folder),) if q]
    return min(quotas) if quotas else None


def cgroup_memory_available(proc: str = _PROC) -> int | None:
    """Bytes this process may still allocate under the tightest memory limit over its cgroups,
    or None when there is none (or no cgroups: not Linux).

    Read as for :func:`cgroup_cpu_quota` (its own cgroup and each one above it, up to the
    mount): cgroup v2 ``memory.max``, v1's memory controller ``memory.limit_in_bytes``. What a
    cgroup has left is its limit less the memory charged to it that the kernel cannot reclaim
    (``memory.current`` / ``memory.usage_in_bytes`` less the inactive file cache of
    ``memory.stat``, as container runtimes count a working set). Beyond the limit the kernel
    kills the process (SIGKILL, no message), however much the machine has free.
    """
    left = [n for folder, v2 in _cgroup_folders(proc, "memory")
            for n in (_v2_memory_left(folder) if v2 else _v1_memory_left(folder),)
            if n is not None]
    return min(left) if left else None


_NO_MEMORY_LIMIT = 1 << 62  # v1 writes the largest page-aligned 64-bit value for none


def _v2_memory_left(folder: str) -> int | None:
    return _memory_left(_read(folder, "memory.max"), _read(folder, "memory.current"),
                        _read(folder, "memory.stat"), "inactive_file")


def _v1_memory_left(folder: str) -> int | None:
    return _memory_left(_read(folder, "memory.limit_in_bytes"),
                        _read(folder, "memory.usage_in_bytes"), _read(folder, "memory.stat"),
                        "total_inactive_file")  # the cgroup's and its children's


def _memory_left(limit: str | None, usage: str | None, stat: str | None,
                 reclaimable: str) -> int | None:
    """A cgroup's limit less its charged memory that cannot be reclaimed; None for no limit
    ("max", v1's huge value, or text that is not a number)."""
    try:
        limit_bytes = int((limit or "").strip())
    except ValueError:
        return None
    if limit_bytes >= _NO_MEMORY_LIMIT:
        return None
    try:
        used = int((usage or "0").strip())
    except ValueError:
        used = 0
    for line in (stat or "").splitlines():
        key, _, value = line.partition(" ")
        if key == reclaimable and value.strip().isdigit():
            used -= int(value)
            break
    return max(0, limit_bytes - max(0, used))


def _cgroup_folders(proc: str, controller: str) -> list[tuple[str, bool]]:
    """(folder, is v2) of the process's cgroups of ``controller`` (v1's hierarchy that holds
    it; v2's one hierarchy) and every folder above them up to their mounts."""
    lines, mounts = _read(proc, "cgroup"), _read(proc, "mountinfo")
    if lines is None or mounts is None:
        return []
    lines, mounts = lines.splitlines(), mounts.splitlines()
    paths: dict[str, str] = {}  # "v2" or "v1" -> the process's cgroup path in that hierarchy
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if not controllers:
            paths.setdefault("v2", path)
        elif controller in controllers.split(","):
            paths.setdefault("v1", path)
    found = []
    for mount in mounts:
        fields, _, fs = mount.partition(" - ")
        fields, fs = fields.split(), fs.split()
        if len(fields) < 5 or len(fs) < 3:
            continue
        kind = ("v2" if fs[0] == "cgroup2" else
                "v1" if fs[0] == "cgroup" and controller in fs[2].split(",") else None)
        path = paths.get(kind) if kind else None
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if path is None or not (path == root or path.startswith(root.rstrip("/") + "/")):
            continue
        folder = os.path.join(point, path[len(root):].lstrip("/"))
        while True:
            found.append((folder, kind == "v2"))
            if os.path.normpath(folder) == os.path.normpath(point):
                break
            folder = os.path.dirname(os.path.normpath(folder))
    return found


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes there."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _read(folder: str, name: str) -> str | None:
    """The text of ``folder/name``, or None where it cannot be read."""
    try:
        with open(os.path.join(folder, name)) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(folder: str) -> int | None:
    fields = (_read(folder, "cpu.max") or "").split()
    if len(fields) < 2 or fields[0] == "max":
        return None
    return _cpus(fields[0], fields[1])


def _v1_quota(folder: str) -> int | None:
    quota, period = _read(folder, "cpu.cfs_quota_us"), _read(folder, "cpu.cfs_period_us")
    return None if quota is None or period is None else _cpus(quota.strip(), period.strip())


def _cpus(quota: str, period: str) -> int | None:
    """CPUs of a quota of ``quota`` microseconds every ``period``, rounded up; None for no
    quota (v1 writes -1) or text that is not one."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def usable_cpus(proc: str = _PROC) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota
    (:func:`cgroup_cpu_quota`)."""
    cpus = _affinity()
    quota = cgroup_cpu_quota(proc)
    return min(cpus, quota) if quota else cpus


def threads_per_core() -> int:
    """Hyper-threads per physical core (``siblings / cpu cores`` of /proc/cpuinfo), else 1."""
    siblings = cores = 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "siblings" and not siblings:
                    siblings = int(value)
                elif key.strip() == "cpu cores" and not cores:
                    cores = int(value)
    except (OSError, ValueError):
        pass
    return siblings // cores if siblings and cores and siblings >= cores else 1


def startup_threads(proc: str = _PROC) -> int | None:
    """Threads for a process starting now: torch's default (one per physical core it may
    use) capped by a cgroup quota; None when that is torch's default anyway."""
    per_core = threads_per_core()
    torch_default = max(1, _affinity() // per_core)
    wanted = min(torch_default, max(1, usable_cpus(proc) // per_core))
    return wanted if wanted < torch_default else None


def configure_environment(environ: MutableMapping[str, str] = os.environ, *,
                          proc: str = _PROC) -> dict[str, str]:
    """Set the OpenMP and primitive cache variables iste wants (never one the user set);
    returns those it set.

    Must run before torch is imported to take effect in this process (child processes inherit
    the variables either way). An invalid ``ISTE_THREADS`` is left for :func:`set_threads`
    to report (:func:`set_threads`).
    """
    chosen: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        chosen["OMP_WAIT_POLICY"] = WAIT_POLICY
    if "OMP_NUM_THREADS" not in environ:
        try:
            threads = parse_threads(environ[THREADS_ENV], THREADS_ENV)
        except (KeyError, ValueError):
            threads = None
        if threads is None:
            threads = startup_threads(proc)
        if threads is not None:
            chosen["OMP_NUM_THREADS"] = str(threads)
    for name, user in PRIMITIVE_CACHE_ENV.items():
        if not any(v in environ for v in user):
            chosen[name] = str(PRIMITIVE_CACHE)
    environ.update(chosen)
    return chosen


def _affinity() -> int:
    """CPUs of this process's affinity mask (all the machine's where there is none: not
    Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def requested_threads(threads: int | None = None,
                      environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The thread count asked for: ``threads`` (``--threads``) if given, else ``ISTE_THREADS``,
    else None (keep the start-up choice). ValueError for a count < 1 or not a number."""
    if threads is not None:
        return parse_threads(threads, "--threads")
    if environ.get(THREADS_ENV, "").strip():
        return parse_threads(environ[THREADS_ENV], THREADS_ENV)
    return None


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads to :func:`requested_threads` (``--threads``, else
    ``ISTE_THREADS``) when one is asked for; returns the count in use. ValueError for a count
    < 1 or not a number."""
    import torch

    wanted = requested_threads(threads)
    if wanted is not None and wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


# what OpenMP (a count per nesting level) and MKL take as a thread count
_THREAD_VARIABLES = {"OMP_NUM_THREADS": re.compile(r"[1-9]\d*(,\d+)*"),
                     "MKL_NUM_THREADS": re.compile(r"\d+")}


def warn_unusable_thread_variables(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Warn where ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` holds no thread count (``abc``,
    ``-1``; blank is unset) and no count was asked of iste (``ISTE_THREADS``; a command's
    ``--threads`` is its caller's to check); returns them. torch ran on one thread under
    ``MKL_NUM_THREADS=abc`` without a word (2-64x slower on a lab server), and OpenMP's
    complaint about ``OMP_NUM_THREADS`` did not say what it used instead."""
    import torch

    if environ.get(THREADS_ENV, "").strip():
        return []
    bad = [f"{name}={environ[name]!r}" for name, count in _THREAD_VARIABLES.items()
           if environ.get(name, "").strip() and not count.fullmatch(environ[name].strip())]
    if bad:
        warnings.warn(f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} no thread "
                      f"count: torch runs {torch.get_num_threads()} thread(s); give a whole "
                      f"number >= 1, or pass --threads N (or {THREADS_ENV})", stacklevel=3)
    return bad


# glibc's mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 1 << 28
HEAP_TRIM_THRESHOLD = 1 << 30
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


CONTENDED_CORES = 0.5
"""Cores' worth of CPU time other processes used since the last look from which
:class:`CoreWatch` counts this process's cores as contended: quiet, a fraction of a
percent; beside one busy process, 0.7-1."""


class CoreWatch:
    """Whether other processes hold this machine's cores: the CPU time all processes used
    (``SYSTEM/stat``, user to steal) less this process's own (``PROC/stat``), per second,
    since the last look. (A process's own threads waiting for each other do not count: the
    run queue waits of its threads did, and a quiet server read as contended.) Where that
    cannot be read (not Linux), never contended. Too little time since the last look keeps
    the last answer."""

    MIN_SECONDS = 0.3

    def __init__(self, proc: str = _PROC, system: str = "/proc"):
        self._proc, self._system = proc, system
        self._lock = threading.Lock()
        self._last = self._times()
        self._contended = False

    def _times(self) -> tuple[float, float, float] | None:
        """(seconds now, CPU seconds of all processes, CPU seconds of this one), or None."""
        system = _read(self._system, "stat") or ""
        own = _read(self._proc, "stat") or ""
        fields = system.split("\n", 1)[0].split()
        own_fields = own[own.rfind(")") + 2:].split()
        if fields[:1] != ["cpu"] or len(fields) < 9 or len(own_fields) < 13:
            return None
        try:
            ticks = os.sysconf("SC_CLK_TCK")
            busy = sum(int(v) for v in fields[1:4] + fields[6:9])  # not idle, not iowait
            mine = int(own_fields[11]) + int(own_fields[12])  # utime, stime
        except (ValueError, OSError):
            return None
        return time.monotonic(), busy / ticks, mine / ticks

    def contended(self) -> bool:
        """Whether other processes used at least :data:`CONTENDED_CORES` cores on average
        since the last look."""
        with self._lock:
            now = self._times()
            if now is None or self._last is None:
                self._last = now
                return False
            seconds = now[0] - self._last[0]
            if seconds >= self.MIN_SECONDS:
                others = (now[1] - self._last[1]) - (now[2] - self._last[2])
                self._contended = others >= CONTENDED_CORES * seconds
                self._last = now
            return self._contended


@contextlib.contextmanager
def one_thread_if_contended(watch: CoreWatch) -> Iterator[int]:
    """Run the block on one torch intra-op thread where ``watch`` finds this process's cores
    contended, else on the thread count set: yields the count it runs on.

    Why: an operation split over intra-op threads waits at its end for the slowest; with a
    core taken by another process, each such barrier waits for the thread sharing that core.
    Beside one busy process on 2 cores, the viewer encoded a view at 0.61-0.77x of one
    thread's speed with two (docs/viewer.md, session 28); work already split into independent
    items (:mod:`iste.engine.parallel`) has no such barrier and keeps its threads."""
    import torch

    own = torch.get_num_threads()
    if own == 1 or not watch.contended():
        yield own
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(own)


def keep_freed_memory(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Have glibc's malloc serve tensors up to 256 MB from its heap and keep freed memory
    (up to 1 GB at the heap's top) for the next ones; returns whether it was set.

    Why: by default glibc maps every block above a threshold (at most 32 MB) afresh and
    unmaps it when freed, so each large tensor (an encoder's activations over a region) is
    new pages whose first touch is a page fault. A viewer that encodes a region, frees it and
    encodes the next pays that on every view: with the memory kept, the view's second tile
    (the encoding of the union of its neighbours) took 1.7-1.9 s instead of 2.5-2.9 s, the
    other tiles unchanged (docs/performance.md, session 12). The process keeps its peak
    memory instead of returning it between tiles, so it is set for the long-running server
    (``iste serve``) and its benchmark, not for every command. Not set where the user
    tuned malloc through its environment variables, or off glibc."""
    import ctypes
    import platform

    if any(name in environ for name in _MALLOC_ENV) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    kept = (mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD) == 1)
    STARTUP["malloc_keeps_freed"] = kept
    return kept


# CPU flags of native bf16 arithmetic: x86 AVX512-BF16 / AMX-BF16, Arm v8.6 BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _first_processor(keys: tuple[str, ...], path: str) -> str | None:
    """The value of the first of ``keys`` in /proc/cpuinfo (the first processor's), or None
    where the file or the key is missing (macOS, some Arm kernels)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags (x86 "flags", Arm "Features"); empty if unknown."""
    return frozenset((_first_processor(("flags", "Features"), path) or "").split())


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The first processor's model name; "" if unknown."""
    return _first_processor(("model name",), path) or ""


@functools.cache
def cpu_vendor(path: str = "/proc/cpuinfo") -> str:
    """The first processor's x86 vendor ("GenuineIntel", "AuthenticAMD"); "" if unknown (Arm,
    macOS)."""
    return _first_processor(("vendor_id",), path) or ""


def bf16_is_fast(device) -> bool:
    """Whether ``device`` has native bf16 matmul units: a CPU with one of
    :data:`BF16_CPU_FLAGS` (without them torch emulates bf16, slower than fp32), or a CUDA GPU
    of compute capability >= 8 (Ampere and later)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        # the capability of this GPU (is_bf16_supported() answers for the current one)
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(cpu_flags() & BF16_CPU_FLAGS)
    return False


EMULATED_BF16_SLOWDOWN = 15
"""How much slower bf16 ran than fp32 where it is emulated: the shipped model on an AVX2-only
AMD EPYC, a 240 x 240 tile x2.5 at 0.0079 against 0.119 Mpx/s (a 64 x 64 one x2: 22x);
docs/performance.md, "Precision by hardware"."""


@functools.cache
def warn_if_bf16_is_emulated(device) -> bool:
    """Warn, once per device and process, that bf16 asked for on ``device`` is emulated there
    (:func:`bf16_is_fast` is false); returns whether it warned."""
    if bf16_is_fast(device):
        return False
    where = "this CPU" if str(device) == "cpu" else str(device)
    warnings.warn(f"{where} has no native bfloat16 units: bf16 is emulated there and ran "
                  f"~{EMULATED_BF16_SLOWDOWN}x slower than fp32 on an AVX2 CPU; use fp32 "
                  f"(--precision auto picks it here; run.precision: fp32 in a training config)",
                  stacklevel=3)
    return True


def startup_report(environ: MutableMapping[str, str] = os.environ) -> dict:
    """The CPU runtime settings in effect (for benchmark reports)."""
    import torch

    return {"threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY"),
            "GOMP_SPINCOUNT": environ.get("GOMP_SPINCOUNT"),
            "set_by_iste": dict(STARTUP["set"]), "torch_imported_first": STARTUP["late"],
            "malloc_keeps_freed": STARTUP["malloc_keeps_freed"]}


STARTUP: dict = {"set": {}, "late": False, "malloc_keeps_freed": False, "fork_handler": False}


def one_thread_after_fork() -> None:
    """In a child made by ``os.fork`` (multiprocessing's "fork", Linux's default start method
    before Python 3.14): torch's intra-op threads set to 1, where torch is loaded.

    Why: GNU OpenMP (torch's CPU wheels) cannot run a parallel region in a forked child once
    its parent has run one: the child waits forever for threads it does not have (GCC bug
    60035). Loading a model runs one, so ``model = iste.load()`` then ``Pool().map`` over
    images hung every worker at its first convolution, without a word. One thread per worker
    is what torch's own data-loader workers run (and, N workers on N cores, no
    oversubscription); a child that wants more must be started with "spawn" or
    "forkserver", since any count above one hangs there again."""
    torch = sys.modules.get("torch")
    set_num_threads = getattr(torch, "set_num_threads", None)  # None: torch half-imported
    if set_num_threads is not None and torch.get_num_threads() > 1:
        set_num_threads(1)


def startup() -> None:
    """What ``iste/__init__`` runs first: :func:`configure_environment`, remembering whether
    torch was already loaded (then the wait policy did not reach this process's OpenMP), and
    :func:`one_thread_after_fork` for every forked child (registered once)."""
    STARTUP["late"] = "torch" in sys.modules
    STARTUP["set"] = configure_environment()
    if not STARTUP["fork_handler"] and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=one_thread_after_fork)
        STARTUP["fork_handler"] = True
