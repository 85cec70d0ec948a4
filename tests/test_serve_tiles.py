"""The tile producer and its caches: coalescing, LRU bounds, the model worker, cancellation."""

import asyncio
import errno
import os
import threading
import time

import pytest

from iste.serve.cache import DiskCache, MemoryCache, seal
from iste.serve.tiles import ClientGone, TileCancelled, TileFailed, TileKey, TileProducer


HEADER = len(seal("0" * 32, b""))  # what a disk tile file holds besides the tile


def key(col=0, kind="sr", level=5, row=0, slide="s"):
    return TileKey(slide, kind, level, col, row)


class Renderer:
    """A render function that records calls; model tiles can be held back by a gate."""

    def __init__(self, delay=0.0, fail=False):
        self.calls, self.delay, self.fail = [], delay, fail
        self.ahead = {}  # key -> the keys queued behind it when it was rendered
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, k: TileKey, ahead) -> bytes:
        self.ahead[k] = tuple(ahead)
        if k.kind == "sr":
            self.gate.wait(10)
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(k)
        if self.fail:
            raise RuntimeError("boom\nsecond line")
        return f"{k.kind}/{k.level}/{k.col}_{k.row}".encode()


async def worker_busy(p):
    """Wait until the model worker has taken the queued job (it is running, none waits)."""
    for _ in range(500):
        if p.status()["model_queue"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the model worker never started")


async def occupy_worker(p, **kw):
    """Request the model tile of column 99 (its render blocks on the gate) and wait until the
    worker runs it; returns the request's future."""
    busy = asyncio.ensure_future(p.get(key(col=99), **kw))
    await asyncio.sleep(0)
    await worker_busy(p)
    return busy


def run(coro_fn, render, **kw):
    """Run ``coro_fn(producer)`` on a fresh event loop with a started producer."""
    async def main():
        producer = TileProducer(render, memory=kw.pop("memory", MemoryCache(1 << 20)), **kw)
        producer.start()
        try:
            return await coro_fn(producer)
        finally:
            producer.close()
    return asyncio.run(main())


def test_identical_requests_in_flight_are_computed_once():
    render = Renderer(delay=0.05)

    async def go(p):
        return await asyncio.gather(*[p.get(key()) for _ in range(8)]), p.status()
    results, status = run(go, render)
    assert results == [b"sr/5/0_0"] * 8
    assert len(render.calls) == 1 and status["coalesced"] == 7


def test_status_names_every_count_before_it_happens():
    async def go(p):
        return p.status()
    status = run(go, Renderer())
    counts = ("requests", "memory_hits", "disk_hits", "coalesced", "rendered_cheap",
              "rendered_model", "cancelled", "disconnected", "errors", "disk_write_errors",
              "disk_rejected")  # docs/viewer.md names coalesced, disk_write_errors ...
    assert {name: status.get(name) for name in counts} == dict.fromkeys(counts, 0)


def test_memory_cache_answers_repeated_requests_without_rendering():
    render = Renderer()

    async def go(p):
        first = await p.get(key(kind="scan"))
        again = await p.get(key(kind="scan"))
        return first, again, p.status()
    first, again, status = run(go, render)
    assert first == again and len(render.calls) == 1 and status["memory_hits"] == 1


def test_memory_cache_is_bounded_and_least_recently_used():
    cache = MemoryCache(30)
    for i in range(3):
        cache.put(i, bytes(10))
    cache.get(0)  # 0 is now the most recent
    cache.put(3, bytes(10))
    assert cache.get(1) is None and cache.get(0) is not None and cache.nbytes <= 30
    cache.put("big", bytes(31))  # larger than the whole cache: not stored
    assert cache.get("big") is None and len(cache) == 3


def test_disk_cache_is_bounded_persistent_and_leaves_no_temporary_files(tmp_path):
    disk = DiskCache(tmp_path, 250 + 2 * HEADER)  # two tiles of 100 bytes, not three
    names = [f"{i:032x}" for i in range(4)]
    for name in names[:2]:
        disk.put(name, bytes(100))
    assert disk.get(names[0]) == bytes(100)  # names[1] is now the oldest
    disk.put(names[2], bytes(100))
    assert disk.get(names[1]) is None and disk.nbytes <= 250 + 2 * HEADER
    assert not list(tmp_path.rglob("*.tmp"))
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / "leftover.tmp").write_bytes(b"x")  # a crash mid-write, an hour ago
    os.utime(tmp_path / "ab" / "leftover.tmp", (time.time() - 3600,) * 2)
    reopened = DiskCache(tmp_path, 250 + 2 * HEADER)
    assert reopened.get(names[0]) == bytes(100) and reopened.get(names[2]) == bytes(100)
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError):
        reopened.get("../../etc/passwd")


