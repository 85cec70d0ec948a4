"""Running a test's worker script, or an iste command, under torchrun on two CPU ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def two_ranks(*argv: str, env: dict[str, str] | None = None, options: tuple[str, ...] = (),
              check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 [options] argv...`` (a worker script's path
    and its arguments, or ``-m iste ...``), its output captured as text, within 300 s.
    ``env``: the ranks' environment (default: this one, each rank on one thread); ``check``:
    assert that it exits 0, with the end of its stderr as the message."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if env is None else env
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *options, *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def worker(name: str) -> str:
    """The path of the worker script ``name`` of tests/ (ddp_worker.py ...)."""
    return str(Path(__file__).parent / name)
