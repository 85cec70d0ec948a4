"""Measure what our evaluation defaults change against the published protocol, on one model.

    .venv/bin/python scripts/measure_departures.py [--model PATH] [--images 2] [--scales 2,4]
        [--out departures.json]

On the first ``--images`` images of ``sample:cmu-test`` (the shipped model by default), at each
scale, one SR by our engine and one by the published test's geometry
(:func:`iste.eval.published.published_upscale`), then, per image, every score that
docs/reproduction.md quotes:

- ``float`` / ``uint8``: PSNR (ceil(s)+6 shaved) of our float SR and of the same SR rounded to
  8 bits (``--metric-precision``);
- ``float_shave8``: our float SR with the published test's 8-pixel border (the shave alone);
- ``published``: the published geometry's SR, 8 shaved (``--protocol published``), and
  ``published_own_shave``: the same SR with ceil(s)+6 shaved (the key set and padding alone);
- SSIM of our float SR in the four variants.

Prints means over images and the differences; writes every number to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import iste
from iste.data import metrics
from iste.data.degrade import evaluation_pair
from iste.data.tensors import quantize
from iste.engine.image import upscale_to
from iste.eval.datasets import open_test_set
from iste.eval.published import published_upscale


def score(model, image: np.ndarray, scale: float) -> dict[str, float]:
    lr, hr = evaluation_pair(image, scale)
    sr = upscale_to(lr, hr.shape[:2], model, dtype="float32")
    t0 = time.perf_counter()
    pub = published_upscale(model, lr, hr.shape[:2], scale)
    out = {
        "float": metrics.psnr(sr, hr, scale=scale),
        "uint8": metrics.psnr(quantize(sr), hr, scale=scale),
        "float_shave8": metrics.psnr(sr, hr, scale=scale, border=metrics.PUBLISHED_BORDER),
        "published": metrics.psnr(pub, hr, scale=scale, border=metrics.PUBLISHED_BORDER),
        "published_own_shave": metrics.psnr(pub, hr, scale=scale),
        "published_seconds": time.perf_counter() - t0,
    }
    for variant in metrics.SSIM_VARIANTS:
        out[f"ssim_{variant}"] = metrics.ssim(sr, hr, scale=scale, variant=variant)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint (default: the shipped model)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--out", default="departures.json")
    args = ap.parse_args()
    model = iste.load(args.model, device="cpu")
    images = open_test_set("sample:cmu-test", max_images=args.images).images
    scales = [float(s) for s in args.scales.split(",")]
    results = {}
    for scale in scales:
        rows = [score(model, t.load(), scale) for t in images]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        results[f"x{scale:g}"] = {"mean": mean, "per_image": dict(zip([t.name for t in images],
                                                                      rows))}
        print(f"x{scale:g}: float {mean['float']:.3f}  uint8 - float "
              f"{mean['uint8'] - mean['float']:+.3f}  shave 8 - ours "
              f"{mean['float_shave8'] - mean['float']:+.3f}  published - ours "
              f"{mean['published'] - mean['float']:+.3f}  (same shave "
              f"{mean['published_own_shave'] - mean['float']:+.3f})  SSIM "
              + " ".join(f"{v} {mean['ssim_' + v]:.4f}" for v in metrics.SSIM_VARIANTS),
              flush=True)
    Path(args.out).write_text(json.dumps({"images": [t.name for t in images],
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
