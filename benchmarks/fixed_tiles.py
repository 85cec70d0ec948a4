"""How far tiles of a fixed-scale network are from the whole image (paper-size networks).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fixed_tiles.py [--arch swinir] [--scale 2]
        [--size 128] [--tile 128]

Builds the paper-size network (random initialisation after ``torch.manual_seed(0)``), super-
resolves a random ``size`` x ``size`` LR image whole (:func:`iste.engine.fixed.fixed_sr`) and in
``tile`` x ``tile`` output tiles (:func:`iste.engine.tiles.tiled_super_resolve`, halo = the
declared ``reach``), and prints the largest and the mean absolute difference (also in 8-bit
levels) with both wall times. Convolutional networks give 0 up to float rounding; SwinIR's
shifted windows have no bounded field, so its declared reach is a cap.
"""

from __future__ import annotations

import argparse
import time

import torch

from iste.engine.fixed import fixed_sr
from iste.engine.tiles import tiled_super_resolve
from iste.models.registry import FIXED, build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="swinir", choices=list(FIXED))
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--tile", type=int, default=128)
    args = p.parse_args()
    torch.manual_seed(0)
    paper = FIXED[args.arch].paper_counts[0].args if FIXED[args.arch].paper_counts else {}
    model = build_model({"arch": args.arch, "scale": args.scale, "args": paper}).eval()
    lr = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    out_hw = (args.scale * args.size,) * 2
    t0 = time.perf_counter()
    with torch.no_grad():
        whole = fixed_sr(model, lr).clamp(0, 1)
    t1 = time.perf_counter()
    tiled = tiled_super_resolve(model, lr, out_hw, tile_hw=(args.tile, args.tile))
    t2 = time.perf_counter()
    diff = (tiled - whole).abs()
    print(f"{args.arch} x{args.scale} reach {model.reach}: max {diff.max():.3e} "
          f"({diff.max() * 255:.3f} 8-bit levels), mean {diff.mean():.3e}; "
          f"whole {t1 - t0:.1f} s, tiled {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
