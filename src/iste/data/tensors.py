"""uint8 RGB arrays <-> float tensors, the one conversion every package uses.

Convention:
    Arrays are ``np.ndarray`` uint8 (H, W, 3), RGB last; tensors are float32 (1, 3, H, W) in
    [0, 1] holding ``uint8 / 255``. Back to uint8 rounds to nearest (values are clamped first,
    so a model's slight overshoot does not wrap around).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rgb_to_tensor", "tensor_to_rgb", "quantize"]


def rgb_to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1] on ``device`` (a copy)."""
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).to(device)
    return t.permute(2, 0, 1)[None].float().div_(255)


def unit_to_uint8(t: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] (any shape) -> uint8 of the same shape and device: clamped, then
    rounded half to even (the one rounding rule of every 8-bit output). Holds one float copy
    of ``t`` besides the result (``clamp(0, 1) * 255`` held two: 5.2 GB more for a 432 Mpx
    plain-image output)."""
    return t.detach().clamp(0, 1).mul_(255).round_().to(torch.uint8)


def tensor_to_rgb(t: torch.Tensor) -> np.ndarray:
    """float (1, 3, H, W) or (3, H, W) in [0, 1] -> uint8 (H, W, 3) on the CPU."""
    if t.ndim == 4:
        t = t[0]
    return unit_to_uint8(t.permute(1, 2, 0)).cpu().numpy()


def quantize(image01: np.ndarray) -> np.ndarray:
    """A float SR in [0, 1] (any shape) -> uint8, clamped and rounded as :func:`tensor_to_rgb`
    does; uint8 input is returned as is."""
    if image01.dtype == np.uint8:
        return image01
    return np.round(np.clip(image01, 0, 1).astype(np.float32) * 255).astype(np.uint8)
