"""What deblocking does to SR on the held-out tiles, by JPEG quality, mode, scale and threshold.

    python scripts/deblock_sweep.py --thresholds 0.3,0.4,0.5,0.6 --scales 3 --modes rgb
    python scripts/deblock_sweep.py                       # the shipped threshold, x2-x4, both modes

For each held-out other-source tile (``sample:other-sources``), scale, colour mode
(:data:`iste.data.jpeg.COLOUR_MODES`) and quality, the LR of ``iste eval --degradation
jpeg<Q>[-rgb]`` is super-resolved by the model (default: the shipped one) as it is and after
:func:`iste.data.deblock.deblock` at each threshold. Printed per row: LR PSNR against the clean
LR, SR PSNR against HR (dB, unshaved), and the block-grid excess of the SR
(:func:`iste.data.deblock.block_grid_score` minus the model's score on the clean LR; 0 = no
added grid).
"""

from __future__ import annotations

import argparse

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="checkpoint ('default': shipped)")
    parser.add_argument("--thresholds", default=None,
                        help="comma-separated fractions of each step (default: the shipped one)")
    parser.add_argument("--scales", default="2,3,4")
    parser.add_argument("--modes", default="rgb,ycbcr420")
    parser.add_argument("--qualities", default="30,50,75,90")
    args = parser.parse_args()

    import torch

    from iste.api import load, upscale_to
    from iste.data.deblock import DEBLOCK_THRESHOLD, block_grid_score, deblock
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.data.jpeg import block_quantisation_of
    from iste.data.samples import extra_test_images

    torch.set_num_threads(1)
    model = load(None if args.model == "default" else args.model)
    thresholds = ([DEBLOCK_THRESHOLD] if args.thresholds is None
                  else [float(t) for t in args.thresholds.split(",")])

    def sr_of(lr, hw):
        with torch.no_grad():
            return upscale_to(lr, hw, model)

    print("| tile | x | mode | q | as stored: LR / SR PSNR, grid | "
          + " | ".join(f"deblocked {t:g}: LR / SR PSNR (change), grid" for t in thresholds)
          + " |")
    print("|---|---|---|---|---|" + "---|" * len(thresholds))
    for scale in (float(s) for s in args.scales.split(",")):
        for mode in args.modes.split(","):
            for name, image in extra_test_images():
                clean, hr = degradation_pair(image, scale, parse_degradation("paper"))
                reference = block_grid_score(sr_of(clean, hr.shape[:2]), scale)
                for quality in (int(q) for q in args.qualities.split(",")):
                    suffix = "-rgb" if mode == "rgb" else ""
                    lr, _ = degradation_pair(image, scale,
                                             parse_degradation(f"jpeg{quality}{suffix}"))
                    sr = sr_of(lr, hr.shape[:2])
                    base = psnr(sr, hr)
                    cells = [f"{psnr(lr, clean):.2f} / {base:.2f}, "
                             f"{block_grid_score(sr, scale) - reference:+.2f}"]
                    quant = block_quantisation_of(quality, mode)
                    for t in thresholds:
                        d = deblock(lr, quant, threshold=t)
                        sr_d = sr_of(d, hr.shape[:2])
                        cells.append(f"{psnr(d, clean):.2f} / {psnr(sr_d, hr):.2f} "
                                     f"({psnr(sr_d, hr) - base:+.2f}), "
                                     f"{block_grid_score(sr_d, scale) - reference:+.2f}")
                    print(f"| {name} | {scale:g} | {mode} | {quality} | " + " | ".join(cells)
                          + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
