"""Pyramid geometry shared by the in-memory slide and the pyramidal writer.

Convention:
    Sizes are (width, height) like OpenSlide; arrays are uint8 (H, W, 3).
    Each level halves the one above it with ``ceil``: a level of (w, h) has a child of
    (ceil(w / 2), ceil(h / 2)), so every pixel of the parent contributes to the child.
"""

from __future__ import annotations

import numpy as np

__all__ = ["halve", "pyramid_sizes", "pyramid_sizes_to_fit"]


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


def pyramid_sizes(width: int, height: int, *, min_size: int) -> list[tuple[int, int]]:
    """Level sizes (width, height), level 0 first, halving until the next level's longer
    side would drop below ``min_size`` (level 0 is always included)."""
    sizes = [(int(width), int(height))]
    while True:
        w, h = sizes[-1]
        nw, nh = -(-w // 2), -(-h // 2)
        if max(nw, nh) < min_size or (nw, nh) == (w, h):
            return sizes
        sizes.append((nw, nh))


def pyramid_sizes_to_fit(width: int, height: int, *, fit: int) -> list[tuple[int, int]]:
    """Level sizes (width, height), level 0 first, halving until a level fits in a square of
    ``fit`` pixels (one tile): the last level is the thumbnail."""
    sizes = [(int(width), int(height))]
    while max(sizes[-1]) > fit:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes
