"""One measurement in a fresh process: ``python -m iste.bench.child JOB.json``.

The job (a JSON dict written by :mod:`iste.bench.suite`) names the code (``"ours"`` or
``"published"``), the model (``default_model``: the shipped one), the LR input (``.npy``,
uint8 (h, w, 3)), the output size (H, W), precision, chunk size, thread count (None: iste's
start-up choice), extra environment variables (``env``) and device. The child prints one JSON
line.

Timing: one warm-up call on a small crop of the input at the same scale (kernel selection,
allocator), then ``repeats`` timed calls; the fastest counts, as the least disturbed by other
processes on a shared machine. ``cpu_seconds`` is the process's CPU time of that call.

Peak memory: on CPU the process's resident-set high-water mark
(:func:`iste.process_memory.peak_rss_bytes`: VmHWM on Linux) after the timed calls, with the
interpreter, torch, model, input and output included; ``base_mb`` is the same mark just
before the first timed call. On CUDA:
``torch.cuda.max_memory_allocated()`` (tensors only).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch

SRFunction = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
_WARMUP_LR = 16  # LR pixels per side of the warm-up crop


def peak_rss_mb() -> float:
    """The process's RSS high-water mark in MB."""
    from iste.process_memory import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def our_sr_function(job: dict, device: torch.device) -> SRFunction:
    """``sr(lr uint8 (h, w, 3), (H, W)) -> float32 (H, W, 3) in [0, 1]`` through our engine."""
    from iste.engine.render import QueryOptions, super_resolve
    from iste.models.official import build_converted, load_official
    from iste.models.registry import build_model

    if job.get("default_model"):
        from iste.default_model import load_default
        model = load_default(device)
    elif job.get("model"):
        from iste.models.checkpoint import load_model
        model = load_model(job["model"], device=device)
    elif job.get("published_ckpt"):
        model = build_converted(load_official(job["published_ckpt"])).to(device)
    else:
        torch.manual_seed(job["seed"])
        model = build_model(job["config"]).to(device)
    model.eval()
    options = QueryOptions(chunk=job["chunk"], precision=job["precision"],
                           stf_keys=job.get("stf_keys", QueryOptions.stf_keys),
                           workers=job.get("workers"))

    def sr(lr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        x = torch.from_numpy(lr).to(device).permute(2, 0, 1)[None].float() / 255
        out = super_resolve(model, x, out_hw, options=options)
        return out[0].permute(1, 2, 0).float().cpu().numpy()

    return sr


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(sr: SRFunction, lr: np.ndarray, out_hw: tuple[int, int], *, repeats: int,
            device: torch.device) -> tuple[dict, np.ndarray]:
    """Warm up, time ``repeats`` calls; returns (figures, the last output)."""
    h, w = lr.shape[:2]
    small = lr[:min(h, _WARMUP_LR), :min(w, _WARMUP_LR)]
    small_hw = (max(1, round(small.shape[0] * out_hw[0] / h)),
                max(1, round(small.shape[1] * out_hw[1] / w)))
    sr(small, small_hw)
    _sync(device)
    base = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = best_cpu = float("inf")
    out = None
    for _ in range(max(1, repeats)):
        out = None  # free the previous output before the next call
        t0, c0 = time.perf_counter(), time.process_time()
        out = sr(lr, out_hw)
        _sync(device)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if seconds < best:
            best, best_cpu = seconds, cpu
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mb())
    mpx = out_hw[0] * out_hw[1] / 1e6
    return {"seconds": best, "cpu_seconds": best_cpu, "mpx": mpx, "mpx_per_s": mpx / best,
            "peak_mb": peak, "base_mb": base, "device": str(device),
            "threads": torch.get_num_threads()}, out


def run_job(job: dict) -> dict:
    if job.get("threads"):  # None: the start-up choice (iste.runtime)
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    lr = np.load(job["input"])
    out_hw = tuple(job["out_hw"])
    if job["kind"] == "published":
        from iste.bench.published import published_sr_function
        sr = published_sr_function(job, device)
    else:
        sr = our_sr_function(job, device)
    with torch.no_grad():
        figures, out = measure(sr, lr, out_hw, repeats=int(job.get("repeats", 1)), device=device)
    if job.get("save"):
        np.save(job["save"], out.astype(np.float32))
    return figures


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    print(json.dumps(run_job(job)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main(sys.argv[1:]))
