"""The downstream experiments' image plumbing: LR degradation and network input tensors.

Degradations (``--degradation``):

- ``bicubic`` (default; what the paper's downstream section states): PIL bicubic resize of
  the HR image down to ``floor(H / s) x floor(W / s)``;
- ``paper``: the SR protocol's :func:`iste.data.degrade.degrade` (Gaussian blur of radius
  (s - 1) / 2, then the same bicubic resize) — what the SR models were trained on.

HR images are first cropped to ``round(floor(H / s) * s)`` (:func:`crop_to_scale`) so LR,
SR and HR sizes agree exactly; annotations are cropped the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from iste.data.degrade import bicubic_upscale, crop_to_scale, degrade, lr_size_for

__all__ = ["Degradation", "DEGRADATIONS", "lr_pair", "to_input"]

Degradation = Literal["bicubic", "paper"]
DEGRADATIONS = ("bicubic", "paper")


def lr_pair(image: np.ndarray, scale: float,
            degradation: Degradation) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR crop) of a uint8 (H, W, 3) image at ``scale``; ValueError for an image with
    a side shorter than ``scale``."""
    if degradation not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, "
                         f"got {degradation!r}")
    size = lr_size_for(image.shape[:2], scale)
    if min(size) < 1:
        raise ValueError(f"a {image.shape[0]} x {image.shape[1]} image is too small for "
                         f"x{scale:g} (its LR would be {size[0]} x {size[1]})")
    hr = crop_to_scale(image, scale)
    lr = bicubic_upscale(hr, size) if degradation == "bicubic" else degrade(hr, scale, size)
    return lr, hr


def to_input(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], the networks' input."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1
