"""Block-grid score of SR outputs against JPEG quality, on the held-out other-source tiles.

    python scripts/grid_by_quality.py --models "v2=runs/scanner-iste-v2.safetensors,v3=default"

Each tile is reduced by ``--scale`` (PIL bicubic), JPEG-compressed at each quality (4:4:4 and
4:2:0, block grid at the corner) and upscaled back by bicubic and each model. The score is
:func:`iste.data.deblock.block_grid_score` (neighbour differences across the LR's 8-pixel block edges
over those elsewhere). It is not 1 without a grid: an upscaler's own periodic pattern falls on
the edges' phase, so each method's score on the uncompressed LR (row "lossless") is its
reference, and a grid shows as the excess over it. Each compressed case is also shown
deblocked with its own tables (``... deblocked``: what ``iste upscale`` feeds the model by
default, :mod:`iste.data.deblock`).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="LABEL=PATH,... ('default': shipped)")
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--qualities", default="30,50,75,90")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from iste.api import upscale_to
    from iste.data.deblock import block_grid_score, deblock
    from iste.data.degrade import bicubic_upscale
    from iste.data.jpeg import parse_jpeg_settings
    from iste.data.samples import extra_test_images

    spec = importlib.util.spec_from_file_location(
        "real_scan_figure", Path(__file__).with_name("real_scan_figure.py"))
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    torch.set_num_threads(1)
    models = figure.labelled_models(args.models)
    s = args.scale
    print("| tile | LR | bicubic | " + " | ".join(models) + " |")
    print("|---|---|---|" + "---|" * len(models))
    for name, tile in extra_test_images():
        clean = np.asarray(Image.fromarray(tile).resize((tile.shape[1] // s, tile.shape[0] // s),
                                                        Image.BICUBIC))
        cases = [("lossless", clean)]
        for q in (int(v) for v in args.qualities.split(",")):
            for subsampling, chroma in ((0, "4:4:4"), (2, "4:2:0")):
                buf = io.BytesIO()
                Image.fromarray(clean).save(buf, "JPEG", quality=q, subsampling=subsampling)
                decoded = np.asarray(Image.open(buf).convert("RGB"))
                quant = parse_jpeg_settings(buf.getvalue()).block_quantisation()
                cases.append((f"q{q} {chroma}", decoded))
                cases.append((f"q{q} {chroma} deblocked", deblock(decoded, quant)))
        for label, lr in cases:
            hw = (lr.shape[0] * s, lr.shape[1] * s)
            scores = [block_grid_score(lr, 1.0), block_grid_score(bicubic_upscale(lr, hw), s)]
            with torch.no_grad():
                scores += [block_grid_score(upscale_to(lr, hw, m), s) for m in models.values()]
            print(f"| {name} {label} | " + " | ".join(f"{v:.2f}" for v in scores) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
