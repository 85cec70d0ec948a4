"""File backends of :func:`iste.slides.reader.open_slide`: tiffslide and OpenSlide.

Both implement :class:`~iste.slides.reader.SlideReader` (documented there); this module only
adapts each library's conventions (PIL/RGBA, level-0 locations) to it, and refuses truncated
TIFFs up front.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from iste.slides.reader import SlideError, SlideReader, to_rgb_uint8

__all__ = ["TiffSlideReader", "OpenSlideReader", "check_tiff_complete"]


def _is_tiff(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_tiff_complete(path: Path) -> None:
    """Refuse a TIFF whose tile/strip data runs past the end of the file (truncated copy)."""
    if not _is_tiff(path):
        return
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise SlideError(f"cannot open slide {path}: no image in the TIFF")
            for level in tif.series[0].levels:
                for page in level.pages:
                    if page is None:
                        continue
                    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
                    if ends and max(ends) > size or 0 in page.databytecounts:
                        raise SlideError(f"cannot open slide {path}: truncated file (image data "
                                         f"ends past byte {size})")
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"cannot open slide {path}: corrupt or truncated TIFF "
                         f"({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _LibrarySlide(SlideReader):
    """What both backends share: an opened library slide, its levels and mpp, closing it."""

    def __init__(self, path: Path, slide, mpp: tuple[float, float] | None):
        self.path, self._slide, self._mpp = path, slide, mpp
        self._dims = [tuple(int(v) for v in d) for d in slide.level_dimensions]
        self._downsamples = [float(d) for d in slide.level_downsamples]

    @property
    def level_dimensions(self):
        return list(self._dims)

    @property
    def level_downsamples(self):
        return list(self._downsamples)

    @property
    def mpp(self):
        return self._mpp

    def _read_failed(self, level: int, x: int, y: int, exc: BaseException) -> SlideError:
        return SlideError(f"cannot read {self.path} (level {level}, x={x}, y={y}): "
                          f"{_reason(exc)}")

    def _close(self):
        self._slide.close()


class TiffSlideReader(_LibrarySlide):
    def __init__(self, path: Path):
        import tiffslide

        try:
            slide = tiffslide.TiffSlide(path)
        except Exception as exc:
            raise SlideError(f"cannot open slide {path}: unsupported or corrupt "
                             f"({_reason(exc)})") from exc
        props = slide.properties
        super().__init__(path, slide, _mpp_pair(props.get("tiffslide.mpp-x"),
                                                props.get("tiffslide.mpp-y")))
        self._checks: dict = {}

    def _read_level(self, level, x, y, width, height):
        d = self.level_downsamples[level]
        # tiffslide maps location0 to the level with int(location0 / d): invert that exactly.
        x0, y0 = _level0_origin(x, d), _level0_origin(y, d)
        try:
            arr = self._slide.read_region((x0, y0), level, (width, height), as_array=True)
        except Exception as exc:
            raise self._read_failed(level, x, y, exc) from exc
        for col, row, problem in self._tile_check(level).problems(x, y, width, height):
            warnings.warn(f"{self.path}: corrupt JPEG data in level {level}, tile column {col} "
                          f"row {row} (read at x={x}, y={y}): {problem}; its pixels may be "
                          "wrong", stacklevel=3)
        return to_rgb_uint8(np.asarray(arr), str(self.path))

    def _tile_check(self, level: int):
        from iste.slides.tilecheck import JpegTileCheck

        if level not in self._checks:
            series = self._slide.ts_tifffile.series[
                self._slide.properties.get("tiffslide.series-index", 0)]
            self._checks[level] = JpegTileCheck(series.levels[level].keyframe)
        return self._checks[level]

    def _close(self):
        for check in self._checks.values():
            check.close()
        super()._close()


class OpenSlideReader(_LibrarySlide):
    def __init__(self, path: Path):
        import openslide

        try:
            slide = openslide.OpenSlide(str(path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise SlideError(f"cannot open slide {path}: unsupported or corrupt "
                             f"({_reason(exc) or 'format not recognised'})") from exc
        props = slide.properties
        super().__init__(path, slide, _mpp_pair(props.get("openslide.mpp-x"),
                                                props.get("openslide.mpp-y")))

    def _read_level(self, level, x, y, width, height):
        d = self.level_downsamples[level]
        x0, y0 = round(x * d), round(y * d)
        try:
            img = self._slide.read_region((x0, y0), level, (width, height))
        except Exception as exc:
            raise self._read_failed(level, x, y, exc) from exc
        return to_rgb_uint8(np.asarray(img), str(self.path))


def _level0_origin(v: int, d: float) -> int:
    """The smallest integer u >= 0 with int(u / d) == v (the level-0 coordinate of v)."""
    u = max(0, math.ceil(v * d - 1e-6))
    while int(u / d) > v:
        u -= 1
    while int(u / d) < v:
        u += 1
    return u


def _mpp_pair(mx, my) -> tuple[float, float] | None:
    try:
        x, y = float(mx), float(my if my is not None else mx)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    return (x, y)
