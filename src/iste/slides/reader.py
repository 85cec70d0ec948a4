"""Whole-slide readers: one interface and an in-memory double (the file backends are
:mod:`iste.slides.tiffslide_reader`, :mod:`iste.slides.openslide_reader` and
:mod:`iste.slides.wsidicom_reader`, opened through :func:`iste.slides.formats.open_slide`).

Convention:
    Slide-facing coordinates follow OpenSlide: ``location`` is (x, y) of a top-left corner in
    the **level-0 frame**; ``size`` is (width, height) in pixels **of the level read**.
    The region's top-left in the level's own frame is (floor(x / d), floor(y / d)) with
    d = ``level_downsamples[level]``. Arrays are uint8 RGB of shape (height, width, 3).

    Areas outside the slide come back **white** (255, 255, 255) — the colour of glass — never
    raised, so tiles with a halo can run over the slide's border. A region entirely outside
    the slide is white too; callers that want to forbid it check :attr:`SlideReader.dimensions`.

Example:
    >>> with open_slide("slide.svs") as slide:            # doctest: +SKIP
    ...     rgb = slide.read_region((1000, 2000), 0, (512, 256))   # (256, 512, 3) uint8
"""

from __future__ import annotations

import abc
import math
from pathlib import Path

import numpy as np

from iste.data.deblock import BlockQuantisation
from iste.slides.levels import halve, pyramid_sizes

__all__ = ["SlideError", "UnreadableRegionError", "SlideReader", "InMemorySlide", "to_rgb_uint8"]

_WHITE = 255
_THUMB_BAND_PX = 1 << 22  # pixels per band read while building a thumbnail


class SlideError(ValueError):
    """A slide is missing, unsupported, truncated, or a request on it is invalid."""


class UnreadableRegionError(SlideError):
    """A read whose stored data does not decode: a tile or frame under it is damaged or cut
    short (the file opened, the request was valid). ``level`` and ``box`` (x, y, width,
    height in that level's own frame) say where the read was; ``tiles``: (column, row) of the
    stored tiles the backend's tile check found damaged under it (empty when it cannot
    tell). A whole-slide job stops on it, or fills what it cannot read
    (:func:`iste.slides.pipeline.upscale_slide`, ``SlideJob.unreadable``)."""

    def __init__(self, message: str, *, level: int, box: tuple[int, int, int, int],
                 tiles: tuple[tuple[int, int], ...] = ()):
        super().__init__(message)
        self.level, self.box, self.tiles = level, tuple(box), tuple(tiles)


