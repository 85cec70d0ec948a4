"""This process's memory: freed heap memory handed back to the system past a slack."""

from __future__ import annotations

import ctypes
import platform

import pytest

from iste.process_memory import FreedMemoryLimit, rss_bytes
from iste.serve.runner import ServerThread
from serve_helpers import SLIDE_ID, raw_request, small_app

MB = 1 << 20


def test_the_heap_is_trimmed_only_past_the_slack_and_from_the_size_it_came_back_to():
    sizes, trims = [1000 * MB], []
    limit = FreedMemoryLimit(100 * MB, rss=lambda: sizes[-1], trim=lambda: trims.append(1))
    for size in (1050, 1100, 900, 990):  # within 100 MB of the least seen (900)
        sizes.append(size * MB)
        assert not limit.check()
    sizes.append(1001 * MB)
    assert limit.check() and limit.trims == 1
    sizes.append(950 * MB)  # after the trim: the new base
    assert not limit.check()
    sizes.append(1049 * MB)
    assert not limit.check() and len(trims) == 1
    sizes.append(1051 * MB)
    assert limit.check() and len(trims) == 2


def test_without_a_reading_of_the_resident_set_nothing_is_trimmed():
    trims = []
    limit = FreedMemoryLimit(0, rss=lambda: None, trim=lambda: trims.append(1))
    assert not limit.check() and not trims


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_in_the_middle_of_the_heap_goes_back_to_the_system():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    limit = FreedMemoryLimit(100 * MB)
    block = 100_000  # below glibc's mmap threshold: blocks on the heap
    blocks = [libc.malloc(block) for _ in range(3000)]
    for b in blocks:
        ctypes.memset(b, 1, block)  # resident
    kept = blocks[::50]  # pins the heap: its top is not trimmed by free() alone
    for b in blocks:
        if b not in kept:
            libc.free(b)
    try:
        before = rss_bytes()
        assert limit.check()
        assert before - rss_bytes() > 150 * MB
    finally:
        for b in kept:
            libc.free(b)


def test_the_viewer_checks_the_limit_after_each_model_tile(monkeypatch):
    import iste.serve.app as app

    checks = []

    class Counting(FreedMemoryLimit):
        def check(self):
            checks.append(1)
            return super().check()

    monkeypatch.setattr(app, "FreedMemoryLimit", Counting)
    with ServerThread(small_app()) as url:
        for col in range(2):
            status, _, _ = raw_request(url, f"/slides/{SLIDE_ID}/sr_files/10/{col}_0.jpeg")
            assert status == 200
        status, _, _ = raw_request(url, f"/slides/{SLIDE_ID}/bicubic_files/10/0_0.jpeg")
    assert len(checks) == 2
