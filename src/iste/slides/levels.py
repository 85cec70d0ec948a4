"""Pyramid geometry shared by the in-memory slide and the pyramidal writer.

Convention:
    Sizes are (width, height) like OpenSlide; arrays are uint8 (H, W, 3).
    Each level halves the one above it with ``ceil``: a level of (w, h) has a child of
    (ceil(w / 2), ceil(h / 2)), so every pixel of the parent contributes to the child.
    Level k's pixel is 2 ** k level-0 pixels a side, but readers (OpenSlide, tiffslide, QuPath)
    take its downsample from the dimensions: the mean of W0 / w and H0 / h. Where ``ceil``
    rounded a short side by much (a thin output: 1034 x 18 gives 259 x 5 at level 2, a
    downsample of 3.80 for 4), they place the level many of its pixels off. A pyramid stops
    before such a level (:func:`placed_sizes`); an output of up to 3:1 keeps every level.
"""

from __future__ import annotations

import numpy as np

__all__ = ["halve", "halvings_to_fit", "misplacement", "placed_sizes", "pyramid_sizes",
           "pyramid_sizes_to_fit"]

MISPLACEMENT_PX = 2.0  # the most a level may be misplaced by readers, in its own pixels


def halve(rgb: np.ndarray) -> np.ndarray:
    """2 x 2 box average of an image, rounding to nearest.

    Args:
        rgb: uint8 (H, W, C); an odd last row/column is repeated (edge padding), so the
            result is uint8 (ceil(H / 2), ceil(W / 2), C).
    """
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    a = rgb.astype(np.uint16)
    s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def misplacement(size0: tuple[int, int], size: tuple[int, int], level: int) -> float:
    """Pixels of level ``level`` (its (width, height) ``size``; level 0's ``size0``) by which
    a reader that takes the level's downsample from its dimensions (the mean of the two
    ratios) misplaces its far edge, against the exact 2 ** level of its pixels."""
    ds = (size0[0] / size[0] + size0[1] / size[1]) / 2
    return max(size0) * abs(1 / ds - 1 / 2 ** level)


def placed_sizes(sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The levels of ``sizes`` (successive halvings, level 0 first) up to the first that
    readers would misplace by more than ``MISPLACEMENT_PX`` of its pixels."""
    n = 1
    while n < len(sizes) and misplacement(sizes[0], sizes[n], n) <= MISPLACEMENT_PX:
        n += 1
    return sizes[:n]


def pyramid_sizes(width: int, height: int, *, min_size: int) -> list[tuple[int, int]]:
    """Level sizes (width, height), level 0 first, halving until the next level's longer
    side would drop below ``min_size`` or readers would misplace it (level 0 is always
    included)."""
    sizes = [(int(width), int(height))]
    while True:
        w, h = sizes[-1]
        nw, nh = -(-w // 2), -(-h // 2)
        if max(nw, nh) < min_size or (nw, nh) == (w, h):
            return placed_sizes(sizes)
        sizes.append((nw, nh))


def halvings_to_fit(width: int, height: int, *, fit: int) -> list[tuple[int, int]]:
    """Sizes (width, height) of ``width`` x ``height`` and its successive halvings, down to
    the first that fits in a square of ``fit`` pixels (one tile: the thumbnail)."""
    sizes = [(int(width), int(height))]
    while max(sizes[-1]) > fit:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def pyramid_sizes_to_fit(width: int, height: int, *, fit: int) -> list[tuple[int, int]]:
    """Level sizes (width, height), level 0 first: :func:`halvings_to_fit` up to the first
    level readers would misplace (:func:`placed_sizes`); otherwise the last fits in one
    tile."""
    return placed_sizes(halvings_to_fit(width, height, fit=fit))
