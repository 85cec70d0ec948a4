"""The pixels of a served slide's DeepZoom tiles.

Four kinds of tile (see :mod:`iste.serve.deepzoom` for the levels):

- ``scan``: levels at or below the slide's own resolution, read from its pyramid (the
  finest slide level at least as fine as the DeepZoom level, resized with Lanczos);
- ``bicubic``: super-resolved levels by bicubic interpolation;
- ``glass``: an ``sr`` tile all on glass, by bicubic interpolation of the pixels as stored
  (not deblocked), as whole-slide output makes glass;
- ``sr``: super-resolved levels by the model; with ``Upscaler.tissue`` (the default) only
  tiles that reach tissue (:mod:`iste.slides.tissue`, detected once per slide on its
  thumbnail) are (:meth:`ServedSlide.kind_of`): tiles all on glass are ``glass`` tiles, as
  in whole-slide output, so glass costs no model time nor a place in its queue, and
  beside tissue the model's pixels are blended into the bicubic ones per pixel
  (:class:`~iste.slides.tissue.TissueBlend`: the same weights as a whole-slide output's).

The enlarged kinds render the tile's pixels in the *global* output frame of that level
(:class:`iste.engine.frame.Frame` from the slide's level 0 to the level's exact size) from an
LR crop holding everything those pixels depend on (:func:`iste.engine.tiles.tile_for`), so
neighbouring tiles of one level agree at their borders exactly as if the whole level had been
computed at once. SR tiles share the model's work on the slide through
:class:`iste.engine.shared.SharedEncoding`: level 0 is encoded once per block and each STF key
window's texture once per level, in a byte-bounded cache (``Upscaler.store``) that all slides
of a server share; the pixels are those of the tile rendered alone.

Convention: boxes are (x, y, width, height) like OpenSlide; arrays are uint8 (H, W, 3);
tensors (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from iste.data.tensors import rgb_to_tensor, tensor_to_rgb
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions
from iste.engine.shared import SharedEncoding, TensorLRU, render_tile_shared
from iste.engine.tiles import Tile, TileGeometry, bicubic_tile, tile_for
from iste.serve.colour import DisplayColour, DisplayMode
from iste.serve.deepzoom import DeepZoom
from iste.slides.reader import SlideReader, UnreadableRegionError
from iste.slides.tissue import (NO_TISSUE, Coverage, TissueBlend, TissueMask, blend_pixels,
                                detect_tissue)

__all__ = ["Kind", "Upscaler", "ServedSlide"]

Kind = Literal["scan", "bicubic", "sr", "glass"]
_BICUBIC_GEOMETRY = TileGeometry(halo=2, key_window=None)  # bicubic reads 2 px around
_LANCZOS_MARGIN = 3  # source pixels read around a scan tile for the resampling filter
_REDUCE_FROM = 4  # source pixels per tile pixel from which a scan read is box-reduced
_SCAN_BAND_PX = 1 << 20  # pixels per band of a box-reduced scan read
_STORED_FROM = 1.9  # source pixels per tile pixel from which a scan tile is read as stored
#                     (DeepZoom's ceil makes a halved level's factor 2 - 2 / size, not 2)
_NO_MASK = object()  # a slide whose tissue could not be detected: every SR tile is the model's
_OVERVIEW_SIZE = 2048  # long side of the overview serving levels far below a pyramid-less slide
FEATURE_CACHE_MB = 512  # default budget of the encoded blocks and key textures (all slides)


@dataclass(frozen=True)
class Upscaler:
    """The model and how it is run: ``geometry`` is the LR crop rule of
    :func:`iste.engine.tiles.tile_geometry`; ``fingerprint`` identifies weights and config;
    ``tissue``: run the model only on tiles that reach tissue (glass bicubic, blended at the
    edge: :class:`~iste.slides.tissue.TissueBlend`); ``store``: the cache of encoded blocks
    and key textures shared by the tiles of all slides."""

    model: torch.nn.Module
    geometry: TileGeometry
    options: QueryOptions
    fingerprint: str
    name: str
    untrained: bool = False
    tissue: bool = True
    store: TensorLRU = field(default_factory=lambda: TensorLRU(FEATURE_CACHE_MB << 20),
                             compare=False, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def for_model(cls, model: torch.nn.Module, *, name: str,
                  options: QueryOptions = QueryOptions(), halo: int | None = None,
                  tissue: bool = True, feature_cache_mb: float = FEATURE_CACHE_MB) -> "Upscaler":
        """Measure the model's crop rule (receptive field) and fingerprint once.

        Raises:
            ValueError: a fixed-scale network (the viewer renders every zoom level, at scales
                no single-scale network can give).
        """
        from iste.engine.fixed import is_fixed_scale, model_name
        from iste.engine.tiles import tile_geometry
        from iste.models.checkpoint import is_untrained
        from iste.provenance import model_fingerprint

        if is_fixed_scale(model):
            raise ValueError(f"model {model_name(model)} is fixed-scale x{model.scale}; the "
                             "viewer renders every zoom level, so it needs an arbitrary-scale "
                             "model (upscale the slide with `iste upscale -s "
                             f"{model.scale}` and view the result instead)")

        options = options.resolved(model)
        return cls(model.eval(), tile_geometry(model, options, halo=halo), options,
                   model_fingerprint(model), name, untrained=is_untrained(model),
                   tissue=tissue, store=TensorLRU(int(feature_cache_mb * 2**20)))


class ServedSlide:
    """One slide behind the viewer: its reader (read by the I/O threads and the model worker
    at once: the reader serialises its own file reads, :class:`~iste.slides.reader.SlideReader`),
    its DeepZoom geometry and ``colour``, the conversion of its pixels to sRGB for display
    (:class:`~iste.serve.colour.DisplayColour`, from its ICC profile, read here once and
    built on the first tile; with ``colour`` "stored" none: the pixels as stored)."""

    def __init__(self, slide: SlideReader, zoom: DeepZoom, *, name: str,
                 colour: DisplayMode = "srgb"):
        if (zoom.width, zoom.height) != tuple(slide.dimensions):
            raise ValueError(f"DeepZoom geometry {zoom.width} x {zoom.height} does not match "
                             f"the slide's {slide.dimensions}")
        self.slide, self.zoom, self.name = slide, zoom, name
        where = str(slide.path or name)
        try:
            icc = slide.icc_profile if colour == "srgb" else None
            self.colour = DisplayColour(icc, slide.stored_mode if icc else "RGB", name=where)
        except (OSError, ValueError) as err:  # a profile tag that does not read
            self.colour = DisplayColour(None)
            self.colour.problem = f"its ICC profile cannot be read ({err}); tiles as stored"
            logging.getLogger("iste.serve").warning("%s: %s", where, self.colour.problem)
        self._lock = threading.Lock()  # the tissue mask and the overview are made once
        self._tissue: TissueMask | object | None = None  # or _NO_MASK
        self._overview: np.ndarray | None = None  # see _from_overview
        self._shared: tuple[Upscaler, SharedEncoding] | None = None
        self._said_too_small = False

    def kind_of(self, level: int, requested: str, col: int = 0, row: int = 0,
                upscaler: Upscaler | None = None) -> Kind:
        """The tile kind serving ``requested`` ("sr" or "bicubic") for tile (col, row) of
        ``level``: scan levels are the same picture in both views, and with
        ``upscaler.tissue`` an SR tile all on glass (every pixel's model weight 0,
        :class:`~iste.slides.tissue.TissueBlend`) is a "glass" tile: bicubic of the pixels as
        stored, as a whole-slide output's glass (the bicubic view's tiles read them as the
        model does, deblocked: on the sample's glass up to 23 levels apart)."""
        if not self.zoom.is_super_resolved(level):
            return "scan"
        if requested == "sr" and upscaler is not None and self._too_small_for(upscaler.model):
            return "bicubic"
        if requested == "sr" and upscaler is not None and upscaler.tissue:
            if self.coverage(level, col, row) == "glass":
                return "glass"
        return requested  # type: ignore

    def _too_small_for(self, model) -> bool:
        """Whether the slide is narrower or lower than ``model`` can read (ISTE's LFI needs 2
        x 2 pixels): its SR tiles are then the bicubic ones, said once in the server log
        (each answered 500 with a traceback in the log)."""
        w, h = self.slide.dimensions
        if min(w, h) >= model.min_input_side:
            return False
        with self._lock:
            if not self._said_too_small:
                self._said_too_small = True
                logging.getLogger("iste.serve").warning(
                    "%s is %d x %d px, under the %d x %d its model reads: its SR tiles are "
                    "bicubic", self.slide.path or self.name, w, h, model.min_input_side,
                    model.min_input_side)
        return True

    def render(self, kind: Kind, level: int, col: int, row: int,
               upscaler: Upscaler | None = None,
               ahead: Sequence[tuple[int, int]] = ()) -> np.ndarray:
        """uint8 (h, w, 3) pixels of tile (col, row) of ``level`` (overlap included).
        ``ahead``: (col, row) of SR tiles of the same level expected next (the viewer's
        queue), whose encoding an SR tile may do with its own
        (:meth:`iste.engine.shared.SharedEncoding.features`)."""
        box = self.zoom.tile_box(level, col, row)
        if kind == "scan":
            return self._scan(level, box)
        frame, tile = self.sr_tile(level, col, row, upscaler.geometry if kind == "sr"
                                   else _BICUBIC_GEOMETRY)
        if kind == "sr":
            later = [self.sr_tile(level, c, r, upscaler.geometry)[1] for c, r in ahead]
            out = render_tile_shared(upscaler.model, self.shared_encoding(upscaler), frame, tile,
                                     later)
            if upscaler.tissue and self.coverage(level, col, row) == "edge":
                out = self.blend_with_bicubic(out, level, col, row)
        elif kind in ("bicubic", "glass"):
            reader = self.slide.as_stored if kind == "glass" else self.slide
            out = bicubic_tile(self.read_lr(tile.lr_rows, tile.lr_cols, reader=reader), frame,
                               tile)
        else:
            raise ValueError(f"unknown tile kind {kind!r}")
        return tensor_to_rgb(out)

    # --- enlarged levels ------------------------------------------------------------------
    def sr_tile(self, level: int, col: int, row: int, geometry: TileGeometry
                ) -> tuple[Frame, Tile]:
        """The output frame of enlarged ``level`` and the engine's tile for DeepZoom tile
        (col, row) of it (overlap included), planned with ``geometry``."""
        x, y, w, h = self.zoom.tile_box(level, col, row)
        lw, lh = self.zoom.level_size(level)
        frame = Frame((self.zoom.height, self.zoom.width), (lh, lw))
        return frame, tile_for(frame, range(y, y + h), range(x, x + w), geometry)

    def coverage(self, level: int, col: int, row: int) -> Coverage:
        """Whether DeepZoom tile (col, row) of enlarged ``level`` is all "glass" (bicubic), all
        "tissue" (the model's) or an "edge" (both blended), by the tissue mask, detected on the
        first call (under a lock: threads arriving together detect it once), then only read."""
        blend = self._blend(level)
        if blend is None:
            return "tissue"
        x, y, w, h = self.zoom.tile_box(level, col, row)
        return blend.coverage(range(y, y + h), range(x, x + w))

    def _blend(self, level: int) -> TissueBlend | None:
        """The model's weight over enlarged ``level`` (None: every pixel is the model's)."""
        if self._tissue is None:
            with self._lock:
                if self._tissue is None:
                    self._tissue = self._detect_tissue()
        if self._tissue is _NO_MASK:
            return None
        lw, lh = self.zoom.level_size(level)
        return TissueBlend(self._tissue, Frame((self.zoom.height, self.zoom.width), (lh, lw)))

    def blend_with_bicubic(self, sr: torch.Tensor, level: int, col: int,
                            row: int) -> torch.Tensor:
        """(1, 3, h, w) ``w * sr + (1 - w) * bicubic`` of an "edge" tile: the model's weight
        falls to 0 out into glass, whose tiles are the "glass" ones (the same pixels)."""
        frame, tile = self.sr_tile(level, col, row, _BICUBIC_GEOMETRY)
        stored = self.read_lr(tile.lr_rows, tile.lr_cols, reader=self.slide.as_stored)
        bicubic = bicubic_tile(stored, frame, tile)
        return blend_pixels(sr, bicubic, self._blend(level).weights(tile.out_rows, tile.out_cols))

    def _detect_tissue(self) -> TissueMask | object:
        """The slide's tissue mask; where its thumbnail cannot be read (a damaged tile of the
        level it is made from), :data:`_NO_MASK`, said once in the server log: every SR tile
        is then the model's (each answered 500 before, as the mask failed again). A mask
        without tissue is said once too: every SR tile is then bicubic."""
        try:
            mask = detect_tissue(self.slide)
        except UnreadableRegionError as err:
            logging.getLogger("iste.serve").warning(
                "%s: tissue detection cannot read the thumbnail (%s): the model renders every "
                "SR tile", self.slide.path or self.name, err)
            return _NO_MASK
        if mask.empty:
            logging.getLogger("iste.serve").warning(
                "%s: %s: every SR tile is bicubic; --no-tissue renders them with the model",
                self.slide.path or self.name, NO_TISSUE)
        return mask

    def shared_encoding(self, upscaler: Upscaler) -> SharedEncoding:
        """The model's work on this slide shared between its SR tiles (in ``upscaler.store``)."""
        if self._shared is None or self._shared[0] is not upscaler:
            w, h = self.zoom.width, self.zoom.height
            device = upscaler.device
            shared = SharedEncoding(
                upscaler.model, (h, w), lambda rows, cols: self.read_lr(rows, cols, device),
                upscaler.geometry, store=upscaler.store, name=self, options=upscaler.options)
            self._shared = (upscaler, shared)
        return self._shared[1]

    def read_lr(self, rows: range, cols: range, device: torch.device = torch.device("cpu"),
                *, reader: SlideReader | None = None) -> torch.Tensor:
        """(1, 3, len(rows), len(cols)) float in [0, 1]: a crop of level 0, read through
        ``reader`` (the slide, or its ``as_stored`` pixels; default the slide)."""
        reader = self.slide if reader is None else reader
        rgb = reader.read_region((cols.start, rows.start), 0, (len(cols), len(rows)))
        return rgb_to_tensor(rgb, device)

    # --- scan levels ---------------------------------------------------------------------
    def _scan(self, level: int, box) -> np.ndarray:
        x, y, w, h = box
        lw, lh = self.zoom.level_size(level)
        W, H = self.zoom.width, self.zoom.height
        if (lw, lh) == (W, H):
            return self.slide.read_region((x, y), 0, (w, h))
        src = self.slide.best_level_for_downsample(min(W / lw, H / lh))
        sw, sh = self.slide.level_dimensions[src]
        fx, fy = sw / lw, sh / lh  # source-level pixels per DeepZoom-level pixel
        far = min(fx, fy) >= _REDUCE_FROM  # the slide has no pyramid level near this one
        if far and max(lw, lh) <= _OVERVIEW_SIZE:
            return self._from_overview(level, box)
        bx0, by0, bx1, by1 = x * fx, y * fy, (x + w) * fx, (y + h) * fy
        m = _LANCZOS_MARGIN * max(1, math.ceil(max(fx, fy)))
        rx0, ry0 = max(0, math.floor(bx0) - m), max(0, math.floor(by0) - m)
        rx1, ry1 = min(sw, math.ceil(bx1) + m), min(sh, math.ceil(by1) + m)
        # Far below the source's resolution the region is box-reduced while it is read, in
        # bands, so memory follows the tile, not the region (levels small enough come from the
        # overview instead: reading the whole slide for a thumbnail-sized tile is no option).
        f = max(1, math.floor(min(fx, fy) / 2)) if far else 1
        # Reduced 2x or more, a JPEG level's 8 x 8 block edges average out, so such tiles are
        # read as stored; deblocking a region of 4-16 times the tile's pixels took seconds a
        # tile (the sample SVS's block grid score, 1 = no grid: 1.34 as stored at full size,
        # 1.00 reduced 2x, 0.99 deblocked and reduced).
        reader = self.slide.as_stored if min(fx, fy) >= _STORED_FROM else self.slide
        region = reader.read_level_reduced(src, (rx0, ry0), (rx1 - rx0, ry1 - ry0), f,
                                           band_px=_SCAN_BAND_PX)
        return _resize(region, (w, h), ((bx0 - rx0) / f, (by0 - ry0) / f,
                                        (bx1 - rx0) / f, (by1 - ry0) / f))

    def _from_overview(self, level: int, box) -> np.ndarray:
        """A tile of a level no larger than the overview, resampled from it."""
        if self._overview is None:
            with self._lock:
                if self._overview is None:
                    self._overview = self.slide.get_thumbnail((_OVERVIEW_SIZE, _OVERVIEW_SIZE))
        x, y, w, h = box
        lw, lh = self.zoom.level_size(level)
        oh, ow = self._overview.shape[:2]
        fx, fy = ow / lw, oh / lh
        return _resize(self._overview, (w, h), (x * fx, y * fy, (x + w) * fx, (y + h) * fy))


def _resize(rgb: np.ndarray, size: tuple[int, int], box) -> np.ndarray:
    """uint8 (h, w, 3) of ``box`` = (x0, y0, x1, y1) of ``rgb`` resampled to ``size`` =
    (w, h) with Lanczos."""
    from PIL import Image

    img = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, box=box)
    return np.asarray(img, dtype=np.uint8)

