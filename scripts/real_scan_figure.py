"""Side-by-side SR of a real JPEG-compressed slide region: bicubic | models, with a block-grid score.

    python scripts/real_scan_figure.py --out docs/figures/real-scan-cmu.png \
        --models "scanner-iste v2=runs/scanner-iste-v2.safetensors,scanner-iste v3=default"

The LR is the CMU SVS's level 0 (Aperio JPEG/RGB, quality 30: docs/real-scans.md), not a
synthetic degradation: a ``--size`` square at ``--x, --y`` of the test band, upscaled by
``--scale`` with PIL bicubic and with each model. Top row: the LR as stored (``iste upscale
--deblock off``); bottom row: the LR as ``iste upscale`` reads it by default, deblocked with the
file's own quantisation tables (:mod:`iste.slides.deblocked`). Shown: a zoomed crop of each.

Each panel carries its block-grid score (:func:`iste.data.deblock.block_grid_score`): 1 means
no grid; the stored LR itself (s = 1) scores above 1 when its blocks show.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def labelled_models(spec: str) -> dict:
    """``LABEL=PATH,...`` (PATH ``default``: the shipped weights) -> {label: model}."""
    from iste.default_model import load_default
    from iste.models.checkpoint import load_model

    models = {}
    for item in spec.split(","):
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--models: expected LABEL=PATH (no commas in labels), got {item!r}")
        models[label] = load_default() if path == "default" else load_model(path)
    return models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", required=True,
                        help="LABEL=PATH,... (PATH 'default' = the shipped weights)")
    parser.add_argument("--x", type=int, default=1040,
                        help="level-0 x of the region (multiple of 8)")
    parser.add_argument("--y", type=int, default=2440,
                        help="level-0 y (multiple of 8; test band: >= 2199)")
    parser.add_argument("--size", type=int, default=96, help="LR region side (multiple of 8)")
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--zoom", type=int, default=48, help="LR pixels shown (from the centre)")
    args = parser.parse_args()
    if args.x % 8 or args.y % 8 or args.size % 8:
        raise SystemExit("--x, --y and --size must be multiples of 8 (the JPEG block grid)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iste.api import upscale_to
    from iste.data.deblock import block_grid_score as grid_score
    from iste.data.degrade import bicubic_upscale
    from iste.data.samples import sample_path
    from iste.files import write_atomic
    from iste.slides.deblocked import deblocked
    from iste.slides.formats import open_slide

    models = labelled_models(args.models)
    box = ((args.x, args.y), 0, (args.size, args.size))
    with open_slide(sample_path("cmu-svs")) as slide:
        rows = [("as stored", slide.read_region(*box)),
                ("deblocked", deblocked(slide).read_region(*box))]
    out_hw = (round(args.size * args.scale),) * 2
    c0 = (args.size - args.zoom) // 2 // 8 * 8  # the centre zoom x zoom LR pixels, block-aligned
    r0, r1 = round(c0 * args.scale), round((c0 + args.zoom) * args.scale)
    grid = []
    for name, lr in rows:
        nearest = np.repeat(np.repeat(lr, round(args.scale), 0), round(args.scale), 1)
        panels = [(f"LR {name} (nearest)", nearest[:out_hw[0], :out_hw[1]], grid_score(lr, 1.0)),
                  (f"bicubic of LR {name}", bicubic_upscale(lr, out_hw), None)]
        for label, model in models.items():
            panels.append((f"{label}, LR {name}", upscale_to(lr, out_hw, model), None))
        grid.append([(t, im, grid_score(im, args.scale) if g is None else g)
                     for t, im, g in panels])
    fig, axes = plt.subplots(len(grid), len(grid[0]), figsize=(3.2 * len(grid[0]), 7.4),
                             squeeze=False, layout="constrained")
    for row_axes, panels in zip(axes, grid):
        for ax, (title, image, score) in zip(row_axes, panels):
            ax.imshow(image[r0:r1, r0:r1], interpolation="nearest")
            ax.set_title(f"{title}\nblock-grid score {score:.2f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"CMU SVS level 0 (Aperio JPEG/RGB q30) at ({args.x}, {args.y}), "
                 f"{args.size} px, x{args.scale:g}", fontsize=10)
    write_atomic(args.out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    for panels in grid:
        for title, _, score in panels:
            print(f"{title}: block-grid score {score:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
