"""Tissue detection on a thumbnail: which parts of a slide deserve the model.

Rule: H&E tissue is coloured, glass is grey-white. On an RGB thumbnail, a pixel is tissue when
its HSV saturation exceeds Otsu's threshold of the saturation histogram (clamped to
[``min_saturation``, ``max_saturation``] so a slide that is all glass, or all tissue, is not split
in two at an arbitrary level), and it is not near-white. Small specks are removed and the mask
is dilated by ``margin_px`` thumbnail pixels, so tissue borders are always rendered by the
model. Ambiguity errs on the side of tissue: a wrong "tissue" costs time, a wrong
"background" costs quality.

Convention: the mask is (h, w) bool over the whole slide; ``downsample`` = level-0 pixels per
mask pixel (x, y). Rectangles are (x, y, width, height) in the level-0 frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu
from scipy import ndimage
from skimage.morphology import disk

__all__ = ["TissueMask", "detect_tissue", "tissue_mask_from_rgb"]

THUMBNAIL_SIZE = 1024


@dataclass(frozen=True)
class TissueMask:
    """mask: (h, w) bool; downsample: level-0 pixels per mask pixel, (x, y)."""

    mask: np.ndarray
    downsample: tuple[float, float]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, x: float, y: float, width: float, height: float) -> bool:
        """True if the level-0 rectangle touches a tissue pixel of the mask."""
        dx, dy = self.downsample
        h, w = self.mask.shape
        c0, r0 = max(0, math.floor(x / dx)), max(0, math.floor(y / dy))
        c1, r1 = min(w, math.ceil((x + width) / dx)), min(h, math.ceil((y + height) / dy))
        if c1 <= c0 or r1 <= r0:
            return False
        return bool(self.mask[r0:r1, c0:c1].any())


def tissue_mask_from_rgb(rgb: np.ndarray, *, min_saturation: float = 0.05,
                         max_saturation: float = 0.25, white: int = 235,
                         margin_px: int = 2) -> np.ndarray:
    """Tissue mask of a thumbnail.

    Args:
        rgb: uint8 (h, w, 3).
        min_saturation, max_saturation: clamp of the Otsu threshold on HSV saturation in [0, 1].
        white: pixels whose three channels all exceed this are glass.
        margin_px: dilation radius in thumbnail pixels.

    Returns:
        bool (h, w).
    """
    sat = _saturation(rgb)
    try:
        thr = float(threshold_otsu(sat))
    except ValueError:  # a constant image has no threshold
        thr = max_saturation
    thr = min(max(thr, min_saturation), max_saturation)
    mask = (sat > thr) & ~(rgb > white).all(axis=-1)
    mask = _drop_specks(mask, max(1, mask.size // 20000))
    if margin_px > 0:
        mask = ndimage.binary_dilation(mask, structure=disk(margin_px).astype(bool))
    return mask


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of uint8 RGB, float32 (h, w) in [0, 1]."""
    mx = rgb.max(axis=-1).astype(np.float32)
    mn = rgb.min(axis=-1).astype(np.float32)
    return (mx - mn) / np.maximum(mx, 1)


def _drop_specks(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Remove connected components of at most ``max_size`` pixels (8-connectivity)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes > max_size
    keep[0] = False
    return keep[labels]


def detect_tissue(slide, *, size: int = THUMBNAIL_SIZE, **kwargs) -> TissueMask:
    """Tissue mask of a whole slide from its thumbnail (at most ``size`` px per side)."""
    thumb = slide.get_thumbnail((size, size))
    w0, h0 = slide.dimensions
    h, w = thumb.shape[:2]
    return TissueMask(tissue_mask_from_rgb(thumb, **kwargs), (w0 / w, h0 / h))
