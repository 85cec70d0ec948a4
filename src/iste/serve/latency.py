"""Latency of the viewer's super-resolved tiles, as the server's model worker produces them.

On a slide (by default the CMU sample SVS, read deblocked as ``iste serve`` reads it) with the
shipped default model (or another), for each scale (x2, x3.3, x4) the study picks ``views``
views on tissue, each the N x N SR tiles (256 px with DeepZoom's overlap) around a point, and
times for every tile what the model worker does for it: read the LR crop, run the model,
convert to 8 bit, encode the JPEG. The tiles of a view are rendered in the order a viewer asks
for them, each told the view's tiles still queued behind it (``ahead``, as the server's queue
tells it), and reported as:

- ``cold``: the first tile of a view, with an empty cache: it encodes its own crop;
- ``warm``: the other tiles of the view: the second encodes the union of the crops of the
  tiles left (with ``ahead=False``: each its own crop, the server before session 7), the
  others find their features and shared key textures cached;
- ``deeper``: after the x2 view, the same place at x4 (the x2 view's encoding is reused);
- ``view``: the seconds of a whole view (its tiles one after another, as the server's one
  model worker renders them), and ``view alone`` the same tiles rendered alone.

With ``alone`` every tile is also rendered alone first (:func:`iste.engine.tiles.
render_tile` on its own crop: no reuse), back to back with the shared render, so machine load
hits both alike; the median ratio of each pair is reported beside the percentiles, with the
largest pixel difference between the two paths (8-bit). ``in_turn`` adds the alone render with
the query chunks one after another on all intra-op threads (the engine before
:mod:`iste.engine.parallel`).

The cache is emptied before each view, so every view starts cold. The process keeps freed
memory from the study on, as ``iste serve`` does (:func:`iste.runtime.keep_freed_memory`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from iste.data.tensors import tensor_to_rgb
from iste.engine.render import Precision, QueryOptions
from iste.engine.tiles import render_tile
from iste.runtime import STARTUP, keep_freed_memory
from iste.serve.app import CacheSettings
from iste.serve.catalog import SlideCatalog
from iste.serve.pixels import ServedSlide, Upscaler
from iste.slides.writer import encode_jpeg

__all__ = ["SCALES", "KINDS", "viewer_study"]

SCALES = {2.0: 8.0, 3.3: 6.6, 4.0: 8.0}  # scale -> the viewer's --max-scale with a level at it
KINDS = ("alone, chunks in turn", "alone", "cold", "warm", "deeper")
VIEW_ORDER = {3: [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1)],
              2: [(0, 0), (1, 0), (0, 1), (1, 1)]}
JPEG_QUALITY = CacheSettings().quality  # the server's tiles


def level_at(served: ServedSlide, scale: float) -> int:
    """The DeepZoom level whose scale is nearest ``scale``."""
    zoom = served.zoom
    return min(range(zoom.level_count), key=lambda lv: abs(zoom.level_scale(lv)[0] - scale))


def tile_alone(served: ServedSlide, upscaler: Upscaler, level: int, col: int, row: int,
               workers: int | None = None) -> np.ndarray:
    """The tile from its own crop, encoded and rendered alone (no reuse); ``workers=1``: its
    query chunks in turn; at tissue's edge blended with bicubic as the server does
    (:meth:`ServedSlide.blend_with_bicubic`). uint8 (h, w, 3)."""
    frame, tile = served.sr_tile(level, col, row, upscaler.geometry)
    crop = served.read_lr(tile.lr_rows, tile.lr_cols, upscaler.device)
    options = replace(upscaler.options, workers=workers)
    sr = render_tile(upscaler.model, crop, frame, tile, options=options)
    if upscaler.tissue and served.coverage(level, col, row) == "edge":
        sr = served.blend_with_bicubic(sr, level, col, row)
    rgb = tensor_to_rgb(sr)
    encode_jpeg(rgb, JPEG_QUALITY)
    return rgb


def tile_shared(served: ServedSlide, upscaler: Upscaler, level: int, col: int, row: int,
                ahead: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """What the server's model worker does for the tile. uint8 (h, w, 3)."""
    rgb = served.render("sr", level, col, row, upscaler, ahead=ahead)
    encode_jpeg(rgb, JPEG_QUALITY)
    return rgb


