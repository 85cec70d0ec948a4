"""Deblocking of JPEG-compressed scans, guided by the file's own quantisation tables.

A scanner's JPEG tile carries what was thrown away: every 8 x 8 block's DCT coefficients were
rounded to multiples of the tables' steps Q. Super-resolution sharpens the resulting block edges
into a visible grid (quality 30 Aperio scans: docs/real-scans.md). :func:`deblock` removes them
before the model sees the image, in two steps per component plane:

1. **Shifted-block DCT thresholding**: for each of the 64 placements of an 8 x 8 grid, take the
   block DCT, zero every AC coefficient smaller than ``threshold x Q`` (the step of that
   frequency) and invert; average the 64 results. Block edges are not edges on a shifted grid,
   so they fall below the threshold there; the strength follows the file's own steps, so a
   quality-90 file is barely touched.
2. **Projection onto the quantisation constraint set**: on the file's own block grid, clip each
   coefficient of the result into the interval the stored coefficient stands for,
   [(k - 1/2) Q, (k + 1/2) Q]. The result is again an image that this JPEG could have come from.

These are the classical methods of Nosratinia ("Enhancement of JPEG-compressed images by
re-application of JPEG", 2001: averaging over shifted grids) and of Zakhor / Yang et al.
(projection onto the quantisation constraint set); nothing is learned.

Colour: Aperio's JPEG/RGB compresses R, G and B each with their own table; YCbCr JPEG its Y, Cb
and Cr planes. With chroma subsampling (4:2:0, 4:2:2) the chroma planes were stored at lower
resolution and the decoder's upsampling is not invertible here, so only Y is deblocked; the
block grid a viewer sees is in Y.

Locality: an output pixel depends only on input pixels within :data:`DEBLOCK_MARGIN` of it, so
a region read with that margin around it and cropped gives the same pixels as the whole image
(what tiled slide SR relies on); partial blocks at an image's border are thresholded but not
projected.

Convention: images are uint8 (H, W, 3) RGB numpy arrays; ``origin`` = (row, col) of the top-left
pixel of a JPEG block inside the array, each in 0-7 (a block grid that starts at the array's
corner is (0, 0); a region read at level-frame (x, y) of a tiled TIFF level has origin
((-y) % 8, (-x) % 8)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: reading the module does not load torch
    import torch

__all__ = ["DEBLOCK_THRESHOLD", "DEBLOCK_MARGIN", "DEBLOCKED", "BlockQuantisation", "deblock",
           "grid_origin", "block_grid_score"]

DEBLOCK_THRESHOLD = 0.3
"""AC coefficients below this fraction of their quantisation step are zeroed on each shifted
grid. Chosen on the held-out tiles (docs/real-scans.md): 0.3 gave the best SR PSNR at quality
30-50 and none lower at 75-90 among 0.3-0.6."""

DEBLOCKED = f"deblocked (threshold {DEBLOCK_THRESHOLD:g} of each quantisation step)"
"""How outputs made from deblocked input record it (provenance, slide work folders)."""

DEBLOCK_MARGIN = 16
"""Pixels of context beyond which the result does not depend on the input: 7 for the shifted
grids, 7 more for the projection's block (rounded up to whole blocks)."""

BAND_PIXELS = 4_000_000
"""Pixels deblocked at once (whole rows): about 0.2 GB of working memory per megapixel."""

_N = 8
_DCT = np.array([[np.sqrt((1 if u == 0 else 2) / _N) * np.cos((2 * x + 1) * u * np.pi / (2 * _N))
                  for x in range(_N)] for u in range(_N)])  # orthonormal DCT-II: JPEG's FDCT
_DCT_2D = np.kron(_DCT, _DCT)  # (u * 8 + v, x * 8 + y): the 2-D DCT of a block read row by row
_LEVEL_SHIFT = 128.0

# JFIF's full-range YCbCr (the transform libjpeg applies to YCbCr JPEG).
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                        [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]])
_YCC_OFFSET = np.array([0.0, 128.0, 128.0])
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)


@dataclass(frozen=True)
class BlockQuantisation:
    """What deblocking needs to know of a JPEG source.

    colour: "RGB" (planes compressed as they are, Aperio's JPEG/RGB) or "YCbCr".
    tables: per component, its (8, 8) quantisation steps in natural (row-major) order.
    subsampled: True when chroma was stored at reduced resolution (then only Y is deblocked).
    """

    colour: str
    tables: tuple[np.ndarray, ...] = field(compare=False)
    subsampled: bool = False

    def __post_init__(self):
        if self.colour not in ("RGB", "YCbCr"):
            raise ValueError(f"colour must be 'RGB' or 'YCbCr', got {self.colour!r}")
        if len(self.tables) != 3 or any(np.shape(t) != (_N, _N) for t in self.tables):
            raise ValueError("expected three (8, 8) quantisation tables, one per component")
        if any(np.min(t) < 1 for t in self.tables):
            raise ValueError("quantisation steps must be >= 1")


