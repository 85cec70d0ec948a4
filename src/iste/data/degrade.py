"""The degradation of the ISTE paper: one function shared by training and evaluation.

LR = bicubic_resize(gaussian_blur(HR, radius=(scale - 1) / 2), lr_size), both steps done by
PIL on 8-bit RGB images, which is what the published code does (its ``resize_fn``):

1. A float tensor in [0, 1] is turned into 8 bits by ``trunc(x * 255)`` — truncation, not
   rounding (torchvision's ``ToPILImage`` does ``mul(255).byte()``). For images that were
   loaded from 8-bit files (``uint8 / 255``) this is lossless: every value maps back exactly.
   For other floats it biases the image down by 0.5 / 255 on average; we reproduce it.
2. ``PIL.ImageFilter.GaussianBlur(radius=(scale - 1) / 2)``. PIL's "radius" is the standard
   deviation of the Gaussian; PIL approximates the Gaussian by three box blurs and rounds the
   result to 8 bits. Scale 1 gives radius 0, which PIL leaves unchanged.
3. ``PIL.Image.resize(..., BICUBIC)`` to ``lr_size``. PIL's bicubic (a = -0.5) widens its
   kernel by the reduction factor when downsampling (it antialiases), unlike
   ``torch.nn.functional.interpolate``; the result is rounded to 8 bits again.
4. Back to a float tensor as ``uint8 / 255`` (float32).

Evaluation protocol (paper and published test code): take the HR image, crop it to
``round(floor(H / s + 1e-9) * s)`` x ``round(floor(W / s + 1e-9) * s)`` (:func:`crop_to_scale`),
degrade it at scale ``s`` to the default LR size ``floor(H / s + 1e-9)`` x
``floor(W / s + 1e-9)`` (:func:`lr_size_for`), super-resolve back to the cropped HR size.
Training uses the same :func:`degrade` on an HR crop of ``round(48 * s)`` pixels with
``lr_size=(48, 48)``, so the blur radius follows ``s`` while the actual size ratio is
``round(48 * s) / 48``.

Convention:
    Sizes are ``(height, width)`` = ``(H, W)`` everywhere in this module's API. PIL's
    ``(width, height)`` appears only inside :func:`_pil_resize`.
    Images are either ``np.ndarray`` uint8 ``(H, W, 3)`` or ``torch.Tensor`` ``(3, H, W)``
    (uint8 in [0, 255], or float in [0, 1]); results come back in the kind of the input:
    numpy uint8 -> numpy uint8, torch uint8 -> torch uint8, torch float -> torch float32
    (``uint8 / 255``), on the input's device.
"""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image, ImageFilter

__all__ = ["degrade", "crop_to_scale", "cropped_size", "bicubic_upscale", "lr_size_for",
           "blur_radius"]

ImageT = TypeVar("ImageT", np.ndarray, torch.Tensor)

# floor(H / s + 1e-9): the published protocol's guard against H / s landing just below an
# integer in floating point (e.g. H = 12, s = 2.4).
_FLOOR_EPS = 1e-9


def blur_radius(scale: float) -> float:
    """The Gaussian blur's standard deviation for ``scale``: (scale - 1) / 2, in HR pixels."""
    _check_scale(scale)
    return (scale - 1) / 2


