"""The output frame: which output pixel sits where over the low-resolution image.

Convention:
    Integer pixel indices (row, col), rows first, in the *global* output image of ``out_hw``
    = (H, W) pixels over a global LR image of ``lr_hw`` = (h, w) pixels. Output pixel i covers
    LR rows [i * h / H, (i + 1) * h / H). Features may come from a crop of the LR image that
    starts at LR pixel ``crop_origin`` = (row, col) and spans ``crop_hw``; query coordinates are
    then expressed in the crop's [-1, 1] square, so a tile and the whole image query exactly the
    same points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from iste.text import decimal

MAX_SCALE = 8.0
"""The largest scale factor any path accepts (plain images, slides, the viewer, evaluation):
the models are trained up to x4 and x8 is the paper's furthest evaluated scale."""


def check_scale(scale) -> float:
    """A real scale factor with 1 < scale <= :data:`MAX_SCALE` (non-integer allowed).

    Raises:
        ValueError: one line quoting (a short excerpt of) the value.
    """
    try:
        value = float(scale)
    except (TypeError, ValueError, OverflowError):
        hint = ""
        if isinstance(scale, str) and scale.count(",") == 1:
            hint = f" (write the decimal with a point: {scale.replace(',', '.')[:40]})"
        raise ValueError(f"scale must be a number > 1, got {str(scale)[:40]!r}{hint}") from None
    if isinstance(scale, str) and math.isfinite(value):
        try:  # as a user writes a number: float() read -s 2_0 as x20, -s ２ as x2
            decimal(scale)
        except ValueError as exc:
            raise ValueError(f"scale must be a number > 1: {exc}") from None
    if not math.isfinite(value) or value <= 1:
        raise ValueError(f"scale must be a finite number > 1, got {str(scale)[:40]!r}")
    if value > MAX_SCALE:
        shown = f"{value:g}" if float(f"{value:g}") > MAX_SCALE else repr(value)  # not "x8"
        raise ValueError(f"scale x{shown} is beyond what the models can reach "
                         f"(max x{MAX_SCALE:g}; they are trained up to x4)")
    return value


@dataclass(frozen=True)
class Frame:
    lr_hw: tuple[int, int]
    out_hw: tuple[int, int]

    def __post_init__(self):
        if min(self.lr_hw) < 1 or min(self.out_hw) < 1:
            raise ValueError(f"empty frame: lr {self.lr_hw}, out {self.out_hw}")

    @property
    def scale(self) -> tuple[float, float]:
        return self.out_hw[0] / self.lr_hw[0], self.out_hw[1] / self.lr_hw[1]

    @classmethod
    def for_scale(cls, lr_hw: tuple[int, int], scale: float) -> "Frame":
        """Output of round(h * s) x round(w * s) pixels."""
        return cls(lr_hw, (max(1, round(lr_hw[0] * scale)), max(1, round(lr_hw[1] * scale))))


def axis_coord(idx: torch.Tensor, n_out: int, n_lr: int, origin: int, n_crop: int) -> torch.Tensor:
    """Crop-normalised coordinates of output pixel centres ``idx`` along one axis.

    The centre of output pixel i lies at LR position u = (i + 0.5) * n_lr / n_out; in the
    crop's frame that is u - origin, mapped to [-1, 1] by 2 * (u - origin) / n_crop - 1.
    Computed in float64 and rounded once, so crops agree with the whole image to ~1e-7.
    """
    u = (idx.to(torch.float64) + 0.5) * (n_lr / n_out) - origin
    return (2 * u / n_crop - 1).to(torch.float32)


def axis_window(idx: torch.Tensor, n_out: int, n_lr: int, window: int) -> torch.Tensor:
    """Index of the key window (``window`` LR pixels wide) holding output pixel ``idx``."""
    return ((2 * idx + 1) * n_lr) // (2 * n_out * window)


def key_stride(scale: float, window: int, max_keys: int) -> int:
    """Stride between key pixels along one axis: about sqrt(max_keys) keys per window side."""
    return max(1, math.ceil(window * scale / math.sqrt(max_keys)))
