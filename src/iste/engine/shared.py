"""Work that the tiles of one LR image share, done once: encoded regions and key textures.

A viewer renders many tiles of one LR image (a slide's level 0) at several scales. Rendered
one by one (:func:`iste.engine.tiles.render_tile`), each tile encodes its own LR crop: the
pixels under it, the whole STF key windows it falls in and the encoder's halo. A deeper tile
(zooming in) reads LR pixels that the shallower tile over it has encoded already, and every
tile of a key window recomputes the window's key texture. Here:

- **Regions.** A tile's crop, once encoded, is kept with its *valid part* (the crop less the
  halo on every side that is not the image border: there its features equal the whole
  image's). A later tile whose span (the LR pixels its queries and keys read: its crop without
  the halo) lies in a kept region's valid part is rendered from that region's features, with
  no encoding; any other tile encodes its own crop, exactly as alone, and keeps it. So a first
  tile costs what it cost alone, and the deeper tiles under it (the same place at x4 after x2)
  skip the encoder.
- **Tiles ahead.** A caller that knows which tiles come next (the viewer's queue: the other
  tiles of the view) passes them as ``ahead``: an encoding beside a kept region then covers
  the union of the crops of this tile and of the tiles ahead not yet covered, so they skip
  the encoder. Neighbours' crops overlap by two halos and the key windows they share (at x2 a
  256-px tile's crop holds 3.6x its own LR pixels with the shipped model), so one encoding of
  a view's union does much less work than one per tile. The first tile of a place (no kept
  region beside it) still encodes only its own crop, so that it shows soon (the union took
  the first SR tile of a 60x screen from ~2 to 8-10 s in the browser); the second pays for
  the union. The union is bounded: its features stay within half of the cache
  (:meth:`SharedEncoding.max_region_pixels`).
- **Key textures.** The texture of a key window's keys (:meth:`ISTE.key_texture`) depends only
  on the window, the output frame and the features there; it is computed once per (frame,
  window) and reused by every tile of that window (neighbours at one level).

Both live in one :class:`TensorLRU` bounded in bytes, shared by all images of a server. The
output is the tile rendered alone, to float rounding (tiled == whole,
``tests/test_engine_shared.py``).

Convention: ranges are global LR (or output) pixel indices, rows then columns; LR images are
(1, 3, h, w) float in [0, 1] on the model's device.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Hashable, Sequence

import torch

from iste.data.coords import denormalize, normalize
from iste.engine.budget import feature_bytes_per_pixel
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, Renderer, autocast_for
from iste.engine.tiles import Tile, TileGeometry, tile_for
from iste.lru import SizedLRU
from iste.models.heads.base import Features
from iste.runtime import CoreWatch, one_thread_if_contended

__all__ = ["TensorLRU", "SharedEncoding", "render_tile_shared"]

ReadLR = Callable[[range, range], torch.Tensor]

CORES = CoreWatch()
"""Other processes' use of the cores, read at each encoding on CPU: where they hold them,
the encoder runs on one intra-op thread (:func:`iste.runtime.one_thread_if_contended`); the
query chunks keep theirs."""


class TensorLRU(SizedLRU):
    """key -> value (a tensor, or a dict / tuple of tensors) holding at most ``max_bytes`` of
    tensors; the least recently used go first (:class:`iste.lru.SizedLRU`: thread-safe,
    values computed outside the lock)."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, _nbytes)

    def _refused(self, size: int, first: bool) -> None:
        # said once: a region that large is encoded again for every tile that needs it,
        # which shows only as slow tiles
        if first:
            logging.getLogger("iste").warning(
                "feature cache: an encoded region of %.3g MB is larger than the whole cache "
                "(%.3g MB): it is encoded again for each tile that needs it", size / 2**20,
                self.max_bytes / 2**20)