def test_a_tile_larger_than_the_memory_budget_is_said_once_and_counted(caplog):
    # such a tile was never kept in memory, rendered again at each request, without a word
    render = Renderer()

    async def go(p):
        for _ in range(3):
            await p.get(key(kind="bicubic"))
        return p.status()

    with caplog.at_level("WARNING", logger="iste"):
        status = run(go, render, memory=MemoryCache(10))
    size = len(render(key(kind="bicubic"), ()))
    assert len(render.calls) == 4 and status["memory_refused"] == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"tile cache: a tile of {size / 1e3:.3g} kB is larger than the whole memory cache "
        f"(--memory-cache-mb {10 / 2**20:.3g}): tiles that large are rendered again each "
        "time, not kept in memory; raise --memory-cache-mb"]
    assert run(go, Renderer(), memory=MemoryCache(0))["memory_refused"] == 3  # none asked for
    assert len(caplog.records) == 1


def test_a_tile_larger_than_the_disk_budget_is_said_once_and_not_taken_for_damaged(
        tmp_path, caplog):
    # a budget smaller than one tile cached nothing without a word; a tile another server
    # on the folder (with a larger budget) had written was "did not verify (damaged or
    # altered)", counted rejected and deleted
    small, large = DiskCache(tmp_path, 50 + HEADER), DiskCache(tmp_path, 1 << 20)
    name, other = "ab" * 16, "cd" * 16
    with caplog.at_level("WARNING", logger="iste"):
        small.put(name, bytes(100))
        small.put(name, bytes(100))
        large.put(other, bytes(100))
        assert small.get(other) is None and small.get(name) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"tile cache: a tile of {(100 + HEADER) / 1e3:.3g} kB is larger than the whole disk "
        f"cache (--disk-cache-mb {(50 + HEADER) / 2**20:.3g}): tiles that large are rendered "
        "again each time, not cached; raise --disk-cache-mb"]
    assert small.rejected == 0 and large.get(other) == bytes(100)


def test_servers_sharing_a_cache_folder_keep_its_budget_together(tmp_path):
    # each server counted only its own files: N servers held N times the budget
    budget = 64 * (1000 + HEADER)
    servers = [DiskCache(tmp_path, budget) for _ in range(3)]
    for i in range(300):
        servers[i % 3].put(f"{i:032x}", bytes(1000))
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.tile"))
    assert on_disk <= budget + 3 * budget // 16  # at most 1/16 each between two scans
    kept = {p.name[:-len(".tile")] for p in tmp_path.rglob("*.tile")}
    assert {f"{i:032x}" for i in range(250, 300)} <= kept  # the most recent, whoever wrote them


def test_tiles_are_served_from_disk_while_the_folder_is_scanned_again(tmp_path, monkeypatch):
    # a put that fills 1/16 of the budget scans the folder (other servers' tiles): reads of
    # the cache waited for the whole scan (seconds on a network folder) behind its lock
    disk = DiskCache(tmp_path, 16 * (1000 + HEADER))
    disk.put(f"{1:032x}", b"kept tile")
    scanning, finish = threading.Event(), threading.Event()
    scan = DiskCache._scan

    def slow_scan(self):
        scanning.set()
        assert finish.wait(10)
        return scan(self)

    monkeypatch.setattr(DiskCache, "_scan", slow_scan)
    writer = threading.Thread(target=disk.put, args=(f"{2:032x}", bytes(1000)))
    writer.start()
    assert scanning.wait(10)
    got = []
    reader = threading.Thread(target=lambda: got.append(disk.get(f"{1:032x}")))
    reader.start()
    reader.join(2)
    served = got == [b"kept tile"]
    finish.set()
    writer.join(10)
    reader.join(10)
    assert served  # during the scan
    assert len(disk) == 2 and disk.get(f"{2:032x}") == bytes(1000)


def test_the_first_index_of_a_large_cache_does_not_hold_the_start_nor_serve_wrongly(
        tmp_path, monkeypatch):
    # the folder was indexed before the server started: 100 000 tiles took 2.3-2.8 s
    before = DiskCache(tmp_path, 1 << 20)
    kept, damaged, budget = f"{1:032x}", f"{2:032x}", 4 * (1000 + HEADER)
    for i in range(1, 7):  # 6 tiles, the budget 4 of them
        before.put(f"{i:032x}", bytes([i]) * 1000)
    tile_file(tmp_path, damaged).write_bytes(tile_file(tmp_path, damaged).read_bytes()[:-1])
    scanning, finish = threading.Event(), threading.Event()
    scan = DiskCache._scan

    def slow_scan(self):
        scanning.set()
        assert finish.wait(10), "the constructor waited for the scan"
        return scan(self)

    monkeypatch.setattr(DiskCache, "_scan", slow_scan)
    disk = DiskCache(tmp_path, budget, background=True)  # returns while the scan waits
    assert scanning.wait(10) and not disk.indexed.is_set()
    assert disk.get(kept) == bytes([1]) * 1000  # verified and served from the folder
    assert disk.get(damaged) is None and disk.rejected == 1  # never served half-checked
    disk.put(f"{9:032x}", bytes(1000))
    assert len(list(tmp_path.rglob("*.tile"))) == 6  # nothing evicted by a partial index
    finish.set()
    assert disk.indexed.wait(10)
    assert disk.nbytes <= budget and len(disk) == 4
    names = {p.name[:-len(".tile")] for p in tmp_path.rglob("*.tile")}
    assert names == {kept, f"{9:032x}", f"{5:032x}", f"{6:032x}"}  # the most recently used


