"""Query chunks side by side: whole chunks per thread, each thread one intra-op thread.

Why: a query pass is hundreds of small torch operations per chunk. Run one chunk after
another with N intra-op threads, every large operation is an OpenMP parallel region that
ends at a barrier: with OpenMP's default spin-wait the threads collapse when another process
holds a core, with passive waiting each barrier costs a wake-up on a quiet machine
(docs/performance.md). Chunks are independent, so N worker threads here each run whole
chunks with intra-op parallelism off (torch releases the GIL inside its operations): the
query phase then has no barrier at all, and a worker that loses its core delays only its own
chunk. A head's other independent parts run the same way (ISTE's STF key tables, cut into
blocks of pixels: :meth:`iste.models.heads.base.SRHead.key_work`); only the encoder
(few, large convolutions) stays on the calling thread with its intra-op threads.
:func:`map_chunks` runs a list of such items and waits for all of them; a
:class:`ChunkQueue` takes items as the caller finds them, so that the caller's own serial
work (planning the next key window) overlaps the workers' (:mod:`iste.engine.render`).

Workers live in one pool per worker count for the whole process (renders of several
viewer tiles at once share it). Each worker sets ``torch.set_num_threads(1)`` once, when it
starts; that call also changes torch's process-wide default for threads created later, so
the pool is started with all its threads at once and the default is set back before any
other work runs (:func:`chunk_pool`).

Results do not depend on the worker count: every chunk is the same computation, and the
caller puts the chunks back in order (``tests/test_engine_parallel.py``).
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

__all__ = ["chunk_workers", "chunk_pool", "map_chunks", "ChunkQueue"]

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_IN_WORKER = threading.local()


def chunk_workers(device: torch.device | str, workers: int | None = None) -> int:
    """Threads that run query chunks side by side: ``workers`` if given, else on CPU the
    calling thread's torch intra-op threads (``--threads``), on accelerators 1 (the device
    parallelises inside each chunk). Inside a chunk worker: 1 (no nesting)."""
    if getattr(_IN_WORKER, "active", False):
        return 1
    if workers is not None:
        if workers < 1:
            raise ValueError(f"chunk workers must be >= 1, got {workers}")
        return workers
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def _start_worker(barrier: threading.Barrier) -> None:
    # torch sets a thread's intra-op threads lazily, from the process-wide default, at the
    # thread's first query of them: done first here, or it would undo the 1 below later on
    # (with the default the caller sets back once the pool has started).
    torch.get_num_threads()
    torch.set_num_threads(1)
    _IN_WORKER.active = True
    barrier.wait()


def chunk_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` chunk threads (started on first use), each with one
    torch intra-op thread."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is not None:
            return pool
        own = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="iste-chunks")
        barrier = threading.Barrier(workers)  # every thread starts (and sets its threads) now
        started = [pool.submit(_start_worker, barrier) for _ in range(workers)]
        for f in started:
            f.result()
        torch.set_num_threads(own)  # the process-wide default that the workers' call changed
        _POOLS[workers] = pool
        return pool


def _forget_pools() -> None:  # a forked child has the dicts but not the threads
    _POOLS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def map_chunks(fn: Callable[[T], R], items: Sequence[T], workers: int,
               done: Callable[[T, R], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, run by ``workers`` chunk threads when > 1 (in the
    calling thread otherwise). ``fn`` must set up its own thread-local torch state (grad
    mode, autocast): worker threads do not inherit the caller's. ``done(item, result)`` is
    called in the calling thread, in order, as results arrive (progress). The first error is
    raised after the chunks not yet started are cancelled. Context variables are the caller's
    (:meth:`ChunkQueue.submit`)."""
    report = done or (lambda item, result: None)
    if workers <= 1 or len(items) <= 1:
        out = []
        for item in items:
            out.append(fn(item))
            report(item, out[-1])
        return out
    out = []
    with ChunkQueue(workers) as queue:
        futures = [queue.submit(fn, item) for item in items]
        for item, future in zip(items, futures):
            out.append(future.result())
            report(item, out[-1])
    return out


class ChunkQueue:
    """Items for the chunk workers, submitted one by one as the caller finds them and run
    first in, first out; a context manager. With ``workers`` > 1, :meth:`submit` returns at
    once and the caller waits on the future when it needs the result; with 1 it runs the item
    in the calling thread (with its intra-op threads) and returns it done. ``fn`` must set up
    its own thread-local torch state, as for :func:`map_chunks`.

    While the queue is open with workers, the calling thread's own torch operations (its
    serial work between submissions) run with one intra-op thread: they share the cores with
    the workers, and an OpenMP team on top of them made whole ISTE images 1.06-1.30x slower
    (docs/performance.md). Its threads are set back on leaving, where an error also cancels
    the items not yet started. (torch's setting is also the process-wide default for threads
    that make their first torch call meanwhile: those start with one intra-op thread.)"""

    def __init__(self, workers: int):
        self._pool = chunk_pool(workers) if workers > 1 else None
        self._futures: list[Future] = []  # those that may still have to be cancelled
        self._prune_at = 64
        self._own_threads = 0

    def submit(self, fn: Callable[[T], R], item: T) -> Future:
        """``fn(item)``, run in a copy of this thread's context (its context variables, such
        as :func:`iste.models.layers.ensemble.published_areas`): a worker computes what the
        calling thread would."""
        if self._pool is not None:
            future = self._pool.submit(contextvars.copy_context().run, fn, item)
            self._futures.append(future)
            if len(self._futures) >= self._prune_at:  # done ones hold results the caller may drop
                self._futures = [f for f in self._futures if not f.done()]
                self._prune_at = max(64, 2 * len(self._futures))
            return future
        future = Future()
        future.set_result(fn(item))
        return future

    def __enter__(self) -> "ChunkQueue":
        if self._pool is not None:
            self._own_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._own_threads:
            torch.set_num_threads(self._own_threads)
        if exc_type is not None:
            for future in self._futures:
                future.cancel()
        self._futures.clear()
