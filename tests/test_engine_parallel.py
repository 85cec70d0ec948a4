"""Query chunks run side by side (iste.engine.parallel): same output, the threads as chosen."""

import threading

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