def view_tiles(served: ServedSlide, upscaler: Upscaler, level: int, centre: tuple[int, int],
               size: int) -> list[tuple[int, int]]:
    """(col, row) of the view's SR tiles around ``centre``, in the order a viewer asks."""
    cols, rows = served.zoom.tile_count(level)
    c0, r0 = centre
    return [(c0 + dc, r0 + dr) for dc, dr in VIEW_ORDER[size]
            if 0 <= c0 + dc < cols and 0 <= r0 + dr < rows
            and served.kind_of(level, "sr", c0 + dc, r0 + dr, upscaler) == "sr"]


def pick_centres(served: ServedSlide, upscaler: Upscaler, level: int, n: int,
                 rng: np.random.Generator, size: int) -> list[tuple[int, int]]:
    """Up to ``n`` view centres whose whole view is on tissue."""
    cols, rows = served.zoom.tile_count(level)
    found: list[tuple[int, int]] = []
    for _ in range(2000):
        c, r = int(rng.integers(1, cols - 1)), int(rng.integers(1, rows - 1))
        if (c, r) not in found \
                and len(view_tiles(served, upscaler, level, (c, r), size)) == size ** 2:
            found.append((c, r))
        if len(found) == n:
            break
    return found


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] if s else float("nan")


P95_MIN_SAMPLES = 20
"""Fewest samples of which a p95 is reported: with fewer, no sample lies above the 95th
percentile and the nearest rank is the largest (up to 11 samples exactly the largest)."""


def summary_ms(seconds: Sequence[float]) -> dict:
    """{"n", "p50", "p95", "max"} in ms of the ``seconds`` timed (at least one); ``p95`` is None
    with fewer than :data:`P95_MIN_SAMPLES` samples (a view's one cold tile is no
    distribution): the largest is ``max``."""
    return {"n": len(seconds), "p50": round(1000 * statistics.median(seconds)),
            "p95": (round(1000 * percentile(seconds, 95)) if len(seconds) >= P95_MIN_SAMPLES
                    else None),
            "max": round(1000 * max(seconds))}


class _Timer:
    """Times every tile's paths back to back and keeps the figures of one scale."""

    def __init__(self, served, upscaler, *, alone: bool, in_turn: bool, log):
        self.served, self.upscaler, self.alone, self.in_turn, self.log = (
            served, upscaler, alone, in_turn, log)
        self.worst = 0

    def _timed(self, name: str, fn: Callable[[], np.ndarray], where: str):
        t0 = time.perf_counter()
        rgb = fn()
        seconds = time.perf_counter() - t0
        self.log(f"{name} {where}: {1000 * seconds:.0f} ms")
        return seconds, rgb

    def tile(self, got: dict, kind: str, level: int, col: int, row: int, ahead) -> None:
        s, u = self.served, self.upscaler
        where = f"level {level} tile {col},{row}"
        paths = []
        if self.in_turn:
            t, rgb = self._timed("alone, chunks in turn",
                                 lambda: tile_alone(s, u, level, col, row, workers=1), where)
            got["alone, chunks in turn"].append(t)
            paths.append(rgb)
        if self.alone:
            t_alone, rgb = self._timed("alone", lambda: tile_alone(s, u, level, col, row), where)
            got["alone"].append(t_alone)
            paths.append(rgb)
        t, shared = self._timed(kind, lambda: tile_shared(s, u, level, col, row, ahead), where)
        got[kind].append(t)
        if self.alone:
            got.setdefault("ratio", {}).setdefault(kind, []).append(t_alone / t)
        for rgb in paths:
            self.worst = max(self.worst, int(np.abs(rgb.astype(int) - shared.astype(int)).max()))


