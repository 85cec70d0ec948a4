"""Smoke run of both downstream experiments on small synthetic datasets (CPU, minutes): shows
that the networks learn through the whole pipeline (readers, SR, training, glands, metrics,
tables), not what SR does for real data.

    nice python scripts/downstream_synthetic.py --out runs/downstream-synthetic
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from iste.downstream.experiments.glas import GlasRequest, run_glas
from iste.downstream.experiments.pcam import PCamRequest, run_pcam
from iste.downstream.synthetic import write_glas, write_pcam
from iste.downstream.trainer import FitConfig


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--out", default="runs/downstream-synthetic")
    p.add_argument("--methods", default="Bicubic=bicubic,ISTE=default")
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    out, methods = Path(args.out), tuple(args.methods.split(","))
    t0 = time.perf_counter()
    glas = run_glas(GlasRequest(
        data=write_glas(out / "glas-data", counts=(("train", 6), ("testA", 3), ("testB", 3))),
        methods=methods, out=out / "glas", crop=48, unet_width=8, opening_radius=1, min_area=10,
        fit=FitConfig(steps=args.steps, batch_size=4, lr=3e-3, checkpoint_every=args.steps),
        progress=False))
    t1 = time.perf_counter()
    pcam = run_pcam(PCamRequest(
        data=write_pcam(out / "pcam-data", sizes=(("train", 64), ("valid", 16), ("test", 32))),
        methods=methods, out=out / "pcam", resnet_width=8, block=16,
        fit=FitConfig(steps=args.steps, batch_size=8, lr=1e-3, checkpoint_every=args.steps),
        progress=False))
    t2 = time.perf_counter()
    print(glas["table"].markdown, f"\n({t1 - t0:.0f} s)\n")
    print(pcam["table"].markdown, f"\n({t2 - t1:.0f} s)")


if __name__ == "__main__":
    main()