def _nbytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class SharedEncoding:
    """The encoded regions and key textures of one LR image (see the module docstring).

    Args:
        model: a head (``encode`` / ``query``; ``key_texture`` when it uses STF key sets).
        lr_hw: (h, w) of the whole LR image.
        read_lr: (rows, cols) -> (1, 3, len(rows), len(cols)) float in [0, 1] on the model's
            device: a crop of the LR image.
        geom: the model's crop rule (:func:`iste.engine.tiles.tile_geometry`).
        store: the cache (shared by several images: ``name`` tells them apart).
        name: a hashable naming this image (and model) in ``store``.
    """

    _MAX_REGIONS = 256  # regions remembered for look-up (their features live in ``store``)

    def __init__(self, model, lr_hw: tuple[int, int], read_lr: ReadLR, geom: TileGeometry, *,
                 store: TensorLRU, name: Hashable = None,
                 options: QueryOptions = QueryOptions()):
        self.model, self.lr_hw, self.read_lr, self.geom = model, tuple(lr_hw), read_lr, geom
        self.store, self.name, self.options = store, name, options.resolved(model)
        self._regions: list[tuple[range, range, Hashable]] = []  # valid rows, cols, store key
        self._lock = threading.Lock()

    def features(self, tile: Tile, frame: Frame, ahead: Sequence[Tile] = ()
                 ) -> tuple[Features, tuple[int, int], tuple[int, int]]:
        """Features covering what ``tile``'s queries read, as (feats, crop origin, crop hw):
        an encoded region whose valid part holds the tile's span (halo-less crop), or else
        ``model.encode`` of the tile's own crop, grown (when a kept region overlaps that crop:
        not for the first tile of a place) by the crops of the tiles ``ahead`` (planned in
        ``frame`` with this geometry, nearest first) that meet the union and that no region
        covers yet, while the union stays within :meth:`max_region_pixels`; it is kept for
        the tiles after it."""
        found = self._covering(tile, frame)
        if found is not None:
            return found
        rows, cols = tile.lr_rows, tile.lr_cols
        # The first tile of a place encodes its own crop, so that it shows soon; the next one,
        # beside a kept region, encodes the union for the tiles after it.
        limit = self.max_region_pixels() if ahead and self._beside_kept(rows, cols) else 0
        # Only tiles whose crop meets the union join it (a compact place, never the span to
        # a far tile: another viewer's, on a shared server), in passes while it grows.
        pending = list(ahead) if limit else []
        while pending:
            meets = [t for t in pending if _overlap(rows, t.lr_rows) and _overlap(cols, t.lr_cols)]
            pending = [t for t in pending if t not in meets]
            for other in meets:
                grown_rows, grown_cols = _union(rows, other.lr_rows), _union(cols, other.lr_cols)
                if len(grown_rows) * len(grown_cols) <= limit and \
                        self._covering(other, frame, peek=True) is None:
                    rows, cols = grown_rows, grown_cols
            if not meets:
                break
        found = self._encode(rows, cols)
        key = (self.name, "region", rows.start, rows.stop, cols.start, cols.stop)
        self.store.get_or_compute(key, lambda: found)
        with self._lock:
            self._regions = [r for r in self._regions if r[2] in self.store][:self._MAX_REGIONS - 1]
            self._regions.insert(0, (*self._valid(rows, cols), key))
        return found

    def _covering(self, tile: Tile, frame: Frame, *, peek: bool = False):
        """The kept region whose valid part holds ``tile``'s span, or None; ``peek``: only
        whether one is kept (no look-up that would count as a use)."""
        span = tile_for(frame, tile.out_rows, tile.out_cols,
                        TileGeometry(halo=0, key_window=self.geom.key_window))
        with self._lock:
            regions = list(self._regions)
        for rows, cols, key in regions:
            if _inside(span.lr_rows, rows) and _inside(span.lr_cols, cols):
                if peek:
                    if key in self.store:
                        return key
                    continue
                found = self.store.get(key)
                if found is not None:
                    return found
        return None

    def _beside_kept(self, rows: range, cols: range) -> bool:
        """Whether a kept region overlaps the crop rows x cols."""
        with self._lock:
            regions = list(self._regions)
        return any(_overlap(rows, r) and _overlap(cols, c) and key in self.store
                   for r, c, key in regions)

    def max_region_pixels(self) -> int:
        """LR pixels one encoding may cover when it grows for the tiles ahead: features of
        at most half of the cache (:func:`iste.engine.budget.feature_bytes_per_pixel`), so
        that it leaves room for the key textures and the region before it (zooming in reads
        the region of the level above)."""
        return self.store.max_bytes // 2 // feature_bytes_per_pixel(self.model)

    def _valid(self, rows: range, cols: range) -> tuple[range, range]:
        """Where features of the crop rows x cols equal the whole image's: ``halo`` in from
        each side that is not the image border."""
        halo, (h, w) = self.geom.halo, self.lr_hw
        return (range(rows.start + (halo if rows.start > 0 else 0),
                      rows.stop - (halo if rows.stop < h else 0)),
                range(cols.start + (halo if cols.start > 0 else 0),
                      cols.stop - (halo if cols.stop < w else 0)))

    def _encode(self, rows: range, cols: range):
        lr = self.read_lr(rows, cols)
        threads = (one_thread_if_contended(CORES) if lr.device.type == "cpu"
                   else contextlib.nullcontext())
        with torch.no_grad(), autocast_for(lr.device, self.options.precision), threads:
            feats = self.model.encode(normalize(lr))
        return feats, (rows.start, cols.start), (len(rows), len(cols))

    # --- key textures ------------------------------------------------------------------
    def key_texture(self, frame: Frame) -> Callable[[tuple[int, int], Callable[[], Any]], Any]:
        """The key-texture hook for a :class:`~iste.engine.render.Renderer` of ``frame``:
        (window, compute) -> the window's key texture, computed once."""
        def lookup(window: tuple[int, int], compute: Callable[[], Any]) -> Any:
            return self.store.get_or_compute((self.name, "keys", frame.out_hw, window), compute)
        return lookup


def _inside(inner: range, outer: range) -> bool:
    return outer.start <= inner.start and inner.stop <= outer.stop


def _overlap(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


def _union(a: range, b: range) -> range:
    """The smallest range holding both (crops are contiguous)."""
    return range(min(a.start, b.start), max(a.stop, b.stop))


def render_tile_shared(model, shared: SharedEncoding, frame: Frame, tile: Tile,
                       ahead: Sequence[Tile] = ()) -> torch.Tensor:
    """:func:`iste.engine.tiles.render_tile` with the work shared through ``shared``: the
    tile's features come from an encoded region that holds its span (or its own crop, grown
    for the tiles ``ahead`` of the same frame, which later tiles then reuse) and its windows'
    key textures from the cache.

    ``tile`` (and ``ahead``) are planned with ``shared.geom`` (:func:`tile_for`). Returns
    (1, 3, *tile.out_hw) in [0, 1].
    """
    feats, origin, hw = shared.features(tile, frame, ahead)
    renderer = Renderer(model, feats, frame, crop_origin=origin, crop_hw=hw,
                        options=shared.options, batch=1, key_texture=shared.key_texture(frame))
    return denormalize(renderer.render(tile.out_rows, tile.out_cols)).clamp_(0, 1)
