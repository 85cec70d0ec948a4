"""Strict checks of a tiled TIFF's JPEG tiles, so that corrupt scanner data is not silent.

libjpeg decodes damaged entropy-coded data without an error (it notes "Corrupt JPEG data" and
returns garbage blocks), and tifffile / imagecodecs pass that on: a damaged tile of an SVS file
would be super-resolved without a word. :class:`JpegTileCheck` decodes each stored tile once
more with simplejpeg in strict mode (:func:`iste.data.images.jpeg_problem`) the first time a
read touches it, and the reader warns with the slide, level and tile. Tiles are checked once
each (a set of indices per level), which costs about one extra decode of the source pixels:
small beside the model's work per source pixel.
"""

from __future__ import annotations

import math
import os
import threading

__all__ = ["JpegTileCheck"]

_JPEG = 7  # TIFF Compression tag value of (new-style) JPEG


class JpegTileCheck:
    """Problems of the JPEG tiles under a read, for one TIFF page (one pyramid level).

    page: a tifffile ``TiffPage``; pages that are not tiled JPEG are never judged.
    """

    def __init__(self, page):
        self.page = page
        self._checked: set[int] = set()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.active = bool(getattr(page, "is_tiled", False)) and page.compression == _JPEG
        if self.active:  # a file descriptor of our own: pread does not move tiffslide's
            try:
                self._fd = os.open(os.path.join(page.parent.filehandle.dirname,
                                                page.parent.filehandle.name), os.O_RDONLY)
            except (OSError, TypeError, AttributeError):
                self.active = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def problems(self, x: int, y: int, width: int, height: int) -> list[tuple[int, int, str]]:
        """(column, row, message) of each not-yet-checked tile under the rectangle (x, y,
        width, height) in the page's pixels whose JPEG data libjpeg reports as corrupt."""
        if not self.active or width < 1 or height < 1:
            return []
        from iste.data.images import jpeg_problem

        page = self.page
        tw, th = page.tilewidth, page.tilelength
        cols = math.ceil(page.imagewidth / tw)
        found = []
        for row in range(max(0, y // th), min(math.ceil(page.imagelength / th),
                                                (y + height - 1) // th + 1)):
            for col in range(max(0, x // tw), min(cols, (x + width - 1) // tw + 1)):
                index = row * cols + col
                with self._lock:
                    if index in self._checked:
                        continue
                    self._checked.add(index)
                data = self._tile_bytes(index)
                if not data:
                    continue
                problem = jpeg_problem(data)
                if problem is not None:
                    found.append((col, row, problem))
        return found

    def first_tile_stream(self) -> bytes:
        """The first stored tile as a complete JPEG stream, or b"" (not tiled JPEG, or no
        tile stored)."""
        if not self.active:
            return b""
        for index, count in enumerate(self.page.databytecounts):
            if count:
                return self._tile_bytes(index)
        return b""

    def _tile_bytes(self, index: int) -> bytes:
        """Tile ``index`` as a complete JPEG stream (the page's JPEGTables merged in)."""
        page = self.page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if not count:
            return b""
        data = os.pread(self._fd, count, offset)
        tables = page.jpegtables
        if tables and data[:2] == b"\xff\xd8":
            data = bytes(tables[:-2]) + data[2:]  # tables without EOI + tile without SOI
        return data
