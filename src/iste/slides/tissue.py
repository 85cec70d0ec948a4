"""Tissue detection on a thumbnail: which parts of a slide deserve the model.

Rule: H&E tissue is coloured, glass is grey-white. On an RGB thumbnail, a pixel is tissue when
its HSV saturation exceeds Otsu's threshold of the saturation histogram (clamped to
[``min_saturation``, ``max_saturation``] so a slide that is all glass, or all tissue, is not split
in two at an arbitrary level), and it is not near-white. Small specks are removed and the mask
is dilated by ``margin_px`` thumbnail pixels, so tissue borders are always rendered by the
model. Ambiguity errs on the side of tissue: a wrong "tissue" costs time, a wrong
"background" costs quality.

Where the mask meets glass, an output is not split tile by tile into the model's pixels and
bicubic ones (a step of up to 5 grey levels on glass where two tiles decided differently, the
model shifting white by a few levels): :class:`TissueBlend` gives each output pixel a model
weight from its own position, 1 on the mask and falling smoothly to 0 over ``BLEND_PX`` output
pixels out into glass, and the pixel is ``w * model + (1 - w) * bicubic``; the same in every
tiling (the viewer's, a job's of any tile size, a resumed job's).

Convention: the mask is (h, w) bool over the whole slide; ``downsample`` = level-0 pixels per
mask pixel (x, y). Rectangles are (x, y, width, height) in the level-0 frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from skimage.filters import threshold_otsu
from scipy import ndimage
from skimage.morphology import disk

from iste.engine.frame import Frame

__all__ = ["BLEND_PX", "BLEND_RULE", "NO_TISSUE", "Coverage", "TissueBlend", "TissueMask",
           "blend_pixels", "detect_tissue", "tissue_mask_from_rgb"]

THUMBNAIL_SIZE = 1024
BLEND_PX = 64  # output pixels over which glass beside the mask goes from the model to bicubic
# how outputs of the tissue path are made, for a work folder's manifest and the viewer's tile
# cache: pixels of another rule (session 30's model-or-bicubic per tile) are not mixed in
BLEND_RULE = f"smoothstep {BLEND_PX} output px from the mask"
_FAR = 1e30  # level-0 px: the distance to tissue of a slide without any
# what a slide whose mask is empty is told (every pixel bicubic, silently, before): a gray or
# unstained slide of tissue has no colour for the rule to find
NO_TISSUE = ("tissue detection found no tissue (it looks for stained colour, which a gray or "
             "unstained slide lacks)")

Coverage = Literal["glass", "tissue", "edge"]


@dataclass(frozen=True)
class TissueMask:
    """mask: (h, w) bool; downsample: level-0 pixels per mask pixel, (x, y)."""

    mask: np.ndarray
    downsample: tuple[float, float]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def empty(self) -> bool:
        """No tissue anywhere: every output pixel is bicubic (:data:`NO_TISSUE` says why)."""
        return not self.mask.any()

    @cached_property
    def distance(self) -> np.ndarray:
        """float64 (h, w): level-0 pixels from each mask pixel's centre to the nearest tissue
        pixel's centre (0 on tissue; ``_FAR`` everywhere on a slide without tissue)."""
        if not self.mask.any():
            return np.full(self.mask.shape, _FAR)
        dx, dy = self.downsample
        return ndimage.distance_transform_edt(~self.mask, sampling=(dy, dx))


