"""Latency of the viewer's super-resolved tiles: each tile rendered alone (the path before
shared encoding) against tiles sharing encoded blocks and key textures, in one run.

On the CMU sample slide with the shipped default model (or ``--model``), for each scale
(x2, x3.3, x4) it picks ``--views`` views on tissue, each the 3 x 3 SR tiles (256 px with
DeepZoom's overlap; ``--view-size 2``: 2 x 2) around a point, in the order a viewer asks for
them, and times for every
tile what the server's model worker does for it (read the LR crop, model, 8-bit, JPEG):

- ``alone``: :func:`iste.engine.tiles.render_tile` on the tile's own crop (no reuse);
- ``cold``: shared encoding, the first tile of a view with an empty cache;
- ``warm``: shared encoding, the other tiles of the view (their neighbours are done);
- ``deeper``: after the x2 view, the same place at x4 (its crops kept, key textures not);
- ``alone, chunks in turn``: ``alone`` with the query chunks one after another on all
  intra-op threads (``QueryOptions(workers=1)``, the engine before :mod:`iste.engine.parallel`).

The cache is emptied before each view, so every view starts cold. Every tile is timed alone
(chunks in turn, then side by side) and then shared, back to back, so machine load hits both alike; the ratio of each pair is
reported (median) beside the percentiles. Prints p50 / p95 per scale and
kind, the ratios, and the largest pixel difference between the two paths (8-bit). Run from
the repository root:

    .venv/bin/python benchmarks/viewer_latency.py --views 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from iste.api import load
from iste.cli.options import resolve_input
from iste.data.tensors import tensor_to_rgb
from iste.engine.tiles import render_tile
from iste.serve.catalog import SlideCatalog
from iste.slides.deblocked import DEBLOCK_MODES
from iste.serve.pixels import Upscaler
from iste.slides.writer import encode_jpeg

SCALES = {2.0: 8.0, 3.3: 6.6, 4.0: 8.0}  # scale -> the --max-scale with a level at it


def level_at(zoom, scale: float) -> int:
    return min(range(zoom.level_count), key=lambda lv: abs(zoom.level_scale(lv)[0] - scale))


def tile_alone(served, upscaler, level, col, row, workers=None) -> np.ndarray:
    """The path before shared encoding: the tile's own crop, encoded and rendered alone;
    ``workers=1``: its query chunks in turn (before :mod:`iste.engine.parallel`)."""
    frame, tile = served._sr_tile(level, served.zoom.tile_box(level, col, row), upscaler.geometry)
    crop = served._read_lr(tile.lr_rows, tile.lr_cols, upscaler.device)
    options = replace(upscaler.options, workers=workers)
    out = render_tile(upscaler.model, crop, frame, tile, options=options)
    rgb = tensor_to_rgb(out)
    encode_jpeg(rgb, 90)
    return rgb


def tile_alone_in_turn(served, upscaler, level, col, row) -> np.ndarray:
    return tile_alone(served, upscaler, level, col, row, workers=1)


def tile_shared(served, upscaler, level, col, row) -> np.ndarray:
    """What the server's model worker does now."""
    rgb = served.render("sr", level, col, row, upscaler)
    encode_jpeg(rgb, 90)
    return rgb


def timed(fn, *args) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    rgb = fn(*args)
    seconds = time.perf_counter() - t0
    print(f"{fn.__name__} level {args[2]} tile {args[3]},{args[4]}: {1000 * seconds:.0f} ms",
          file=sys.stderr, flush=True)
    return seconds, rgb


KINDS = ("alone, chunks in turn", "alone", "cold", "warm", "deeper")
ORDERS = {3: [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1)],
          2: [(0, 0), (1, 0), (0, 1), (1, 1)]}


def pair(got: dict, kind: str, served, upscaler, level, col, row) -> int:
    """Time one tile alone (its query chunks in turn, then side by side) and shared; record
    them (and the ratios); return the largest 8-bit difference between the paths."""
    t_turn, c = timed(tile_alone_in_turn, served, upscaler, level, col, row)
    t_alone, a = timed(tile_alone, served, upscaler, level, col, row)
    t_shared, b = timed(tile_shared, served, upscaler, level, col, row)
    got["alone, chunks in turn"].append(t_turn)
    got["alone"].append(t_alone)
    got[kind].append(t_shared)
    got.setdefault("ratio in turn/side by side", []).append(t_turn / t_alone)
    got.setdefault(f"ratio {kind}", []).append(t_alone / t_shared)
    return max(int(np.abs(a.astype(int) - b.astype(int)).max()),
               int(np.abs(a.astype(int) - c.astype(int)).max()))


