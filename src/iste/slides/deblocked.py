"""A slide whose JPEG-compressed levels are read through :func:`iste.data.deblock.deblock`.

Scanners store their levels as JPEG tiles (Aperio SVS at quality 30-90, DICOM WSI); a model
sharpens the 8 x 8 block edges of those tiles into a grid. :func:`deblocked` wraps a reader so
that every read of such a level is deblocked with the level's own quantisation tables, on the
level's block grid (which starts at the level's origin: TIFF tiles and DICOM frames are
multiples of 8 pixels). Each read takes :data:`~iste.data.deblock.DEBLOCK_MARGIN` pixels of
context around it, beyond which deblocking does not look, so tiles read separately fit together
exactly as if the level had been deblocked whole.

Thumbnails and reduced reads (tissue detection, overviews) are passed through undeblocked: a
block grid is invisible there and deblocking a whole level for them would cost minutes. The
whole-slide job (and the viewer's SR view) reads what it upsamples bicubically (glass, and
bicubic's share beside tissue) from :attr:`~iste.slides.reader.SlideReader.as_stored` too:
deblocking was most of the glass tiles' cost
(glass ran at 0.53 Mpx/s of output deblocked, 14.6 as stored: ``iste bench --sections
slide``) and glass shows no grid to remove.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from iste.data.deblock import DEBLOCK_MARGIN, DEBLOCKED, deblock, grid_origin
from iste.slides.reader import SlideReader

__all__ = ["DeblockMode", "DEBLOCK_MODES", "DeblockedSlide", "deblocked"]

DeblockMode = Literal["auto", "off"]
DEBLOCK_MODES: tuple[DeblockMode, ...] = ("auto", "off")


class DeblockedSlide(SlideReader):
    """``slide`` with its JPEG levels deblocked (other levels read as they are)."""

    def __init__(self, slide: SlideReader):
        self._slide = slide
        self.path = slide.path

    @property
    def processing(self) -> str:
        return DEBLOCKED

    def processing_of(self, level: int) -> str:
        return DEBLOCKED if self._slide.jpeg_quantisation(level) is not None else ""

    @property
    def decoder(self) -> str:
        return self._slide.decoder

    @property
    def as_stored(self) -> SlideReader:
        return self._slide

    @property
    def files(self):
        return self._slide.files

    @property
    def level_dimensions(self):
        return self._slide.level_dimensions

    @property
    def level_downsamples(self):
        return self._slide.level_downsamples

    @property
    def mpp(self):
        return self._slide.mpp

    @property
    def objective_power(self):
        return self._slide.objective_power

    @property
    def icc_profile(self):
        return self._slide.icc_profile

    @property
    def stored_mode(self):
        return self._slide.stored_mode

    @property
    def dicom_metadata(self):
        return self._slide.dicom_metadata

    def dicom_instances(self, level):
        return self._slide.dicom_instances(level)

    @property
    def associated_images(self):
        return self._slide.associated_images

    def read_associated(self, name):
        return self._slide.read_associated(name)

    def get_thumbnail(self, max_size):
        return self._slide.get_thumbnail(max_size)

    def read_level_reduced(self, level, location, size, factor, **kwargs):
        if factor == 1:
            return self.read_level(level, location, size)
        return self._slide.read_level_reduced(level, location, size, factor, **kwargs)

    def _read_level(self, level, x, y, width, height) -> np.ndarray:
        quant = self._slide.jpeg_quantisation(level)
        if quant is None:
            return self._slide.read_level(level, (x, y), (width, height))
        m = DEBLOCK_MARGIN
        around = self._slide.read_level(level, (x - m, y - m), (width + 2 * m, height + 2 * m))
        return deblock(around, quant, grid_origin(x - m, y - m))[m:m + height, m:m + width]

    def _close(self) -> None:
        self._slide.close()


def deblocked(slide: SlideReader, mode: DeblockMode = "auto") -> SlideReader:
    """``slide`` deblocked where it is JPEG-compressed (``mode`` "auto"), else itself."""
    if mode not in DEBLOCK_MODES:
        raise ValueError(f"deblock mode must be one of {', '.join(DEBLOCK_MODES)}, got {mode!r}")
    if mode == "off" or all(slide.jpeg_quantisation(level) is None
                            for level in range(slide.level_count)):
        return slide
    return DeblockedSlide(slide)
