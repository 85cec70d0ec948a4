"""Throughput on a shared CPU: the API's shipped model beside another busy process.

Each setting (thread count x OpenMP wait policy x query chunk) runs in a fresh child process
(:mod:`iste.bench.child`) on the same real H&E input, first on the machine as it is, then with
one competing process of ours spinning on a core (``python -c "while True: pass"``), in
interleaved rounds (fastest kept), so that every setting sees the same load. The figure of
merit is each setting's throughput as a fraction of the best setting *under the same load*:
the start-up defaults (:mod:`iste.runtime`) should keep >= 80 % of the best.

``libgomp's spin`` is GNU OpenMP's behaviour without any variable (threads spin ~300 000
times, a few ms, at every barrier; reproduced with ``GOMP_SPINCOUNT=300000``), i.e. iste before
:mod:`iste.runtime`; ``passive`` is ``OMP_WAIT_POLICY=PASSIVE``, iste's default now.
``chunks in turn`` runs the query chunks one after another with all intra-op threads (an
OpenMP barrier per operation); ``side by side`` is the default now: one chunk per thread,
one intra-op thread each (:mod:`iste.engine.parallel`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from iste.bench.suite import BenchConfig, machine_load, run_child

SPIN = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"}
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}
DEFAULTS = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}  # iste.runtime decides


def settings(cpus: int) -> list[tuple[str, dict]]:
    """(label, job fields) of every setting measured; the first is iste's defaults (passive
    wait, query chunks side by side: :mod:`iste.engine.parallel`)."""
    out = [("iste defaults", {"threads": None, "env": DEFAULTS}),
           ("1 thread", {"threads": 1, "env": PASSIVE})]
    if cpus > 1:
        out += [(f"{cpus} threads, libgomp's spin, chunks in turn (iste before #15)",
                 {"threads": cpus, "env": SPIN, "workers": 1}),
                (f"{cpus} threads, passive, chunks in turn",
                 {"threads": cpus, "env": PASSIVE, "workers": 1}),
                (f"{cpus} threads, libgomp's spin, chunks side by side",
                 {"threads": cpus, "env": SPIN})]
    return out


def _busy_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contention_study(cfg: BenchConfig, lr: np.ndarray, scale: float, workdir: Path, *,
                     rounds: int = 2, cpus: int = 2, log=print) -> list[dict]:
    """Rows {load: "as is" | "+1 busy process", setting, mpx_per_s, fraction_of_best, ...}."""
    from iste.engine.render import default_chunk

    path = workdir / "contention_lr.npy"
    np.save(path, lr)
    out_hw = (round(lr.shape[0] * scale), round(lr.shape[1] * scale))
    rows = []
    for load in ("as is", "+1 busy process"):
        busy = _busy_process() if load != "as is" else None
        best: dict[str, dict] = {}
        try:
            time.sleep(0.5 if busy else 0)
            for rnd in range(rounds):
                for label, fields in settings(cpus):
                    job = {"input": str(path), "out_hw": list(out_hw), "device": cfg.device,
                           "kind": "ours", "default_model": True, "precision": "fp32",
                           "chunk": default_chunk(cfg.device), "repeats": 2, "seed": cfg.seed,
                           **fields}
                    res = {**run_child(job, workdir), **machine_load()}
                    log(f"contention [{load}] round {rnd + 1} {label}: "
                        f"{res.get('mpx_per_s', res.get('error'))}")
                    old = best.get(label)
                    if old is None or "error" in old or res.get("mpx_per_s", 0) > old["mpx_per_s"]:
                        best[label] = res
        finally:
            if busy:
                busy.kill()
                busy.wait()
        top = max((r.get("mpx_per_s", 0) for r in best.values()), default=0) or float("nan")
        for label, _ in settings(cpus):
            res = best[label]
            rows.append({"load": load, "setting": label, "scale": scale, "out_hw": list(out_hw),
                         "fraction_of_best": res.get("mpx_per_s", 0) / top, **res})
    return rows
