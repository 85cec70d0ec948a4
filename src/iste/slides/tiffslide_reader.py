"""The tiffslide backend of :func:`iste.slides.formats.open_slide`: TIFF slides (SVS, NDPI,
SCN, Philips, QPTIFF, generic and OME TIFF) through tiffslide and tifffile.

A TIFF it would read wrong (raw YCbCr or palette samples passed on as RGB, a Ventana BIF's
pixel size left out) is refused as :class:`~iste.slides.tiffcheck.TiffSlideRefusal`, which
OpenSlide reads under ``auto``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import numpy as np

from iste.data.imageformats import DEEP_ADVICE, tiff_alpha
from iste.data.imagemeta import tiff_mode, tiff_profile
from iste.data.integrity import tiff_raw_ycbcr
from iste.slides.filebackend import LibrarySlide, judge_corrupt, one_at_a_time, read_failed
from iste.slides.omeread import ome_scale
from iste.slides.quantisation import tiff_quantisation
from iste.slides.reader import SlideError, to_rgb_uint8
from iste.slides.tiffcheck import TiffSlideRefusal
from iste.text import error_line

__all__ = ["TiffSlideReader"]


_TIFFSLIDE_COLOURS = (1, 2, 6)  # TIFF photometric min-is-black, RGB, YCbCr: as tiffslide reads


def _raw_colour(page) -> str | None:
    """How ``page`` (a tifffile page) stores colour that tiffslide would pass on as RGB
    without converting it, or None when tiffslide reads it right: palette, min-is-white,
    CMYK ..., YCbCr that tifffile leaves YCbCr (:func:`~iste.data.integrity.tiff_raw_ycbcr`).
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


class TiffSlideReader(LibrarySlide):
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
                             f"({error_line(exc)})") from exc
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
            what = f"tiffslide cannot read its layout or tags ({error_line(exc)})"
            planes = _planes(slide.ts_tifffile)
            if planes:  # OpenSlide would read the first as a generic TIFF, without a word
                raise SlideError(f"cannot open slide {path}: {what}: {planes}; --backend "
                                 "openslide reads its first plane only") from exc
            raise TiffSlideRefusal(path, what) from exc
        if slide.ts_tifffile.is_ome:  # tiffslide reads neither OME sizes nor magnification
            self._mpp, self._power = ome_scale(
                slide.ts_tifffile.ome_metadata, slide.properties.get("tiffslide.series-index", 0),
                self._mpp, self._power)
        raw = _raw_colour(keyframe)
        if raw is not None:  # it would pass the samples on as RGB: wrong colours
            slide.close()
            raise TiffSlideRefusal(path, f"its pixels are stored as {raw}, which tiffslide "
                                   "reads as raw samples")
        if dtype != np.uint8 or samples not in (1, 2, 3, 4):  # refused before the model
            slide.close()
            what = f"{dtype} samples" if dtype != np.uint8 else f"{samples} samples per pixel"
            advice = f"; {DEEP_ADVICE}" if dtype != np.uint8 else ""
            raise SlideError(f"cannot open slide {path}: {what} are not supported "
                             f"(8-bit grey, RGB, with or without alpha, only){advice}")
        self._mode = tiff_mode(keyframe)
        # an alpha stored premultiplied (TIFF associated alpha), which tiffslide passes on
        alpha = tiff_alpha(keyframe)
        self._premultiplied = alpha == "premultiplied"
        # the samples a read keeps: the colours, and the first extra one where it is an alpha
        # (an unspecified one is no alpha: composited as one, it whitened the pixels)
        self._kept = samples - len(keyframe.extrasamples or ()) + (alpha is not None)
        self._checks: dict = {}

    def _series(self):
        return self._slide.ts_tifffile.series[
            self._slide.properties.get("tiffslide.series-index", 0)]

    @property
    def icc_profile(self):
        return tiff_profile(self._slide.ts_tifffile.pages.first)

    @property
    def stored_mode(self):
        return self._mode

    @one_at_a_time
    def _read_level(self, level, x, y, width, height):
        d = self.level_downsamples[level]
        # tiffslide maps location0 to the level with int(location0 / d): invert that exactly.
        x0, y0 = _level0_origin(x, d), _level0_origin(y, d)
        try:
            arr = self._slide.read_region((x0, y0), level, (width, height), as_array=True)
        except Exception as exc:
            raise read_failed(self.path, level, (x, y, width, height), exc,
                               self._tile_check(level)) from exc
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM (iste.stopping) while zarr decodes
            _end_unfinished_decoding()
            raise
        judge_corrupt(self, level, x, y, self._tile_check(level), (width, height))
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[2] > self._kept:
            arr = arr[..., :self._kept]
        return to_rgb_uint8(arr, str(self.path), premultiplied=self._premultiplied)

    @one_at_a_time
    def _read_quantisation(self, level):
        check = self._tile_check(level)
        return tiff_quantisation(self.path, level, check)

    def _tile_check(self, level: int):
        from iste.slides.tilecheck import JpegTileCheck

        if level not in self._checks:
            self._checks[level] = JpegTileCheck(self._series().levels[level].keyframe)
        return self._checks[level]

    def _close(self):
        for check in self._checks.values():
            check.close()
        super()._close()


def _end_unfinished_decoding(timeout: float = 5.0) -> None:
    """Cancel, and wait for, the tile reads that zarr's event-loop thread still runs for a
    ``read_region`` a stop ended in the main thread (tiffslide 3 decodes there, the main
    thread waiting). Left running, zarr's exit hook stopped its loop under them: after the
    command's one line, "Thread did not finish cleanly", an "Exception ignored in atexit
    callback" traceback ("Cannot close a running event loop") and a "Task was destroyed but
    it is pending!" per tile."""
    import asyncio

    try:
        from zarr.core.sync import loop
    except ImportError:  # a zarr without an event-loop thread
        return
    running = loop[0]
    if running is None or running.is_closed():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # the process is stopping: a loop that does not answer in time is left to zarr's hook
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(cancel_all(), running).result(timeout)


def _level0_origin(v: int, d: float) -> int:
    """The smallest integer u >= 0 with int(u / d) == v (the level-0 coordinate of v)."""
    u = max(0, math.ceil(v * d - 1e-6))
    while int(u / d) > v:
        u -= 1
    while int(u / d) < v:
        u += 1
    return u