def viewer_study(model: torch.nn.Module, slide: str | Path, *, views: int = 1,
                 view_size: int = 3, deblock: str = "auto", ahead: bool = True,
                 alone: bool = True, in_turn: bool = False, seed: int = 0,
                 precision: Precision = "auto",
                 log: Callable[[str], None] = lambda line: None) -> dict:
    """p50 / p95 in ms per scale and kind (:func:`summary_ms`: no p95 of fewer than
    :data:`P95_MIN_SAMPLES` tiles; see the module docstring), with the pairs' median ratios;
    ``model`` on its device, ``slide`` a slide file, ``precision`` as ``iste serve
    --precision``."""
    if view_size not in VIEW_ORDER:
        raise ValueError(f"view size must be one of {sorted(VIEW_ORDER)}, got {view_size}")
    keep_freed_memory()  # as the server
    upscaler = Upscaler.for_model(model, name="bench", options=QueryOptions(precision=precision))
    timer_args = {"alone": alone, "in_turn": in_turn, "log": log}
    rng = np.random.default_rng(seed)
    times: dict[str, dict[str, list[float]]] = {}
    catalogs = {m: SlideCatalog.open([Path(slide)], max_scale=m, deblock=deblock)
                for m in sorted(set(SCALES.values()))}
    worst = 0
    try:
        for scale, max_scale in SCALES.items():
            catalog = catalogs[max_scale]
            served = catalog.get(catalog.ids()[0])
            timer = _Timer(served, upscaler, **timer_args)
            level = level_at(served, scale)
            got = times.setdefault(f"x{scale:g}", {k: [] for k in KINDS})
            for centre in pick_centres(served, upscaler, level, views, rng, view_size):
                upscaler.store.clear()  # every view starts cold
                tiles = view_tiles(served, upscaler, level, centre, view_size)
                before = {k: len(got[k]) for k in ("cold", "warm", "alone")}
                for i, (c, r) in enumerate(tiles):
                    timer.tile(got, "cold" if i == 0 else "warm", level, c, r,
                               tiles[i + 1:] if ahead else ())
                got.setdefault("view", []).append(
                    sum(got["cold"][before["cold"]:]) + sum(got["warm"][before["warm"]:]))
                if alone:
                    got.setdefault("view alone", []).append(sum(got["alone"][before["alone"]:]))
                if scale == 2.0:  # zoom in on the same place: x4 tiles over the x2 view
                    deeper = level_at(served, 4.0)
                    deep = times.setdefault("x4", {k: [] for k in KINDS})
                    c, r = centre
                    under = [(2 * c + dc, 2 * r + dr) for dc in (0, 1) for dr in (0, 1)]
                    for i, (dc, dr) in enumerate(under):
                        timer.tile(deep, "deeper", deeper, dc, dr, under[i + 1:] if ahead else ())
            worst = max(worst, timer.worst)
    finally:
        for catalog in catalogs.values():
            catalog.close()
    report = {"threads": torch.get_num_threads(), "views": views, "view_tiles": view_size ** 2,
              "precision": upscaler.options.precision,
              "malloc_keeps_freed": STARTUP["malloc_keeps_freed"],
              "deblock": deblock, "ahead": ahead, "max_abs_diff_8bit": worst if alone else None,
              "store_mb": round(upscaler.store.nbytes / 2**20, 1), "ms": {}}
    for scale, kinds in sorted(times.items(), key=lambda item: float(item[0][1:])):
        row = {}
        for kind, values in kinds.items():
            if kind == "ratio":  # alone / shared per pair, by kind
                row["alone/shared (median of pairs)"] = {
                    k: round(statistics.median(v), 2) for k, v in values.items()}
            elif values and kind.startswith("view"):
                row[f"{kind} s (median)"] = round(statistics.median(values), 2)
            elif values:
                row[kind] = summary_ms(values)
        report["ms"][scale] = row
    return report
