"""The small Python API: ``iste.load`` and ``iste.upscale``."""

from __future__ import annotations

import math
import os
from typing import Callable, Literal

import numpy as np
import torch

from iste.data.images import quantize
from iste.default_model import load_default
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, super_resolve
from iste.models.checkpoint import load_model

OutputDType = Literal["uint8", "float32"]
OUTPUT_DTYPES: tuple[str, ...] = ("uint8", "float32")


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


def check_scale(scale) -> float:
    """A real scale factor > 1 (non-integer allowed); ValueError otherwise."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number > 1, got {scale!r}") from None
    if not math.isfinite(value) or value <= 1:
        raise ValueError(f"scale must be a finite number > 1, got {scale!r}")
    return value


def upscale(image: np.ndarray, scale: float, model: torch.nn.Module | None = None, *,
            options: QueryOptions = QueryOptions(), dtype: OutputDType = "uint8",
            progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Super-resolve an RGB image.

    image: (h, w, 3) uint8. Returns (round(h * s), round(w * s), 3): uint8 (rounded) by
    default, or with ``dtype="float32"`` the model's prediction clamped to [0, 1], not
    quantised (what the published test code scores; ``iste eval`` scores it by default).
    model: a loaded model (:func:`load`); the shipped default when None.
    """
    scale = check_scale(scale)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
    model = load() if model is None else model
    out_hw = Frame.for_scale(image.shape[:2], scale).out_hw
    return upscale_to(image, out_hw, model, options=options, dtype=dtype, progress=progress)


def upscale_to(image: np.ndarray, out_hw: tuple[int, int], model: torch.nn.Module, *,
               options: QueryOptions = QueryOptions(), dtype: OutputDType = "uint8",
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 (h, w, 3) -> (H, W, 3) super-resolved to exactly ``out_hw`` = (H, W) (the
    evaluation protocol's HR size), on the model's device: uint8 (rounded), or float32 in
    [0, 1] (clamped, not quantised) with ``dtype="float32"``."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    device = next(model.parameters()).device
    lr = torch.from_numpy(np.array(image)).to(device).permute(2, 0, 1)[None]  # a writable copy
    sr = super_resolve(model, lr.float() / 255, tuple(out_hw), options=options,
                       progress=progress)[0].permute(1, 2, 0).float().cpu().numpy()
    return sr if dtype == "float32" else quantize(sr)