def test_a_first_index_that_fails_is_said_and_the_budget_kept_for_new_tiles(
        tmp_path, monkeypatch, caplog):
    scan = DiskCache._scan

    def failing_scan(self):  # the first scan: the later ones (a put's) read the folder
        monkeypatch.setattr(DiskCache, "_scan", scan)
        raise RuntimeError("a failure of any kind")

    monkeypatch.setattr(DiskCache, "_scan", failing_scan)
    with caplog.at_level("WARNING", logger="iste"):
        disk = DiskCache(tmp_path, 2 * (1000 + HEADER), background=True)
        assert disk.indexed.wait(10)
    assert "cannot index" in caplog.text and "a failure of any kind" in caplog.text
    for i in range(3):
        disk.put(f"{i:032x}", bytes(1000))
    assert len(disk) == 2 and len(list(tmp_path.rglob("*.tile"))) == 2


def test_a_tile_another_server_wrote_since_the_last_scan_is_served_not_rendered(tmp_path):
    one, other = DiskCache(tmp_path, 1 << 20), DiskCache(tmp_path, 1 << 20)
    name = f"{7:032x}"
    other.put(name, b"tile bytes")
    assert one.get(name) == b"tile bytes" and len(one) == 1  # found on disk, and indexed
    assert one.get(f"{8:032x}") is None and len(one) == 1
    (tmp_path / name[:2] / f"{name}.tile").write_bytes(b"altered")
    assert one.get(name) is None and one.rejected == 1 and len(one) == 0


def test_model_tiles_go_to_disk_and_come_back_after_a_restart(tmp_path):
    render = Renderer()
    kw = dict(disk_name=lambda k: f"{k.col:032x}")
    first = run(lambda p: p.get(key()), render, disk=DiskCache(tmp_path, 1 << 20), **kw)
    again = run(lambda p: p.get(key()), render, disk=DiskCache(tmp_path, 1 << 20), **kw)
    assert first == again and len(render.calls) == 1


def tile_file(root, name):
    return root / name[:2] / f"{name}.tile"


@pytest.mark.parametrize("damage", ["truncated", "altered", "another tile's file",
                                    "unsealed", "a link"])
def test_a_disk_tile_that_does_not_verify_is_never_served_and_is_rendered_again(tmp_path,
                                                                               damage):
    render = Renderer()
    kw = dict(disk_name=lambda k: f"{k.col:032x}")
    first = run(lambda p: p.get(key()), render, disk=DiskCache(tmp_path, 1 << 20), **kw)
    run(lambda p: p.get(key(col=1)), render, disk=DiskCache(tmp_path, 1 << 20), **kw)
    path, other = tile_file(tmp_path, f"{0:032x}"), tile_file(tmp_path, f"{1:032x}")
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[:-3])
    elif damage == "altered":
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    elif damage == "another tile's file":
        path.write_bytes(other.read_bytes())
    elif damage == "unsealed":  # a bare tile, as older versions wrote them
        path.write_bytes(first)
    else:
        path.unlink()
        path.symlink_to(other)
    disk = DiskCache(tmp_path, 1 << 20)
    again = run(lambda p: p.get(key()), render, disk=disk, **kw)
    assert again == first == b"sr/5/0_0"
    assert [k.col for k in render.calls] == [0, 1, 0]  # rendered again, not read back
    assert disk.rejected == (damage != "a link")  # a link is not even opened
    assert not path.is_symlink() and path.read_bytes() == blob  # the good tile is back
    assert other.read_bytes() != blob


def test_the_server_loop_stays_responsive_while_the_model_works():
    render = Renderer()
    render.gate.clear()  # the model tile blocks until released

    async def go(p):
        slow = asyncio.ensure_future(p.get(key(kind="sr")))
        cheap = await asyncio.wait_for(p.get(key(kind="scan", col=1)), 60)
        # served while the model tile is held at the gate: a model blocking the loop would
        # have held the cheap tile until its gate gave up (10 s), finishing first
        assert not slow.done()
        render.gate.set()
        return cheap, await slow
    assert run(go, render) == (b"scan/5/1_0", b"sr/5/0_0")


