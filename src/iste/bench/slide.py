"""Whole-slide throughput users plan with: output Mpx/s on tissue and on glass, and the
projected time of a typical slide.

On the sample SVS (CMU, 20x, 0.499 um/px), read deblocked as ``iste upscale`` reads a JPEG
slide by default, the study plans the real whole-slide job at each of :data:`SCALES` (x2, a
20x scan to 40x; x4, a 10x scan to 40x; shipped model, tissue detection on, JPEG pyramid,
default tile) and measures it as ``iste upscale --estimate`` does
(:func:`iste.slides.estimate.estimate_slide`): a few of the job's own model tiles (tissue)
and background tiles (glass, bicubic), spread over the slide, run through the job's pipeline
(read, model or bicubic, encode) after one untimed tile, and the cost of building the
pyramid's lower levels. The tiles are the whole-slide job's, so their LR crops read the halo
around them as every interior tile of a real slide does. (Up to session 22 the study ran a
512-px block as a region job of its own, whose tiles all sat at the region's edge with their
crops cut there: 5-17 % faster than the same tiles inside the slide,
``scripts/slide_block_bias.py``.)

The projection is for a typical slide's 40x image (:data:`TYPICAL_OUTPUT`, a tissue fraction
f) made from a scan of W x H = that size / s:
``W H s^2 (m / tissue_rate + (1 - m) / glass_rate + pyramid seconds per output Mpx)``, with
m = min(1, f x the sample's model-tile area per tissue area) the share of the area the model
runs on (every tile with a pixel within 64 output px of the dilated mask, at tissue's edge
blended with bicubic: on the sample SVS 36 % tissue made 65 % of the area model tiles, 71 %
under session 30's rule of a crop touching tissue; until session 26 m was f, ~2x too few
hours) — linear
in area, which holds because the job streams tiles with bounded memory (docs/wsi.md); the
pyramid's cost per Mpx is the sample's. The job's fixed cost (opening the slide, tissue
detection) is reported apart. The peak resident set is that of the whole process while the
model tiles ran (the model and libraries included: an upper bound of a job's own), where
Linux lets it be reset.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

TYPICAL_OUTPUT = (120_000, 80_000)  # (width, height) of a typical slide at 40x (~0.25 um/px)
TYPICAL_TISSUE = 0.4
SCALES = (2.0, 4.0)  # from a 20x scan (60 000 x 40 000) and from a 10x scan (30 000 x 20 000)
KINDS = {"tissue": "model", "glass": "background"}
"""The study's rows and the estimate's tile kinds they come from."""


def slide_study(*, scales=SCALES, model_path: str | None = None, chunk: int | None = None,
                slide_path: str | Path | None = None, log=print) -> list[dict]:
    """Per scale: the tissue and glass tiles' rates, the slide's plan and the typical-slide
    projection; ``chunk``: queries per model call (None: the model's default,
    :func:`iste.engine.render.default_chunk`); ``slide_path``: the slide measured on (None:
    the sample SVS)."""
    from iste.data.samples import sample_path
    from iste.default_model import load_model_or_default
    from iste.engine.render import QueryOptions
    from iste.runtime import pick_device
    from iste.slides import open_slide
    from iste.slides.deblocked import deblocked
    from iste.slides.estimate import estimate_slide
    from iste.slides.job import SlideJob

    model = load_model_or_default(model_path, device=pick_device())
    options = QueryOptions(chunk=chunk).resolved(model)
    studies = []
    slide_path = sample_path("cmu-svs") if slide_path is None else slide_path
    with open_slide(slide_path) as opened, \
            tempfile.TemporaryDirectory(prefix="iste-bench-slide-") as tmp:
        slide = deblocked(opened)  # as iste upscale reads it by default (a JPEG SVS)
        for scale in scales:
            job = SlideJob(scale)
            est = estimate_slide(slide, Path(tmp) / f"sample-x{scale:g}.tiff", model, job,
                                 options=options)
            study = study_of(est, options)
            for name, row in study["tiles"].items():
                log(f"slide x{scale:g} {name} tiles: {row['mpx_per_s']:.4f} Mpx/s "
                    f"({row['tiles']} tiles of {est.tile} px)")
            studies.append(study)
    return studies


def study_of(est, options) -> dict:
    """One scale's figures from a :class:`~iste.slides.estimate.SlideEstimate` of the sample
    (every kind of tile measured: the sample has tissue and glass)."""
    kinds = est.calibration.kinds
    missing = [name for name, kind in KINDS.items() if kind not in kinds]
    if missing:
        raise ValueError(f"the sample slide gave no {' or '.join(missing)} tiles to time")
    rows = {}
    for name, kind in KINDS.items():
        rate = kinds[kind]
        rows[name] = {"tiles": rate.tiles, "out_mpx": rate.mpx,
                      "seconds": rate.mpx * rate.seconds_per_mpx, "mpx_per_s": rate.mpx_per_s}
    peak = est.calibration.peak_rss
    rows["tissue"]["peak_rss_mb"] = None if peak is None else round(peak / 2**20)
    out_mpx = est.size[0] * est.size[1] / 1e6
    sample = {"size": list(est.size), "tissue_fraction": est.tissue_fraction,
              "tiles_model": est.tiles_model, "tiles_background": est.tiles_background,
              "detect_seconds": est.seconds_detect, "seconds": est.seconds}
    assembly = est.seconds_assembly / out_mpx
    share = est.mpx_model / max(est.mpx_model + est.mpx_background, 1e-12)
    sample["model_share"] = share
    per_tissue = share / est.tissue_fraction if est.tissue_fraction else 1.0
    import torch

    return {"scale": est.scale, "precision": options.precision, "chunk": options.chunk,
            "threads": torch.get_num_threads(), "tile": est.tile, "tiles": rows, "sample": sample,
            "assembly_s_per_mpx": assembly,
            "projection": projection(est.scale, rows, assembly, per_tissue)}


def projection(scale: float, rows: dict, assembly_s_per_mpx: float = 0.0,
               model_per_tissue: float = 1.0) -> dict:
    """The typical slide's hours at ``scale`` from the tiles' rates and the pyramid's seconds
    per output Mpx: its 40x image (:data:`TYPICAL_OUTPUT`) made from a scan of that size /
    ``scale``. The model runs on every tile that has pixels on or beside tissue (the estimate's
    model tiles, blended with bicubic at tissue's edge), so its share of the area is the tissue
    fraction times ``model_per_tissue`` (the sample's model-tile area per
    tissue area; 1.0: the tissue alone), at most all of it."""
    width, height = (round(n / scale) for n in TYPICAL_OUTPUT)
    out_mpx = width * height * scale ** 2 / 1e6
    share = min(1.0, TYPICAL_TISSUE * model_per_tissue)
    tiles = out_mpx * (share / rows["tissue"]["mpx_per_s"]
                       + (1 - share) / rows["glass"]["mpx_per_s"]) / 3600
    pyramid = out_mpx * assembly_s_per_mpx / 3600
    return {"slide": [width, height], "tissue": TYPICAL_TISSUE, "model_share": share,
            "out_mpx": out_mpx, "hours_tiles": tiles, "hours_pyramid": pyramid,
            "hours": tiles + pyramid}
