"""Query chunks run side by side (iste.engine.parallel): same output, the threads as chosen."""

import threading
from dataclasses import replace

import pytest
import torch

from iste.data.coords import normalize
from iste.engine import parallel
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, Renderer, super_resolve
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.mark.parametrize("head", ["iste", "liif", "lte"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunks_side_by_side_equal_chunks_one_after_another(head, precision):
    torch.manual_seed(0)
    model = build_model(tiny_config(head)).eval()
    lr = torch.rand(1, 3, 30, 26)
    out_hw = (99, 86)  # x3.3, several key windows of 12 LR pixels
    serial = super_resolve(model, lr, out_hw, options=QueryOptions(
        chunk=300, stf_window=12, precision=precision, workers=1))
    for workers in (2, 3):
        side = super_resolve(model, lr, out_hw, options=QueryOptions(
            chunk=300, stf_window=12, precision=precision, workers=workers))
        assert (side - serial).abs().max() <= 1e-6


def test_workers_run_chunks_with_one_intra_op_thread_and_the_callers_state(monkeypatch):
    model = build_model(tiny_config("liif")).eval()
    seen = []
    query = model.query

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads(),
                     torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return query(*args, **kwargs)

    monkeypatch.setattr(model, "query", spy)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        super_resolve(model, torch.rand(1, 3, 20, 20), (60, 60),
                      options=QueryOptions(chunk=500, precision="bf16", workers=2))
        assert torch.get_num_threads() == 2  # the caller keeps its threads
    finally:
        torch.set_num_threads(old)
    assert len(seen) == 8  # 3600 queries in chunks of 500
    assert all(name.startswith("iste-chunks") for name, *_ in seen)
    assert {(threads, grad, autocast) for _, threads, grad, autocast in seen} == {(1, False, True)}


def test_default_workers_follow_the_threads_and_the_device():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert parallel.chunk_workers("cpu") == 2
        assert parallel.chunk_workers("cpu", 3) == 3
        assert parallel.chunk_workers(torch.device("cuda", 0)) == 1
        torch.set_num_threads(1)
        assert parallel.chunk_workers("cpu") == 1
    finally:
        torch.set_num_threads(old)
    with pytest.raises(ValueError, match="workers"):
        QueryOptions(workers=0)


def test_a_new_thread_still_gets_the_process_default_after_a_pool_starts():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        parallel.chunk_pool(5)  # its threads set 1 intra-op thread each
        got = []
        t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert got == [2]
    finally:
        torch.set_num_threads(old)


def test_map_chunks_keeps_order_reports_progress_in_the_caller_and_raises():
    caller = threading.current_thread()
    reported = []
    out = parallel.map_chunks(lambda i: i * i, range(10), 3,
                              done=lambda i, r: reported.append((i, r, threading.current_thread())))
    assert out == [i * i for i in range(10)]
    assert [(i, r) for i, r, _ in reported] == [(i, i * i) for i in range(10)]
    assert all(t is caller for *_, t in reported)

    def fail(i):
        if i == 3:
            raise RuntimeError("chunk 3")
        return i

    with pytest.raises(RuntimeError, match="chunk 3"):
        parallel.map_chunks(fail, range(8), 2)


def test_the_renderer_progress_counts_every_query_once():
    model = build_model(tiny_config("iste")).eval()
    lr = torch.rand(1, 3, 24, 24)
    frame = Frame((24, 24), (72, 72))
    with torch.no_grad():
        feats = model.encode(normalize(lr))
    counts = []
    Renderer(model, feats, frame, options=QueryOptions(chunk=200, stf_window=12, workers=2)
             ).render(range(72), range(72), progress=counts.append)
    assert sum(counts) == 72 * 72


def test_stf_key_tables_run_their_shifts_on_the_chunk_workers(monkeypatch):
    model = build_model(tiny_config("iste")).eval()
    seen = []
    fuse = model.fuse

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads(),
                     torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return fuse(*args, **kwargs)

    monkeypatch.setattr(model, "fuse", spy)
    lr = torch.rand(1, 3, 12, 12)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for workers in (2, 1):
            seen.clear()
            super_resolve(model, lr, (36, 36), options=QueryOptions(
                stf_window=12, precision="bf16", workers=workers))
            assert len(seen) == 4  # one window, four ensemble shifts
            names = {name for name, *_ in seen}
            if workers == 2:
                assert all(name.startswith("iste-chunks") for name in names)
                assert {s[1:] for s in seen} == {(1, False, True)}
            else:  # in turn: the calling thread, with its intra-op threads
                assert names == {threading.current_thread().name}
                assert {s[1:] for s in seen} == {(2, False, True)}
    finally:
        torch.set_num_threads(old)


def test_key_tables_cut_into_blocks_are_the_same_tables(monkeypatch):
    from iste.models.heads import iste as iste_head

    torch.manual_seed(0)
    model = build_model(tiny_config("iste")).eval()
    lr = torch.rand(1, 3, 30, 26)
    options = QueryOptions(chunk=300, stf_window=12, workers=2)
    whole = super_resolve(model, lr, (99, 86), options=options)
    monkeypatch.setattr(iste_head, "KEY_TABLE_BLOCK", 7)  # ~20 blocks per shift and window
    blocks = super_resolve(model, lr, (99, 86), options=options)
    assert (blocks - whole).abs().max() <= 1e-6


def test_a_chunk_queue_runs_items_on_the_workers_and_gives_the_caller_one_thread_meanwhile():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with parallel.ChunkQueue(2) as queue:
            inside = torch.get_num_threads()
            futures = [queue.submit(lambda i: (i * i, threading.current_thread().name), i)
                       for i in range(6)]
            got = [f.result() for f in futures]
        assert inside == 1 and torch.get_num_threads() == 2
        assert [square for square, _ in got] == [i * i for i in range(6)]
        assert all(name.startswith("iste-chunks") for _, name in got)
        with parallel.ChunkQueue(1) as queue:  # in the calling thread, done at once
            assert torch.get_num_threads() == 2
            future = queue.submit(lambda i: threading.current_thread(), 0)
            assert future.done() and future.result() is threading.current_thread()
    finally:
        torch.set_num_threads(old)


def test_leaving_a_chunk_queue_by_an_error_cancels_the_items_not_started():
    release, started = threading.Event(), threading.Semaphore(0)

    def hold(i):
        started.release()
        return release.wait(10)

    futures = []
    with pytest.raises(RuntimeError, match="planning failed"):
        with parallel.ChunkQueue(2) as queue:
            futures += [queue.submit(hold, i) for i in range(2)]  # both workers busy
            futures += [queue.submit(lambda i: i, i) for i in range(2, 6)]
            for _ in range(2):
                assert started.acquire(timeout=10)
            raise RuntimeError("planning failed")
    release.set()
    assert all(f.cancelled() for f in futures[2:])
    assert all(f.result() is True for f in futures[:2])


def test_key_windows_are_pipelined_with_a_bounded_number_in_flight(monkeypatch):
    """A window's key-table parts are queued before the windows ahead of it are queried (no
    barrier per window), and at most 2 * WINDOWS_AHEAD + 1 windows are planned and not yet
    placed."""
    from iste.engine import render

    torch.manual_seed(0)
    model = build_model(tiny_config("iste")).eval()
    events, parts_per_window = [], []
    submit, key_work, place = parallel.ChunkQueue.submit, model.key_work, render.Renderer._place

    def spy_submit(queue, fn, item):  # key-table parts are (shift, pixels); chunks are ints
        events.append("part" if isinstance(item, tuple) else "chunk")
        return submit(queue, fn, item)

    def spy_key_work(*args, **kwargs):
        work = key_work(*args, **kwargs)
        events.append("plan")
        parts_per_window.append(len(work.items))
        return work

    def spy_place(self, *args):
        events.append("place")
        return place(self, *args)

    monkeypatch.setattr(parallel.ChunkQueue, "submit", spy_submit)
    monkeypatch.setattr(model, "key_work", spy_key_work)
    monkeypatch.setattr(render.Renderer, "_place", spy_place)
    lr = torch.rand(1, 3, 36, 36)
    options = QueryOptions(chunk=200, stf_window=12, workers=2)
    piped = super_resolve(model, lr, (72, 72), options=options)
    assert len(parts_per_window) == 9  # 3 x 3 windows
    ahead = render.WINDOWS_AHEAD
    first_chunk = events.index("chunk")
    assert events[:first_chunk].count("part") == sum(parts_per_window[:ahead + 1])
    in_flight = 0
    for event in events:
        in_flight += {"plan": 1, "place": -1}.get(event, 0)
        assert in_flight <= 2 * ahead + 1
    assert events.count("place") == 9
    monkeypatch.setattr(parallel.ChunkQueue, "submit", submit)
    in_turn = super_resolve(model, lr, (72, 72), options=replace(options, workers=1))
    assert (piped - in_turn).abs().max() <= 1e-6


def test_a_failing_key_part_stops_the_render_and_gives_the_caller_its_threads_back(monkeypatch):
    model = build_model(tiny_config("iste")).eval()
    fuse = model.fuse
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("part failed")
        return fuse(*args, **kwargs)

    monkeypatch.setattr(model, "fuse", failing)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="part failed"):
            super_resolve(model, torch.rand(1, 3, 36, 36), (72, 72),
                          options=QueryOptions(stf_window=12, workers=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_pool_workers_keep_one_intra_op_thread_after_the_caller_sets_its_own_back():
    # torch sets a thread's intra-op threads lazily, at its first query, from the process
    # default that the caller sets back once the pool has started
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pool = parallel.chunk_pool(7)  # a worker count no other test starts
        seen = {pool.submit(lambda i: torch.get_num_threads(), i).result() for i in range(21)}
        assert seen == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_chunk_workers_see_the_callers_published_areas():
    # ensemble.published_areas() is a context variable: chunk workers ran with its default,
    # so iste.upscale inside the block gave our weights on a CPU with chunk workers (x3: the
    # last LR row's and column's pixel centres), the published ones with one worker
    from iste.models.layers.ensemble import published_areas

    model = build_model(tiny_config("liif")).eval()
    lr = torch.rand(1, 3, 20, 21, generator=torch.Generator().manual_seed(0))
    out_hw = (60, 63)
    ours = super_resolve(model, lr, out_hw, options=QueryOptions(chunk=1024, workers=1))
    with published_areas():
        one, two = (super_resolve(model, lr, out_hw, options=QueryOptions(chunk=1024, workers=n))
                    for n in (1, 2))
    assert (one - ours).abs().max() > 1e-3  # (the image has the case)
    assert (two - one).abs().max() <= 1e-6