class SlideReader(abc.ABC):
    """A whole-slide image: a pyramid of RGB levels, level 0 the finest.

    Subclasses implement :meth:`_read_level` (an in-bounds rectangle in a level's own frame)
    and the metadata properties; clipping, padding and thumbnails are shared here.

    Readers may be read from several threads at once: a file backend serialises what touches
    its file itself (:mod:`iste.slides.filebackend`), so callers need no lock of their own and
    processing after the read (a wrapper's deblocking) runs side by side.
    """

    path: Path | None = None
    _closed: bool = False
    _quantisation: dict | None = None  # level -> BlockQuantisation | None, read once
    corrupt_is_unreadable: bool = False
    """What a read does where its tile check finds a stored tile that decodes from corrupt
    data (libjpeg's garbage blocks, :mod:`iste.slides.tilecheck`): False, return its pixels
    as decoded with a warning; True, raise :class:`UnreadableRegionError` naming it, as for
    a tile that does not decode (a job under ``--unreadable-tiles fill`` then fills it).
    Read by the reader that decodes (:attr:`as_stored`)."""

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the slide is read from (what tells one input from another): ``path``
        itself, or a folder's files; none for a slide in memory."""
        if self.path is None:
            return ()
        path = Path(self.path)
        return tuple(sorted(p for p in path.iterdir() if p.is_file())) if path.is_dir() \
            else (path,)

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every level, level 0 first."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> list[float]:
        """Downsample factor of every level relative to level 0 (level 0 is 1.0)."""

    @property
    @abc.abstractmethod
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel (x, y) at level 0, or None if the slide does not record it."""

    @abc.abstractmethod
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 (height, width, 3) of the rectangle at (x, y) in ``level``'s own frame;
        the rectangle is non-empty and lies inside the level."""

    # --- what the scan records beside the pixels (None / empty when it does not) ----------
    @property
    def objective_power(self) -> float | None:
        """The scan's objective magnification (e.g. 20.0, 40.0), or None if unrecorded."""
        return None

    @property
    def icc_profile(self) -> bytes | None:
        """The scan's ICC colour profile (raw bytes), or None."""
        return None

    @property
    def stored_mode(self) -> str:
        """The PIL mode of the colour samples the slide stores (reads give RGB whatever it is):
        "L" for one a pixel (gray, with or without alpha), "RGB" for RGB or YCbCr, "P" for a
        palette of RGB colours, "CMYK" for inks, "" where the reader cannot tell another
        from these. The colour space its ICC profile must declare to describe its pixels
        (:func:`~iste.data.imagemeta.profile_problem`): an RGB profile of a gray scan is not
        applied by the viewer nor carried into an output."""
        return "RGB"

    @property
    def associated_images(self) -> tuple[str, ...]:
        """Names of the associated images the file holds: "label", "macro", "thumbnail"."""
        return ()

    def read_associated(self, name: str) -> np.ndarray:
        """uint8 (h, w, 3) of one associated image (see :attr:`associated_images`)."""
        raise SlideError(f"{self.path or 'the slide'} has no associated image {name!r}")

    @property
    def dicom_metadata(self):
        """A DICOM source's study, patient and slide as wsidicom reads them (its
        ``WsiMetadata``), which a DICOM output carries (a new series of the same study); None
        for other sources."""
        return None

    def dicom_instances(self, level: int) -> tuple[tuple[str, str], ...]:
        """(SOP Class UID, SOP Instance UID) of the DICOM instances ``level`` is read from,
        which a DICOM output made from it references (its Source Image Sequence); () for
        other sources."""
        return ()

    @property
    def decoder(self) -> str:
        """Which libraries, at which versions, decode the stored pixels ("" for a slide in
        memory): two decoders can give one tile pixels a level or more apart, so what keeps
        decoded pixels (the viewer's disk cache) names it."""
        return ""

    @property
    def processing(self) -> str:
        """What the reader does to the stored pixels beyond decoding them ("" for nothing),
        recorded with the outputs made from them (see :mod:`iste.slides.deblocked`)."""
        return ""

    def processing_of(self, level: int) -> str:
        """:attr:`processing` as it applies to reads of ``level`` ("" where the reader leaves
        that level's pixels as decoded, e.g. a level that is not JPEG under deblocking)."""
        return self.processing

    @property
    def as_stored(self) -> "SlideReader":
        """The same slide read with no processing beyond decoding (this reader, unless it
        processes: :class:`iste.slides.deblocked.DeblockedSlide` gives the one it wraps)."""
        return self

    def jpeg_quantisation(self, level: int) -> BlockQuantisation | None:
        """The quantisation of ``level``'s stored JPEG tiles, whose 8 x 8 block grid starts
        at the level's origin (what :func:`iste.data.deblock.deblock` needs), or None when the
        level is not stored that way (another codec, or a reader that cannot tell). Read once
        per level (:meth:`_read_quantisation`)."""
        if self._quantisation is None:
            self._quantisation = {}
        if level not in self._quantisation:
            self._quantisation[level] = self._read_quantisation(level)
        return self._quantisation[level]

    def _read_quantisation(self, level: int) -> BlockQuantisation | None:
        """:meth:`jpeg_quantisation` from the file (backends that can tell override it)."""
        return None

    def _close(self) -> None:
        """Release backend resources (called once by :meth:`close`)."""

    def close(self) -> None:
        """Release the file; further reads raise SlideError. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._close()

    # --- shared behaviour -------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= ``downsample`` (level 0 at least), of
        the levels that are the slide shrunk by one factor (:meth:`level_mismatch`): the
        others' pixels do not lie where their downsample puts them."""
        best = 0
        for level, d in enumerate(self.level_downsamples):
            if d <= downsample + 1e-9 and self.level_mismatch(level) is None:
                best = level
        return best

    def level_mismatch(self, level: int) -> str | None:
        """Why ``level`` is not the slide shrunk by one factor d (its downsample), or None
        when it is: neither of its sides is over a pixel short of level 0's divided by d
        (longer is padding past the right or bottom edge, as some formats store levels).
        A file may hold pages that its library takes for levels (stretched, transposed);
        read through their downsample (the mean of the two sides' factors, as OpenSlide and
        tiffslide give it, so one side falls short), they put other pixels where a region
        lies."""
        (w0, h0), (w, h) = self.dimensions, self.level_dimensions[level]
        d = self.level_downsamples[level]
        if w >= w0 / d - 1 and h >= h0 / d - 1:
            return None
        return (f"level {level} ({w} x {h}) is not the slide ({w0} x {h0}) shrunk by one "
                f"factor (x {w0 / w:.3g}, y {h0 / h:.3g})")

    def read_region(self, location: tuple[int, int], level: int,
                    size: tuple[int, int]) -> np.ndarray:
        """Read a rectangle of a level; outside the slide is white.

        Args:
            location: (x, y) of the top-left corner in the level-0 frame (any ints).
            level: pyramid level, 0 <= level < level_count.
            size: (width, height) in pixels of ``level``, both >= 0.

        Returns:
            uint8 array (height, width, 3), RGB.
        """
        x0, y0 = (int(v) for v in location)
        if not 0 <= level < self.level_count:
            raise SlideError(f"level {level} out of range: the slide has {self.level_count}")
        d = self.level_downsamples[level]
        return self.read_level(level, (math.floor(x0 / d), math.floor(y0 / d)), size)

    def read_level(self, level: int, location: tuple[int, int],
                   size: tuple[int, int]) -> np.ndarray:
        """Like :meth:`read_region`, but ``location`` = (x, y) is in ``level``'s own frame.

        Returns:
            uint8 array (height, width, 3), RGB; white outside the slide.
        """
        lx, ly = (int(v) for v in location)
        width, height = (int(v) for v in size)
        if self._closed:
            raise SlideError(f"read from a closed slide {self.path or ''}".rstrip())
        if not 0 <= level < self.level_count:
            raise SlideError(f"level {level} out of range: the slide has {self.level_count}")
        if width < 0 or height < 0:
            raise SlideError(f"negative region size {size}")
        lw, lh = self.level_dimensions[level]
        out = np.full((height, width, 3), _WHITE, dtype=np.uint8)
        cx0, cy0 = max(lx, 0), max(ly, 0)
        cx1, cy1 = min(lx + width, lw), min(ly + height, lh)
        if cx1 > cx0 and cy1 > cy0:
            rgb = self._read_level(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
            out[cy0 - ly:cy1 - ly, cx0 - lx:cx1 - lx] = rgb
        return out

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """The whole slide shrunk to fit in ``max_size`` = (width, height), aspect kept.

        Built from the coarsest level at least as large as the thumbnail, read in row bands
        (memory bounded by the thumbnail, not by the level).

        Returns:
            uint8 (h, w, 3) with w <= max_size[0], h <= max_size[1].
        """
        from PIL import Image

        mw, mh = (max(1, int(v)) for v in max_size)
        w0, h0 = self.dimensions
        ratio = max(w0 / mw, h0 / mh, 1.0)
        tw, th = max(1, round(w0 / ratio)), max(1, round(h0 / ratio))
        level = self.best_level_for_downsample(ratio)
        lw, lh = self.level_dimensions[level]
        factor = max(1, math.floor(min(lw / tw, lh / th)))
        small = self.read_level_reduced(level, (0, 0), (lw, lh), factor)
        img = Image.fromarray(small).resize((tw, th), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8)

    def read_level_reduced(self, level: int, location: tuple[int, int], size: tuple[int, int],
                           factor: int, *, band_px: int = _THUMB_BAND_PX) -> np.ndarray:
        """:meth:`read_level` shrunk ``factor`` times (the mean of each factor x factor block
        from ``location``; a partial last block is padded with its edge), read in row bands of
        about ``band_px`` pixels, so memory is bounded by the result, not by the region.

        Returns:
            uint8 (ceil(height / factor), ceil(width / factor), 3).
        """
        width, height = (int(v) for v in size)
        if factor < 1:
            raise SlideError(f"reduction factor must be >= 1, got {factor}")
        if factor == 1:
            return self.read_level(level, location, size)
        lx, ly = (int(v) for v in location)
        band = factor * max(1, band_px // max(1, width * factor))
        parts = [_box_reduce(self.read_level(level, (lx, ly + row),
                                             (width, min(band, height - row))), factor)
                 for row in range(0, height, band)]
        return np.concatenate(parts, axis=0)

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (f"{type(self).__name__}({str(self.path) if self.path else ''!r}, {w} x {h}, "
                f"levels={self.level_count}, mpp={self.mpp})")


def _box_reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks; a partial last block averages what it has."""
    if factor == 1:
        return rgb
    h, w = rgb.shape[:2]
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
    blocks = rgb.reshape(rgb.shape[0] // factor, factor, rgb.shape[1] // factor, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def to_rgb_uint8(arr: np.ndarray, where: str, *, premultiplied: bool = False) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3): gray
    expanded, alpha (the last of 2 or 4 samples) over white. ``premultiplied``: the colours
    are stored multiplied by their alpha (TIFF associated alpha, ExtraSamples 1), so white
    adds ``255 - alpha``; composited as straight colours they came out up to alpha's
    complement too dark (a third of the way to black at alpha 200)."""
    if arr.dtype != np.uint8:
        raise SlideError(f"{where}: {arr.dtype} samples are not supported (8-bit RGB only)")
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[2]
    if c not in (1, 2, 3, 4):
        raise SlideError(f"{where}: {c} samples per pixel are not supported")
    if c in (2, 4):
        alpha = arr[..., -1:].astype(np.uint16)
        colour = arr[..., :-1].astype(np.uint16)
        if premultiplied:
            arr = np.minimum(colour + (_WHITE - alpha), 255).astype(np.uint8)
        else:
            arr = ((colour * alpha + _WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


# --- in-memory double ---------------------------------------------------------------------
class InMemorySlide(SlideReader):
    """A slide held in memory (a test double), with lower levels built by 2 x 2 averaging.

    Args:
        rgb: uint8 (H, W, 3), level 0.
        mpp: microns per pixel of level 0, a float (square pixels) or (x, y); None if unknown.
        min_level_size: levels are halved until the longer side would drop below this.
        objective_power, icc_profile, associated: what a scan records beside the pixels
            (associated: name -> uint8 (h, w, 3)).
    """

    def __init__(self, rgb: np.ndarray, mpp: float | tuple[float, float] | None = None, *,
                 min_level_size: int = 64, objective_power: float | None = None,
                 icc_profile: bytes | None = None,
                 associated: dict[str, np.ndarray] | None = None):
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise SlideError(f"InMemorySlide needs a non-empty uint8 (H, W, 3) array, got "
                             f"{rgb.dtype} {rgb.shape}")
        self._levels = [rgb]
        for _ in pyramid_sizes(rgb.shape[1], rgb.shape[0], min_size=min_level_size)[1:]:
            self._levels.append(halve(self._levels[-1]))
        self._mpp = None if mpp is None else (
            (float(mpp), float(mpp)) if np.isscalar(mpp) else tuple(float(v) for v in mpp))
        self._power, self._icc = objective_power, icc_profile
        self._associated = dict(associated or {})

    @property
    def objective_power(self) -> float | None:
        return self._power

    @property
    def icc_profile(self) -> bytes | None:
        return self._icc

    @property
    def associated_images(self) -> tuple[str, ...]:
        return tuple(self._associated)

    def read_associated(self, name: str) -> np.ndarray:
        if name not in self._associated:
            return super().read_associated(name)
        return to_rgb_uint8(np.asarray(self._associated[name]), name)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(a.shape[1], a.shape[0]) for a in self._levels]

    @property
    def level_downsamples(self) -> list[float]:
        return [_downsample(self.dimensions, dims) for dims in self.level_dimensions]

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    def _read_level(self, level, x, y, width, height):
        return self._levels[level][y:y + height, x:x + width].copy()


def _downsample(dims0: tuple[int, int], dims: tuple[int, int]) -> float:
    """OpenSlide's rule: the mean of the width and height ratios."""
    return (dims0[0] / dims[0] + dims0[1] / dims[1]) / 2