def view_tiles(served, upscaler, level, centre, size=3) -> list[tuple[int, int]]:
    cols, rows = served.zoom.tile_count(level)
    c0, r0 = centre
    order = ORDERS[size]
    return [(c0 + dc, r0 + dr) for dc, dr in order
            if 0 <= c0 + dc < cols and 0 <= r0 + dr < rows
            and served.kind_of(level, "sr", c0 + dc, r0 + dr, upscaler) == "sr"]


def pick_centres(served, upscaler, level, n, rng, size) -> list[tuple[int, int]]:
    cols, rows = served.zoom.tile_count(level)
    found = []
    for _ in range(2000):
        c, r = int(rng.integers(1, cols - 1)), int(rng.integers(1, rows - 1))
        if len(view_tiles(served, upscaler, level, (c, r), size)) == size ** 2 \
                and (c, r) not in found:
            found.append((c, r))
        if len(found) == n:
            break
    return found


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] if s else float("nan")


def run(args) -> dict:
    model = load(args.model)
    upscaler = Upscaler.for_model(model, name="bench")
    rng = np.random.default_rng(args.seed)
    times: dict[str, dict[str, list[float]]] = {}
    worst = 0
    slides = {}
    for scale, max_scale in SCALES.items():
        if max_scale not in slides:
            slides[max_scale] = SlideCatalog.open([Path(resolve_input(args.slide))],
                                                  max_scale=max_scale, deblock=args.deblock)
    for scale, max_scale in SCALES.items():
        catalog = slides[max_scale]
        served = catalog.get(catalog.ids()[0])
        level = level_at(served.zoom, scale)
        got = times.setdefault(f"x{scale:g}", {k: [] for k in KINDS})
        for centre in pick_centres(served, upscaler, level, args.views, rng, args.view_size):
            upscaler.store.clear()  # every view starts cold
            for i, (c, r) in enumerate(view_tiles(served, upscaler, level, centre,
                                                  args.view_size)):
                # each tile timed alone then shared, back to back: load hits both alike
                worst = max(worst, pair(got, "cold" if i == 0 else "warm", served, upscaler,
                                        level, c, r))
            if scale == 2.0:  # zoom in on the same place: x4 tiles over the x2 view's crops
                deeper = level_at(served.zoom, 4.0)
                deep = times.setdefault("x4", {k: [] for k in got})
                c, r = centre
                for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    worst = max(worst, pair(deep, "deeper", served, upscaler, deeper,
                                            2 * c + dc, 2 * r + dr))
    for catalog in slides.values():
        catalog.close()
    report = {"threads": torch.get_num_threads(), "views": args.views,
              "view_tiles": args.view_size ** 2, "max_abs_diff_8bit": worst,
              "store_mb": round(upscaler.store.nbytes / 2**20, 1), "ms": {}}
    for scale, kinds in times.items():
        row = {}
        for kind, values in kinds.items():
            if values and kind == "ratio in turn/side by side":
                row["chunks in turn / side by side, alone (median of pairs)"] = round(
                    statistics.median(values), 2)
            elif values and kind.startswith("ratio"):
                row[f"alone/shared {kind[6:]} (median of pairs)"] = round(statistics.median(values), 2)
            elif values:
                row[kind] = {"n": len(values), "p50": round(1000 * statistics.median(values)),
                             "p95": round(1000 * percentile(values, 95))}
        report["ms"][scale] = row
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slide", default="sample:cmu-svs")
    p.add_argument("--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--views", type=int, default=3, help="views per scale")
    p.add_argument("--view-size", type=int, choices=[2, 3], default=3,
                   help="a view is N x N tiles (default 3)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deblock", choices=DEBLOCK_MODES, default="auto",
                   help="read the slide as iste serve does by default (auto: a JPEG slide is "
                        "deblocked) or as stored")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
