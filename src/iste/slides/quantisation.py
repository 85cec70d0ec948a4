"""A slide level's JPEG quantisation tables, for deblocking: read from the first of its stored
tiles (or DICOM frames) whose JPEG headers read, and a warning where none of the first
:data:`TABLE_TRIES` do."""

from __future__ import annotations

import warnings
from pathlib import Path

from iste.data.jpeg import parse_jpeg_settings, with_tiff_colour

__all__ = ["TABLE_TRIES", "tiff_quantisation", "jpeg_settings", "warn_no_tables"]


TABLE_TRIES = 16  # stored tiles tried, in order, for a JPEG level's quantisation tables


def tiff_quantisation(path: Path, level: int, check):
    """The BlockQuantisation of ``level``, a tiled TIFF page, from the first of its stored
    tiles whose JPEG headers read (``check``: its :class:`~iste.slides.tilecheck.JpegTileCheck`);
    None where the page is not tiled JPEG or its tiles are not whole 8 x 8 blocks. The colour
    comes from PhotometricInterpretation when the stream does not say (Aperio's JPEG/RGB is
    photometric RGB with no Adobe marker). A damaged first tile turned deblocking off for the
    whole level without a word; the next tiles are tried now, and a level whose first
    :data:`TABLE_TRIES` tiles all fail is left as decoded with a warning."""
    page = check.page
    if page.tilewidth % 8 or page.tilelength % 8:
        return None
    tried = 0
    for stream in check.tile_streams(TABLE_TRIES):
        tried += 1
        settings = jpeg_settings(stream)
        if settings is not None:
            return with_tiff_colour(settings, int(page.photometric)).block_quantisation()
    if tried:
        warn_no_tables(path, level, tried)
    return None


def jpeg_settings(stream: bytes):
    """:func:`~iste.data.jpeg.parse_jpeg_settings` of ``stream``, None where its headers do
    not read."""
    try:
        return parse_jpeg_settings(stream)
    except (ValueError, IndexError):
        return None


def warn_no_tables(path: Path, level: int, tried: int) -> None:
    warnings.warn(f"{path}: level {level} is stored as JPEG, but the headers of its first "
                  f"{tried} tile(s) cannot be read (damaged): it is not deblocked (read as "
                  "decoded)", stacklevel=5)
