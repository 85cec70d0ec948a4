"""One prepared GPU run: a larger ISTE trained by the scanner-iste recipe, then scored.

    python scripts/gpu_train_scanner.py --out OUT [--minutes 9] [--size large]
    python scripts/gpu_train_scanner.py --out OUT --dry-run      # CPU: 2 tiny steps, same path

Recipe: the shipped default's (src/iste/configs/scanner-iste*.yaml): every non-test H&E
sample (CMU train + val bands) at 20x and 10x, L1, Adam, with the degradation of its last stage
(``mixed-q30-j75``: 75 % of the crops the paper's blur + bicubic plus noise and JPEG at quality
30-95 as scanners write it, the rest clean). Only the model and the batch grow (``--size``):

- ``large``: EDSR-baseline 16 blocks x 64 channels, hidden 256, decoders 256-256 (the
  paper's EDSR-baseline ISTE, about 1.5 M parameters), batch 32, lr 2e-4 from scratch.

Training runs in chunks of ``--chunk`` steps (each resumes the run in ``OUT/run``) until
``--minutes`` of wall time are spent, so a device session's time limit is respected; a later
call with the same ``--out`` continues the run. Then the model is scored against bicubic on the
held-out other-source tiles (sample:other-sources) at x2, x3, x4 under the paper degradation and
JPEG q75 / q90, written to ``OUT/scores.json`` with the run's speed; ship the weights
(``OUT/run/model.safetensors``) only if they beat the shipped default there (docs/model-card.md).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

SIZES = {
    "large": {"encoder_args": {"n_resblocks": 16, "n_feats": 64},
              "head_args": {"hidden_dim": 256, "decoder_hidden": [256, 256]},
              "batch": 32, "lr": 2e-4},
}
DEGRADATIONS = ("paper", "jpeg75", "jpeg90")
SCALES = (2.0, 3.0, 4.0)


def build_config(size: str, steps: int, dry_run: bool):
    from iste.default_model import DEFAULT_CONFIG
    from iste.models.registry import ModelConfig
    from iste.train.config import load_train_config

    base = load_train_config("scanner-iste")
    last_stage = load_train_config(DEFAULT_CONFIG)
    spec = SIZES[size]
    model = ModelConfig.from_dict({**base.model.to_dict(), "encoder_args": spec["encoder_args"],
                                   "head_args": spec["head_args"]}, where=size)
    data = replace(base.data, degradation=last_stage.data.degradation, val=(), val_tiles=1)
    run = replace(base.run, init=None, steps=steps, batch_size=2 if dry_run else spec["batch"],
                  checkpoint_every=max(1, steps // 20), log_every=10, workers=0 if dry_run else 6)
    milestones = tuple(int(steps * f) for f in (0.7, 0.9))
    optim = replace(base.optim, lr=spec["lr"], milestones=milestones)
    return replace(base, model=model, data=data, run=run, optim=optim)


def score(weights: Path, device: torch.device, *, degradations=DEGRADATIONS,
          scales=SCALES) -> dict:
    from iste.api import upscale_to
    from iste.data.degrade import bicubic_upscale
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.data.samples import extra_test_images
    from iste.data.metrics import psnr
    from iste.models.checkpoint import load_model

    models = {"trained": load_model(weights, device=device)}
    from iste.default_model import default_weights_path

    if default_weights_path() is not None:
        models["default"] = load_model(default_weights_path(), device=device)
    images = extra_test_images()
    out: dict = {}
    with torch.no_grad():
        for name in degradations:
            degradation = parse_degradation(name, allow_random=False)
            for s in scales:
                rows: dict[str, list[float]] = {"bicubic": [], **{m: [] for m in models}}
                for _, image in images:
                    lr, hr = degradation_pair(image, s, degradation)
                    rows["bicubic"].append(psnr(bicubic_upscale(lr, hr.shape[:2]), hr, scale=s))
                    for m, model in models.items():
                        rows[m].append(psnr(upscale_to(lr, hr.shape[:2], model), hr, scale=s))
                out[f"{name}_x{s:g}"] = {m: float(np.mean(v)) for m, v in rows.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--minutes", type=float, default=9.0, help="training wall-time budget")
    parser.add_argument("--steps", type=int, default=20000, help="schedule length (lr milestones "
                                                                 "at 70 %% and 90 %%)")
    parser.add_argument("--chunk", type=int, default=200, help="steps between time checks")
    parser.add_argument("--dry-run", action="store_true", help="CPU: 2 steps of batch 2")
    args = parser.parse_args()

    from iste.api import pick_device
    from iste.train.loop import train

    device = torch.device("cpu") if args.dry_run else pick_device(None)
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("no CUDA device: use --dry-run to check the script on a CPU")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = build_config(args.size, 2 if args.dry_run else args.steps, args.dry_run)
    run_dir = args.out / "run"
    resume = (run_dir / "train_state.pt").is_file()
    t0, result = time.perf_counter(), {}
    chunk = 1 if args.dry_run else args.chunk
    while time.perf_counter() - t0 < args.minutes * 60:
        result = train(cfg, run_dir, resume=resume, device=device, stop_after=chunk,
                       progress=False)
        resume = True
        print(f"step {result['step']}: loss {result.get('loss', float('nan')):.4f}, "
              f"{result.get('samples_per_s', 0):.1f} samples/s, "
              f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if result["step"] >= cfg.run.steps:
            break
    quick = {"degradations": ("jpeg75",), "scales": (2.0,)} if args.dry_run else {}
    scores = score(run_dir / "model.safetensors", device, **quick)
    report = {"size": args.size, "device": str(device), "step": result.get("step"),
              "samples_per_s": result.get("samples_per_s"), "train_minutes":
              (time.perf_counter() - t0) / 60, "psnr": scores}
    (args.out / "scores.json").write_text(json.dumps(report, indent=2))
    for key, row in scores.items():
        print(key, ", ".join(f"{m} {v:.2f}" for m, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
