"""Computational cost like the paper's Table 8: parameters, peak memory, time per query size.

Workload (paper): an LR input of 96 x 96 pixels, encoded once, queried at every pixel of a
48 x 48, 96 x 96 and 192 x 192 output (one :func:`~iste.engine.render.super_resolve` call with
the evaluation's query options), on the device in use.

- Time: median wall time of ``repeats`` runs after one warm-up run (which also counts for
  memory), synchronised on CUDA. Timings on a shared machine are noisy: compare methods as
  ratios within one report.
- Peak memory, the memory the SR call *adds* on top of the loaded model and input:
  on CUDA ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the call
  (tensors only, not the CUDA context or the caching allocator's reserve). On CPU, where
  ``tracemalloc`` does not see torch's allocations, each (method, query size) runs in a fresh
  subprocess and the peak is the process's resident-set high-water mark after the warm-up
  call minus the resident set size just before it. On Linux the high-water mark is ``VmHWM``
  of ``/proc/self/status``, reset to the current size right before the call by writing 5 to
  ``/proc/self/clear_refs``. ``getrusage().ru_maxrss`` is only the fallback (other systems):
  on Linux a child process starts with its parent's ``ru_maxrss`` (measured: a child of a
  600 MB process reports 625 MB at start), and it cannot be reset; when the call does not
  raise it the value is only an upper bound, marked "≤".

Bicubic has no parameters and negligible cost; it is not measured.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from iste.engine.render import QueryOptions

__all__ = ["CostRow", "LR_SIDE", "QUERY_SIDES", "measure_costs", "cost_table"]

LR_SIDE = 96
QUERY_SIDES = (48, 96, 192)
_TIMEOUT_S = 3600


@dataclass(frozen=True)
class CostRow:
    """One method at one output size (``query`` x ``query`` pixels) from a 96 x 96 LR."""

    method: str
    query: int
    params: int
    peak_mb: float
    peak_is_upper_bound: bool
    time_ms: float
    device: str


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark: ``VmHWM`` on Linux (its own, even in a
    child that was forked from a large parent), ``ru_maxrss`` elsewhere."""
    hwm = _vm_hwm_bytes()
    return _maxrss_bytes() if hwm is None else hwm


def _reset_peak() -> bool:
    """Reset Linux's VmHWM to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_hwm_bytes() is not None
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure_one(spec: str, *, side: int, device: str, repeats: int,
                options: QueryOptions = QueryOptions(precision="fp32")) -> dict:
    """Measure in *this* process (the worker's job; call via :func:`measure_costs` on CPU)."""
    import gc

    import torch

    from iste.engine.render import super_resolve
    from iste.eval.methods import load_methods

    method = load_methods([spec], device=device)[0]
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, LR_SIDE, LR_SIDE, generator=gen).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before, high_before = torch.cuda.memory_allocated(dev), 0
    else:
        exact = _reset_peak()
        peak_now = _vm_hwm_bytes if exact else _maxrss_bytes
        high_before = peak_now()
        before = _rss_bytes() or high_before
    super_resolve(method.model, lr, (side, side), options=options)  # warm-up + memory
    sync()
    if dev.type == "cuda":
        peak, upper = torch.cuda.max_memory_allocated(dev) - before, False
    else:
        high = peak_now()
        peak, upper = high - before, not exact and high <= high_before
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        super_resolve(method.model, lr, (side, side), options=options)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return asdict(CostRow(method.name, side, method.parameters, max(peak, 0) / 2**20, upper,
                          1000 * times[len(times) // 2], str(dev)))


def measure_costs(specs: Sequence[str], *, device: str, repeats: int = 3,
                  options: QueryOptions = QueryOptions(precision="fp32"),
                  sides: Sequence[int] = QUERY_SIDES) -> list[CostRow]:
    """One fresh subprocess per (model spec, query size); returns rows in that order."""
    rows = []
    for spec in specs:
        for side in sides:
            job = {"spec": spec, "side": side, "device": device, "repeats": repeats,
                   "options": asdict(options)}
            proc = subprocess.run([sys.executable, "-m", "iste.eval.cost", json.dumps(job)],
                                  capture_output=True, text=True, timeout=_TIMEOUT_S)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"cost measurement of {spec} at {side} x {side} failed: {last}")
            rows.append(CostRow(**json.loads(proc.stdout.strip().splitlines()[-1])))
    return rows


def cost_table(rows: Sequence[CostRow]):
    """Paper Table 8 as a :class:`~iste.eval.tables.TableOut`."""
    from iste.eval.tables import TableOut, markdown_table

    device = rows[0].device if rows else "?"
    title = (f"Table 8. Cost of an LR input of {LR_SIDE} x {LR_SIDE} px queried at every pixel "
             f"of the output, on {device}: parameters, peak memory added by the SR call, "
             "median time.")
    body, long_rows = [], []
    for r in rows:
        mem = f"{'≤' if r.peak_is_upper_bound else ''}{r.peak_mb:.0f}"
        body.append([f"{r.query} × {r.query}", r.method, f"{r.params / 1e6:.2f}M", mem,
                     f"{r.time_ms:.0f}"])
        long_rows.append({"table": "table8_cost", "method": r.method, "scale": r.query / LR_SIDE,
                          "metric": "cost", **asdict(r)})
    md = markdown_table(["Query", "Method", "Params", "Mem (MB)", "Time (ms)"], body)
    return TableOut("table8_cost", title, f"**{title}**\n\n{md}", long_rows)


def _worker(argv: Sequence[str]) -> int:
    import warnings

    job = json.loads(argv[0])
    warnings.simplefilter("ignore")
    row = measure_one(job["spec"], side=job["side"], device=job["device"],
                      repeats=job["repeats"], options=QueryOptions(**job["options"]))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
