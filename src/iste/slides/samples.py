"""Pixels of the CMU sample slide (``sample:cmu-svs``, :mod:`iste.data.samples`): its
train / val / test regions, read through the one :func:`~iste.slides.formats.open_slide`, and
the tissue tiles of its test region (the held-out test set ``sample:cmu-test``).

Convention: regions are in the level-0 pixel frame, (x, y) and (width, height), like
OpenSlide; arrays are uint8 (H, W, 3).
"""

from __future__ import annotations

import numpy as np

from iste.data.samples import CMU_LEVEL0_SIZE, Split, cmu_split, sample_path, tissue_fraction
from iste.slides.formats import open_slide

__all__ = ["load_cmu_region", "cmu_test_images"]


def load_cmu_region(split: Split) -> list[np.ndarray]:
    """Pixels of each rectangle of ``split``: uint8 (height, width, 3) RGB, one per Region."""
    regions = cmu_split(split)
    with open_slide(sample_path("cmu-svs")) as slide:
        if tuple(slide.dimensions) != CMU_LEVEL0_SIZE:
            raise RuntimeError(f"CMU region has level-0 (width, height) {slide.dimensions}, "
                               f"expected {CMU_LEVEL0_SIZE}")
        return [slide.read_region((r.x, r.y), 0, (r.width, r.height)) for r in regions]


def cmu_test_images(size: int = 256, *, min_tissue: float = 0.5) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping ``size`` x ``size`` tiles of the CMU test split that contain tissue.

    Rule: each test rectangle is cut into full tiles from its top-left corner, in raster
    order (top row first, left to right; partial tiles at the right and bottom edges are
    dropped); a tile is kept when :func:`tissue_fraction` (saturation > 0.15) is at least
    ``min_tissue``. With the defaults this gives 14 tiles.

    Returns:
        [(name, uint8 (size, size, 3))], name ``"cmu-x{X}-y{Y}-s{size}"`` with (X, Y) the
        tile's top-left corner in the level-0 frame.
    """
    if size < 1:
        raise ValueError(f"tile size must be positive, got {size}")
    tiles = []
    for region, pixels in zip(cmu_split("test"), load_cmu_region("test")):
        for row in range(region.height // size):
            for col in range(region.width // size):
                tile = pixels[row * size:(row + 1) * size, col * size:(col + 1) * size]
                if tissue_fraction(tile) >= min_tissue:
                    x, y = region.x + col * size, region.y + row * size
                    tiles.append((f"cmu-x{x}-y{y}-s{size}", np.ascontiguousarray(tile)))
    return tiles