@dataclass(frozen=True)
class TissueBlend:
    """The model's weight at each pixel of one output: ``w * model + (1 - w) * bicubic``.

    Rule: w is a smoothstep of the distance to the mask (:attr:`TissueMask.distance`,
    interpolated bilinearly at the pixel centre's level-0 position), 1 on the mask and 0 from
    ``ramp_px`` output pixels away. It depends on the pixel's position alone, not on the tile
    it is computed in.

    frame: the output's LR -> output geometry; origin: (x, y) of the frame's LR pixel 0 in
    the level read; downsample: level-0 pixels per pixel of that level.
    """

    mask: TissueMask
    frame: Frame
    origin: tuple[int, int] = (0, 0)
    downsample: float = 1.0
    ramp_px: float = BLEND_PX

    @property
    def ramp(self) -> float:
        """The ramp's width in level-0 pixels."""
        sy, sx = self.frame.scale
        return self.ramp_px * self.downsample * 2 / (sx + sy)

    def _mask_coords(self, out: range, axis: int) -> np.ndarray:
        """float64 (len(out),): mask-pixel coordinates (0 = the centre of mask pixel 0) of the
        centres of output pixels ``out`` along ``axis`` (0: rows, 1: columns)."""
        n_out, n_lr = self.frame.out_hw[axis], self.frame.lr_hw[axis]
        lr = self.origin[1 - axis] + (np.arange(out.start, out.stop) + 0.5) * (n_lr / n_out)
        return lr * self.downsample / self.mask.downsample[1 - axis] - 0.5

    def _support(self, out: range, axis: int) -> slice:
        """The mask pixels the weights of output pixels ``out`` are interpolated from."""
        u = self._mask_coords(range(out.start, out.stop, max(1, len(out) - 1)), axis)
        n = self.mask.mask.shape[axis]
        lo = int(np.clip(math.floor(u[0]), 0, n - 1))
        return slice(lo, int(np.clip(math.floor(u[-1]) + 1, 0, n - 1)) + 1)

    def coverage(self, out_rows: range, out_cols: range) -> Coverage:
        """"glass": every weight of the output rectangle is 0 (bicubic); "tissue": every weight
        is 1 (the model's); "edge": some may be neither (a blend; possibly all 0 on a rectangle
        within a mask pixel of the ramp's end). Read from the mask pixels around it: cheap."""
        near = self.mask.distance[self._support(out_rows, 0), self._support(out_cols, 1)]
        if near.min() >= self.ramp:
            return "glass"
        return "tissue" if near.max() == 0 else "edge"

    def weights(self, out_rows: range, out_cols: range) -> np.ndarray:
        """float32 (len(out_rows), len(out_cols)) in [0, 1]: the model's weight at each pixel.
        The same arithmetic for a pixel whatever rectangle it is asked with."""
        dist = self.mask.distance
        rows, cols = self._mask_coords(out_rows, 0), self._mask_coords(out_cols, 1)
        r0, fr = _cell(rows, dist.shape[0])
        c0, fc = _cell(cols, dist.shape[1])
        r1, c1 = np.minimum(r0 + 1, dist.shape[0] - 1), np.minimum(c0 + 1, dist.shape[1] - 1)
        by_row = (1 - fr)[:, None] * dist[r0] + fr[:, None] * dist[r1]  # (rows, mask w)
        d = (1 - fc) * by_row[:, c0] + fc * by_row[:, c1]
        t = np.clip(1 - d / self.ramp, 0, 1)
        return (t * t * (3 - 2 * t)).astype(np.float32)


def blend_pixels(model: torch.Tensor, bicubic: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
    """(1, 3, h, w) ``w * model + (1 - w) * bicubic`` of an "edge" output rectangle, in the
    dtype and on the device of ``bicubic`` (1, 3, h, w); ``weights``: float32 (h, w) of
    :meth:`TissueBlend.weights`. The one blend of a whole-slide output and the viewer's tiles:
    lerp gives each end exactly where w is 0 or 1 (the glass and tissue tiles' pixels)."""
    w = torch.from_numpy(weights).to(bicubic.device)
    return torch.lerp(bicubic, model.to(bicubic.device, bicubic.dtype), w)


def _cell(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, fraction) of the interpolation cell of coordinates ``u`` on an axis of ``n``
    pixels, clamped to its ends (a coordinate past them takes the end pixel's value)."""
    u = np.clip(u, 0, n - 1)
    i = np.minimum(np.floor(u).astype(np.int64), max(n - 2, 0))
    return i, u - i


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
