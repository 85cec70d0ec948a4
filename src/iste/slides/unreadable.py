"""Input that cannot be read, filled (``--unreadable-tiles fill``): an inference tile whose LR
crop meets a damaged tile or frame of the input (:class:`~iste.slides.reader.
UnreadableRegionError`) is made from the next coarser level that can be read there, upsampled
bicubically, else white (:func:`fill_crop`); the notes of the filled tiles make the output's
filled regions (:func:`filled_regions`), warned about (:func:`warn_filled`) and recorded in its
provenance (:func:`with_filled`). The job's flow is :mod:`iste.slides.pipeline`'s."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from iste.engine.tiles import Tile
from iste.provenance import Provenance
from iste.slides.job import SlidePlan
from iste.slides.reader import SlideReader, UnreadableRegionError

__all__ = ["fill_crop", "filled_mask", "filled_regions", "warn_filled", "with_filled",
           "FILL_WARNINGS", "BLOCK"]

FILL_WARNINGS = 5  # filled regions warned about one by one; the rest in one line


BLOCK = 32
"""LR pixels: where a tile's own pixels cannot be read whole, they are read again in blocks
of this side, and only the blocks that fail are filled."""


def fill_crop(reader: SlideReader, plan: SlidePlan, tile: Tile,
              err: UnreadableRegionError) -> tuple[np.ndarray, dict | None]:
    """What stands in for ``tile``'s LR crop, whose read through ``reader`` (the slide, or
    its ``as_stored`` pixels) failed with ``err``.

    The crop starts as the same rectangle of the next coarser level that can be read there
    (read as stored, upsampled bicubically; levels that are not the slide shrunk by one
    factor are passed over), else white (the colour of glass, as outside the slide), and is
    read again over it: the tile's own LR pixels (its core: those its output pixels are
    interpolated from), or where they cannot be read whole, the core in blocks of
    :data:`BLOCK` pixels, and the eight parts of its halo around the core. What cannot be
    read stays the coarser level's. Where only the halo is (no note), the tile is rendered
    as usual from that crop; the core's blocks that cannot be read are its *holes*: the
    output pixels interpolated from them (:func:`filled_mask`) are bicubic, the others the
    model's from the crop.

    Returns:
        uint8 (len(tile.lr_rows), len(tile.lr_cols), 3), and None or the note: ``out``
        [x, y, w, h] of the filled output pixels of the tile (their bounding box), ``holes``
        [[x, y, w, h], ...] in the level read, ``level`` and ``read`` [x, y, w, h] of the read
        that failed (in that level's frame), ``input_tiles`` [[column, row], ...] of the
        stored tiles found damaged there (empty when the reader cannot tell), ``from``
        ("level N" or "white").
    """
    box = plan.crop_box(tile)
    x, y = box[:2]
    coarse, source = _coarser(reader.as_stored, plan.level, box)
    core = _core_box(plan, tile)
    patched = coarse.copy()
    holes, damaged = [], dict.fromkeys(err.tiles)
    pieces = [(part, part != core) for part in _parts(box, core)]
    while pieces:
        (px, py, pw, ph), halo = pieces.pop(0)
        try:
            part = reader.read_level(plan.level, (px, py), (pw, ph))
        except UnreadableRegionError as failed:
            if halo:
                continue
            damaged.update(dict.fromkeys(failed.tiles))
            if (pw, ph) == core[2:] and (pw > BLOCK or ph > BLOCK):
                pieces[:0] = [(block, False) for block in _blocks(core)]
            else:
                holes.append([px, py, pw, ph])
            continue
        patched[py - y:py - y + ph, px - x:px - x + pw] = part
    if not holes:
        return patched, None
    rows, cols = np.nonzero(filled_mask(plan, tile, holes))
    return patched, {"out": [tile.out_cols.start + int(cols.min()),
                             tile.out_rows.start + int(rows.min()),
                             int(cols.max() - cols.min()) + 1, int(rows.max() - rows.min()) + 1],
                     "holes": holes, "level": err.level, "read": list(err.box),
                     "input_tiles": [list(t) for t in damaged], "from": source}


def _blocks(core: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """``core`` (x, y, w, h) cut into blocks of :data:`BLOCK` pixels, row-major."""
    x, y, w, h = core
    return [(bx, by, min(BLOCK, x + w - bx), min(BLOCK, y + h - by))
            for by in range(y, y + h, BLOCK) for bx in range(x, x + w, BLOCK)]


def filled_mask(plan: SlidePlan, tile: Tile, holes) -> np.ndarray:
    """bool (len(tile.out_rows), len(tile.out_cols)): the output pixels of ``tile`` whose
    LR pixels (with bicubic's two of support on each side, as :func:`_core_box`) reach a
    hole [x, y, w, h] (in the level read) of :func:`fill_crop`'s note."""
    (lr_h, lr_w), (out_h, out_w) = plan.frame.lr_hw, plan.frame.out_hw
    x0, y0 = plan.lr_box[:2]

    def reach(out: range, n_lr: int, n_out: int, lo: int, hi: int) -> np.ndarray:
        o = np.arange(out.start, out.stop)
        first = np.floor(o * n_lr / n_out) - 2
        last = np.ceil((o + 1) * n_lr / n_out) + 2
        return (first < hi) & (last > lo)

    mask = np.zeros((len(tile.out_rows), len(tile.out_cols)), bool)
    for hx, hy, hw, hh in holes:
        rows = reach(tile.out_rows, lr_h, out_h, hy - y0, hy - y0 + hh)
        cols = reach(tile.out_cols, lr_w, out_w, hx - x0, hx - x0 + hw)
        mask |= rows[:, None] & cols[None, :]
    return mask


def _core_box(plan: SlidePlan, tile: Tile) -> tuple[int, int, int, int]:
    """(x, y, width, height) in the level read of the LR pixels ``tile``'s output pixels are
    interpolated from (two pixels of bicubic support around them), inside its crop."""
    (lr_h, lr_w), (out_h, out_w) = plan.frame.lr_hw, plan.frame.out_hw
    x0, y0 = plan.lr_box[:2]

    def span(out: range, lr: range, n_lr: int, n_out: int) -> tuple[int, int]:
        lo = max(lr.start, math.floor(out.start * n_lr / n_out) - 2)
        hi = min(lr.stop, math.ceil(out.stop * n_lr / n_out) + 2)
        return lo, hi

    c0, c1 = span(tile.out_cols, tile.lr_cols, lr_w, out_w)
    r0, r1 = span(tile.out_rows, tile.lr_rows, lr_h, out_h)
    return x0 + c0, y0 + r0, c1 - c0, r1 - r0


def _parts(box: tuple[int, int, int, int], core: tuple[int, int, int, int]):
    """The core (first), then the non-empty parts of ``box`` around it (x, y, w, h): the
    3 x 3 cut of ``box`` along the core's edges."""
    x, y, w, h = box
    cx, cy, cw, ch = core
    cols = [(x, cx), (cx, cx + cw), (cx + cw, x + w)]
    rows = [(y, cy), (cy, cy + ch), (cy + ch, y + h)]
    yield core
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            if (i, j) != (1, 1) and r1 > r0 and c1 > c0:
                yield c0, r0, c1 - c0, r1 - r0


def _coarser(slide: SlideReader, level: int,
             box: tuple[int, int, int, int]) -> tuple[np.ndarray, str]:
    """uint8 (h, w, 3) of ``box`` (x, y, w, h) of ``level`` from the next coarser level of
    ``slide`` that can be read there, upsampled, and its name ("level N"); white, "white",
    where none can."""
    for coarse in range(level + 1, slide.level_count):
        if slide.level_mismatch(coarse) is not None:
            continue
        try:
            return _upsampled(slide, level, coarse, box), f"level {coarse}"
        except UnreadableRegionError:
            continue
    return np.full((box[3], box[2], 3), 255, np.uint8), "white"


def _upsampled(slide: SlideReader, level: int, coarse: int,
               box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 (h, w, 3): the rectangle ``box`` (x, y, w, h) of ``level`` read from the coarser
    level ``coarse`` and resampled bicubically onto ``level``'s pixels."""
    from PIL import Image

    x, y, w, h = box
    (lw, lh), (cw, ch) = slide.level_dimensions[level], slide.level_dimensions[coarse]
    sx, sy = cw / lw, ch / lh
    x0, y0, x1, y1 = x * sx, y * sy, (x + w) * sx, (y + h) * sy
    ix, iy = math.floor(x0) - 2, math.floor(y0) - 2  # bicubic's support around the box
    iw, ih = math.ceil(x1) + 2 - ix, math.ceil(y1) + 2 - iy
    src = Image.fromarray(slide.read_level(coarse, (ix, iy), (iw, ih)))
    out = src.resize((w, h), Image.Resampling.BICUBIC, box=(x0 - ix, y0 - iy, x1 - ix, y1 - iy))
    return np.asarray(out, dtype=np.uint8)


def filled_regions(notes) -> list[dict]:
    """The filled regions of an output from the notes of its filled tiles (:func:`fill_crop`,
    one per TIFF tile, those of one inference tile alike): inference tiles whose filled
    pixels touch make one region. Each: ``output`` [x, y, w, h] (output pixels, its bounding box),
    ``tiles`` (inference tiles), ``level`` (read), ``input_tiles`` [[column, row], ...]
    (stored tiles of that level found damaged), ``from`` (the sources, sorted), row-major;
    where the reader names no damaged tile, ``read``: [x, y, w, h] around the reads that
    failed, in that level's pixels."""
    tiles = {tuple(n["out"]): n for n in notes}
    parent = {k: k for k in tiles}

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    # The filled pixels of each inference tile: those that touch merge. A box can touch only
    # the boxes in its own and the 8 neighbouring cells of a grid as coarse as the largest box
    # (a truncated slide fills tens of thousands of tiles: pairwise, 10 000 took 2.8 s).
    cell = max(1, max((max(w, h) for _, _, w, h in tiles), default=1))
    grid: dict[tuple[int, int], list] = {}
    for box in tiles:
        grid.setdefault((box[0] // cell, box[1] // cell), []).append(box)
    for (cx, cy), members in grid.items():
        near = [other for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                for other in grid.get((cx + dx, cy + dy), ())]
        for x, y, w, h in members:
            for ox, oy, ow, oh in near:
                if x <= ox + ow and ox <= x + w and y <= oy + oh and oy <= y + h:
                    parent[root((ox, oy, ow, oh))] = root((x, y, w, h))
    groups: dict = {}
    for k in tiles:
        groups.setdefault(root(k), []).append(k)
    regions = []
    for members in groups.values():
        x0, y0 = min(k[0] for k in members), min(k[1] for k in members)
        x1 = max(k[0] + k[2] for k in members)
        y1 = max(k[1] + k[3] for k in members)
        found = [tiles[k] for k in members]
        damaged = sorted({tuple(t) for n in found for t in n["input_tiles"]},
                         key=lambda t: (t[1], t[0]))
        regions.append({"output": [x0, y0, x1 - x0, y1 - y0], "tiles": len(members),
                        "level": found[0]["level"], "input_tiles": [list(t) for t in damaged],
                        "from": sorted({n["from"] for n in found})})
        if not damaged:
            reads = [n["read"] for n in found]
            rx, ry = min(r[0] for r in reads), min(r[1] for r in reads)
            regions[-1]["read"] = [rx, ry, max(r[0] + r[2] for r in reads) - rx,
                                   max(r[1] + r[3] for r in reads) - ry]
    return sorted(regions, key=lambda r: (r["output"][1], r["output"][0]))


def _describe_region(region: dict) -> str:
    """"output x,y,w,h (n tiles) from level 1: input level 0 tile column 1 row 1" (no '|':
    a provenance text line separates its fields with it)."""
    x, y, w, h = region["output"]
    where = ", ".join(f"column {c} row {r}" for c, r in region["input_tiles"][:4])
    more = len(region["input_tiles"]) - 4
    if where:
        where = f"tile {where}" + (f" and {more} more" if more > 0 else "")
    else:
        where = "reads that failed within {},{},{},{}".format(*region["read"])
    return (f"output {x},{y},{w},{h} ({region['tiles']} tile(s)) filled from "
            f"{' and '.join(region['from'])}: input level {region['level']} {where}")


def warn_filled(regions: list[dict], slide: SlideReader) -> None:
    """One warning per filled region, up to :data:`FILL_WARNINGS`, then one for the rest."""
    name = Path(slide.path).name if slide.path else "the slide"
    for region in regions[:FILL_WARNINGS]:
        warnings.warn(f"{name}: input that cannot be read: {_describe_region(region)}",
                      stacklevel=3)
    rest = regions[FILL_WARNINGS:]
    if rest:
        n = sum(r["tiles"] for r in rest)
        warnings.warn(f"{name}: {len(rest)} more filled region(s) ({n} tile(s)), all "
                      "recorded in the output's provenance", stacklevel=3)


def with_filled(provenance: Provenance | None, regions: list[dict]) -> Provenance | None:
    """``provenance`` recording the filled ``regions`` (``unreadable_filled``: one text
    field, the regions separated by "; ")."""
    if provenance is None:
        return None
    text = "; ".join(_describe_region(r) for r in regions)
    return replace(provenance, extra={**provenance.extra, "unreadable_filled": text})
