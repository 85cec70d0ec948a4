"""The effect of our local-ensemble weights on the last LR row's and column's pixel centres
against the published ones (docs/reproduction.md, departure 10), on the shipped model.

    python scripts/ensemble_areas_effect.py [--images 20] [--scales 3,5]

For each ``sample:cmu-test`` image degraded as in the evaluation, the SR through the default
engine with our weights and with :func:`iste.models.layers.ensemble.published_areas`; prints
the mean PSNR of both (the protocol's shave, and unshaved) and how many pixels differ, by how
much. The chunks run in this thread (``workers=1``): the switch holds for the calling thread.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import iste
from iste.data.degrade import evaluation_pair
from iste.data.metrics import psnr
from iste.engine.render import QueryOptions
from iste.eval.datasets import open_test_set
from iste.models.layers.ensemble import published_areas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--scales", default="3,5")
    args = p.parse_args()
    torch.set_num_threads(2)
    model = iste.load()
    options = QueryOptions(workers=1)
    images = open_test_set("sample:cmu-test", max_images=args.images).images
    for scale in (float(s) for s in args.scales.split(",")):
        ours, published, ours_whole, published_whole = [], [], [], []
        differ = worst = 0
        for image in images:
            lr, hr = evaluation_pair(image.load(), scale)
            a = iste.upscale_to(lr, hr.shape[:2], model, options=options, dtype="float32")
            with published_areas():
                b = iste.upscale_to(lr, hr.shape[:2], model, options=options, dtype="float32")
            ours.append(psnr(a, hr, scale=scale))
            published.append(psnr(b, hr, scale=scale))
            ours_whole.append(psnr(a, hr, scale=scale, border=0))
            published_whole.append(psnr(b, hr, scale=scale, border=0))
            levels = np.abs(np.round(a * 255) - np.round(b * 255)).max(-1)
            differ += int((levels > 0).sum())
            worst = max(worst, int(levels.max()))
        print(f"x{scale:g}, {len(images)} images: PSNR ours {np.mean(ours):.4f}, published "
              f"{np.mean(published):.4f} dB (published - ours "
              f"{np.mean(published) - np.mean(ours):+.4f}); unshaved published - ours "
              f"{np.mean(published_whole) - np.mean(ours_whole):+.4f} dB; {differ} pixels "
              f"differ, at most {worst} levels")


if __name__ == "__main__":
    main()