def grid_origin(x: int, y: int) -> tuple[int, int]:
    """Block ``origin`` (row, col) of an array read at (x, y) of a plane whose 8 x 8 blocks
    start at (0, 0) (a TIFF level or DICOM frame grid: tile sides are multiples of 16)."""
    return (-int(y)) % _N, (-int(x)) % _N


def deblock(rgb: np.ndarray, quant: BlockQuantisation, origin: tuple[int, int] = (0, 0), *,
            threshold: float = DEBLOCK_THRESHOLD, band_pixels: int = BAND_PIXELS) -> np.ndarray:
    """``rgb`` (the decoded JPEG, uint8 (H, W, 3)) with its block artefacts removed.

    Args:
        quant: the source's tables and colour (e.g. from
            :meth:`iste.data.jpeg.JpegSettings.block_quantisation`).
        origin: (row, col) of a block's top-left pixel in ``rgb``, each in 0-7.
        threshold: fraction of each step below which shifted-grid coefficients are zeroed.
        band_pixels: larger images are done in bands of whole rows of about this many
            pixels (each with :data:`DEBLOCK_MARGIN` rows of context), which bounds the
            memory and gives the same pixels.

    Returns:
        uint8 (H, W, 3).

    Raises:
        TypeError: ``rgb`` is not a numpy array (a PIL image: ``np.asarray(img)``), or
            ``quant`` is not a :class:`BlockQuantisation` (``None`` from
            :func:`iste.data.jpeg.jpeg_file_quantisation`: not a JPEG it handles).
        ValueError: ``rgb`` is not uint8 (H, W, 3), or ``origin`` is outside 0-7.
    """
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be a uint8 (H, W, 3) numpy array, got {type(rgb).__name__}"
                        " (np.asarray(image) of a PIL image)")
    if not isinstance(quant, BlockQuantisation):
        raise TypeError(f"quant must be a BlockQuantisation, got {type(quant).__name__}"
                        + (": jpeg_file_quantisation returns None for a file that is not a "
                           "JPEG it can deblock (nothing to deblock)" if quant is None else ""))
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    oy, ox = (int(v) for v in origin)
    if not (0 <= oy < _N and 0 <= ox < _N):
        raise ValueError(f"block origin must be in 0-7, got {origin}")
    if rgb.size == 0:
        return rgb.copy()
    (height, width), m = rgb.shape[:2], DEBLOCK_MARGIN
    band_rows = max(_N, band_pixels // width // _N * _N)
    if height <= band_rows + 2 * m:
        return _deblock_whole(rgb, quant, oy, ox, threshold)
    out = np.empty_like(rgb)
    for top in range(0, height, band_rows):
        start, stop = max(0, top - m), min(height, top + band_rows + m)
        band = _deblock_whole(rgb[start:stop], quant, (oy - start) % _N, ox, threshold)
        out[top:top + band_rows] = band[top - start:top - start + band_rows]
    return out


def _deblock_whole(rgb: np.ndarray, quant: BlockQuantisation, oy: int, ox: int,
                   threshold: float) -> np.ndarray:
    """:func:`deblock` of the whole array at once: uint8 (H, W, 3) -> (H, W, 3)."""
    import torch

    planes = rgb.astype(np.float64)
    if quant.colour == "YCbCr":
        planes = planes @ _RGB_TO_YCC.T + _YCC_OFFSET
    components = [0] if quant.colour == "YCbCr" and quant.subsampled else [0, 1, 2]
    decoded = torch.from_numpy(np.ascontiguousarray(planes[..., components].transpose(2, 0, 1)))
    tables = torch.from_numpy(np.stack([np.asarray(quant.tables[c], np.float64).reshape(-1)
                                        for c in components]))  # (C, 64)
    with torch.no_grad():
        smooth = _shifted_threshold(decoded.float(), (tables * threshold).float())
        planes[..., components] = _project(smooth.double(), decoded, tables, oy, ox
                                           ).numpy().transpose(1, 2, 0)
    if quant.colour == "YCbCr":
        planes = (planes - _YCC_OFFSET) @ _YCC_TO_RGB.T
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def block_grid_score(image: np.ndarray, scale: float) -> float:
    """How visible an 8 x 8 block grid is in ``image``, upscaled by ``scale`` from an LR whose
    blocks start at its corner: the mean |difference| of neighbouring pixels across the
    block edges (output columns and rows round(8 k scale)) over that of all other neighbours,
    on the mean of the channels.

    1 means no grid. An upscaler's own periodic pattern falls on the edges' phase too, so
    compare with the same method's score on an uncompressed LR (scripts/grid_by_quality.py).

    Args:
        image: (H, W, 3), any numeric dtype.
    """
    img = np.asarray(image, np.float32).mean(-1)
    dx = np.abs(np.diff(img, axis=1))  # dx[:, j] = |img[:, j + 1] - img[:, j]|
    dy = np.abs(np.diff(img, axis=0))

    def on_edges(length: int) -> np.ndarray:
        edges = [round(_N * k * scale) - 1 for k in range(1, int((length + 1) / (_N * scale)) + 1)]
        mask = np.zeros(length, bool)
        mask[[e for e in edges if e < length]] = True
        return mask

    ex, ey = on_edges(dx.shape[1]), on_edges(dy.shape[0])
    across = np.concatenate([dx[:, ex].ravel(), dy[ey].ravel()])
    inside = np.concatenate([dx[:, ~ex].ravel(), dy[~ey].ravel()])
    return float(across.mean() / inside.mean())


def _block_dct(planes: torch.Tensor) -> torch.Tensor:
    """(C, 8 h, 8 w) -> each 8 x 8 block's DCT coefficients (C, h, u, w, v)."""
    import torch

    d = torch.from_numpy(_DCT).to(planes.dtype)
    c, height, width = planes.shape
    blocks = planes.reshape(c, height // _N, _N, width // _N, _N)
    return torch.einsum("ux,chxwy,vy->chuwv", d, blocks, d)


def _block_idct(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_block_dct`: (C, h, u, w, v) -> (C, 8 h, 8 w)."""
    import torch

    d = torch.from_numpy(_DCT).to(coeffs.dtype)
    c, h, _, w, _ = coeffs.shape
    return torch.einsum("ux,chuwv,vy->chxwy", d, coeffs, d).reshape(c, h * _N, w * _N)


def _per_frequency(table: torch.Tensor) -> torch.Tensor:
    """(C, 64) in u * 8 + v order -> (C, 1, 8, 1, 8), broadcasting over (C, h, u, w, v)."""
    return table.reshape(table.shape[0], 1, _N, 1, _N)


def _shifted_threshold(planes: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """The mean over the 64 grid placements of block-DCT hard thresholding (DC kept).

    Each placement's blocks are rows of 64 pixels, transformed by one product with the 2-D
    DCT as a 64 x 64 matrix (the Kronecker product of the 1-D one) and back: one large
    product each way instead of two contractions with their reorderings (a 508 x 460 read of
    the sample slide, deblocked: 575 -> 441 ms; the sums' order differs, so a coefficient at
    its limit may fall the other way: 0.3 % of the 8-bit values moved by 1).

    Args:
        planes: (C, H, W) float.
        limits: (C, 64) per plane and frequency (u * 8 + v): smaller |coefficients| are zeroed.

    Returns:
        (C, H, W).
    """
    import torch
    import torch.nn.functional as F

    c, height, width = planes.shape
    mode = "reflect" if min(height, width) > _N else "replicate"  # reflect needs > 8 px
    padded = F.pad(planes[None], (_N, _N, _N, _N), mode=mode)[0]  # (C, H+16, W+16)
    limits = limits.reshape(c, 1, 1, _N * _N).clone()
    limits[..., 0] = 0  # keep DC
    dct = torch.from_numpy(_DCT_2D).to(planes.dtype)
    total = torch.zeros_like(padded)
    for dy in range(_N):
        for dx in range(_N):
            h = (padded.shape[1] - dy) // _N
            w = (padded.shape[2] - dx) // _N
            window = (slice(None), slice(dy, dy + h * _N), slice(dx, dx + w * _N))
            blocks = padded[window].reshape(c, h, _N, w, _N).transpose(2, 3)  # (C, h, w, x, y)
            coeffs = blocks.reshape(c, h, w, _N * _N) @ dct.T
            kept = (coeffs * (coeffs.abs() >= limits)) @ dct
            total[window] += kept.reshape(c, h, w, _N, _N).transpose(2, 3).reshape(
                c, h * _N, w * _N)
    # Every pixel of the image (8 or more from the padded border) is in all 64 placements.
    return total[:, _N:_N + height, _N:_N + width] / (_N * _N)


def _project(planes: torch.Tensor, decoded: torch.Tensor, tables: torch.Tensor, oy: int,
             ox: int) -> torch.Tensor:
    """``planes`` with each whole block of the grid at (oy, ox) clipped, coefficient by
    coefficient, into the quantisation interval of ``decoded``'s.

    Args:
        planes, decoded: (C, H, W) float64.
        tables: (C, 64) quantisation steps (u * 8 + v).

    Returns:
        (C, H, W).
    """
    rows = (decoded.shape[1] - oy) // _N * _N
    cols = (decoded.shape[2] - ox) // _N * _N
    if rows <= 0 or cols <= 0:
        return planes
    steps = _per_frequency(tables)
    inner = (slice(None), slice(oy, oy + rows), slice(ox, ox + cols))
    k = (_block_dct(decoded[inner] - _LEVEL_SHIFT) / steps).round()
    clipped = _block_dct(planes[inner] - _LEVEL_SHIFT).clamp((k - 0.5) * steps,
                                                              (k + 0.5) * steps)
    out = planes.clone()
    out[inner] = _block_idct(clipped) + _LEVEL_SHIFT
    return out
