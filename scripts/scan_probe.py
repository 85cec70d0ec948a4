"""A quick progress probe for scanner training: gain over bicubic on a few held-out tiles.

    python scripts/scan_probe.py NAME=WEIGHTS [NAME=WEIGHTS ...] [--cmu 4] [--jsonl LOG]

Scores each checkpoint and bicubic of the same input on the two held-out other-source tiles
(sample:other-sources) and on the first ``--cmu`` tiles of the CMU test split, under the
conditions the issue's bars watch most closely: JPEG q75 (YCbCr 4:2:0) at x2, x3, x4 and clean
(paper protocol) at x2 and x4. PSNR on the rounded 8-bit SR (as docs/eval-scans), RGB,
ceil(s)+6 pixels shaved. Prints one row per checkpoint and, with ``--jsonl``, appends them to
LOG. One thread; about a minute per checkpoint on a shared CPU. The proper evaluation is
``iste eval`` (docs/model-card.md); this only tells whether a run is gaining.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

CONDITIONS = (("jpeg75", 2.0), ("jpeg75", 3.0), ("jpeg75", 4.0), ("paper", 2.0), ("paper", 4.0))


def probe(models: dict[str, torch.nn.Module], cmu_tiles: int) -> dict[str, dict[str, float]]:
    """Mean gain (dB) over bicubic per model and ``<set>:<degradation>_x<scale>`` key."""
    from iste.api import upscale_to
    from iste.data.degrade import bicubic_upscale
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.data.samples import extra_test_images
    from iste.slides.samples import cmu_test_images
    from iste.data.metrics import psnr

    sets = {"other": extra_test_images()}
    if cmu_tiles:
        sets["cmu"] = cmu_test_images()[:cmu_tiles]
    gains: dict[str, dict[str, float]] = {name: {} for name in models}
    with torch.no_grad():
        for set_name, images in sets.items():
            for degradation_name, scale in CONDITIONS:
                degradation = parse_degradation(degradation_name, allow_random=False)
                rows: dict[str, list[float]] = {name: [] for name in models}
                for _, image in images:
                    lr, hr = degradation_pair(image, scale, degradation)
                    base = psnr(bicubic_upscale(lr, hr.shape[:2]), hr, scale=scale)
                    for name, model in models.items():
                        sr = upscale_to(lr, hr.shape[:2], model)
                        rows[name].append(psnr(sr, hr, scale=scale) - base)
                key = f"{set_name}:{degradation_name}_x{scale:g}"
                for name in models:
                    gains[name][key] = float(np.mean(rows[name]))
    return gains


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", nargs="+", help="NAME=WEIGHTS.safetensors")
    parser.add_argument("--cmu", type=int, default=4, help="CMU test tiles to add (0: none)")
    parser.add_argument("--jsonl", type=Path, help="append the rows to this file")
    args = parser.parse_args()

    from iste.models.checkpoint import load_model

    torch.set_num_threads(1)
    models = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"expected NAME=WEIGHTS, got {item!r}")
        models[name] = load_model(Path(path), device=torch.device("cpu")).eval()
    gains = probe(models, args.cmu)
    keys = list(next(iter(gains.values())))
    print("model".ljust(16) + " ".join(k.ljust(18) for k in keys))
    for name, row in gains.items():
        print(name.ljust(16) + " ".join(f"{row[k]:+.3f}".ljust(18) for k in keys))
    if args.jsonl:
        with args.jsonl.open("a") as f:
            for name, row in gains.items():
                f.write(json.dumps({"time": time.time(), "model": name, **row}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
