"""The OpenSlide backend of :func:`iste.slides.formats.open_slide`: the OpenSlide C library,
which reads what tiffslide reads and MIRAX, Hamamatsu VMS, Ventana BIF and DICOM WSI.

A DICOM slide's files are checked first (:mod:`iste.slides.dicomseries`), and a TIFF's JPEG
tiles strictly (:mod:`iste.slides.tilecheck`), which OpenSlide decodes damaged without a word.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iste.data.imageformats import DEEP_ADVICE, tiff_alpha
from iste.data.imagemeta import tiff_mode
from iste.data.jpeg import TIFF_JPEG
from iste.slides.dicomseries import (check_complete, check_one_series, folder_headers,
                                     series_headers)
from iste.slides.filebackend import LibrarySlide, judge_corrupt, one_at_a_time, read_failed
from iste.slides.omeread import ome_scale
from iste.slides.quantisation import jpeg_settings, tiff_quantisation
from iste.slides.reader import SlideError, to_rgb_uint8
from iste.slides.tiffcheck import held_tifffile_messages, is_tiff
from iste.text import error_line

__all__ = ["OpenSlideReader"]


class OpenSlideReader(LibrarySlide):
    _prefix = "openslide."

    @property
    def decoder(self) -> str:
        import openslide

        return f"OpenSlide {openslide.__library_version__}"

    def __init__(self, path: Path):
        import openslide

        target = path
        if path.is_dir():  # a DICOM series: OpenSlide opens it through any of its files
            headers = folder_headers(path)
            check_one_series(path, headers)  # it would read the series of the file given
            target = next((p for p, header in headers.items() if header.uids is not None),
                          path)
        else:  # a DICOM file's series, which OpenSlide reads with it; another file alone
            headers = series_headers(path)
        check_complete(path, headers)
        try:
            slide = openslide.OpenSlide(str(target))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise SlideError(f"cannot open slide {path}: unsupported or corrupt "
                             f"({error_line(exc)})") from exc
        super().__init__(path, slide)
        self._target = target
        self._tiff = None  # the file through tifffile, for the tile checks (a TIFF only)
        self._checks: dict = {}
        page = self._tiff_page(0)
        # stored_mode: a TIFF's by its level 0; the formats OpenSlide reads otherwise store
        # colour (MIRAX, VMS, DICOM WSI: JPEG / JPEG 2000)
        self._mode = "RGB" if page is None else tiff_mode(page)
        if page is not None and self._tiff.is_ome:  # OpenSlide reads its tags alone
            self._mpp, self._power = ome_scale(self._tiff.ome_metadata, 0, self._mpp,
                                               self._power)
        if page is not None and page.bitspersample > 8 and tiff_mode(page) != "P":
            self.close()  # as tiffslide, wsidicom and plain images refuse them
            raise SlideError(f"cannot open slide {path}: {page.bitspersample}-bit samples are "
                             "not supported (8-bit only: OpenSlide would keep their high "
                             f"byte, dark for 12-bit data in 16 bits); {DEEP_ADVICE}")
        misread = _misread_extra_sample(page)
        if misread is not None:
            self.close()
            # tiffslide reads min-is-black and RGB (a min-is-white one's samples it passes on
            # raw)
            other = "; --backend tiffslide reads it" if int(page.photometric) in (1, 2) else ""
            raise SlideError(f"cannot open slide {path}: {misread}{other}")
        clash = self._jpeg_colour_clash(0)
        if clash is not None:
            self.close()
            raise SlideError(f"cannot open slide {path}: {clash}; --backend tiffslide reads it")

    @one_at_a_time
    def _read_quantisation(self, level):  # the tile check's file handle
        check = self._tile_check(level)
        return None if check is None else tiff_quantisation(self.path, level, check)

    def _tile_check(self, level: int):
        """The strict check of ``level``'s JPEG tiles (:class:`JpegTileCheck`) when the slide
        is a TIFF whose levels are those of tifffile's first series, else None: OpenSlide
        decodes a damaged tile without a word, like tifffile, and reads other formats'
        tiles (NDPI, MIRAX, DICOM) where these checks do not reach."""
        from iste.slides.tilecheck import JpegTileCheck

        if level not in self._checks:
            page = self._tiff_page(level)
            self._checks[level] = None if page is None else JpegTileCheck(page)
        return self._checks[level]

    def _jpeg_colour_clash(self, level: int) -> str | None:
        """How ``level``'s JPEG tiles contradict the TIFF's PhotometricInterpretation in a way
        OpenSlide decodes wrong, or None. libtiff converts by the tag: RGB tiles (an Adobe
        marker with transform 0, components 'R', 'G', 'B') in a TIFF tagged YCbCr are
        converted from YCbCr all the same (190 levels off), YCbCr tiles (a JFIF marker, an
        Adobe transform 1) in a TIFF tagged RGB are left unconverted (120 levels off), without
        a word; tifffile follows the stream. A stream that does not say is the tag's."""
        page = self._tiff_page(level)
        if page is None or page.compression != TIFF_JPEG or int(page.photometric) not in (2, 6):
            return None
        check = self._tile_check(level)
        settings = next((jpeg_settings(s) for s in check.tile_streams(1)), None)
        tagged = "RGB" if int(page.photometric) == 2 else "YCbCr"
        if settings is None or settings.colour in ("unknown", tagged):
            return None
        return (f"its JPEG tiles say {settings.colour} in a TIFF tagged {tagged}, which "
                f"OpenSlide (libtiff) would read as {tagged} (wrong colours)")

    def _tiff_page(self, level: int):
        """tifffile's page of ``level`` when the slide is a TIFF whose levels are those of
        tifffile's first series (its size is OpenSlide's), else None. Under the file lock."""
        page = None
        try:
            if self._tiff is None and is_tiff(self.path):
                import tifffile

                with held_tifffile_messages():  # said when the slide opened, if at all
                    self._tiff = tifffile.TiffFile(self.path)
                    self._tiff.series  # noqa: B018 - parsed (and its messages held) here
            levels = self._tiff.series[0].levels if self._tiff and self._tiff.series else []
            if level < len(levels):
                page = levels[level].keyframe
        except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse: OpenSlide's own
            page = None
        if page is not None and (page.imagewidth, page.imagelength) != self._dims[level]:
            page = None
        return page

    @property
    def stored_mode(self):
        """A TIFF's by its level 0's photometric interpretation and samples (OpenSlide reads
        gray, palette and CMYK TIFFs as RGB); "RGB" for the other formats, and where
        tifffile's levels are not OpenSlide's."""
        return self._mode

    @property
    def files(self):
        """A DICOM instance given: the files of its series in its folder, which OpenSlide
        reads with it. A MIRAX ``.mrxs``: it and the files of its data folder (the folder of
        its name beside it: ``Slidedat.ini``, ``Index.dat``, ``Data*.dat``), where its pixels
        are."""
        vendor = self._slide.properties.get("openslide.vendor")
        if self.path.is_file() and vendor == "dicom":
            return tuple(series_headers(self.path))
        if self.path.is_file() and vendor == "mirax":
            data = self.path.with_suffix("")
            listed = sorted(p for p in data.iterdir() if p.is_file()) if data.is_dir() else []
            return (self.path, *listed)
        return super().files

    @property
    def icc_profile(self):
        """The profile's bytes as the slide stores them (OpenSlide's ``read_icc_profile``,
        which openslide-python keeps), as the other backends give them. Not those of its
        ``color_profile``: that parses them with LittleCMS, which raised on a profile it
        cannot read (the viewer's catalog and ``iste upscale`` stopped with a traceback), and
        its ``tobytes()`` are LittleCMS's rewrite, not the file's (a profile whose tag table
        is in another order came back with other bytes): an output carried other bytes than
        its source, and the viewer named one slide's cached tiles apart per backend."""
        # openslide-python (1.3 on, the least iste installs) attaches the file's bytes to every
        # image it returns, and a 0 x 0 region reads no pixels
        region = self._slide.read_region((0, 0), 0, (0, 0))
        return region.info.get("icc_profile") or None

    @one_at_a_time
    def _read_level(self, level, x, y, width, height):
        d = self.level_downsamples[level]
        x0, y0 = round(x * d), round(y * d)
        try:
            img = self._slide.read_region((x0, y0), level, (width, height))
        except Exception as exc:
            error = read_failed(self.path, level, (x, y, width, height), exc,
                                 self._tile_check(level))
            self._reopen()
            raise error from exc
        check = self._tile_check(level)
        if check is not None:
            judge_corrupt(self, level, x, y, check, (width, height))
        return to_rgb_uint8(np.asarray(img), str(self.path))

    def _reopen(self) -> None:
        """Open the slide again after a read failed: an OpenSlide handle keeps its first error
        and fails every later call with it (one damaged tile made every other region, and
        the slide's properties, unreadable: a job's later tiles, a viewer's every tile). The
        handle stays as it was if the file no longer opens."""
        import openslide

        try:
            fresh = openslide.OpenSlide(str(self._target))
        except Exception:  # noqa: BLE001 - its reads go on failing, naming the error
            return
        self._slide.close()
        self._slide = fresh

    def _close(self):
        for check in self._checks.values():
            if check is not None:
                check.close()
        if self._tiff is not None:
            self._tiff.close()
        super()._close()


def _misread_extra_sample(page) -> str | None:
    """Why OpenSlide would read tifffile's ``page`` (or None) wrong for its extra sample, or
    None. libtiff's RGBA reading, which OpenSlide's is, premultiplies an RGB page's
    unassociated alpha but not a gray one's, and OpenSlide divides the colours by it all
    the same (gray 170 at alpha 200 came back 216, over white 224 for 188); and it takes an
    RGB page's unspecified extra sample (no alpha) for a premultiplied alpha (206, 170, 198
    beside a 50 came back 210, 224, 252)."""
    if page is None or not page.extrasamples:
        return None
    alpha, mode = tiff_alpha(page), tiff_mode(page)
    if mode == "L" and alpha == "straight":
        return ("a gray TIFF with an unassociated alpha, which OpenSlide (libtiff) takes for "
                "a premultiplied one: its pixels would come out too light")
    if mode == "RGB" and alpha is None:
        return ("an RGB TIFF with an extra sample of unspecified meaning, which OpenSlide "
                "(libtiff) takes for a premultiplied alpha: its colours would come out wrong")
    return None
