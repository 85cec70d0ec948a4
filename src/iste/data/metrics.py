"""PSNR and SSIM of the evaluation protocol: RGB, a border shaved, float or 8-bit SR.

Beside :mod:`iste.data.degrade` (the protocol's LR/HR pairs), below both of its users:
``iste eval`` (:mod:`iste.eval.runner`) and training's validation (:mod:`iste.train.validate`)
score with these same functions.

Convention:
    ``hr`` is ``np.ndarray`` uint8 (H, W, 3): the HR image cropped by
    :func:`iste.data.degrade.crop_to_scale`. ``sr`` has the same shape and is either

    - float (float32/float64) in [0, 1]: the model's prediction clamped to [0, 1], *not*
      quantised. This is what the published test code scores (``calc_psnr`` on the float
      prediction) and what ``iste eval`` scores by default (``--metric-precision float``);
    - uint8: the SR rounded to 8 bits, the image a user gets as a file
      (``--metric-precision uint8``). Rounding adds about 1/12 of an 8-bit step of noise
      (``1 / (12 * 255^2)`` in MSE), which costs ~0.03 dB at 38 dB and ~0.17 dB at 45 dB.

    Both are compared on the 0-255 scale (float ``sr`` is multiplied by 255, uint8 ``hr`` is
    taken as is). Both metrics see the same shaved arrays ``x[b:H-b, b:W-b]``; ``b`` is
    :func:`shave_width` (``ceil(scale) + 6``) unless a ``border`` is given (the published test
    shaves 8 at every scale: :data:`PUBLISHED_BORDER`).

PSNR (paper Eq. 10): ``10 log10(255^2 / MSE)`` with the MSE over all pixels and all three
channels, in float64; identical images give ``inf``.

SSIM (paper Eq. 11). The paper does not say how it computes SSIM, and the published test code
computes none (its ``calc_ssim`` is never called, and fails on the 4-D tensors it would get with
current scikit-image). We compute ``skimage.metrics.structural_similarity`` with
``data_range=255`` on float64 images (0-255 scale), in one of four variants
(:data:`SSIM_VARIANTS`, ``WINDOW-CHANNELS``):

- window ``uniform``: scikit-image's defaults, a 7 x 7 uniform window and sample covariances;
  ``gaussian``: Wang et al. (2004), an 11 x 11 Gaussian window, sigma 1.5, population
  covariances (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``), which
  MATLAB's ``ssim`` and most SR papers use;
- channels ``rgb``: the mean of the SSIMs of R, G and B (``channel_axis=-1``); ``y``: the SSIM
  of the luma channel Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (ITU-R BT.601, range
  16-235, R, G, B in 0-255), as the SR literature computes it on natural images.

The default is ``uniform-rgb`` (what iste has always reported); ``gaussian-y`` matches the
common SR benchmark code.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = ["SSIMVariant", "SSIM_VARIANTS", "MetricPrecision", "METRIC_PRECISIONS",
           "PUBLISHED_BORDER", "MIN_SHAVED", "shave_width", "shave", "psnr", "ssim",
           "check_evaluable", "luma"]

SSIMVariant = Literal["uniform-rgb", "gaussian-rgb", "uniform-y", "gaussian-y"]
SSIM_VARIANTS: tuple[str, ...] = ("uniform-rgb", "gaussian-rgb", "uniform-y", "gaussian-y")
MetricPrecision = Literal["float", "uint8"]
METRIC_PRECISIONS: tuple[str, ...] = ("float", "uint8")
PUBLISHED_BORDER = 8  # the published test: shave = scale + 6 with scale hard-coded to 2

MIN_SHAVED = 11
"""The smallest shaved side SSIM can be computed on (the gaussian variant's 11 x 11 window)."""
_BT601 = np.array([65.481, 128.553, 24.966]) / 255


def shave_width(scale: float) -> int:
    """Border shaved on each side before PSNR/SSIM: ceil(scale) + 6 pixels."""
    return math.ceil(scale) + 6


def check_evaluable(hr_hw: tuple[int, int], scale: float, *, name: str = "image",
                    border: int | None = None) -> None:
    """Raise ValueError when an HR crop of ``hr_hw`` = (H, W) is too small to score at ``scale``.

    The crop must keep at least 11 x 11 pixels once the border (default
    :func:`shave_width`) is shaved.
    """
    border = shave_width(scale) if border is None else border
    inner = (hr_hw[0] - 2 * border, hr_hw[1] - 2 * border)
    if min(inner) < MIN_SHAVED:
        raise ValueError(f"{name} is too small to evaluate at x{scale:g}: its HR crop of "
                         f"{hr_hw[1]} x {hr_hw[0]} px leaves {max(inner[1], 0)} x "
                         f"{max(inner[0], 0)} px after shaving {border} px per side "
                         f"(need >= {MIN_SHAVED} x {MIN_SHAVED})")


def shave(image: np.ndarray, scale: float, *, border: int | None = None) -> np.ndarray:
    """``image[b:H-b, b:W-b]`` with b = ``border`` or :func:`shave_width` (scale); a view.
    image: (H, W, ...)."""
    b = shave_width(scale) if border is None else border
    return image[b:image.shape[0] - b, b:image.shape[1] - b]


def _pair(sr: np.ndarray, hr: np.ndarray, scale: float,
          border: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Shaved float64 copies of ``sr`` and ``hr`` on the 0-255 scale."""
    if sr.shape != hr.shape or sr.ndim != 3 or sr.shape[2] != 3:
        raise ValueError(f"sr and hr must be (H, W, 3) of one shape, got {sr.shape} and {hr.shape}")
    if hr.dtype != np.uint8:
        raise ValueError(f"hr must be uint8, got {hr.dtype}")
    if sr.dtype == np.uint8:
        gain = 1.0
    elif sr.dtype in (np.float32, np.float64):
        gain = 255.0
    else:
        raise ValueError(f"sr must be uint8 or float in [0, 1], got {sr.dtype}")
    check_evaluable(hr.shape[:2], scale, border=border)
    sr_s = shave(sr, scale, border=border).astype(np.float64) * gain
    return sr_s, shave(hr, scale, border=border).astype(np.float64)


def psnr(sr: np.ndarray, hr: np.ndarray, *, scale: float, border: int | None = None) -> float:
    """PSNR in dB of ``sr`` (uint8, or float in [0, 1]) against uint8 ``hr``, both (H, W, 3),
    after shaving (module notes)."""
    sr_s, hr_s = _pair(sr, hr, scale, border)
    mse = np.mean((sr_s - hr_s) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma Y in [16, 235] of RGB in [0, 255]: (H, W, 3) -> (H, W), float64."""
    return 16.0 + rgb @ _BT601


def ssim(sr: np.ndarray, hr: np.ndarray, *, scale: float,
         variant: SSIMVariant = "uniform-rgb", border: int | None = None) -> float:
    """SSIM of ``sr`` (uint8, or float in [0, 1]) against uint8 ``hr``, both (H, W, 3), after
    shaving, in one of :data:`SSIM_VARIANTS` (module notes)."""
    from skimage.metrics import structural_similarity  # 0.3 s (scipy.ndimage): not at start-up

    if variant not in SSIM_VARIANTS:
        raise ValueError(f"SSIM variant must be one of {SSIM_VARIANTS}, got {variant!r}")
    window, channels = variant.split("-")
    sr_s, hr_s = _pair(sr, hr, scale, border)
    extra = ({"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
             if window == "gaussian" else {})
    if channels == "y":
        return float(structural_similarity(luma(hr_s), luma(sr_s), data_range=255, **extra))
    return float(structural_similarity(hr_s, sr_s, channel_axis=-1, data_range=255, **extra))