def test_a_new_view_cancels_queued_model_tiles_it_does_not_show():
    render = Renderer()
    render.gate.clear()

    async def go(p):
        busy = await occupy_worker(p, client="a")
        stale = [asyncio.ensure_future(p.get(key(col=c), client="a")) for c in range(3)]
        other = asyncio.ensure_future(p.get(key(col=2), client="b"))  # shares col 2
        await asyncio.sleep(0.1)
        n = p.set_view("a", 1, lambda k: k.col == 1)
        assert p.set_view("a", 1, lambda k: False) == 0  # same generation: ignored
        render.gate.set()
        results = await asyncio.gather(*stale, other, busy, return_exceptions=True)
        return n, results
    n, results = run(go, render)
    assert n == 2
    assert isinstance(results[0], TileCancelled) and isinstance(results[2], TileCancelled)
    assert results[1] == b"sr/5/1_0" and results[3] == b"sr/5/2_0"
    rendered = {k.col for k in render.calls}
    assert rendered == {99, 1, 2}  # col 0 was never computed; col 2 still wanted by "b"


def test_a_disconnected_client_cancels_its_queued_tile():
    render = Renderer()
    render.gate.clear()

    async def go(p):
        busy = await occupy_worker(p)
        gone = asyncio.Event()
        req = asyncio.ensure_future(p.get(key(col=1), disconnected=gone.wait))
        await asyncio.sleep(0.1)
        gone.set()
        with pytest.raises(ClientGone):
            await req
        render.gate.set()
        await busy
        await asyncio.sleep(0.2)
        return p.status()
    status = run(go, render)
    assert [k.col for k in render.calls] == [99] and status["cancelled"] == 1


def test_newest_request_first_and_a_bounded_queue():
    render = Renderer()
    render.gate.clear()

    async def go(p):
        busy = await occupy_worker(p)
        reqs = []
        for c in range(4):
            reqs.append(asyncio.ensure_future(p.get(key(col=c))))
            await asyncio.sleep(0.02)
        render.gate.set()
        return await asyncio.gather(busy, *reqs, return_exceptions=True)
    results = run(go, render, max_queue=3)
    assert isinstance(results[1], TileCancelled)  # the oldest queued was dropped
    assert [k.col for k in render.calls] == [99, 3, 2, 1]
    # each model tile was told which tiles the worker would take next, in that order
    assert [[a.col for a in render.ahead[key(col=c)]] for c in (3, 2, 1)] == [[2, 1], [1], []]


def test_cheap_tiles_are_rendered_with_nothing_ahead():
    render = Renderer()

    async def go(p):
        return await p.get(key(kind="bicubic", col=4))
    assert run(go, render) == b"bicubic/5/4_0"
    assert render.ahead == {key(kind="bicubic", col=4): ()}


def test_a_render_error_reaches_the_client_as_one_line():
    async def go(p):
        with pytest.raises(TileFailed) as err:
            await p.get(key())
        return str(err.value), p.status()
    message, status = run(go, Renderer(fail=True))
    assert message == "tile 5/0_0 of sr could not be rendered (details in the server log)"
    assert status["errors"] == 1


def test_a_cache_folder_on_a_read_only_disk_still_serves_its_tiles(tmp_path, monkeypatch):
    """A hit touches its file (the LRU order) and an opening server makes an older, world-
    readable folder private: on a read-only disk either raised, so the server did not start
    ("Read-only file system: <folder>"), or every hit was taken for a miss and rendered again
    (its write failing). Such a folder is served as it is; one that cannot be created is a
    one-line error naming the way out."""
    render = Renderer()
    kw = dict(disk_name=lambda k: f"{k.col:032x}")
    first = run(lambda p: p.get(key()), render, disk=DiskCache(tmp_path, 1 << 20), **kw)
    tmp_path.chmod(0o755)
    tile_file(tmp_path, f"{0:032x}").chmod(0o644)

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    for name in ("os.utime", "pathlib.Path.chmod", "pathlib.Path.unlink"):
        monkeypatch.setattr(name, read_only)
    disk = DiskCache(tmp_path, 1 << 20)
    assert disk.get(f"{0:032x}") == first
    again = run(lambda p: p.get(key()), render, disk=disk, **kw)
    assert again == first and len(render.calls) == 1  # served from the disk, not rendered
    monkeypatch.setattr("pathlib.Path.mkdir", read_only)  # of a folder not there yet
    with pytest.raises(ValueError, match=r"^cannot create the tile cache .*new \(Read-only "
                                         r"file system\): choose another --cache-dir"):
        DiskCache(tmp_path / "new", 1 << 20)
