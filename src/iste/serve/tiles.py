"""The tile producer: caches, coalescing, one model worker, and cancellation.

A request for a tile (:meth:`TileProducer.get`, on the server's event loop) is answered from

1. the memory cache;
2. the job already computing that tile, if any (*coalescing*: identical requests in flight
   share one computation);
3. a new job: cheap tiles (slide reads, bicubic) run on a small I/O thread pool; model tiles
   are looked up in the disk cache (on the pool) and otherwise queued for the single **model
   worker** thread, which takes the newest queued job first (what the user looks at now).

Every request is a *waiter* on its job. A waiter leaves when its HTTP client disconnects or
when its client's view moves on (:meth:`TileProducer.set_view`, which carries a generation
counter so a late, older view cannot cancel newer work); a job without waiters that has not
started (queued for the model, or still waiting for an I/O thread) is cancelled and never
computed, so a flood of requests whose clients hung up leaves no backlog in front of the next
one. A job already running finishes and fills the caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from iste.serve.cache import DiskCache, MemoryCache

__all__ = ["TileKey", "TileProducer", "TileCancelled", "ClientGone", "TileFailed",
           "TileRefused"]

log = logging.getLogger("iste.serve")
_MAX_VIEWS = 1024  # clients whose latest view is remembered


@dataclass(frozen=True)
class TileKey:
    """slide: served slide id; kind: "scan", "bicubic", "glass" or "sr"; DeepZoom level,
    col, row."""

    slide: str
    kind: str
    level: int
    col: int
    row: int


class TileCancelled(Exception):
    """The request was dropped: its client's view moved on, or the model queue overflowed."""


class ClientGone(Exception):
    """The HTTP client disconnected before its tile was ready."""


class TileRefused(Exception):
    """Rendering refused for a reason its message says in full (a condition of the server's
    inputs, not a fault of the code): logged as that one line, once per message, not with a
    traceback for every tile it stops. ``public``: the reason in words a client may see (no
    file name), added to the tile's error; None to say only that it failed."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public


class TileFailed(Exception):
    """Rendering the tile raised; the message is one line that reveals nothing of the server
    (the exception itself goes to the server log)."""

    @classmethod
    def of(cls, key: "TileKey", cause: BaseException | None = None) -> "TileFailed":
        """The error of ``key``, with ``cause``'s public reason where it has one."""
        public = cause.public if isinstance(cause, TileRefused) else None
        return cls(f"tile {key.level}/{key.col}_{key.row} of {key.kind} could not be rendered"
                   + (f": {public}" if public else " (details in the server log)"))


# what /api/status counts, each present from the start (0 until it happens)
STATUS_COUNTS = ("requests", "memory_hits", "disk_hits", "coalesced", "rendered_cheap",
                 "rendered_model", "cancelled", "cancelled_by_view", "disconnected",
                 "dropped_queue_full", "errors", "disk_write_errors")


@dataclass(eq=False)
class _Job:
    key: TileKey
    model: bool
    state: str = "pending"  # pending -> queued -> running -> done; or cancelled
    waiters: dict = field(default_factory=dict)  # asyncio.Future -> client id or None
    io: Future | None = None  # its task on the I/O threads (render or disk look-up), if any


