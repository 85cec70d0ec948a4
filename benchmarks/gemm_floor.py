"""The fp32 floor of the 64 x 64 x4 reference point: per-query GEMM work at measured GEMM speed.

    python benchmarks/gemm_floor.py [--threads 2] [--published ../ISTE] [--rounds 3]

After the structural savings (DESIGN.md section 6: F_LFIC, STF and the LPD's first feature
layer computed once per LR pixel), what every output pixel still needs, for each of its four
ensemble neighbours, is the LTD (256 -> 256 -> 256 -> 256 -> 3) and the rest of the LPD (the
4 extra inputs of its first layer, 256 -> 256 -> 256 -> 3). These are dense GEMMs; their FLOPs
are counted from the model's own layer shapes. In the same run this script measures

- the GEMM rate: iste's fused linear (oneDNN, as the engine calls it) on rows of 4 x 1024
  queries x 256 -> 256, fp32, best of several;
- the engine: the paper-size ISTE (EDSR-baseline, random weights) on a 64 x 64 real H&E
  input at x4, fp32, best of ``rounds``, with its query chunks side by side (the default)
  and in turn (``workers=1``);
- optionally the published ISTE on the same input (``--published``), via ``iste bench``'s child.

and prints two floors at the measured GEMM rate: the per-query matmuls alone, and all dense
products of the run (plus the per-input work: encoder, LFI, convolutions, STF similarity and
fusion, :func:`per_input_flops`), everything else (gathers, sine, ensemble, memory traffic)
taken as free; and the largest speed-up over the published code that any fp32 implementation
doing these products could reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def per_query_flops(model) -> float:
    """FLOPs of the per-query GEMMs of one output pixel (4 ensemble neighbours)."""
    flops = 0.0
    ltd = [m for m in model.ltd.modules() if isinstance(m, torch.nn.Linear)]
    flops += sum(2 * m.in_features * m.out_features for m in ltd)
    lpd = [m for m in model.lpd.modules() if isinstance(m, torch.nn.Linear)]
    first, rest = lpd[0], lpd[1:]
    extra = first.in_features - model.config.hidden_dim  # rel (2) + cell (2)
    flops += 2 * extra * first.out_features + sum(2 * m.in_features * m.out_features for m in rest)
    return 4 * flops


def per_input_flops(model, lr: torch.Tensor, keys: int = 2304) -> float:
    """FLOPs of the work done once per input (not per query), all of it dense products:
    every Conv2d / Linear that ``encode`` runs (encoder, LFI, F_LFIC and texture convs,
    counted by hooks), and per (ensemble shift, LR pixel) STF's similarity with ``keys`` keys
    (2 K C), its fusion (2 x 2C x C) and the LPD's first-layer feature projection (2 C W)."""
    from iste.data.coords import normalize

    counted = [0.0]

    def conv(m, inp, out):
        counted[0] += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def lin(m, inp, out):
        counted[0] += 2 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else lin)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.encode(normalize(lr))
    finally:
        for h in hooks:
            h.remove()
    c = model.config.hidden_dim
    width = model.lpd.layers[0].out_features
    pixels = lr.shape[-2] * lr.shape[-1]
    stf = 4 * pixels * (2 * keys * c + 2 * (2 * c) * c + 2 * c * width)
    return counted[0] + stf


def gemm_rate(rows: int = 4096, width: int = 256, repeats: int = 20) -> float:
    """FLOP/s of the engine's fused fp32 linear at (rows x width) @ (width x width)."""
    from iste.models.layers.linear import linear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen)
    w, b = torch.randn(width, width, generator=gen), torch.randn(width, generator=gen)
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            linear(x, w, b, relu=True)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(10):
                linear(x, w, b, relu=True)
            best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * rows * width * width / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--published", help="checkout of dmhdmhdmh/ISTE (optional)")
    ap.add_argument("--published-pythonpath", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from iste.api import upscale
    from iste.bench.runner import _real_or_random
    from iste.bench.suite import paper_config, run_child
    from iste.engine.render import QueryOptions
    from iste.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(paper_config("iste")).eval()
    lr, what = _real_or_random(64, 4.0, 0)
    opts = QueryOptions(precision="fp32")
    in_turn = QueryOptions(precision="fp32", workers=1)  # the engine before chunk workers
    upscale(lr[:16, :16], 4, model, options=opts)
    published = None
    engine = engine_in_turn = float("inf")
    rate = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            rate = max(rate, gemm_rate())
            t0 = time.perf_counter()
            upscale(lr, 4, model, options=opts)
            engine = min(engine, time.perf_counter() - t0)
            t0 = time.perf_counter()
            upscale(lr, 4, model, options=in_turn)
            engine_in_turn = min(engine_in_turn, time.perf_counter() - t0)
            if args.published:
                np.save(Path(tmp) / "lr.npy", lr)
                job = {"input": str(Path(tmp) / "lr.npy"), "out_hw": [256, 256],
                       "threads": args.threads, "device": "cpu", "seed": 0, "chunk": 4096,
                       "precision": "fp32", "repeats": 1, "kind": "published", "method": "iste",
                       "checkout": str(Path(args.published).resolve())}
                res = run_child(job, Path(tmp), pythonpath=tuple(
                    str(Path(p).resolve()) for p in args.published_pythonpath))
                if "seconds" in res:
                    published = min(published or float("inf"), res["seconds"])
    queries = 256 * 256
    flops = per_query_flops(model)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    once = per_input_flops(model, x)
    floor = queries * flops / rate
    floor_all = (queries * flops + once) / rate
    out = {"input": what, "threads": args.threads, "per_query_mflop": flops / 1e6,
           "per_input_gflop": once / 1e9, "gemm_gflops": rate / 1e9,
           "floor_per_query_s": floor, "floor_all_products_s": floor_all, "engine_s": engine,
           "engine_chunks_in_turn_s": engine_in_turn,
           "engine_over_floor": engine / floor_all, "published_s": published}
    if published:
        out["engine_vs_published"] = published / engine
        out["engine_chunks_in_turn_vs_published"] = published / engine_in_turn
        out["max_vs_published_per_query_only"] = published / floor
        out["max_vs_published_all_products"] = published / floor_all
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
