"""The small Python API: ``iste.load`` and ``iste.upscale``."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from iste.default_model import load_default
from iste.engine.budget import plan_image
from iste.engine.frame import Frame, check_scale
from iste.engine.render import QueryOptions, super_resolve
from iste.engine.tiles import render_tiles
from iste.models.checkpoint import load_model


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU. ValueError for a device name
    torch does not know or a CUDA device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:N ...): {exc}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA device here (torch {torch.__version__};"
                             " install the CUDA build of torch for a GPU)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) here")
    return dev


def load(path: str | os.PathLike | None = None, *, device: str | torch.device | None = None):
    """A model from our safetensors checkpoint, or the shipped default when ``path`` is None."""
    dev = pick_device(device)
    return load_default(dev) if path is None else load_model(path, device=dev)


def upscale(image: np.ndarray, scale: float, model: torch.nn.Module | None = None, *,
            options: QueryOptions = QueryOptions(),
            progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Super-resolve an RGB image.

    image: (h, w, 3) uint8. Returns (round(h * s), round(w * s), 3) uint8.
    model: a loaded model (:func:`load`); the shipped default when None.
    """
    scale = check_scale(scale)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
    model = load() if model is None else model
    out_hw = Frame.for_scale(image.shape[:2], scale).out_hw
    return upscale_to(image, out_hw, model, options=options, progress=progress)


def upscale_to(image: np.ndarray, out_hw: tuple[int, int], model: torch.nn.Module, *,
               options: QueryOptions = QueryOptions(),
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (H, W, 3) super-resolved to exactly ``out_hw`` = (H, W) (the
    evaluation protocol's HR size), on the model's device.

    The memory is estimated first (:func:`iste.engine.budget.plan_image`): an image whose
    whole-image pass would not fit is rendered tile by tile (the slides' tiles; same pixels),
    and one whose output alone would not fit raises ValueError before any work.
    """
    device = next(model.parameters()).device
    plan = plan_image(model, image.shape[:2], tuple(out_hw))
    lr = torch.from_numpy(np.array(image)).to(device).permute(2, 0, 1)[None]  # a writable copy
    if not plan.tiled:
        sr = super_resolve(model, lr.float() / 255, tuple(out_hw), options=options,
                           progress=progress)
        return _to_uint8(sr)
    out = np.empty((*out_hw, 3), np.uint8)
    for tile, sr in render_tiles(model, lr, tuple(out_hw), tile_hw=(plan.tile, plan.tile),
                                 options=options):
        out[tile.out_rows.start:tile.out_rows.stop,
            tile.out_cols.start:tile.out_cols.stop] = _to_uint8(sr)
        if progress is not None:
            progress(sr.shape[-2] * sr.shape[-1])
    return out


def _to_uint8(sr: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return (sr[0].permute(1, 2, 0) * 255).round_().to(torch.uint8).cpu().numpy()