class TileProducer:
    """Produces encoded tiles for the server.

    Args:
        render: (key, ahead) -> encoded tile bytes (runs on a worker thread); ``ahead``: for
            a model tile, the keys of the model jobs queued behind it, the next first (the
            renderer may prepare their shared work with this tile's: the view's encoding);
            empty for other tiles.
        memory: the memory cache (every tile goes there).
        disk: the disk cache for model tiles, or None.
        disk_name: key -> the hex name of a model tile in ``disk``.
        io_threads: threads for slide reads, bicubic tiles and disk look-ups.
        max_queue: model jobs allowed to wait; the oldest is dropped beyond it.
    """

    def __init__(self, render: Callable[[TileKey, Sequence[TileKey]], bytes], *,
                 memory: MemoryCache,
                 disk: DiskCache | None = None,
                 disk_name: Callable[[TileKey], str] | None = None,
                 io_threads: int = 2, max_queue: int = 256):
        if disk is not None and disk_name is None:
            raise ValueError("a disk cache needs disk_name")
        self._render, self.memory, self.disk, self._disk_name = render, memory, disk, disk_name
        self.max_queue = max_queue
        self._jobs: dict[TileKey, _Job] = {}  # in flight; touched on the event loop only
        self._stack: list[_Job] = []  # queued model jobs, newest last; under _cond
        self._cond = threading.Condition()
        self._views: OrderedDict[str, int] = OrderedDict()
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="iste-io")
        self._worker = threading.Thread(target=self._work, name="iste-model", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.counts: Counter = Counter(dict.fromkeys(STATUS_COUNTS, 0))
        self._refusals_said: set[str] = set()  # TileRefused messages logged (event loop)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker.start()

    def close(self) -> None:
        """Stop the worker after its current tile; queued jobs are dropped."""
        with self._cond:
            self._closing = True
            for job in self._stack:
                job.state = "cancelled"
            self._stack.clear()
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=5)  # a tile under way cannot be interrupted
        self._io.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict:
        with self._cond:
            queued = len(self._stack)
        return {"in_flight": len(self._jobs), "model_queue": queued,
                "memory_tiles": len(self.memory), "memory_bytes": self.memory.nbytes,
                "memory_refused": self.memory.refused,
                "disk_tiles": len(self.disk) if self.disk else 0,
                "disk_bytes": self.disk.nbytes if self.disk else 0,
                "disk_rejected": self.disk.rejected if self.disk else 0,
                "disk_indexed": self.disk.indexed.is_set() if self.disk else True,
                **self.counts}

    # --- requests ----------------------------------------------------------------------
    async def get(self, key: TileKey, *, client: str | None = None,
                  disconnected: Callable[[], Awaitable[None]] | None = None) -> bytes:
        """The encoded tile.

        Raises:
            TileCancelled: the client's view moved on, or the queue overflowed.
            ClientGone: ``disconnected()`` returned first.
            TileFailed: rendering raised.
        """
        self.counts["requests"] += 1
        data = self.memory.get(key)
        if data is not None:
            self.counts["memory_hits"] += 1
            return data
        waiter = asyncio.get_running_loop().create_future()
        job = self._jobs.get(key)
        if job is None:
            job = _Job(key, model=key.kind == "sr")
            job.waiters[waiter] = client
            self._start(job)
        else:
            self.counts["coalesced"] += 1
            job.waiters[waiter] = client
        watch = asyncio.ensure_future(disconnected()) if disconnected else None
        try:
            if watch is None:
                return await waiter
            done, _ = await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return waiter.result()
            self.counts["disconnected"] += 1
            raise ClientGone(f"client left before tile {key} was ready")
        finally:
            if watch is not None:
                watch.cancel()
            self._detach(job, waiter)

    def set_view(self, client: str, generation: int, wanted: Callable[[TileKey], bool]) -> int:
        """Client ``client`` now shows a view: its waiters on model tiles that are not
        ``wanted`` and not yet computing are cancelled. Views with a generation not newer
        than the client's last one are ignored. Returns the number of waiters cancelled."""
        last = self._views.get(client)
        if last is not None and generation <= last:
            return 0
        self._views[client] = generation
        self._views.move_to_end(client)
        while len(self._views) > _MAX_VIEWS:
            self._views.popitem(last=False)
        n = 0
        for job in list(self._jobs.values()):
            if not job.model or job.state not in ("pending", "queued") or wanted(job.key):
                continue
            for waiter, owner in list(job.waiters.items()):
                if owner == client and not waiter.done():
                    waiter.set_exception(TileCancelled("no longer in view"))
                    n += 1
        self.counts["cancelled_by_view"] += n
        return n

    # --- jobs (event loop) -------------------------------------------------------------
    def _start(self, job: _Job) -> None:
        key = job.key
        self._jobs[key] = job
        if not job.model:
            self._submit_io(job, lambda k: self._render(k, ()), key,
                            then=lambda f: self._finish_future(job, f, "rendered_cheap"))
        elif self.disk is None:
            self._enqueue(job)
        else:
            # named on the I/O thread: a slide's first name builds its colour transform
            # (:class:`~iste.serve.colour.DisplayColour`), too slow for the event loop
            self._submit_io(job, lambda k: self.disk.get(self._disk_name(k)), key,
                            then=lambda f: self._after_disk(job, f))

    def _submit_io(self, job: _Job, fn, arg, *, then: Callable[[Future], None]) -> None:
        """Run ``fn(arg)`` on an I/O thread, then ``then(future)`` on the event loop. The task
        is kept on the job so that it can be cancelled while it waits for a thread."""
        loop = asyncio.get_running_loop()
        job.io = self._io.submit(fn, arg)

        def done(fut: Future) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(then, fut)

        job.io.add_done_callback(done)

    def _after_disk(self, job: _Job, fut) -> None:
        data = None if fut.cancelled() or fut.exception() else fut.result()
        if fut.cancelled() and job.state == "cancelled":
            return  # abandoned while it waited for a thread
        if data is not None:
            self.counts["disk_hits"] += 1
            self._finish(job, data, None)
        elif job.state == "pending":
            self._enqueue(job)

    def _enqueue(self, job: _Job) -> None:
        if not job.waiters:
            self._drop(job)
            return
        dropped = None
        with self._cond:
            job.state = "queued"
            self._stack.append(job)
            if len(self._stack) > self.max_queue:
                dropped = self._stack.pop(0)
                dropped.state = "cancelled"
            self._cond.notify()
        if dropped is not None:
            self.counts["dropped_queue_full"] += 1
            self._finish(dropped, None, TileCancelled("the model queue is full"))

    def _detach(self, job: _Job, waiter) -> None:
        job.waiters.pop(waiter, None)
        if job.waiters or job.state not in ("pending", "queued"):
            return
        if job.io is not None and not job.io.done():
            if not job.io.cancel():
                return  # already on a thread: it runs to the end and fills the cache
        elif not job.model:
            return
        with self._cond:
            if job.state == "queued":
                self._stack.remove(job)
            job.state = "cancelled"
        self.counts["cancelled"] += 1
        self._drop(job)

    def _drop(self, job: _Job) -> None:
        job.state = "cancelled"
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]

    def _finish_future(self, job: _Job, fut, counter: str) -> None:
        if fut.cancelled():
            if job.state != "cancelled":  # not abandoned: the pool was shut down
                self._finish(job, None, TileCancelled("server shutting down"))
            return
        exc = fut.exception()
        if exc is None:
            self.counts[counter] += 1
        self._finish(job, None if exc else fut.result(), exc)

    def _finish(self, job: _Job, data: bytes | None, exc: BaseException | None) -> None:
        if job.state != "cancelled":
            job.state = "done"
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        if data is not None:
            self.memory.put(job.key, data)
        elif exc is not None and not isinstance(exc, TileCancelled):
            self.counts["errors"] += 1
            if not isinstance(exc, TileRefused):
                log.error("tile %s failed", job.key, exc_info=exc)
            else:
                self.say_refused(exc)
            exc = TileFailed.of(job.key, exc)
        for waiter in list(job.waiters):
            if not waiter.done():
                if data is not None:
                    waiter.set_result(data)
                else:
                    waiter.set_exception(exc)

    def say_refused(self, exc: TileRefused) -> None:
        """Log a refusal's message as one line, the first time it comes (event loop)."""
        if str(exc) not in self._refusals_said:
            self._refusals_said.add(str(exc))
            log.error("%s", exc)

    def _finish_model(self, job: _Job, data: bytes | None, exc: BaseException | None,
                      cache_exc: BaseException | None = None) -> None:
        if exc is None:
            self.counts["rendered_model"] += 1
        if cache_exc is not None:
            self.counts["disk_write_errors"] += 1
            if self.counts["disk_write_errors"] in (1, 10, 100, 1000):  # not one line a tile
                log.warning("tile cache: cannot keep tiles (%s); they are served but not "
                            "cached (%d so far)", cache_exc, self.counts["disk_write_errors"])
        self._finish(job, data, exc)

    # --- model worker (its own thread) -------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stack and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._stack.pop()
                job.state = "running"
                ahead = tuple(j.key for j in reversed(self._stack))  # popped newest first
            data, exc, cache_exc = None, None, None
            try:
                data = self._render(job.key, ahead)
            except Exception as err:  # reported to the waiters, logged once
                exc = err
            if data is not None and self.disk is not None:
                try:
                    self.disk.put(self._disk_name(job.key), data)
                except (OSError, ValueError) as err:  # full, read-only...: served, not kept
                    cache_exc = err
            try:
                self._loop.call_soon_threadsafe(self._finish_model, job, data, exc, cache_exc)
            except RuntimeError:  # the event loop is closed: the server is stopping
                return
