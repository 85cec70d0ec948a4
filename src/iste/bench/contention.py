"""Throughput on a shared CPU: the API's shipped model beside another busy process, and on a
quiet machine.

Each setting (thread count x OpenMP wait policy x query chunk) runs in a fresh child process
(:mod:`iste.bench.child`) on the same real H&E input, in interleaved rounds (fastest kept),
so that every setting sees the same load, under three loads:

- ``quiet (real-time priority)``: each child at real-time priority (Linux ``SCHED_RR``,
  where this process may set it: root or CAP_SYS_NICE), so the other processes of a shared
  machine cannot take its cores: the quiet machine that a shared one never is;
- ``as is``: the machine as it is;
- ``+1 busy process``: beside one competing process of ours spinning on a core
  (``python -c "while True: pass"``).

The figures of merit, each within one load: every setting's throughput as a fraction of the
best setting (the start-up defaults of :mod:`iste.runtime` should keep >= 80 % of the best
beside a busy process), and the defaults against iste before #15 (``vs_old_default``: on a
quiet machine the defaults should not be slower).

``libgomp's spin`` is GNU OpenMP's behaviour without any variable (threads spin ~300 000
times, a few ms, at every barrier; reproduced with ``GOMP_SPINCOUNT=300000``), i.e. iste before
:mod:`iste.runtime`; ``passive`` is ``OMP_WAIT_POLICY=PASSIVE``, iste's default now; the
bounded spin (``GOMP_SPINCOUNT=30000``, ~0.3 ms) is the compromise that was measured against
it. ``chunks in turn`` runs the query chunks and STF key tables one after another with all
intra-op threads (an OpenMP barrier per operation); ``side by side`` is the default now: one
chunk (or key-table part) per thread, one intra-op thread each (:mod:`iste.engine.parallel`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from iste.bench.suite import BenchConfig, machine_load, realtime_priority_allowed, run_child
from iste.engine.render import CPU_CHUNK

SPIN = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"}
BOUNDED_SPIN = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "30000"}
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}
DEFAULTS = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}  # iste.runtime decides
DEFAULTS_LABEL = "iste defaults"
OLD_DEFAULT_LABEL = "{cpus} threads, libgomp's spin, chunks in turn (iste before #15)"
QUIET, AS_IS, BUSY = "quiet (real-time priority)", "as is", "+1 busy process"


def settings(cpus: int) -> list[tuple[str, dict]]:
    """(label, job fields) of every setting measured; the first is iste's defaults (passive
    wait, query chunks and key tables side by side: :mod:`iste.engine.parallel`; the model's
    default chunk). iste before #15 ran 1024-query chunks whatever the model."""
    out = [(DEFAULTS_LABEL, {"threads": None, "env": DEFAULTS}),
           ("1 thread", {"threads": 1, "env": PASSIVE})]
    if cpus > 1:
        out += [(OLD_DEFAULT_LABEL.format(cpus=cpus),
                 {"threads": cpus, "env": SPIN, "workers": 1, "chunk": CPU_CHUNK}),
                (f"{cpus} threads, passive, chunks in turn",
                 {"threads": cpus, "env": PASSIVE, "workers": 1}),
                (f"{cpus} threads, libgomp's spin, chunks side by side",
                 {"threads": cpus, "env": SPIN}),
                (f"{cpus} threads, bounded spin (GOMP_SPINCOUNT=30000), chunks side by side",
                 {"threads": cpus, "env": BOUNDED_SPIN})]
    return out


def loads(realtime: bool) -> tuple[str, ...]:
    """The loads measured, the quiet one only where real-time priority may be set."""
    return ((QUIET,) if realtime else ()) + (AS_IS, BUSY)


# a core kept busy in pure Python until its parent (argv[1]) is gone: a bench killed
# outright (kill -9, the out-of-memory killer) left "while True: pass" spinning a core for
# good, an orphan no one would stop
_BUSY_LOOP = ("import os, sys\n"
              "while os.getppid() == int(sys.argv[1]):\n"
              "    for _ in range(100_000):\n"
              "        pass\n")


def _busy_process() -> subprocess.Popen:
    """A process that keeps one core busy until killed, or until this process has gone."""
    return subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(os.getpid())])


def contention_study(cfg: BenchConfig, lr: np.ndarray, scale: float, workdir: Path, *,
                     rounds: int = 2, cpus: int = 2, log=print) -> list[dict]:
    """Rows {load, setting, mpx_per_s, fraction_of_best, vs_old_default, ...}; the loads of
    :func:`loads` (the quiet one where real-time priority may be set)."""
    path = workdir / "contention_lr.npy"
    np.save(path, lr)
    out_hw = (round(lr.shape[0] * scale), round(lr.shape[1] * scale))
    rows = []
    for load in loads(realtime_priority_allowed()):
        busy = _busy_process() if load == BUSY else None
        best: dict[str, dict] = {}
        try:
            time.sleep(0.5 if busy else 0)
            for rnd in range(rounds):
                for label, fields in settings(cpus):
                    job = {"input": str(path), "out_hw": list(out_hw), "device": cfg.device,
                           "kind": "ours", "default_model": True, "precision": "fp32",
                           "chunk": None, "repeats": 2, "seed": cfg.seed, **fields}
                    res = {**run_child(job, workdir, realtime=load == QUIET), **machine_load()}
                    log(f"contention [{load}] round {rnd + 1} {label}: "
                        f"{res.get('mpx_per_s', res.get('error'))}")
                    old = best.get(label)
                    if old is None or "error" in old or res.get("mpx_per_s", 0) > old["mpx_per_s"]:
                        best[label] = res
        finally:
            if busy:
                busy.kill()
                busy.wait()
        rows += _ratios(load, best, scale, out_hw, cpus)
    return rows


def _ratios(load: str, best: dict[str, dict], scale: float, out_hw, cpus: int) -> list[dict]:
    """One load's rows: each setting against the best and the defaults against the old."""
    rate = {label: res.get("mpx_per_s", 0) for label, res in best.items()}
    top = max(rate.values(), default=0) or float("nan")
    old = rate.get(OLD_DEFAULT_LABEL.format(cpus=cpus)) or float("nan")
    return [{"load": load, "setting": label, "scale": scale, "out_hw": list(out_hw),
             "fraction_of_best": rate[label] / top,
             "vs_old_default": rate[label] / old if label == DEFAULTS_LABEL else None,
             **best[label]} for label, _ in settings(cpus)]