def lr_size_for(hr_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Default LR size (h, w) = (floor(H / scale + 1e-9), floor(W / scale + 1e-9)).

    Args:
        hr_size: (H, W) of the HR image.
        scale: the downscaling factor, >= 1.
    """
    _check_scale(scale)
    height, width = hr_size
    return math.floor(height / scale + _FLOOR_EPS), math.floor(width / scale + _FLOOR_EPS)


def cropped_size(hr_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of :func:`crop_to_scale` for an image of ``hr_size`` = (H, W)."""
    h_lr, w_lr = lr_size_for(hr_size, scale)
    return round(h_lr * scale), round(w_lr * scale)


def crop_to_scale(hr: ImageT, scale: float) -> ImageT:
    """Crop HR to round(h * scale) x round(w * scale), (h, w) = :func:`lr_size_for`.

    This is the HR that evaluation compares against. The crop keeps the top-left corner and
    returns a view (no copy).

    Args:
        hr: ``np.ndarray`` (H, W, C) or ``torch.Tensor`` (..., C, H, W).
        scale: >= 1.

    Returns:
        The same kind of array, with H and W cropped.
    """
    h_hr, w_hr = cropped_size(_hw(hr), scale)
    if isinstance(hr, np.ndarray):
        return hr[:h_hr, :w_hr]
    return hr[..., :h_hr, :w_hr]


def evaluation_pair(image: ImageT, scale: float) -> tuple[ImageT, ImageT]:
    """The evaluation protocol's (LR, HR) for a test image at ``scale`` (the LIIF family's
    test): LR of (floor(H / s), floor(W / s)) — the *uncropped* image's :func:`lr_size_for` —
    degraded from HR = :func:`crop_to_scale` (image). Deriving the LR size from the cropped
    HR instead would lose a pixel where round(h * s) rounds down (e.g. 256 at x3.3: HR 254,
    LR 77, not 76).
    """
    hr = crop_to_scale(image, scale)
    return degrade(hr, scale, lr_size_for(_hw(image), scale)), hr


def degrade(hr: ImageT, scale: float, lr_size: tuple[int, int] | None = None) -> ImageT:
    """Blur HR with a Gaussian of radius (scale - 1) / 2, then bicubic-resize it to ``lr_size``.

    Args:
        hr: ``np.ndarray`` uint8 (H, W, 3), or ``torch.Tensor`` (3, H, W) uint8 in [0, 255] or
            float in [0, 1] (converted to 8 bits by truncation, see the module notes; values
            outside [0, 1] are clamped).
        scale: degradation factor, >= 1 (sets the blur; the size is set by ``lr_size``).
        lr_size: (h, w) of the result; default :func:`lr_size_for` ``((H, W), scale)``.
            Does not crop ``hr`` first: :func:`evaluation_pair` is the evaluation protocol.

    Returns:
        LR image of the input's kind: numpy uint8 (h, w, 3), torch uint8 (3, h, w) or torch
        float32 (3, h, w) holding ``uint8 / 255``.

    Example:
        >>> hr = np.full((96, 96, 3), 200, dtype=np.uint8)
        >>> degrade(hr, 3.0).shape
        (32, 32, 3)
    """
    radius = blur_radius(scale)
    hwc, restore = _to_uint8_hwc(hr)
    if lr_size is None:
        lr_size = lr_size_for(hwc.shape[:2], scale)
    img = Image.fromarray(hwc).filter(ImageFilter.GaussianBlur(radius=radius))
    return restore(_pil_resize(img, lr_size))


def bicubic_upscale(lr: ImageT, out_size: tuple[int, int]) -> ImageT:
    """The 'bicubic' baseline: PIL bicubic resize of an 8-bit image to ``out_size`` = (H, W).

    Args:
        lr: same kinds as :func:`degrade`'s ``hr``.
        out_size: (H, W) of the result.

    Returns:
        The resized image, of the input's kind (see the module's Convention).
    """
    hwc, restore = _to_uint8_hwc(lr)
    return restore(_pil_resize(Image.fromarray(hwc), out_size))


def _pil_resize(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize to ``size`` = (H, W); returns uint8 (H, W, 3)."""
    height, width = (int(n) for n in size)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got (H, W) = {tuple(size)}")
    return np.array(img.resize((width, height), Image.Resampling.BICUBIC))  # writable copy


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale >= 1):
        raise ValueError(f"scale must be a finite number >= 1, got {scale}")


def _hw(img: np.ndarray | torch.Tensor) -> tuple[int, int]:
    if isinstance(img, np.ndarray):
        if img.ndim < 2:
            raise ValueError(f"expected an (H, W, C) array, got shape {img.shape}")
        return int(img.shape[0]), int(img.shape[1])
    if isinstance(img, torch.Tensor):
        if img.ndim < 2:
            raise ValueError(f"expected a (..., C, H, W) tensor, got shape {tuple(img.shape)}")
        return int(img.shape[-2]), int(img.shape[-1])
    raise TypeError(f"expected np.ndarray or torch.Tensor, got {type(img).__name__}")


def _to_uint8_hwc(img: ImageT) -> tuple[np.ndarray, Callable[[np.ndarray], ImageT]]:
    """8-bit (H, W, 3) view of ``img`` and a function mapping a uint8 (h, w, 3) result back."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
        return np.ascontiguousarray(img), lambda out: out
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected np.ndarray or torch.Tensor, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(img.shape)}")
    device, src = img.device, img.detach()
    if src.is_floating_point():
        # torchvision's ToPILImage: x.mul(255).byte(), i.e. truncation toward zero.
        src = src.mul(255).clamp(0, 255).to(torch.uint8)

        def restore(out: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(out).permute(2, 0, 1).to(torch.float32).div(255).to(device)
    elif src.dtype == torch.uint8:
        def restore(out: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(out).permute(2, 0, 1).contiguous().to(device)
    else:
        raise ValueError(f"expected a uint8 or float tensor, got {img.dtype}")
    hwc = src.permute(1, 2, 0).contiguous().cpu().numpy()
    return hwc, restore
