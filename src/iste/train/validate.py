"""Validation PSNR during training: the evaluation protocol on a few fixed tiles."""

from __future__ import annotations

import numpy as np
import torch

from iste.engine.image import upscale_to
from iste.data.degrade import bicubic_upscale, evaluation_pair
from iste.eval.metrics import psnr


@torch.no_grad()
def validate(model, tiles: list[np.ndarray], scales: tuple[float, ...]) -> dict[str, float]:
    """Mean PSNR of the model and of bicubic per scale: {"psnr_x2": ..., "bicubic_x2": ...}."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for s in scales:
        ours, base = [], []
        for tile in tiles:
            lr, hr = evaluation_pair(tile, s)
            sr = upscale_to(lr, hr.shape[:2], model, dtype="float32")  # scored as iste eval does
            ours.append(psnr(sr, hr, scale=s))
            base.append(psnr(bicubic_upscale(lr, hr.shape[:2]), hr, scale=s))
        out[f"psnr_x{s:g}"] = float(np.mean(ours))
        out[f"bicubic_x{s:g}"] = float(np.mean(base))
    model.train(was_training)
    return out
