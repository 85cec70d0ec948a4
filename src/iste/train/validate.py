"""Validation PSNR during training: the evaluation protocol on a few fixed tiles."""

from __future__ import annotations

import numpy as np
import torch

from iste.data.degrade import bicubic_upscale, evaluation_pair
from iste.engine.render import super_resolve
from iste.eval.metrics import psnr


@torch.no_grad()
def validate(model, tiles: list[np.ndarray], scales: tuple[float, ...]) -> dict[str, float]:
    """Mean PSNR of the model and of bicubic per scale: {"psnr_x2": ..., "bicubic_x2": ...}."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for s in scales:
        ours, base = [], []
        for tile in tiles:
            lr, hr = evaluation_pair(tile, s)
            lr_t = torch.from_numpy(lr).permute(2, 0, 1)[None].float().to(device) / 255
            sr = super_resolve(model, lr_t, hr.shape[:2])
            sr_u8 = (sr[0].permute(1, 2, 0) * 255).round().byte().cpu().numpy()
            ours.append(psnr(sr_u8, hr, scale=s))
            base.append(psnr(bicubic_upscale(lr, hr.shape[:2]), hr, scale=s))
        out[f"psnr_x{s:g}"] = float(np.mean(ours))
        out[f"bicubic_x{s:g}"] = float(np.mean(base))
    model.train(was_training)
    return out
