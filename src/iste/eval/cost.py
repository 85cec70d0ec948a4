"""Computational cost like the paper's Table 8: parameters, peak memory, time per query size.

Two workloads on an LR input of 96 x 96 pixels, on the device in use:

- ``"query-batch"`` (Table 8, the paper's way): the paper's "48 x 48, 96 x 96 and 192 x 192
  output pixels for each query" is the number of queries sent to the model in one call, the
  published test's ``eval_bsize``: its memory grows with it (ISTE 1.8 -> 12.7 GB, because the
  published STF compares every query of a call with every other) while its time falls (fewer
  calls). The input is encoded once, then the x2 output (192 x 192 = 36 864 pixel centres,
  row-major) is decoded in plain ``model.query(feats, coord, cell)`` calls of 48², 96² or 192²
  queries (16, 4 or 1 calls) — the published ``batched_predict``; for ISTE each call's queries
  are also STF's key set. Time: the whole SR, encoding included (shown apart too); memory:
  encoding plus the calls.
- ``"output"`` (Table 8b, ours): every pixel of a 48 x 48, 96 x 96 and 192 x 192 output
  (x0.5, x1, x2) through one :func:`~iste.engine.render.super_resolve` call with the
  evaluation's query options (our engine: bounded chunks, windowed STF keys).

- Time: median wall time of ``repeats`` runs (:func:`median_times`) after one warm-up run
  (which also counts for memory), synchronised on CUDA. Timings on a shared machine are
  noisy: compare methods as ratios within one report.
- Peak memory, the memory the SR call *adds* on top of the loaded model and input:
  on CUDA ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the call
  (tensors only, not the CUDA context or the caching allocator's reserve). On CPU, where
  ``tracemalloc`` does not see torch's allocations, each (method, query size) runs in a fresh
  subprocess and the peak is the process's resident-set high-water mark after the warm-up
  call minus the resident set size just before it (:mod:`iste.process_memory`: Linux's
  ``VmHWM``, reset right before the call; elsewhere ``ru_maxrss``, which cannot be reset:
  when the call does not raise it the value is only an upper bound, marked "≤").

Bicubic has no parameters and negligible cost; it is not measured.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from iste.children import ChildFailed, how_it_ended, run_to_end
from iste.engine.render import QueryOptions
from iste.process_memory import maxrss_bytes, reset_peak_rss, rss_bytes, vm_hwm_bytes

__all__ = ["CostRow", "LR_SIDE", "QUERY_SIDES", "WORKLOADS", "measure_costs", "cost_table",
           "median_times"]

LR_SIDE = 96
QUERY_SIDES = (48, 96, 192)
QUERY_BATCH_SCALE = 2  # query batches are drawn from the x2 output, 192 x 192 pixels
WORKLOADS = ("query-batch", "output")
_TIMEOUT_S = 3600


@dataclass(frozen=True)
class CostRow:
    """One method at one query size ``query`` (``query``² queries in one call, or a ``query``
    x ``query`` output: ``workload``) from a 96 x 96 LR; ``encode_ms``: the encoder alone
    (query-batch workload; 0 otherwise)."""

    method: str
    query: int
    params: int
    peak_mb: float
    peak_is_upper_bound: bool
    time_ms: float
    device: str
    workload: str = "output"
    encode_ms: float = 0.0


def _query_batch_call(model, lr, side: int, options: QueryOptions):
    """A function that encodes ``lr`` and decodes the x2 output in plain calls of ``side``²
    queries, returning (total seconds, encoding seconds)."""
    import torch

    from iste.data.coords import make_cell, make_coord, normalize
    from iste.engine.render import autocast_for

    out_hw = (QUERY_BATCH_SCALE * lr.shape[-2], QUERY_BATCH_SCALE * lr.shape[-1])
    n = side * side
    if n > out_hw[0] * out_hw[1]:
        raise ValueError(f"a query batch of {side}² exceeds the x2 output of {out_hw}")
    coord = make_coord(out_hw, device=lr.device)[None]
    cell = make_cell(out_hw, coord.shape[1], device=lr.device)[None]

    def run(sync) -> tuple[float, float]:
        with torch.no_grad(), autocast_for(lr.device, options.resolved(model).precision):
            t0 = time.perf_counter()
            feats = model.encode(normalize(lr))
            sync()
            t1 = time.perf_counter()
            for i in range(0, coord.shape[1], n):
                model.query(feats, coord[:, i:i + n], cell[:, i:i + n])
            sync()
        return time.perf_counter() - t0, t1 - t0

    return run


def median_times(runs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The medians of the (total, encoding) seconds of ``runs``, each taken on its own: with an
    even number of runs the mean of the middle two (not the upper one: of 2 runs, the slower)."""
    if not runs:
        raise ValueError("no timed runs")
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def measure_one(spec: str, *, side: int, device: str, repeats: int,
                options: QueryOptions = QueryOptions(precision="fp32"), workload: str = "output",
                lr_side: int = LR_SIDE) -> dict:
    """Measure in *this* process (the worker's job; call via :func:`measure_costs` on CPU)."""
    import gc

    import torch

    from iste.engine.render import super_resolve
    from iste.eval.methods import load_methods

    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    method = load_methods([spec], device=device)[0]
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, lr_side, lr_side, generator=gen).to(dev)
    # this device's kernels, not the current device's (cuda:1 asked for)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if workload == "query-batch":
        call = _query_batch_call(method.model, lr, side, options)
    else:
        def call(sync):
            t0 = time.perf_counter()
            super_resolve(method.model, lr, (side, side), options=options)
            sync()
            return time.perf_counter() - t0, 0.0
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before, high_before = torch.cuda.memory_allocated(dev), 0
    else:
        exact = reset_peak_rss()
        peak_now = vm_hwm_bytes if exact else maxrss_bytes
        high_before = peak_now()
        before = rss_bytes() or high_before
    call(sync)  # warm-up + memory
    if dev.type == "cuda":
        peak, upper = torch.cuda.max_memory_allocated(dev) - before, False
    else:
        high = peak_now()
        peak, upper = high - before, not exact and high <= high_before
    seconds, encode = median_times([call(sync) for _ in range(repeats)])
    return asdict(CostRow(method.name, side, method.parameters, max(peak, 0) / 2**20, upper,
                          1000 * seconds, str(dev), workload, 1000 * encode))


