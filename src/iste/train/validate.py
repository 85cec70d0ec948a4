"""Validation PSNR during training: the evaluation protocol on a few fixed tiles."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from iste.engine.image import upscale_to
from iste.engine.render import QueryOptions
from iste.data.degrade import bicubic_upscale
from iste.data.degradations import degradation_pair, parse_degradation
from iste.data.metrics import psnr
from iste.train.state import SCORE_PREFIX


# iste eval's default (Protocol.options): fp32 whatever the machine. "auto" would run a wide
# model in bf16 on a GPU or AMX CPU, so the PSNR that picks best.safetensors was not the one
# iste eval reports for it
_EVAL_OPTIONS = QueryOptions(precision="fp32")


@torch.no_grad()
def validate(model, tiles: list[np.ndarray], scales: tuple[float, ...],
             degradations: tuple[str, ...] = ("paper",), *,
             stop: Callable[[], object] | None = None) -> dict[str, float] | None:
    """Mean PSNR of the model and of bicubic per scale and fixed degradation:
    {"psnr_x2": ..., "bicubic_x2": ..., "psnr_x2_jpeg75": ...} (paper has no suffix); the
    model's float SR in fp32, scored as ``iste eval`` scores it by default. tiles: each
    (H, W, 3) uint8.

    stop: asked before each tile's SR (e.g. :func:`iste.stopping.requested`); a true answer
    ends the validation there and returns None: a scheduler's SIGTERM during a validation of
    many tiles waited for all of them, and its grace period ran out before the step was
    saved."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for name in degradations:
            degradation = parse_degradation(name, allow_random=False)
            suffix = "" if degradation.name == "paper" else f"_{degradation.name}"
            for s in scales:
                ours, base = [], []
                for tile in tiles:
                    if stop is not None and stop():
                        return None
                    lr, hr = degradation_pair(tile, s, degradation)
                    sr = upscale_to(lr, hr.shape[:2], model, options=_EVAL_OPTIONS,
                                    dtype="float32")
                    ours.append(psnr(sr, hr, scale=s))
                    base.append(psnr(bicubic_upscale(lr, hr.shape[:2]), hr, scale=s))
                out[f"{SCORE_PREFIX}{s:g}{suffix}"] = float(np.mean(ours))
                out[f"bicubic_x{s:g}{suffix}"] = float(np.mean(base))
    finally:
        model.train(was_training)
    return out
