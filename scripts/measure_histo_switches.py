"""Measure what the histopathology baselines' switches change, on short CPU trainings.

    OMP_NUM_THREADS=1 python scripts/measure_histo_switches.py [--steps 300] [--out FILE]

1. SWD-Net's RCF: a compact SWD-Net (``blocks`` residual blocks per stream) trained twice from
   the same seed, once with ``rcf: paper`` (context terms live) and once with
   ``rcf: published`` (the published code's function), same crops, Eq. 4 loss, Adam 1e-4 as
   published; validation PSNR at x2 on whole ``sample:cmu-val`` tiles.
2. Tiles versus the whole image: each trained model on a ``sample:cmu-test`` image, once whole
   and once in tiles of ``--tile`` LR pixels with its declared reach as the halo (its SE gates
   then see tile statistics); the PSNR of each against HR and the pixel differences.

Crops follow the ISTE protocol at a fixed scale 2: 48 x 48 LR, HR 96 x 96, Gaussian blur then
bicubic, flips and transposes. Prints a JSON summary (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from iste.data.degrade import degrade, evaluation_pair
from iste.data.metrics import psnr
from iste.models.fixed.swdnet import SWDNet, SWDNetConfig
from iste.train.dataset import validation_tiles
from iste.train.objectives import LossConfig, swdnet_loss
from iste.train.sources import open_source


def crops(source, rng: np.random.Generator, batch: int, patch: int = 48, scale: int = 2):
    """(lr, hr): (B, 3, patch, patch) and (B, 3, scale patch, scale patch) in [0, 1]."""
    lrs, hrs = [], []
    for _ in range(batch):
        hr = source.crop(rng, patch * scale, 0.3)
        lr = degrade(hr, scale, (patch, patch))
        for axis in (0, 1):
            if rng.random() < 0.5:
                hr, lr = np.flip(hr, axis), np.flip(lr, axis)
        if rng.random() < 0.5:
            hr, lr = hr.transpose(1, 0, 2), lr.transpose(1, 0, 2)
        lrs.append(np.ascontiguousarray(lr))
        hrs.append(np.ascontiguousarray(hr))
    to = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255
    return to(lrs), to(hrs)


def train(rcf: str, args) -> SWDNet:
    torch.manual_seed(args.seed)
    model = SWDNet(SWDNetConfig(rcf=rcf, blocks=args.blocks))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    source = open_source("sample:cmu-train")
    rng = np.random.default_rng(args.seed)
    cfg = LossConfig(kind="swdnet")
    t0 = time.perf_counter()
    for _ in range(args.steps):
        lr, hr = crops(source, rng, args.batch)
        loss, _ = swdnet_loss(model, lr, hr, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.4)
        opt.step()
    print(f"{rcf}: {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return model.eval()


def upscale(model, lr: torch.Tensor, tile: int | None) -> torch.Tensor:
    """Whole, or in tiles of ``tile`` LR pixels read with ``model.reach`` of halo."""
    with torch.no_grad():
        if tile is None:
            return model.sr(lr).clamp(0, 1)
        h, w = lr.shape[-2:]
        out = torch.zeros(1, 3, 2 * h, 2 * w)
        r = model.reach
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                y0, x0 = max(0, y - r), max(0, x - r)
                y1, x1 = min(h, y + tile + r), min(w, x + tile + r)
                y0 -= (y0 % 2); x0 -= (x0 % 2)
                y1 -= (y1 - y0) % 2; x1 -= (x1 - x0) % 2
                sr = model.sr(lr[..., y0:y1, x0:x1]).clamp(0, 1)
                ty, tx = min(tile, h - y), min(tile, w - x)
                out[..., 2 * y:2 * (y + ty), 2 * x:2 * (x + tx)] = \
                    sr[..., 2 * (y - y0):2 * (y - y0 + ty), 2 * (x - x0):2 * (x - x0 + tx)]
        return out


def evaluate(model, tiles, tile: int | None) -> tuple[float, list[np.ndarray]]:
    scores, outs = [], []
    for image in tiles:
        lr, hr = evaluation_pair(image, 2.0)
        lr_t = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float() / 255
        sr = upscale(model, lr_t, tile)[0].permute(1, 2, 0).numpy()
        outs.append(sr)
        scores.append(psnr(sr.astype(np.float32), hr, scale=2.0))
    return float(np.mean(scores)), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-tiles", type=int, default=4)
    ap.add_argument("--val-size", type=int, default=192, help="HR side of the PSNR tiles")
    ap.add_argument("--tile-val-size", type=int, default=768,
                    help="HR side of the sample:cmu-test image for the tiled-versus-whole "
                         "comparison (at most 768)")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tiles = validation_tiles([open_source("sample:cmu-val")], size=args.val_size,
                             count=args.val_tiles, min_tissue=0.3)
    big = validation_tiles([open_source("sample:cmu-test")], size=args.tile_val_size, count=1,
                           min_tissue=0.3)
    result = {"steps": args.steps, "batch": args.batch, "blocks": args.blocks, "seed": args.seed,
              "val_tiles": args.val_tiles}
    models = {rcf: train(rcf, args) for rcf in ("paper", "published")}
    for rcf, model in models.items():
        result[f"psnr_x2_{rcf}"], _ = evaluate(model, tiles, None)
    result["psnr_x2_paper_minus_published"] = result["psnr_x2_paper"] - result["psnr_x2_published"]
    result.update(tile=args.tile, tile_image_hr=args.tile_val_size)
    for rcf, model in models.items():
        whole_psnr, whole = evaluate(model, big, None)
        tiled_psnr, tiled = evaluate(model, big, args.tile)
        result[f"tiles_{rcf}"] = {
            "reach": model.reach, "psnr_x2_whole": whole_psnr, "psnr_x2_tiled": tiled_psnr,
            "max_abs_tiled_minus_whole": float(max(np.abs(a - b).max() for a, b in zip(tiled, whole))),
            "mean_abs_tiled_minus_whole": float(np.mean([np.abs(a - b).mean() for a, b in zip(tiled, whole)]))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