def measure_costs(specs: Sequence[str], *, device: str, repeats: int = 3,
                  options: QueryOptions = QueryOptions(precision="fp32"),
                  sides: Sequence[int] = QUERY_SIDES, workload: str = "query-batch",
                  lr_side: int = LR_SIDE) -> list[CostRow]:
    """One fresh subprocess per (model spec, query size); returns rows in that order.
    ``lr_side``: the LR input's side (the paper's 96; smaller only for quick checks)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    rows = []
    for spec in specs:
        for side in sides:
            job = {"spec": spec, "side": side, "device": device, "repeats": repeats,
                   "options": asdict(options), "workload": workload, "lr_side": lr_side}
            proc = run_to_end([sys.executable, "-m", "iste.eval.cost", json.dumps(job)],
                              timeout=_TIMEOUT_S)
            if proc.returncode != 0:  # one line (iste.children): it ended a whole evaluation
                raise ChildFailed(f"cost measurement of {spec} at {side} x {side}: its process "
                                  f"{how_it_ended(proc)}; the scores are in results.json "
                                  "and the tables written; rerun, or with --no-cost to skip "
                                  "Table 8")
            rows.append(CostRow(**json.loads(proc.stdout.strip().splitlines()[-1])))
    return rows


def cost_table(rows: Sequence[CostRow]):
    """Paper Table 8 (query-batch rows) or our Table 8b (output rows) as a
    :class:`~iste.eval.tables.TableOut`; ``rows`` all of one workload."""
    from iste.eval.tables import TableOut, markdown_table, markdown_text

    device = rows[0].device if rows else "?"
    batch = bool(rows) and rows[0].workload == "query-batch"
    if batch:
        key = "table8_cost"
        title = (f"Table 8. Cost as the paper measures it: an LR input of {LR_SIDE} x {LR_SIDE} "
                 f"px encoded once, its x2 output (192 x 192) decoded in model calls of 48², "
                 f"96² or 192² queries each (for ISTE also STF's keys), on {device}: "
                 "parameters, peak memory added by the SR, median time of the whole SR "
                 "(encoding included; also shown apart).")
        head = ["Queries per call", "Method", "Params", "Mem (MB)", "Time (ms)", "Encode (ms)"]
    else:
        key = "table8b_output"
        title = (f"Table 8b. Cost of whole outputs with our engine: an LR input of {LR_SIDE} x "
                 f"{LR_SIDE} px SR'd to every pixel of a 48 x 48, 96 x 96 and 192 x 192 output "
                 f"(bounded query chunks, windowed STF keys), on {device}: parameters, peak "
                 "memory added by the SR call, median time.")
        head = ["Output", "Method", "Params", "Mem (MB)", "Time (ms)"]
    body, long_rows = [], []
    for r in rows:
        mem = f"{'≤' if r.peak_is_upper_bound else ''}{r.peak_mb:.0f}"
        size = f"{r.query}² = {r.query * r.query}" if batch else f"{r.query} × {r.query}"
        row = [size, markdown_text(r.method), f"{r.params / 1e6:.2f}M", mem, f"{r.time_ms:.0f}"]
        body.append(row + [f"{r.encode_ms:.0f}"] if batch else row)
        long_rows.append({"table": key, "method": r.method, "scale": r.query / LR_SIDE,
                          "metric": "cost", **asdict(r)})
    md = markdown_table(head, body)
    return TableOut(key, title, f"**{title}**\n\n{md}", long_rows)


def _worker(argv: Sequence[str]) -> int:
    import warnings

    job = json.loads(argv[0])
    warnings.simplefilter("ignore")
    row = measure_one(job["spec"], side=job["side"], device=job["device"],
                      repeats=job["repeats"], options=QueryOptions(**job["options"]),
                      workload=job["workload"], lr_side=job["lr_side"])
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
