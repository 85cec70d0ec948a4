"""File backends of :func:`iste.slides.formats.open_slide`: tiffslide, OpenSlide, wsidicom.

All implement :class:`~iste.slides.reader.SlideReader` (documented there); this module only
adapts each library's conventions (PIL/RGBA, level-0 locations) to it, and refuses truncated
TIFF and DICOM files up front.

Threads: a reader may be read from several threads (the viewer's I/O threads and its model
worker). Each backend reads its file through one library handle, so what touches the file runs
one call at a time under the reader's own lock (:func:`_one_at_a_time`); work on the pixels
after the read (deblocking, resizing) runs outside it, side by side.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from iste.data.images import tiff_data_past_end, tiff_empty_data, tiff_raw_ycbcr
from iste.data.jpeg import parse_jpeg_settings, with_tiff_colour
from iste.slides.reader import SlideError, SlideReader, UnreadableRegionError, to_rgb_uint8

_TIFFSLIDE_COLOURS = (1, 2, 6)  # TIFF photometric min-is-black, RGB, YCbCr: as tiffslide reads
_MPP_RANGE = (1e-4, 1e5)  # microns per pixel: 0.1 nm (electron microscopy) to 10 cm

__all__ = ["TiffSlideReader", "OpenSlideReader", "WsiDicomReader", "TiffSlideRefusal",
           "check_tiff_complete"]


class TiffSlideRefusal(SlideError):
    """A TIFF that tiffslide cannot read, or would read wrong (raw YCbCr or palette samples
    passed on as RGB, a Ventana BIF's pixel size left out), which OpenSlide reads: ``auto``
    opens it with OpenSlide (:func:`iste.slides.formats.open_slide`). ``what`` says why,
    without the advice the message ends with."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"cannot open slide {path}: {what}; --backend openslide may read it")
        self.what = what


def _is_tiff(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_tiff_complete(path: Path, backend: str = "tiffslide") -> None:
    """Refuse a TIFF whose tile/strip data runs past the end of the file (truncated copy), or
    with tiles stored with no bytes, save a Philips TIFF read by ``backend`` "openslide":
    Philips leaves the tiles outside its scanned areas out (a sparse slide), which OpenSlide
    reads as glass, tiffslide as black (refused as :class:`TiffSlideRefusal`). What tifffile
    logs while reading it goes into the error (or, if the file is fine, on to tifffile's
    logger), not to stderr beside iste's own message."""
    if not _is_tiff(path):
        return
    import tifffile

    size = path.stat().st_size
    with _held_tifffile_messages() as held:
        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise SlideError(f"cannot open slide {path}: no image in the TIFF"
                                     + _said(held, size))
                for level in tif.series[0].levels:
                    for page in level.pages:
                        if page is None:
                            continue
                        if tiff_data_past_end(page, size):
                            raise SlideError(f"cannot open slide {path}: truncated file (image "
                                             f"data ends past byte {size})")
                        empty = tiff_empty_data(page)
                        if empty is not None and tif.is_philips:
                            if backend != "openslide":
                                raise TiffSlideRefusal(path, "a sparse Philips TIFF (empty "
                                                       f"tiles: {empty}), which tiffslide "
                                                       "reads as black")
                        elif empty is not None:  # tiffslide reads black, OpenSlide transparent
                            raise SlideError(f"cannot open slide {path}: empty tiles ({empty})")
                        if len(page.dataoffsets) < math.prod(page.chunked):
                            key = page.keyframe  # a TiffFrame's size is its keyframe's
                            raise SlideError(
                                f"cannot open slide {path}: its level of {key.imagewidth} x "
                                f"{key.imagelength} px holds {len(page.dataoffsets)} of the "
                                f"{math.prod(page.chunked)} tiles that size needs (a damaged "
                                "or altered header)")
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"cannot open slide {path}: corrupt or truncated TIFF "
                             f"({_reason(exc)})") from exc
    if backend == "openslide":  # tifffile's view of the file's series is not what is read
        return                  # (a BIF's "tiles are not stitched": OpenSlide stitches them)
    for record in held:  # a readable file: its warnings are tifffile's to report
        logging.getLogger("tifffile").handle(record)


@contextlib.contextmanager
def _held_tifffile_messages():
    """The records tifffile logs while the block runs, kept from its handlers: a list."""
    logger = logging.getLogger("tifffile")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _said(held: list[logging.LogRecord], size: int) -> str:
    """tifffile's messages, without the object it names, as an addition to an error."""
    said = dict.fromkeys(record.getMessage().split("> ", 1)[-1] for record in held)
    return f" (tifffile: {'; '.join(said)}; the file has {size} bytes)" if said else ""


class _FileBackend(SlideReader):
    """A reader of a slide file through a library whose file handle is not safe to read from
    several threads at once: its reading methods, wrapped in :func:`_one_at_a_time`, run
    under the one lock made here (the rule is in :class:`SlideReader`'s docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self._file_lock = threading.Lock()


def _one_at_a_time(method):
    """``method`` of a :class:`_FileBackend` under its file lock."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._file_lock:
            return method(self, *args, **kwargs)
    return locked


def _judge_corrupt(reader: SlideReader, level: int, x: int, y: int, check,
                   size: tuple[int, int]) -> None:
    """Each stored tile of ``level`` under the read of ``size`` (width, height) at (x, y) that
    ``check`` (:class:`~iste.slides.tilecheck.TileCheck`) finds corrupt: a warning, or where
    ``reader.corrupt_is_unreadable`` an :class:`UnreadableRegionError` naming them all."""
    if reader.corrupt_is_unreadable:
        found = check.damaged(x, y, *size)
        if found:
            raise UnreadableRegionError(
                f"cannot read {reader.path} (level {level}, x={x}, y={y}): corrupt "
                f"{check.codec} data: {found[0][2]}{_naming(check, found)}", level=level,
                box=(x, y, *size), tiles=tuple((col, row) for col, row, _ in found))
        return
    for col, row, problem in check.problems(x, y, *size):
        warnings.warn(f"{reader.path}: corrupt {check.codec} data in level {level}, tile "
                      f"column {col} row {row} (read at x={x}, y={y}): {problem}; its pixels "
                      "may be wrong", stacklevel=4)


def _read_failed(path: Path, level: int, box: tuple[int, int, int, int], exc: BaseException,
                 check) -> UnreadableRegionError:
    """The error of a read of ``box`` (x, y, width, height in ``level``'s frame) that failed
    with ``exc``: it names the stored tiles under the read which ``check`` (a
    :class:`~iste.slides.tilecheck.TileCheck`, or None) finds damaged, " (damaged JPEG tile
    column C row R, ...)", where the damage is and not only where the read began, and
    carries them (:class:`~iste.slides.reader.UnreadableRegionError`)."""
    x, y, width, height = box
    try:
        found = [] if check is None else check.damaged(x, y, width, height)
    except Exception:  # noqa: BLE001 - the read's own error is the one to give
        found = []
    return UnreadableRegionError(f"cannot read {path} (level {level}, x={x}, y={y}): "
                                 f"{_reason(exc)}{_naming(check, found)}", level=level,
                                 box=box, tiles=tuple((col, row) for col, row, _ in found))


def _naming(check, found: list[tuple[int, int, str]]) -> str:
    """" (damaged JPEG tile column C row R, ... and N more)" for the damaged tiles ``found``
    by ``check`` under a read (its first three named), "" for none."""
    if not found:
        return ""
    listed = ", ".join(f"column {col} row {row}" for col, row, _ in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f" (damaged {check.codec} tile {listed}{more})"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raw_colour(page) -> str | None:
    """How ``page`` (a tifffile page) stores colour that tiffslide would pass on as RGB
    without converting it, or None when tiffslide reads it right: palette, min-is-white,
    CMYK ..., YCbCr that tifffile leaves YCbCr (:func:`~iste.data.images.tiff_raw_ycbcr`).
    OpenSlide (libtiff, its Aperio reader) converts them all."""
    if int(page.photometric) not in _TIFFSLIDE_COLOURS:
        return getattr(page.photometric, "name", str(page.photometric))
    return tiff_raw_ycbcr(page)


def _planes(tif) -> str | None:
    """"N planes (axes ...)" when tifffile's first series of ``tif`` stacks several images
    (Z, T, C or plain pages beside Y, X and samples), else None."""
    try:
        series = tif.series[0]
        stacked = [(ax, n) for ax, n in zip(series.axes, series.shape)
                   if ax not in "YXS" and n > 1]
    except Exception:  # noqa: BLE001 - no series to tell: not a stack
        return None
    return (f"{math.prod(n for _, n in stacked)} planes (axes {series.axes})" if stacked
            else None)


class _LibrarySlide(_FileBackend):
    """What the OpenSlide-like backends share: an opened library slide, its levels, mpp,
    objective power and associated images, closing it."""

    _prefix = ""  # the library's property namespace: "openslide." or "tiffslide."

    def __init__(self, path: Path, slide):
        super().__init__(path)
        self._slide = slide
        props = slide.properties
        self._mpp = _mpp_pair(props.get(self._prefix + "mpp-x"),
                              props.get(self._prefix + "mpp-y"))
        self._power = _positive(props.get(self._prefix + "objective-power"))
        self._dims = [tuple(int(v) for v in d) for d in slide.level_dimensions]
        self._downsamples = [float(d) for d in slide.level_downsamples]

    @property
    def objective_power(self):
        return self._power

    @property
    def associated_images(self):
        return tuple(sorted(self._slide.associated_images))

    @_one_at_a_time
    def read_associated(self, name):
        if name not in self._slide.associated_images:
            return super().read_associated(name)
        return to_rgb_uint8(np.asarray(self._slide.associated_images[name]), f"{self.path} {name}")

    @property
    def level_dimensions(self):
        return list(self._dims)

    @property
    def level_downsamples(self):
        return list(self._downsamples)

    @property
    def mpp(self):
        return self._mpp

    def _close(self):
        self._slide.close()


class TiffSlideReader(_LibrarySlide):
    _prefix = "tiffslide."

    @property
    def decoder(self) -> str:
        import imagecodecs
        import tiffslide

        return f"tiffslide {tiffslide.__version__}, imagecodecs {imagecodecs.__version__}"

    def __init__(self, path: Path):
        import tiffslide

        try:
            slide = tiffslide.TiffSlide(path)
        except Exception as exc:
            raise SlideError(f"cannot open slide {path}: unsupported or corrupt "
                             f"({_reason(exc)})") from exc
        try:  # tiffslide reads the file's structure lazily: its errors come from here
            if slide.ts_tifffile.is_bif:  # its overlapping tiles unstitched, tifffile says
                raise TiffSlideRefusal(path, "a Ventana BIF, whose pixel size, magnification "
                                       "and tile overlaps tiffslide does not read")
            with warnings.catch_warnings():  # NDPI: what iste reads of it is read (its mpp
                warnings.filterwarnings(      # from the resolution tags, its SourceLens)
                    "ignore", message="hamamatsu-format metadata parsing only partially")
                super().__init__(path, slide)
            keyframe = self._series().levels[0].keyframe
            dtype = keyframe.dtype
            samples = keyframe.samplesperpixel
        except TiffSlideRefusal:
            slide.close()
            raise
        except Exception as exc:
            slide.close()
            what = f"tiffslide cannot read its layout or tags ({_reason(exc)})"
            planes = _planes(slide.ts_tifffile)
            if planes:  # OpenSlide would read the first as a generic TIFF, without a word
                raise SlideError(f"cannot open slide {path}: {what}: {planes}; --backend "
                                 "openslide reads its first plane only") from exc
            raise TiffSlideRefusal(path, what) from exc
        if slide.ts_tifffile.is_ome:  # tiffslide reads neither OME sizes nor magnification
            ome, series = (slide.ts_tifffile.ome_metadata,
                           slide.properties.get("tiffslide.series-index", 0))
            self._mpp = self._mpp or _ome_mpp(ome, series)
            self._power = self._power or _ome_objective_power(ome, series)
        raw = _raw_colour(keyframe)
        if raw is not None:  # it would pass the samples on as RGB: wrong colours
            slide.close()
            raise TiffSlideRefusal(path, f"its pixels are stored as {raw}, which tiffslide "
                                   "reads as raw samples")
        if dtype != np.uint8 or samples not in (1, 3, 4):  # refused here, before the model
            slide.close()
            what = f"{dtype} samples" if dtype != np.uint8 else f"{samples} samples per pixel"
            raise SlideError(f"cannot open slide {path}: {what} are not supported "
                             "(8-bit grey, RGB or RGBA only)")
        self._checks: dict = {}

    def _series(self):
        return self._slide.ts_tifffile.series[
            self._slide.properties.get("tiffslide.series-index", 0)]

    @property
    def icc_profile(self):
        return self._slide.ts_tifffile.pages.first.iccprofile

    @_one_at_a_time
    def _read_level(self, level, x, y, width, height):
        d = self.level_downsamples[level]
        # tiffslide maps location0 to the level with int(location0 / d): invert that exactly.
        x0, y0 = _level0_origin(x, d), _level0_origin(y, d)
        try:
            arr = self._slide.read_region((x0, y0), level, (width, height), as_array=True)
        except Exception as exc:
            raise _read_failed(self.path, level, (x, y, width, height), exc,
                               self._tile_check(level)) from exc
        _judge_corrupt(self, level, x, y, self._tile_check(level), (width, height))
        return to_rgb_uint8(np.asarray(arr), str(self.path))

    @_one_at_a_time
    def _read_quantisation(self, level):
        check = self._tile_check(level)
        return _tiff_quantisation(self.path, level, check)

    def _tile_check(self, level: int):
        from iste.slides.tilecheck import JpegTileCheck

        if level not in self._checks:
            self._checks[level] = JpegTileCheck(self._series().levels[level].keyframe)
        return self._checks[level]

    def _close(self):
        for check in self._checks.values():
            check.close()
        super()._close()


class OpenSlideReader(_LibrarySlide):
    _prefix = "openslide."

    @property
    def decoder(self) -> str:
        import openslide

        return f"OpenSlide {openslide.__library_version__}"

    def __init__(self, path: Path):
        import openslide

        target = path
        if path.is_dir():  # a DICOM series: OpenSlide opens it through any of its files
            headers = _folder_headers(path)
            _check_one_series(path, headers)  # it would read the series of the file given
            target = next((p for p, header in headers.items() if header.uids is not None),
                          path)
        else:  # a DICOM file's series, which OpenSlide reads with it; another file alone
            headers = _series_headers(path)
        _check_complete(path, headers)
        try:
            slide = openslide.OpenSlide(str(target))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise SlideError(f"cannot open slide {path}: unsupported or corrupt "
                             f"({_reason(exc) or 'format not recognised'})") from exc
        super().__init__(path, slide)
        self._target = target
        self._tiff = None  # the file through tifffile, for the tile checks (a TIFF only)
        self._checks: dict = {}

    @_one_at_a_time
    def _read_quantisation(self, level):  # the tile check's file handle
        check = self._tile_check(level)
        return None if check is None else _tiff_quantisation(self.path, level, check)

    def _tile_check(self, level: int):
        """The strict check of ``level``'s JPEG tiles (:class:`JpegTileCheck`) when the slide
        is a TIFF whose levels are those of tifffile's first series, else None: OpenSlide
        decodes a damaged tile without a word, like tifffile, and reads other formats'
        tiles (NDPI, MIRAX, DICOM) where these checks do not reach."""
        from iste.slides.tilecheck import JpegTileCheck

        if level not in self._checks:
            page = None
            try:
                if self._tiff is None and _is_tiff(self.path):
                    import tifffile

                    with _held_tifffile_messages():  # said when the slide opened, if at all
                        self._tiff = tifffile.TiffFile(self.path)
                        self._tiff.series  # noqa: B018 - parsed (and its messages held) here
                levels = self._tiff.series[0].levels if self._tiff and self._tiff.series else []
                if level < len(levels):
                    page = levels[level].keyframe
            except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse: OpenSlide's own
                page = None
            if page is not None and (page.imagewidth, page.imagelength) != self._dims[level]:
                page = None
            self._checks[level] = None if page is None else JpegTileCheck(page)
        return self._checks[level]

    @property
    def files(self):
        """A DICOM instance given: the files of its series in its folder, which OpenSlide
        reads with it. A MIRAX ``.mrxs``: it and the files of its data folder (the folder of
        its name beside it: ``Slidedat.ini``, ``Index.dat``, ``Data*.dat``), where its pixels
        are."""
        vendor = self._slide.properties.get("openslide.vendor")
        if self.path.is_file() and vendor == "dicom":
            return tuple(_series_headers(self.path))
        if self.path.is_file() and vendor == "mirax":
            data = self.path.with_suffix("")
            listed = sorted(p for p in data.iterdir() if p.is_file()) if data.is_dir() else []
            return (self.path, *listed)
        return super().files

    @property
    def icc_profile(self):
        profile = self._slide.color_profile
        return None if profile is None else profile.tobytes()

    @_one_at_a_time
    def _read_level(self, level, x, y, width, height):
        d = self.level_downsamples[level]
        x0, y0 = round(x * d), round(y * d)
        try:
            img = self._slide.read_region((x0, y0), level, (width, height))
        except Exception as exc:
            error = _read_failed(self.path, level, (x, y, width, height), exc,
                                 self._tile_check(level))
            self._reopen()
            raise error from exc
        check = self._tile_check(level)
        if check is not None:
            _judge_corrupt(self, level, x, y, check, (width, height))
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


class WsiDicomReader(_FileBackend):
    """DICOM WSI (a .dcm file or a folder of one slide's instances) through wsidicom; the
    first pyramid, at one optical path and focal plane for every level: wsidicom's default
    for level 0 (its first path, its middle plane), said in a warning when there are more.
    Each level on its own would default to the instance wsidicom lists first, which may be
    another path or plane; a level without the chosen one is left out."""

    @property
    def decoder(self) -> str:
        import imagecodecs
        import PIL
        import wsidicom

        return (f"wsidicom {wsidicom.__version__}, imagecodecs {imagecodecs.__version__}, "
                f"Pillow {PIL.__version__}")

    def __init__(self, path: Path):
        from wsidicom import WsiDicom

        if path.is_dir():  # each file's header read once, for both checks
            headers = _folder_headers(path)
            _check_one_series(path, headers)
            self._files = None
        else:
            headers = _series_headers(path)
            self._files = tuple(headers)
        _check_one_study(path, headers)
        _check_complete(path, headers)
        try:
            self._wsi = WsiDicom.open(list(self._files) if self._files is not None else path)
            levels = list(self._wsi.levels)
        except Exception as exc:
            files = self._files if self._files is not None else sorted(path.iterdir())
            raise SlideError(f"cannot open slide {path}: not a readable DICOM WSI "
                             f"({_wsidicom_refusal(files, exc)})") from exc
        problem = _unsupported_samples(levels) if levels else "no DICOM WSI volume instances"
        if problem is not None:  # refused here, before the model, not at the first tile
            self._wsi.close()
            raise SlideError(f"cannot open slide {path}: {problem}")
        super().__init__(path)
        self._path_id, self._z, self._levels = _one_path_and_plane(path, levels,
                                                                   len(self._wsi.pyramids))
        self._dims = [(int(lv.size.width), int(lv.size.height)) for lv, _ in self._levels]
        self._checks: dict = {}
        mpp = self._wsi.mpp
        self._mpp = None if mpp is None else _mpp_pair(mpp.width, mpp.height)

    @property
    def files(self):
        """One instance given: the files of its series in its folder, which are read with it."""
        return self._files if self._files is not None else super().files

    @property
    def level_dimensions(self):
        return list(self._dims)

    @property
    def level_downsamples(self):
        w0, h0 = self._dims[0]
        return [(w0 / w + h0 / h) / 2 for w, h in self._dims]

    @property
    def mpp(self):
        return self._mpp

    def _optical_path(self):
        try:
            paths = self._wsi.metadata.pyramid.optical_paths
        except Exception:  # no or unreadable optical path module
            return None
        return next((p for p in paths if p.identifier == self._path_id),
                    paths[0] if paths else None)

    @property
    def objective_power(self):
        objective = getattr(self._optical_path(), "objective", None)
        return _positive(getattr(objective, "objective_power", None))

    @property
    def icc_profile(self):
        return getattr(self._optical_path(), "icc_profile", None) or None

    @property
    def dicom_metadata(self):
        try:
            return self._wsi.metadata
        except Exception:  # noqa: BLE001 - modules wsidicom cannot parse: none carried
            return None

    def dicom_instances(self, level):
        lv, z = self._levels[level]
        try:
            datasets = lv.instance_at(self._path_id, z).datasets
        except KeyError:  # the plane matched within 1e-6 um, not exactly: the level's all
            datasets = lv.datasets
        found = [(str(d.as_dataset().SOPClassUID), str(d.as_dataset().SOPInstanceUID))
                 for d in datasets]
        return tuple(dict.fromkeys(found))

    @property
    def associated_images(self):
        names = []
        if self._wsi.labels is not None:
            names.append("label")
        if self._wsi.overviews is not None:
            names.append("macro")
        return tuple(names)

    @_one_at_a_time
    def read_associated(self, name):
        if name not in self.associated_images:
            return super().read_associated(name)
        read = self._wsi.read_label if name == "label" else self._wsi.read_overview
        try:
            with warnings.catch_warnings():
                # wsidicom hands pydicom an uncompressed image cut to its exact size, odd for
                # an odd-sized RGB label (463 x 387 x 3 bytes), and pydicom warns of a missing
                # padding byte the file does have: said on every run, it made a sound file
                # look damaged
                warnings.filterwarnings("ignore", category=UserWarning,
                                        message="The odd length pixel data is missing")
                arr = np.asarray(read(as_array=True))
        except Exception as exc:  # wsidicom's own errors (a pixel data length it refuses ...)
            raise SlideError(f"{self.path} {name}: {_reason(exc)}") from exc
        return to_rgb_uint8(arr, f"{self.path} {name}")

    @_one_at_a_time
    def _read_level(self, level, x, y, width, height):
        try:
            lv, z = self._levels[level]
            arr = self._wsi.read_region((x, y), lv.level, (width, height), z=z,
                                        path=self._path_id, as_array=True)
        except Exception as exc:
            try:
                check = self._frame_check(level)
            except Exception:  # noqa: BLE001 - a level wsidicom cannot describe
                check = None
            raise _read_failed(self.path, level, (x, y, width, height), exc, check) from exc
        _judge_corrupt(self, level, x, y, self._frame_check(level), (width, height))
        return to_rgb_uint8(np.asarray(arr), str(self.path))

    def _frame_check(self, level: int):
        from iste.slides.tilecheck import DicomFrameCheck

        if level not in self._checks:
            lv, z = self._levels[level]
            try:
                syntax = str(lv.instance_at(self._path_id, z).image_data.transfer_syntax)
            except Exception:  # noqa: BLE001 - not said where wsidicom keeps it: the frames tell
                syntax = None
            self._checks[level] = DicomFrameCheck(
                self._wsi, lv.level, z, self._path_id, self._dims[level],
                (int(lv.tile_size.width), int(lv.tile_size.height)), syntax)
        return self._checks[level]

    @_one_at_a_time
    def _read_quantisation(self, level):
        """From the level's first frame whose JPEG headers read (each DICOM JPEG frame is a
        whole stream; a damaged first frame turned deblocking off for the level without a
        word: up to :data:`TABLE_TRIES` frames are tried, then a warning); the colour from
        PhotometricInterpretation (RGB, YBR_*) where the stream does not say."""
        from dataclasses import replace

        lv, z = self._levels[level]
        if lv.tile_size.width % 8 or lv.tile_size.height % 8:
            return None
        try:
            check = self._frame_check(level)
        except Exception:  # noqa: BLE001 - a level wsidicom cannot describe: left as it is
            return None
        if not check.active or check.codec != "JPEG":  # JPEG 2000, uncompressed, ...
            return None
        cols = math.ceil(self._dims[level][0] / lv.tile_size.width)
        rows = math.ceil(self._dims[level][1] / lv.tile_size.height)
        settings, tried = None, 0
        for index in range(min(rows * cols, TABLE_TRIES)):
            try:
                stream = self._wsi.read_encoded_tile(lv.level, (index % cols, index // cols),
                                                     z=z, path=self._path_id,
                                                     crop_to_image_boundary=False)
            except Exception:  # noqa: BLE001 - no frame there (sparse) or unreadable
                continue
            tried += 1
            settings = _jpeg_settings(stream)
            if settings is not None:
                break
        if settings is None:
            if tried:
                _warn_no_tables(self.path, level, tried)
            return None
        if settings.colour == "unknown":  # no Adobe or JFIF marker: as the header says
            try:
                photometric = str(lv.instance_at(self._path_id, z).image_data
                                  .photometric_interpretation)
            except Exception:  # noqa: BLE001 - the plane matched within 1e-6 um: the level's
                photometric = str(lv.default_instance.image_data.photometric_interpretation)
            colour = "RGB" if photometric == "RGB" else (
                "YCbCr" if photometric.startswith("YBR") else "unknown")
            settings = replace(settings, colour=colour)
        return settings.block_quantisation()

    def _close(self):
        self._wsi.close()


class _Concatenated(NamedTuple):
    """An instance's part of a DICOM concatenation (one level split over several files)."""
    uid: str  # ConcatenationUID
    number: int  # InConcatenationNumber, from 1
    total: int | None  # InConcatenationTotalNumber (optional in DICOM)
    offset: int  # ConcatenationFrameOffsetNumber: the frames of the parts before it
    frames: int  # NumberOfFrames


class _DicomHeader(NamedTuple):
    """What a file's DICOM header says of the instances it goes with: ``uids``
    (SeriesInstanceUID, SOPInstanceUID), None when not DICOM or no series; ``study``
    (StudyInstanceUID), None when not DICOM or no study; ``truncation``: where its pixel data
    runs past the file's end (:func:`iste.slides.dicomcheck.truncation`), None when it does
    not; ``part``: its part of a concatenation, None when it is none."""
    uids: tuple[str, str] | None
    study: str | None
    truncation: str | None = None
    part: _Concatenated | None = None


def _dicom_header(p: Path) -> _DicomHeader:
    """:class:`_DicomHeader` of file ``p``, its header read once."""
    import pydicom

    from iste.slides.dicomcheck import truncation

    try:
        with open(p, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "Rows",
                "ExtendedOffsetTable", "ConcatenationUID", "InConcatenationNumber",
                "InConcatenationTotalNumber", "ConcatenationFrameOffsetNumber",
                "NumberOfFrames"])
            syntax = ds.file_meta.get("TransferSyntaxUID")
            cut = None
            if syntax is not None and syntax.is_little_endian:  # where pydicom stopped
                cut = truncation(f.fileno(), f.tell(), os.fstat(f.fileno()).st_size,
                                 explicit_vr=not syntax.is_implicit_VR, rows="Rows" in ds,
                                 extended_offsets=ds.get("ExtendedOffsetTable"))
    except Exception:
        return _DicomHeader(None, None)
    try:
        uids = str(ds.SeriesInstanceUID), str(ds.get("SOPInstanceUID", ""))
    except Exception:
        uids = None
    try:
        study = str(ds.StudyInstanceUID)
    except Exception:
        study = None
    try:
        total = ds.get("InConcatenationTotalNumber")
        part = _Concatenated(str(ds.ConcatenationUID), int(ds.InConcatenationNumber),
                             None if total is None else int(total),
                             int(ds.ConcatenationFrameOffsetNumber), int(ds.NumberOfFrames))
    except Exception:  # not a concatenation's part (or not one that says where it goes)
        part = None
    return _DicomHeader(uids, study, cut, part)


def _folder_headers(folder: Path) -> dict[Path, _DicomHeader]:
    """The header of each file in ``folder`` (in name order)."""
    return {p: _dicom_header(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _series_headers(path: Path) -> dict[Path, _DicomHeader]:
    """The headers of a DICOM file and of the other files of its series in the same folder
    (a slide's levels, label and overview are instances of one series), in name order, as
    OpenSlide opens them; only ``path``'s when it is not DICOM or has no series."""
    own = _dicom_header(path)
    if own.uids is None:
        return {path: own}
    headers = {}
    for p in sorted(path.parent.iterdir()):
        if p.is_file():
            header = own if p == path else _dicom_header(p)
            if p == path or (header.uids is not None and header.uids[0] == own.uids[0]):
                headers[p] = header
    return headers


def _wsidicom_refusal(files, exc: BaseException) -> str:
    """Why wsidicom did not open these instances of a series, from their headers where
    its own message names no cause (a class name, 'generator raised StopIteration', 'Level
    files not found'); with the hint of another backend where OpenSlide reads them."""
    import pydicom

    volumes, kinds = [], set()
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            kind = str(ds.ImageType[2])
        except Exception:  # not DICOM, or no Image Type: not an instance of the slide
            continue
        kinds.add(kind)
        if kind == "VOLUME":
            volumes.append(ds)
    openslide = "; --backend openslide may read it"
    if not volumes:
        held = f", only {', '.join(sorted(kinds))}" if kinds else ""
        return f"no volume (pyramid level) instances{held}"
    colours = sorted({str(ds.get("PhotometricInterpretation", "")) for ds in volumes}
                     - {"RGB", "MONOCHROME2", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
    if colours:
        return f"its pixels are stored as {', '.join(colours)}, which wsidicom does not read"
    stored = _unreadable_storage(volumes)
    if stored is not None:
        return f"its pixels are stored {stored}, which wsidicom does not read"
    widths = []
    for ds in volumes:
        try:
            spacing = [float(v) for v in ds.SharedFunctionalGroupsSequence[0]
                       .PixelMeasuresSequence[0].PixelSpacing]
        except Exception:  # absent or unreadable
            spacing = []
        if len(spacing) != 2 or min(spacing) <= 0:
            return "its levels record no pixel spacing, which wsidicom needs" + openslide
        if "ImagedVolumeWidth" not in ds or "ImagedVolumeHeight" not in ds:
            return ("its levels record no ImagedVolumeWidth/Height, which wsidicom needs"
                    + openslide)
        widths.append(int(ds.get("TotalPixelMatrixColumns", 0)))
    steps = sorted({w for w in widths if w > 0}, reverse=True)
    odd = [w for w in steps[1:] if abs(math.log2(steps[0] / w) % 1 - 0.5) < 0.49]
    if odd:
        return (f"its levels are not powers of two apart ({steps[0]} and {odd[0]} px wide), "
                "which wsidicom needs" + openslide)
    return _reason(exc) + openslide


def _unreadable_storage(volumes) -> str | None:
    """How the first of these volume instances (pydicom headers) that wsidicom turns away
    stores its pixels: plane by plane, or a colour and transfer syntax no wsidicom codec
    pairs (uncompressed YBR_FULL, say); None where it reads them all. wsidicom leaves such
    instances out without a word and then says 'Level files not found'."""
    from wsidicom.codec import Codec

    for ds in volumes:
        if int(ds.get("PlanarConfiguration", 0)) != 0:
            return "plane by plane (PlanarConfiguration 1)"
        syntax = ds.file_meta.TransferSyntaxUID
        colour = str(ds.get("PhotometricInterpretation", ""))
        try:
            readable = Codec.is_supported(syntax, int(ds.SamplesPerPixel),
                                          int(ds.BitsStored), colour)
        except Exception:  # noqa: BLE001 - attributes it cannot take: not this check's to say
            continue
        if not readable:
            return f"as {colour} in {syntax.name or syntax}"  # a pydicom UID
    return None


def _unsupported_samples(levels) -> str | None:
    """Why iste cannot read the pixels of these wsidicom levels, or None: samples other than
    8-bit grey or RGB (wsidicom reads 16-bit grey, as uint16)."""
    for level in levels:
        data = level.default_instance.image_data
        bits, samples = int(data.bits), int(data.samples_per_pixel)
        if bits != 8 or samples not in (1, 3):
            what = f"{bits}-bit samples" if bits != 8 else f"{samples} samples per pixel"
            return f"{what} are not supported (8-bit grey or RGB only)"
    return None


def _one_path_and_plane(path: Path, levels, pyramids: int) -> tuple[str, float, list]:
    """The optical path (level 0's default in wsidicom: its first) and focal plane
    (:func:`_focal_plane`) read from every level, and the levels that hold them as (level,
    its value of that plane); a warning names the choice when the slide holds more paths,
    planes or pyramids than that."""
    path_id = levels[0].default_instance.default_path
    z = _focal_plane(levels, path_id)
    kept, planes = [], set()
    for lv in levels:
        here = lv.focal_planes_by_optical_path.get(path_id, [])
        planes.update(lv.focal_planes)
        match = min(here, key=lambda p: abs(p - z), default=None)
        if match is not None and abs(match - z) < 1e-6:
            kept.append((lv, match))
    paths = sorted({p for lv in levels for p in lv.optical_paths})
    if len(paths) > 1 or len(planes) > 1 or pyramids > 1:
        said = [f"{len(paths)} optical paths ({', '.join(paths)})" if len(paths) > 1 else "",
                f"{len(planes)} focal planes ({', '.join(f'{p:g}' for p in sorted(planes))} "
                "um)" if len(planes) > 1 else "",
                f"{pyramids} pyramids" if pyramids > 1 else ""]
        left = len(levels) - len(kept)
        warnings.warn(f"{path}: the slide holds {' and '.join(s for s in said if s)}; iste "
                      f"reads optical path {path_id} at focal plane {z:g} um of the first "
                      "pyramid only" + (f" ({left} level(s) without them left out)"
                                        if left else ""), stacklevel=3)
    return path_id, z, kept


def _focal_plane(levels, path_id: str) -> float:
    """The focal plane of level 0 on optical path ``path_id`` that the most levels hold (a
    stack scanned at level 0 only has its lower levels at the nominal plane), of those the
    one nearest the middle of level 0's stack. wsidicom's default middle is half the stack's
    extent, (max - min) / 2, not its centre: of planes at -1.5, 0 and 1.5 um it read the top
    one, out of focus, and left out every level without it."""
    planes = levels[0].focal_planes_by_optical_path.get(path_id) or [
        levels[0].default_instance.default_z]
    middle = (min(planes) + max(planes)) / 2

    def held(z: float) -> int:
        return sum(any(abs(p - z) < 1e-6 for p in lv.focal_planes_by_optical_path.get(
            path_id, [])) for lv in levels)

    return max(planes, key=lambda z: (held(z), -abs(z - middle), -abs(z)))


def _check_one_study(path: Path, headers: dict[Path, _DicomHeader]) -> None:
    """SlideError when the instances of a series (their ``headers``) disagree on its
    StudyInstanceUID: wsidicom would open those of one study and leave the others out
    (levels, the label) without a word (OpenSlide reads them)."""
    by_study: dict[str, str] = {}
    for p, header in headers.items():
        if header.study is not None:  # not DICOM, or no study: not wsidicom's to group
            by_study.setdefault(header.study, p.name)
    if len(by_study) > 1:
        names = " and ".join(list(by_study.values())[:2])
        raise SlideError(f"cannot open slide {path}: {names} are instances of one series in "
                         f"{len(by_study)} studies (StudyInstanceUID), of which wsidicom would "
                         "read one; --backend openslide may read them all")


def _check_complete(path: Path, headers: dict[Path, _DicomHeader]) -> None:
    """SlideError naming the first of a DICOM slide's files (their ``headers``) whose pixel
    data runs past its end: a copy cut short, whose last frames would decode to grey blocks
    without an error; or a level split over several files (a concatenation) of which one
    is missing, which wsidicom opens and then fails to read where that part's frames lie."""
    for p, header in headers.items():
        if header.truncation is not None:
            named = "" if p == path else f" {p.name}"
            raise SlideError(f"cannot open slide {path}: truncated file{named} "
                             f"({header.truncation})")
    parts: dict[str, list[tuple[_Concatenated, str]]] = {}
    for p, header in headers.items():
        if header.part is not None:
            parts.setdefault(header.part.uid, []).append((header.part, p.name))
    for found in parts.values():
        missing = _missing_parts(sorted(found))
        if missing:
            raise SlideError(f"cannot open slide {path}: part(s) {missing} of the "
                             "concatenation (one level split over several files) of "
                             f"{found[0][1]} are missing; copy the slide's files whole")


def _missing_parts(found: list[tuple[_Concatenated, str]]) -> str | None:
    """The numbers of a concatenation's missing parts (``found``: its parts and file names,
    by number), as text, or None when none is: numbers 1 .. InConcatenationTotalNumber
    (1 .. the last found where no part records it), each part's frames where the ones before
    it end (a missing last part is told only by the total)."""
    numbers = {part.number for part, _ in found}
    last = max([*numbers, *(part.total for part, _ in found if part.total is not None)])
    absent = [n for n in range(1, last + 1) if n not in numbers]
    if not absent:
        frames = 0
        for part, _ in found:
            if part.offset != frames:  # a part with the same number twice, or frames lost
                return f"holding frames {frames + 1} to {part.offset}"
            frames += part.frames
        return None
    return f"{', '.join(map(str, absent))} of {last}"


def _check_one_series(folder: Path, headers: dict[Path, _DicomHeader]) -> None:
    """SlideError when a DICOM folder (the ``headers`` of its files) holds instances of more
    than one series (slide), which wsidicom would open one of and ignore the rest without a
    word, or one instance twice (a copied file), which it names only by object addresses."""
    by_series: dict[str, list[str]] = {}
    by_instance: dict[str, list[str]] = {}
    for p, header in headers.items():
        uids = header.uids
        if uids is not None:
            by_series.setdefault(uids[0], []).append(p.name)
            if uids[1]:
                by_instance.setdefault(uids[1], []).append(p.name)
    if len(by_series) > 1:
        names = "; ".join(f"{', '.join(files[:2])}{' ...' if len(files) > 2 else ''}"
                          for files in by_series.values())
        raise SlideError(f"cannot open slide {folder}: it holds {len(by_series)} DICOM series "
                         f"({names}); give one series' folder or one of its files")
    twice = next((files for files in by_instance.values() if len(files) > 1), None)
    if twice:
        raise SlideError(f"cannot open slide {folder}: {' and '.join(twice[:2])} are the same "
                         "DICOM instance (a copy); remove one")


TABLE_TRIES = 16  # stored tiles tried, in order, for a JPEG level's quantisation tables


def _tiff_quantisation(path: Path, level: int, check):
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
        settings = _jpeg_settings(stream)
        if settings is not None:
            return with_tiff_colour(settings, int(page.photometric)).block_quantisation()
    if tried:
        _warn_no_tables(path, level, tried)
    return None


def _jpeg_settings(stream: bytes):
    """:func:`~iste.data.jpeg.parse_jpeg_settings` of ``stream``, None where its headers do
    not read."""
    try:
        return parse_jpeg_settings(stream)
    except (ValueError, IndexError):
        return None


def _warn_no_tables(path: Path, level: int, tried: int) -> None:
    warnings.warn(f"{path}: level {level} is stored as JPEG, but the headers of its first "
                  f"{tried} tile(s) cannot be read (damaged): it is not deblocked (read as "
                  "decoded)", stacklevel=5)


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _level0_origin(v: int, d: float) -> int:
    """The smallest integer u >= 0 with int(u / d) == v (the level-0 coordinate of v)."""
    u = max(0, math.ceil(v * d - 1e-6))
    while int(u / d) > v:
        u -= 1
    while int(u / d) < v:
        u += 1
    return u


_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
                "m": 1e6}


def _ome_image(xml: str | None, series: int):
    """(root, Image element) of image ``series`` in an OME-XML document, or None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml or "")
        return root, [e for e in root.iter() if _local(e.tag) == "Image"][series]
    except (ET.ParseError, IndexError):
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_mpp(xml: str | None, series: int) -> tuple[float, float] | None:
    """Microns per pixel (x, y) from an OME-XML's PhysicalSizeX/Y (and their units, microns
    by default) of image ``series``, or None."""
    found = _ome_image(xml, series)
    pixels = None if found is None else next(
        (e for e in found[1] if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "XY":
        unit = _UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        value = _positive(pixels.get(f"PhysicalSize{axis}"))
        if unit is None or value is None:
            return None
        sizes.append(value * unit)
    return _mpp_pair(*sizes)


def _ome_objective_power(xml: str | None, series: int) -> float | None:
    """The NominalMagnification of the Objective that image ``series`` of an OME-XML names in
    its ObjectiveSettings (what Bio-Formats and QuPath read), or None."""
    found = _ome_image(xml, series)
    if found is None:
        return None
    root, image = found
    wanted = next((e.get("ID") for e in image if _local(e.tag) == "ObjectiveSettings"), None)
    objective = next((e for e in root.iter() if _local(e.tag) == "Objective"
                      and e.get("ID") == wanted), None) if wanted else None
    return None if objective is None else _positive(objective.get("NominalMagnification"))


def _mpp_pair(mx, my) -> tuple[float, float] | None:
    try:
        x, y = float(mx), float(my if my is not None else mx)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    if not all(_MPP_RANGE[0] <= v <= _MPP_RANGE[1] for v in (x, y)):
        warnings.warn(f"the slide records {x:g} x {y:g} microns per pixel, no pixel size a "
                      "microscope gives: taken as unknown", stacklevel=3)
        return None
    return (x, y)
