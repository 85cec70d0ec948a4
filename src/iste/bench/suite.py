"""The benchmark plan: which configurations run, each in its own child process.

Sections:

- ``engine``: our heads (every registry entry; paper-size heads, EDSR-baseline encoder, random
  weights from one seed) at every scale and precision on a ``input_size`` x ``input_size`` LR
  image.
- ``published``: the comparison of the issue (``compare_size`` LR at each of ``compare_scales``):
  the published code (when a checkout is given) and ours with the *same* weights (the
  published model's state dict, converted by our importer), interleaved over
  ``compare_repeats`` rounds so that both sides see the same machine load; the fastest round
  of each counts. Our outputs are checked against the published ones (all but ISTE must agree
  to ~1e-5 in fp32; ISTE differs by design, its STF key set being a window, not the call's
  queries).
- ``keys``: the STF key-count study (:mod:`iste.bench.keys`), in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iste.bench.published import BENCHABLE
from iste.children import how_it_ended, run_to_end
from iste.engine.frame import check_scale
from iste.engine.render import default_chunk
from iste.models.registry import HEADS

METHODS = tuple(HEADS)
PRECISIONS = ("fp32", "bf16")
_TIMEOUT_S = 4 * 3600
MAX_INPUT_SIZE = 4096
"""Largest LR side benchmarked (a 16 384 x 16 384 output at x4, 3 GB as float32; beyond the
real H&E test tiles, ~700 px, the input is random pixels)."""
_BIG_CHUNK_FREE_GB = 12  # the published ISTE with 30000-query chunks peaks near 8.3 GB


def paper_config(method: str) -> dict:
    """Paper-size head on the EDSR-baseline encoder; ISTE with the published token layout
    (the same work as the published code, so that timings compare like for like)."""
    head_args = {"lfi_layout": "published"} if method == "iste" else {}
    return {"head": method, "encoder": "edsr-baseline", "head_args": head_args}


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 2
    device: str = "cpu"
    input_size: int = 256
    scales: tuple[float, ...] = (2.0, 3.3, 4.0)
    methods: tuple[str, ...] = METHODS
    precisions: tuple[str, ...] = PRECISIONS
    chunk: int | None = None  # None: the engine's default for the device
    repeats: int = 1
    compare_size: int = 64
    compare_scales: tuple[float, ...] = (4.0,)
    compare_repeats: int = 3
    published: dict[str, str] = field(default_factory=dict)  # method -> checkout directory
    published_pythonpath: tuple[str, ...] = ()
    published_iste_chunks: tuple[int, ...] = (4096, 30000)
    seed: int = 0

    def __post_init__(self):
        if self.threads < 1 or self.repeats < 1 or self.compare_repeats < 1:
            raise ValueError("threads and repeats must be positive")
        if self.input_size < 16 or self.compare_size < 16:
            raise ValueError("input sizes must be at least 16 pixels")
        if max(self.input_size, self.compare_size) > MAX_INPUT_SIZE:
            raise ValueError(f"input sizes must be at most {MAX_INPUT_SIZE} pixels, got "
                             f"{max(self.input_size, self.compare_size)}")
        if not self.published_iste_chunks or min(self.published_iste_chunks) < 1:
            raise ValueError("--published-iste-chunks must be query counts >= 1, got "
                             f"{self.published_iste_chunks}")
        for scale in (*self.scales, *self.compare_scales):
            check_scale(scale)
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be positive, got {self.chunk}")
        for name, values in (("scales", self.scales), ("methods", self.methods),
                             ("precisions", self.precisions),
                             ("compare scales", self.compare_scales)):
            if not values:
                raise ValueError(f"no {name} given: name at least one")
        bad = set(self.methods) - set(METHODS) | set(self.published) - set(BENCHABLE)
        if bad:
            raise ValueError(f"unknown method(s) {sorted(bad)}; expected {', '.join(METHODS)} "
                             f"(published code: {', '.join(BENCHABLE)})")
        if set(self.precisions) - set(PRECISIONS):
            raise ValueError(f"precision must be among {PRECISIONS}, got {self.precisions}")
        for method, path in self.published.items():
            if not (Path(path) / "models").is_dir():
                raise ValueError(f"--published-{method} {path}: not a checkout of the published "
                                 "code (no models/ directory)")


def machine_load() -> dict:
    """Load averages and the CPU count: how busy the machine was."""
    one, five, _ = os.getloadavg()
    return {"load_1min": round(one, 2), "load_5min": round(five, 2), "cpus": os.cpu_count()}


def _available_gb() -> float | None:
    from iste.process_memory import proc_kib_bytes

    available = proc_kib_bytes("/proc/meminfo", "MemAvailable")
    return None if available is None else available / 2**30


def _realtime_priority() -> None:  # in the child, before it runs
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))


def realtime_priority_allowed() -> bool:
    """Whether this process may run children at real-time priority (Linux ``SCHED_RR``:
    root or CAP_SYS_NICE); tried on this process and set back."""
    if not hasattr(os, "SCHED_RR"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (OSError, PermissionError):
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def run_child(job: dict, workdir: Path, *, pythonpath: tuple[str, ...] = (),
              module: str = "iste.bench.child", realtime: bool = False) -> dict:
    """Run one job in a fresh interpreter (``python -m module JOB.json``); its figures, or
    {"error": ...}. ``realtime``: the child at real-time priority (``SCHED_RR`` 1), so that
    ordinary processes of a shared machine cannot take its cores: a quiet machine for it
    (:func:`realtime_priority_allowed` first)."""
    fd, path = tempfile.mkstemp(suffix=".json", dir=workdir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(job, f)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if job.get("threads"):
            env[var] = str(job["threads"])
        else:  # the start-up choice of a plain `iste` process
            env.pop(var, None)
    for var, value in job.get("env", {}).items():  # None: unset
        env.pop(var, None) if value is None else env.__setitem__(var, value)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath,
                                             env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        proc = run_to_end([sys.executable, "-m", module, path], env=env, timeout=_TIMEOUT_S,
                          preexec_fn=_realtime_priority if realtime else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"its process {how_it_ended(proc)}"}
    return json.loads(lines[-1])


def _job(cfg: BenchConfig, input_path: Path, out_hw, **extra) -> dict:
    return {"input": str(input_path), "out_hw": list(out_hw), "threads": cfg.threads,
            "device": cfg.device, "seed": cfg.seed,
            "chunk": cfg.chunk or default_chunk(cfg.device), "precision": "fp32",
            "repeats": 1, **extra}


def run_engine(cfg: BenchConfig, lr: np.ndarray, workdir: Path, log=print) -> list[dict]:
    """Our methods x scales x precisions on ``lr`` (uint8 (h, w, 3))."""
    path = workdir / "engine_lr.npy"
    np.save(path, lr)
    rows = []
    for method in cfg.methods:
        for scale in cfg.scales:
            out_hw = (round(lr.shape[0] * scale), round(lr.shape[1] * scale))
            for precision in cfg.precisions:
                job = _job(cfg, path, out_hw, kind="ours", method=method,
                           config=paper_config(method), precision=precision,
                           repeats=cfg.repeats)
                res = run_child(job, workdir)
                row = {"method": method, "scale": scale, "precision": precision,
                       "out_hw": list(out_hw), **res, **machine_load()}
                log(f"engine {method} x{scale:g} {precision}: {_brief(res)}")
                rows.append(row)
    return rows


def _comparison_jobs(cfg: BenchConfig, path: Path, out_hw, workdir: Path,
                     tag: str) -> list[tuple[str, dict]]:
    jobs = []
    for method in cfg.methods:
        checkout = cfg.published.get(method)
        ckpt = str(workdir / f"published_{method}_{tag}.pth") if checkout else None
        if checkout:
            chunks = cfg.published_iste_chunks if method == "iste" else (4096,)
            for i, chunk in enumerate(chunks):
                jobs.append((f"published {method} chunk {chunk}",
                             _job(cfg, path, out_hw, kind="published", method=method,
                                  checkout=checkout, chunk=chunk,
                                  save_ckpt=ckpt if i == 0 else None,
                                  encoder_donors=[d for d in cfg.published.values()
                                                  if d != checkout],
                                  repeats=cfg.repeats,
                                  save=str(workdir / f"out_published_{method}_{chunk}_{tag}.npy"))))
        for precision in cfg.precisions:
            jobs.append((f"ours {method} {precision}",
                         _job(cfg, path, out_hw, kind="ours", method=method, precision=precision,
                              config=paper_config(method), published_ckpt=ckpt,
                              repeats=cfg.repeats,
                              save=str(workdir / f"out_ours_{method}_{precision}_{tag}.npy"))))
    return jobs


# how the error of a row left out on purpose begins (too little memory; the published model's
# failure, a row of its own, leaving no weights to share): not a failure of the bench
SKIPPED = "skipped: "


def run_comparison(cfg: BenchConfig, lr: np.ndarray, scale: float, workdir: Path,
                   log=print) -> list[dict]:
    """Published vs ours at ``scale`` on ``lr``, interleaved rounds, fastest kept."""
    tag = f"x{scale:g}"
    path = workdir / f"compare_lr_{tag}.npy"
    np.save(path, lr)
    out_hw = (round(lr.shape[0] * scale), round(lr.shape[1] * scale))
    jobs = _comparison_jobs(cfg, path, out_hw, workdir, tag)
    best: dict[str, dict] = {}
    for rnd in range(cfg.compare_repeats):
        for name, job in jobs:
            if job.get("chunk", 0) > 4096 and job["kind"] == "published":
                free = _available_gb()
                if free is not None and free < _BIG_CHUNK_FREE_GB:
                    best[name] = {"error": f"{SKIPPED}{free:.1f} GB available, needs ~9 GB"}
                    continue
                if rnd > 0:  # minutes per run and ~8 GB: once is enough
                    continue
            if job.get("published_ckpt") and not Path(job["published_ckpt"]).is_file():
                best[name] = {"error": f"{SKIPPED}the published model did not run, so there are "
                                       "no shared weights"}
                continue
            res = run_child(job, workdir, pythonpath=cfg.published_pythonpath
                            if job["kind"] == "published" else ())
            if job["kind"] == "published" and "No module named" in res.get("error", ""):
                res["error"] += " (put it on the child's path: --published-pythonpath DIR)"
            res.update(machine_load())
            log(f"round {rnd + 1} {name} {tag}: {_brief(res)}")
            old = best.get(name)
            if old is None or "error" in old \
                    or ("error" not in res and res["seconds"] < old["seconds"]):
                best[name] = {**res, "peak_mb": max(res.get("peak_mb", 0),
                                                    (old or {}).get("peak_mb", 0))}
    rows = []
    for name, job in jobs:
        res = best[name]
        row = {"name": name, "kind": job["kind"], "method": job["method"], "scale": scale,
               "precision": job.get("precision") if job["kind"] == "ours" else "fp32",
               "chunk": job["chunk"], "out_hw": list(out_hw), **res}
        if job["kind"] == "ours" and job.get("published_ckpt"):
            row["weights"] = "published model's state dict, converted"
            row.update(_parity(workdir, job["method"], job["precision"], tag))
        rows.append(row)
    return rows


def _parity(workdir: Path, method: str, precision: str, tag: str) -> dict:
    ref = workdir / f"out_published_{method}_4096_{tag}.npy"
    ours = workdir / f"out_ours_{method}_{precision}_{tag}.npy"
    if not (ref.is_file() and ours.is_file()):
        return {}
    a, b = np.load(ref), np.load(ours)
    return {"max_abs_diff_vs_published": float(np.abs(a - b).max())}


def _brief(res: dict) -> str:
    if "error" in res:
        return res["error"]
    return (f"{res['mpx_per_s']:.4f} Mpx/s ({res['seconds']:.1f} s, "
            f"cpu {res['cpu_seconds']:.1f} s), peak {res['peak_mb']:.0f} MB")
