"""DeepZoom geometry of a served slide: levels, tiles, and which levels are super-resolved.

Convention:
    The DeepZoom image is the slide's level 0 (``width`` x ``height``, (x, y) like OpenSlide)
    enlarged ``max_scale`` times: its top level has round(width * max_scale) x
    round(height * max_scale) pixels, and each level below halves the one above with ``ceil``
    (DeepZoom's rule), down to 1 x 1. Level ``l``'s exact scale over the slide is
    (level width / width, level height / height), non-integer in general.

    A level larger than the slide (in either axis) is *super-resolved*: its pixels are the
    global output of a model (or bicubic interpolation) at that exact scale
    (:class:`iste.engine.frame.Frame` with lr = the slide's level 0). The other levels are
    *scan* levels, read from the slide's own pyramid. With ``max_scale`` a power of two the
    slide's level 0 is exactly one DeepZoom level, the *native* level.

    Tiles are ``tile`` pixels square plus ``overlap`` pixels on each side that has a
    neighbour (DeepZoom's convention), so tile (col, row) of a level starts at
    x = col * tile - overlap (0 for col 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from iste.engine.frame import MAX_SCALE  # one bound for every path

__all__ = ["DeepZoom", "TileAddressError", "MAX_SCALE", "check_max_scale"]


class TileAddressError(ValueError):
    """A level or tile (col, row) outside the DeepZoom image."""


def check_max_scale(max_scale: float) -> float:
    """``max_scale`` (the top level over level 0) if it is in (1, :data:`MAX_SCALE`], else a
    one-line ValueError: an option of the whole server, refused before any slide opens."""
    if not (math.isfinite(max_scale) and 1 < max_scale <= MAX_SCALE):
        raise ValueError(f"max scale must be > 1 and <= {MAX_SCALE:g}, got {max_scale}")
    return max_scale


@dataclass(frozen=True)
class DeepZoom:
    """width, height: the slide's level 0; max_scale: top level over level 0, in (1, 8];
    tile, overlap: DeepZoom tile side and overlap in pixels."""

    width: int
    height: int
    max_scale: float = MAX_SCALE
    tile: int = 254
    overlap: int = 1

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty slide {self.width} x {self.height}")
        check_max_scale(self.max_scale)
        if self.tile < 16 or not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"invalid DeepZoom tile {self.tile} / overlap {self.overlap}")
        if self.full_size == (self.width, self.height):
            raise ValueError(f"max scale x{self.max_scale:g} adds no pixel to a {self.width} x "
                             f"{self.height} px slide: no level would be super-resolved; give "
                             "a larger --max-scale")

    @property
    def full_size(self) -> tuple[int, int]:
        """(width, height) of the top (most enlarged) level."""
        return (max(1, round(self.width * self.max_scale)),
                max(1, round(self.height * self.max_scale)))

    @property
    def level_count(self) -> int:
        return (max(self.full_size) - 1).bit_length() + 1

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of a level: the top level halved (ceil) level_count - 1 - level
        times."""
        self._check_level(level)
        d = 2 ** (self.level_count - 1 - level)
        w, h = self.full_size
        return -(-w // d), -(-h // d)

    def level_scale(self, level: int) -> tuple[float, float]:
        """Exact (x, y) scale of a level over the slide's level 0."""
        w, h = self.level_size(level)
        return w / self.width, h / self.height

    def is_super_resolved(self, level: int) -> bool:
        """True for levels larger than the slide's level 0 (in either axis)."""
        w, h = self.level_size(level)
        return w > self.width or h > self.height

    @property
    def native_level(self) -> int | None:
        """The level equal in size to the slide's level 0, if there is one."""
        for level in range(self.level_count):
            if self.level_size(level) == (self.width, self.height):
                return level
        return None

    @property
    def first_sr_level(self) -> int:
        """The coarsest super-resolved level."""
        return next(lv for lv in range(self.level_count) if self.is_super_resolved(lv))

    def tile_count(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles of a level."""
        w, h = self.level_size(level)
        return -(-w // self.tile), -(-h // self.tile)

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) in ``level``'s pixels of tile (col, row), overlap included.

        Raises:
            TileAddressError: the level or the tile does not exist.
        """
        cols, rows = self.tile_count(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileAddressError(f"tile ({col}, {row}) outside level {level} "
                                   f"({cols} x {rows} tiles)")
        w, h = self.level_size(level)
        x0 = max(0, col * self.tile - self.overlap)
        y0 = max(0, row * self.tile - self.overlap)
        x1 = min(w, (col + 1) * self.tile + self.overlap)
        y1 = min(h, (row + 1) * self.tile + self.overlap)
        return x0, y0, x1 - x0, y1 - y0

    def tiles_in(self, level: int, box: tuple[float, float, float, float], *,
                 limit: int = 4096) -> list[tuple[int, int]]:
        """(col, row) of the tiles of ``level`` whose own area (without overlap) touches
        ``box`` = (x, y, width, height) in pixels of the top level, row by row.

        Raises:
            TileAddressError: the level does not exist.
            ValueError: more than ``limit`` tiles (a client's box is not to be trusted)."""
        self._check_level(level)
        lw, lh = self.level_size(level)
        (top_w, top_h), (cols, rows) = self.full_size, self.tile_count(level)
        x, y, w, h = box
        if x >= top_w or y >= top_h or x + w <= 0 or y + h <= 0:
            return []  # the box misses the image
        # the box cut to the image first: a client's numbers may be anything finite
        x0, x1 = min(max(x, 0.0), top_w), min(max(x + w, 0.0), top_w)
        y0, y1 = min(max(y, 0.0), top_h), min(max(y + h, 0.0), top_h)
        fx, fy = lw / top_w, lh / top_h  # level pixels per top-level pixel
        t = self.tile
        c0, c1 = max(0, math.floor(x0 * fx / t)), min(cols - 1, math.ceil(x1 * fx / t) - 1)
        r0, r1 = max(0, math.floor(y0 * fy / t)), min(rows - 1, math.ceil(y1 * fy / t) - 1)
        if max(0, c1 - c0 + 1) * max(0, r1 - r0 + 1) > limit:
            raise ValueError(f"more than {limit} tiles of level {level} in {box}")
        return [(c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]

    def dzi(self, fmt: str = "jpeg") -> str:
        """The .dzi XML descriptor."""
        w, h = self.full_size
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format={quoteattr(fmt)} Overlap="{self.overlap}" TileSize="{self.tile}">'
                f'<Size Width="{w}" Height="{h}"/></Image>\n')

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise TileAddressError(f"level {level} outside 0..{self.level_count - 1}")
