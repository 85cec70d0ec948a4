"""PSNR and SSIM as the paper computes them: RGB, 255 range, a border of ceil(s) + 6 shaved.

Convention:
    ``sr`` and ``hr`` are ``np.ndarray`` uint8 (H, W, 3), the same shape: the SR output already
    quantised to 8 bits (what a user of the model gets) and the HR image cropped by
    :func:`iste.data.degrade.crop_to_scale`. Both metrics see the same shaved arrays
    ``x[b:H-b, b:W-b]`` with ``b = ceil(scale) + 6`` (:func:`shave_width`); the published
    test code shaves ``scale + 6`` for its histology datasets, ``ceil`` makes that an integer
    at non-integer scales.

PSNR (paper Eq. 10): ``10 log10(255^2 / MSE)`` with the MSE over all pixels and all three
channels, in float64; identical images give ``inf``.

SSIM (paper Eq. 11) is ``skimage.metrics.structural_similarity`` over the RGB channels
(``channel_axis=-1``, the mean of the per-channel SSIMs) with ``data_range=255``. Two variants:

- ``"uniform"`` (default): scikit-image's defaults — a 7 x 7 uniform window and sample
  covariances. The published ISTE test code calls ``structural_similarity`` with scikit-image's
  defaults, so this is the variant whose numbers are comparable to the paper's code path.
- ``"gaussian"``: the variant of Wang et al. (2004) — an 11 x 11 Gaussian window with
  sigma 1.5 and population covariances (``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False``), which MATLAB's ``ssim`` and many SR papers use. It gives
  slightly different values; choose it to compare with such papers.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from skimage.metrics import structural_similarity

__all__ = ["SSIMVariant", "SSIM_VARIANTS", "shave_width", "shave", "psnr", "ssim",
           "check_evaluable"]

SSIMVariant = Literal["uniform", "gaussian"]
SSIM_VARIANTS: tuple[str, ...] = ("uniform", "gaussian")

# The smallest shaved area SSIM can be computed on (the gaussian variant's 11 x 11 window).
_MIN_SHAVED = 11


def shave_width(scale: float) -> int:
    """Border shaved on each side before PSNR/SSIM: ceil(scale) + 6 pixels."""
    return math.ceil(scale) + 6


def check_evaluable(hr_hw: tuple[int, int], scale: float, *, name: str = "image") -> None:
    """Raise ValueError when an HR crop of ``hr_hw`` = (H, W) is too small to score at ``scale``.

    The crop must keep at least 11 x 11 pixels once the border is shaved.
    """
    border = shave_width(scale)
    inner = (hr_hw[0] - 2 * border, hr_hw[1] - 2 * border)
    if min(inner) < _MIN_SHAVED:
        raise ValueError(f"{name} is too small to evaluate at x{scale:g}: its HR crop of "
                         f"{hr_hw[1]} x {hr_hw[0]} px leaves {max(inner[1], 0)} x "
                         f"{max(inner[0], 0)} px after shaving {border} px per side "
                         f"(need >= {_MIN_SHAVED} x {_MIN_SHAVED})")


def shave(image: np.ndarray, scale: float) -> np.ndarray:
    """``image[b:H-b, b:W-b]`` with b = :func:`shave_width` (scale); a view. image: (H, W, ...)."""
    border = shave_width(scale)
    return image[border:image.shape[0] - border, border:image.shape[1] - border]


def _pair(sr: np.ndarray, hr: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape or sr.ndim != 3 or sr.shape[2] != 3:
        raise ValueError(f"sr and hr must be (H, W, 3) of one shape, got {sr.shape} and {hr.shape}")
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise ValueError(f"sr and hr must be uint8, got {sr.dtype} and {hr.dtype}")
    check_evaluable(hr.shape[:2], scale)
    return shave(sr, scale), shave(hr, scale)


def psnr(sr: np.ndarray, hr: np.ndarray, *, scale: float) -> float:
    """PSNR in dB of uint8 (H, W, 3) ``sr`` against ``hr`` after shaving (see module notes)."""
    sr_s, hr_s = _pair(sr, hr, scale)
    mse = np.mean((sr_s.astype(np.float64) - hr_s.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(sr: np.ndarray, hr: np.ndarray, *, scale: float,
         variant: SSIMVariant = "uniform") -> float:
    """SSIM of uint8 (H, W, 3) ``sr`` against ``hr`` after shaving, over RGB (module notes)."""
    sr_s, hr_s = _pair(sr, hr, scale)
    if variant == "uniform":
        extra = {}
    elif variant == "gaussian":
        extra = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    else:
        raise ValueError(f"SSIM variant must be one of {SSIM_VARIANTS}, got {variant!r}")
    return float(structural_similarity(hr_s, sr_s, channel_axis=-1, data_range=255, **extra))
