"""This process's memory: freed heap memory handed back to the system past a slack."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from iste.process_memory import FreedMemoryLimit
from iste.serve.runner import ServerThread
from serve_helpers import SLIDE_ID, raw_request, small_app

MB = 1 << 20
SRC = Path(__file__).resolve().parents[1] / "src"


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


TRIM_DRIVER = r"""
import ctypes, sys
from iste.process_memory import FreedMemoryLimit, rss_bytes
MB = 1 << 20
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
limit = FreedMemoryLimit(100 * MB)
block = 100_000  # below glibc's mmap threshold: blocks on the heap
blocks = [libc.malloc(block) for _ in range(3000)]
for b in blocks:
    ctypes.memset(b, 1, block)  # resident
kept = set(blocks[::50])  # pins the heap: its top is not trimmed by free() alone
for b in blocks:
    if b not in kept:
        libc.free(b)
before = rss_bytes()
print(limit.check(), (before - rss_bytes()) // MB)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_in_the_middle_of_the_heap_goes_back_to_the_system():
    # a fresh process: the test session's own heap has freed memory the blocks would reuse
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TRIM_DRIVER], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trimmed, freed_mb = proc.stdout.split()
    assert trimmed == "True" and int(freed_mb) > 150


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
