"""How a slide block's throughput depends on how it is run: as a region job of its own, or as
the same tiles inside the whole-slide job (their LR crops then read the halo beyond the
block, as every interior tile of a real slide does), and the rate ``--estimate`` measures.

    python scripts/slide_block_bias.py [--scales 2,4] [--side 512] [--rounds 2]

On the sample SVS (read deblocked, as ``iste upscale`` does), the ``side``-px level-0 block
with the most tissue (:func:`iste.slides.tissue.tissue_mask_from_rgb` on a subsampled copy);
per scale and round, in turn: ``region`` runs ``upscale_slide`` on the block (the way
``iste bench --sections slide`` timed it up to session 22: every tile of the block is at the
region's edge, its crop cut there); ``in slide`` runs the grid tiles of the whole-slide job
covering the block through the job's own pipeline (:func:`iste.slides.pipeline.run_tiles`);
``estimate`` is :func:`iste.slides.estimate.estimate_slide`'s model-tile rate (3 tiles
spread over the slide after one untimed). Prints output Mpx/s of the tile work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from iste.data.samples import sample_path
from iste.default_model import load_model_or_default
from iste.engine.render import QueryOptions
from iste.progress import Progress
from iste.runtime import pick_device
from iste.slides import open_slide
from iste.slides.deblocked import deblocked
from iste.slides.estimate import estimate_slide
from iste.slides.job import SlideJob
from iste.slides.pipeline import (SlideResult, prepare_job, run_tiles, tile_area,
                                  upscale_slide)
from iste.slides.tissue import detect_tissue, tissue_mask_from_rgb
from iste.slides.workdir import WorkDir


def most_tissue_block(rgb: np.ndarray, side: int, step: int = 8) -> tuple[int, int]:
    """(x, y) of the ``side``-aligned level-0 block with the most tissue; rgb (H, W, 3)."""
    mask = tissue_mask_from_rgb(np.ascontiguousarray(rgb[::step, ::step]))
    fractions = {(x, y): float(mask[y // step:(y + side) // step,
                                    x // step:(x + side) // step].mean())
                 for y in range(0, rgb.shape[0] - side + 1, side)
                 for x in range(0, rgb.shape[1] - side + 1, side)}
    return max(fractions, key=fractions.get)


def positions_in(grid, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """Grid positions whose output rectangle lies inside ``box`` (x, y, w, h, output px)."""
    x, y, w, h = box
    rows, cols = grid.shape
    out = []
    for i in range(rows):
        for j in range(cols):
            r, c = grid.out_ranges(i, j)
            if r.start >= y and r.stop <= y + h and c.start >= x and c.stop <= x + w:
                out.append((i, j))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", default="2,4")
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    model = load_model_or_default(None, device=pick_device())
    options = QueryOptions().resolved(model)
    with open_slide(sample_path("cmu-svs")) as opened, \
            tempfile.TemporaryDirectory(prefix="iste-block-bias-") as tmp:
        slide = deblocked(opened)
        w, h = slide.dimensions
        bx, by = most_tissue_block(slide.read_region((0, 0), 0, (w, h)), args.side)
        mask = detect_tissue(slide)
        print(f"block ({bx}, {by}, {args.side}, {args.side}); precision {options.precision}")
        for scale in (float(s) for s in args.scales.split(",")):
            job = SlideJob(scale)
            setup = prepare_job(slide, Path(tmp) / "whole.tiff", model, job, options)
            grid = setup.grid
            inside = positions_in(grid, tuple(round(v * scale) for v in
                                              (bx, by, args.side, args.side)))
            mpx = sum(tile_area(grid, *q) for q in inside) / 1e6

            def region() -> float:
                res = upscale_slide(slide, Path(tmp) / f"region-{time.time_ns()}.tiff", model,
                                    SlideJob(scale, region=(bx, by, args.side, args.side)),
                                    options=options, progress=False)
                return res.mpx_per_s

            def in_slide() -> float:
                with WorkDir(Path(tmp) / f"work-{time.time_ns()}", {}) as wd:
                    result = SlideResult(Path(tmp), setup.plan.out_size, [], None, scale,
                                         tiles=len(grid))
                    t0 = time.perf_counter()
                    run_tiles(slide, model, setup, mask, wd, inside, options, result,
                              Progress(0, desc="block", enabled=False))
                    return mpx / (time.perf_counter() - t0)

            def estimate() -> float:
                est = estimate_slide(slide, Path(tmp) / "whole.tiff", model, job,
                                     options=options)
                return est.calibration.kinds["model"].mpx_per_s

            region()  # warm-up: the model's first calls at this scale
            for k in range(args.rounds):
                got = {name: fn() for name, fn in
                       (("region", region), ("in slide", in_slide), ("estimate", estimate))}
                print(f"x{scale:g} round {k + 1} ({len(inside)} tiles of {job.tile or 'default'}"
                      f" px): " + ", ".join(f"{n} {v:.4f}" for n, v in got.items())
                      + f" Mpx/s; in slide / region {got['in slide'] / got['region']:.3f}x")


if __name__ == "__main__":
    main()
