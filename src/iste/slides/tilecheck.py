"""Strict checks of a slide's stored JPEG tiles, so that corrupt scanner data is not silent.

libjpeg decodes damaged entropy-coded data without an error (it notes "Corrupt JPEG data" and
returns garbage blocks), and tifffile / imagecodecs / wsidicom pass that on: a damaged tile of
an SVS file or a damaged frame of a DICOM slide would be super-resolved without a word. A
check decodes each stored tile once more with simplejpeg in strict mode
(:func:`iste.data.integrity.jpeg_problem`) the first time a read touches it, and the reader warns
with the slide, level and tile. Tiles are checked once each (a set of indices per level),
which costs about one extra decode of the source pixels: small beside the model's work per
source pixel. :class:`JpegTileCheck` reads a tiled TIFF page's tiles, :class:`DicomFrameCheck`
a DICOM level's frames through wsidicom. JPEG 2000 tiles (Aperio's older SVS files, DICOM) are
judged by their end marker only (openjpeg has no strict mode here): a tile cut short or
zero-filled after some point is found, damage inside the coded data is not.
"""

from __future__ import annotations

import math
import os
import threading

from iste.data.integrity import jpeg2000_problem, jpeg_problem, tiff_tile_judge
from iste.data.jpeg import tiff_jpeg_stream

__all__ = ["TileCheck", "JpegTileCheck", "DicomFrameCheck"]

# DICOM transfer syntaxes whose frames are JPEG (baseline, extended) and JPEG 2000
# (lossless, lossy, the three high-throughput ones)
_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                 "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")


class TileCheck:
    """Problems of the stored JPEG tiles under a read, for one pyramid level of ``size``
    (width, height) pixels stored in tiles of ``tile`` (width, height); ``active`` False:
    never judged. Subclasses give a tile's complete stream (:meth:`_tile_bytes`); ``codec``
    names what the tiles are ("JPEG", "JPEG 2000"), whose ``judge`` says what is wrong with
    one (:func:`~iste.data.integrity.jpeg_problem` by default)."""

    codec = "JPEG"

    def __init__(self, size: tuple[int, int], tile: tuple[int, int], active: bool):
        self.size, self.tile, self.active = size, tile, active
        self.judge = jpeg_problem
        self._checked: set[int] = set()
        self._found: dict[tuple[int, int], str] = {}  # (column, row) -> problem, so far
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release what the check holds open (nothing here)."""

    def problems(self, x: int, y: int, width: int, height: int) -> list[tuple[int, int, str]]:
        """(column, row, message) of each not-yet-checked tile under the rectangle (x, y,
        width, height) in the level's pixels whose stored data ``judge`` finds damaged."""
        if not self.active or width < 1 or height < 1:
            return []
        (w, h), (tw, th) = self.size, self.tile
        cols = math.ceil(w / tw)
        found = []
        for row in range(max(0, y // th), min(math.ceil(h / th), (y + height - 1) // th + 1)):
            for col in range(max(0, x // tw), min(cols, (x + width - 1) // tw + 1)):
                index = row * cols + col
                with self._lock:
                    if index in self._checked:
                        continue
                    self._checked.add(index)
                data = self._tile_bytes(col, row)
                if not data:
                    continue
                problem = self.judge(data)
                if problem is not None:
                    found.append((col, row, problem))
                    with self._lock:
                        self._found[col, row] = problem
        return found

    def damaged(self, x: int, y: int, width: int, height: int) -> list[tuple[int, int, str]]:
        """(column, row, message) of every tile under the rectangle found damaged, by this
        call or an earlier one (:meth:`problems` names each tile once: a second read that
        fails on the same tile still names it), in row-major order."""
        self.problems(x, y, width, height)
        if width < 1 or height < 1:
            return []
        (tw, th) = self.tile
        with self._lock:
            found = [(c, r, p) for (c, r), p in self._found.items()
                     if x // tw <= c <= (x + width - 1) // tw
                     and y // th <= r <= (y + height - 1) // th]
        return sorted(found, key=lambda f: (f[1], f[0]))

    def _tile_bytes(self, col: int, row: int) -> bytes:
        raise NotImplementedError


class DicomFrameCheck(TileCheck):
    """:class:`TileCheck` of one level of a DICOM slide opened by wsidicom (``wsi``): its
    frames at (level ``level`` in wsidicom's numbering, focal plane ``z``, optical path
    ``path``), read with ``read_encoded_tile`` (each JPEG frame is a complete stream; JPEG
    2000 frames are judged by :func:`~iste.data.integrity.jpeg2000_problem`; others never).
    The codec is the level's transfer ``syntax`` (UID); None: told by the first frame's
    marker (a sparse level may have no first frame, which leaves it unjudged). Its reads go
    through the reader's file lock: call :meth:`problems` under it."""

    def __init__(self, wsi, level: int, z: float, path: str, size: tuple[int, int],
                 tile: tuple[int, int], syntax: str | None = None):
        self._wsi, self._where = wsi, (level, z, path)
        super().__init__(size, tile, True)
        if syntax is None:  # JPEG's SOI marker, or JPEG 2000's SOC
            start = self._tile_bytes(0, 0)[:2]
            syntax = {b"\xff\xd8": _JPEG_SYNTAXES[0], b"\xff\x4f": _J2K_SYNTAXES[0]}.get(start)
        self.active = syntax in _JPEG_SYNTAXES or syntax in _J2K_SYNTAXES
        if syntax in _J2K_SYNTAXES:
            self.codec, self.judge = "JPEG 2000", jpeg2000_problem

    def _tile_bytes(self, col: int, row: int) -> bytes:
        level, z, path = self._where
        try:
            return self._wsi.read_encoded_tile(level, (col, row), z=z, path=path,
                                               crop_to_image_boundary=False)
        except Exception:  # noqa: BLE001 - no frame there: the read itself says so
            return b""


class JpegTileCheck(TileCheck):
    """:class:`TileCheck` of one TIFF page (one pyramid level).

    page: a tifffile ``TiffPage``; pages that are not tiled JPEG or JPEG 2000 (Aperio's
    33003 / 33005, judged by :func:`~iste.data.integrity.jpeg2000_problem`) are never judged.
    """

    def __init__(self, page):
        self.page = page
        self._fd: int | None = None
        tiled = bool(page.is_tiled)
        judged = tiff_tile_judge(page)
        super().__init__((page.imagewidth, page.imagelength),
                         (page.tilewidth, page.tilelength) if tiled else (1, 1),
                         tiled and judged is not None)
        if judged is not None:
            self.codec, self.judge = judged
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

    def tile_streams(self, limit: int):
        """The first ``limit`` stored tiles (empty ones passed over), in storage order, each
        a complete JPEG stream; none when the page is not tiled JPEG (JPEG 2000 too)."""
        if not self.active or self.codec != "JPEG":
            return
        for index, count in enumerate(self.page.databytecounts):
            if limit < 1:
                return
            if count:
                limit -= 1
                yield self._stream(index)

    def _tile_bytes(self, col: int, row: int) -> bytes:
        return self._stream(row * math.ceil(self.size[0] / self.tile[0]) + col)

    def _stream(self, index: int) -> bytes:
        """Tile ``index`` as stored, a JPEG tile as a complete stream (the page's JPEGTables
        merged in)."""
        page = self.page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if not count:
            return b""
        return tiff_jpeg_stream(page, os.pread(self._fd, count, offset))
