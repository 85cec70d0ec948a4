"""Whole-slide throughput users plan with: output Mpx/s on tissue and on glass, and the
projected time of a typical slide.

On the sample SVS (CMU, 20x, 0.499 um/px) the study picks the ``side`` x ``side`` level-0
block with the most tissue and the one with the least (by the slides' tissue rule), and runs
the real whole-slide job on each (:func:`iste.slides.pipeline.upscale_slide`: shipped model,
tissue detection on, the SVS's JPEG deblocked as ``iste upscale`` does by default, JPEG
pyramid, default tile) at each of :data:`SCALES`: x2 (a 20x scan to 40x) and x4 (a 10x scan
to 40x). Throughput is output megapixels per second of the job's tile work
(:attr:`SlideResult.mpx_per_s`: reading, model or bicubic, encoding and writing tiles); the
job's fixed cost per slide (opening it, tissue detection, finishing the file: ``job_seconds``
minus that) is reported apart, as it does not grow with the slide. The projection is for a
typical slide's 40x image (:data:`TYPICAL_OUTPUT`, a tissue fraction f) made from a scan of
W x H = that size / s: ``W H s^2 (f / tissue_rate + (1 - f) / glass_rate)`` — linear in area,
which holds because the job streams tiles with bounded memory (docs/wsi.md). Each job's peak
resident set is that of the whole process while it ran (the model and libraries included,
and whatever the process held when it started: an upper bound of a job's own), where Linux
lets it be reset.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

TYPICAL_OUTPUT = (120_000, 80_000)  # (width, height) of a typical slide at 40x (~0.25 um/px)
TYPICAL_TISSUE = 0.4
SCALES = (2.0, 4.0)  # from a 20x scan (60 000 x 40 000) and from a 10x scan (30 000 x 20 000)


def pick_blocks(rgb: np.ndarray, side: int, step: int = 8):
    """(x, y) level-0 corners of the ``side``-px blocks with most and least tissue
    ({"tissue": .., "glass": ..}), and every block's tissue fraction (the slides' tissue rule
    on a ``step``-times subsampled image). rgb: uint8 (H, W, 3) level 0."""
    from iste.slides.tissue import tissue_mask_from_rgb

    mask = tissue_mask_from_rgb(np.ascontiguousarray(rgb[::step, ::step]))
    fractions = {}
    for y in range(0, rgb.shape[0] - side + 1, side):
        for x in range(0, rgb.shape[1] - side + 1, side):
            block = mask[y // step:(y + side) // step, x // step:(x + side) // step]
            fractions[(x, y)] = float(block.mean())
    return {"tissue": max(fractions, key=fractions.get),
            "glass": min(fractions, key=fractions.get)}, fractions


def slide_study(*, scales=SCALES, side: int = 512, model_path: str | None = None,
                chunk: int | None = None, log=print) -> list[dict]:
    """Per scale: figures of the tissue and glass blocks and the typical-slide projection;
    ``chunk``: queries per model call (None: the model's default,
    :func:`iste.engine.render.default_chunk`)."""
    from iste.default_model import load_model_or_default
    from iste.data.samples import sample_path
    from iste.process_memory import peak_rss_during
    from iste.engine.render import QueryOptions
    from iste.runtime import pick_device
    from iste.slides import open_slide
    from iste.slides.deblocked import deblocked
    from iste.slides.job import SlideJob
    from iste.slides.pipeline import upscale_slide

    model = load_model_or_default(model_path, device=pick_device())
    options = QueryOptions(chunk=chunk).resolved(model)
    studies = []
    with open_slide(sample_path("cmu-svs")) as opened, \
            tempfile.TemporaryDirectory(prefix="iste-bench-slide-") as tmp:
        slide = deblocked(opened)  # as iste upscale reads it by default (a JPEG SVS)
        w, h = slide.dimensions
        blocks, fractions = pick_blocks(slide.read_region((0, 0), 0, (w, h)), side)
        for scale in scales:
            rows = {}
            for kind, (x, y) in blocks.items():
                job = SlideJob(scale, region=(x, y, side, side))
                t0 = time.perf_counter()
                res, peak = peak_rss_during(lambda: upscale_slide(
                    slide, Path(tmp) / f"{kind}-x{scale:g}.tiff", model, job, options=options,
                    progress=False))
                seconds = time.perf_counter() - t0
                mpx = res.size[0] * res.size[1] / 1e6
                rows[kind] = {"region": [x, y, side, side], "tissue_fraction": fractions[(x, y)],
                              "tile": job.tile, "model_tiles": res.tiles_model,
                              "background_tiles": res.tiles_background, "out_mpx": mpx,
                              "seconds": res.seconds_tiles, "mpx_per_s": res.mpx_per_s,
                              "job_seconds": seconds,
                              "peak_rss_mb": None if peak is None else round(peak / 2**20)}
                log(f"slide x{scale:g} {kind} block {rows[kind]['region']}: "
                    f"{mpx / seconds:.4f} Mpx/s")
            studies.append({"scale": scale, "precision": options.precision,
                            "chunk": options.chunk, "blocks": rows,
                            "projection": projection(scale, rows)})
    return studies


def projection(scale: float, rows: dict) -> dict:
    """The typical slide's hours at ``scale`` from the blocks' rates: its 40x image
    (:data:`TYPICAL_OUTPUT`) made from a scan of that size / ``scale``."""
    width, height = (round(n / scale) for n in TYPICAL_OUTPUT)
    out_mpx = width * height * scale ** 2 / 1e6
    hours = out_mpx * (TYPICAL_TISSUE / rows["tissue"]["mpx_per_s"]
                       + (1 - TYPICAL_TISSUE) / rows["glass"]["mpx_per_s"]) / 3600
    return {"slide": [width, height], "tissue": TYPICAL_TISSUE, "out_mpx": out_mpx,
            "hours": hours}
