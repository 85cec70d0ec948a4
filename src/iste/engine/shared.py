"""Work that the tiles of one LR image share, done once: encoded blocks and STF key textures.

A viewer renders many tiles of one LR image (a slide's level 0), at several scales. Rendered
one by one (:func:`iste.engine.tiles.render_tile`), each tile encodes its own LR crop: the
pixels under it plus its halo and the whole STF key windows it falls in, so neighbouring and
deeper tiles encode the same LR pixels over and over (at x2 a 256-px tile's crop is ~2.5 times
the 128 x 128 LR pixels it shows), and every tile of a key window recomputes the window's key
texture. Here:

- **Blocks.** The LR image is cut into ``block`` x ``block`` squares on a fixed grid. A block
  is encoded once, from a crop holding the block plus ``halo`` LR pixels around it (its origin
  snapped down to a multiple of ``align``, as :func:`~iste.engine.tiles.tile_for` does), and
  only its interior is kept. A tile's features are assembled from the blocks it touches. Each
  interior feature sees everything its receptive field holds, so the assembled features equal
  those of the tile's own crop (to float rounding for finite receptive fields; within the halo
  cap for shifted-window attention), at every scale.
- **Key textures.** The texture of a key window's keys (:meth:`ISTE.key_texture`) depends only
  on the window, the output frame and the features; it is computed once per (frame, window)
  and reused by every tile of the window.

Both live in one :class:`TensorLRU` bounded in bytes, shared by all images of a server.
The output is the per-tile output (tiled == whole, ``tests/test_engine_shared.py``).

Convention: ranges are global LR (or output) pixel indices, rows then columns; LR images are
(1, 3, h, w) float in [0, 1] on the model's device.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch

from iste.data.coords import denormalize, normalize
from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, Renderer, autocast_for
from iste.engine.tiles import Tile, TileGeometry, tile_for
from iste.models.heads.base import Features

__all__ = ["TensorLRU", "SharedEncoding", "render_tile_shared"]

ReadLR = Callable[[range, range], torch.Tensor]


class TensorLRU:
    """key -> value (a tensor, or a dict / tuple of tensors) holding at most ``max_bytes`` of
    tensors; the least recently used go first. Thread-safe; values are computed outside the
    lock (a value asked for by two threads at once may be computed twice)."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        value = compute()
        size = _nbytes(value)
        if size <= self.max_bytes:
            with self._lock:
                old = self._items.pop(key, None)
                self._bytes += size - (old[1] if old else 0)
                self._items[key] = (value, size)
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._bytes -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def _nbytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class SharedEncoding:
    """The blocks and key textures of one LR image (see the module docstring).

    Args:
        model: a head (``encode`` / ``query``; ``key_texture`` when it uses STF key sets).
        lr_hw: (h, w) of the whole LR image.
        read_lr: (rows, cols) -> (1, 3, len(rows), len(cols)) float in [0, 1] on the model's
            device: a crop of the LR image.
        geom: the model's crop rule (:func:`iste.engine.tiles.tile_geometry`); its halo and
            alignment decide the block crops.
        store: the cache (shared by several images: ``name`` tells them apart).
        name: a hashable naming this image (and model) in ``store``.
        block: block side in LR pixels (rounded up to a multiple of ``geom.align``).
    """

    def __init__(self, model, lr_hw: tuple[int, int], read_lr: ReadLR, geom: TileGeometry, *,
                 store: TensorLRU, name: Hashable = None,
                 options: QueryOptions = QueryOptions(), block: int = 128):
        if block < 1:
            raise ValueError(f"block must be positive, got {block}")
        self.model, self.lr_hw, self.read_lr, self.geom = model, tuple(lr_hw), read_lr, geom
        self.store, self.name, self.options = store, name, options
        self.block = -(-block // geom.align) * geom.align

    # --- blocks ------------------------------------------------------------------------
    def _block(self, bi: int, bj: int) -> dict[str, tuple[str, torch.Tensor]]:
        """Features of the interior of block (bi, bj): name -> (kind, part) (:func:`_crop`)."""
        return self.store.get_or_compute((self.name, "block", bi, bj),
                                         lambda: self._encode_block(bi, bj))

    def _encode_block(self, bi: int, bj: int) -> dict[str, tuple[str, torch.Tensor]]:
        (h, w), b, halo, align = self.lr_hw, self.block, self.geom.halo, self.geom.align
        rows = range(bi * b, min(h, (bi + 1) * b))
        cols = range(bj * b, min(w, (bj + 1) * b))
        r0, c0 = max(0, rows.start - halo), max(0, cols.start - halo)
        r0, c0 = r0 - r0 % align, c0 - c0 % align
        crop_rows, crop_cols = range(r0, min(h, rows.stop + halo)), range(c0, min(w, cols.stop + halo))
        lr = self.read_lr(crop_rows, crop_cols)
        with torch.no_grad(), autocast_for(lr.device, self.options.precision):
            feats = self.model.encode(normalize(lr))
        inner = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
        return {k: _crop(v, feats["hw"], *inner) for k, v in feats.items() if k != "hw"}

    def features(self, rows: range, cols: range) -> Features:
        """Features of the LR crop ``rows`` x ``cols``, as ``model.encode`` of that crop would
        give them away from its border (assembled from blocks)."""
        b = self.block
        out: Features = {"hw": (len(rows), len(cols))}
        for bi in range(rows.start // b, (rows.stop - 1) // b + 1):
            for bj in range(cols.start // b, (cols.stop - 1) // b + 1):
                part = self._block(bi, bj)
                br = range(max(rows.start, bi * b), min(rows.stop, (bi + 1) * b))
                bc = range(max(cols.start, bj * b), min(cols.stop, (bj + 1) * b))
                src = (slice(br.start - bi * b, br.stop - bi * b),
                       slice(bc.start - bj * b, bc.stop - bj * b))
                dst = (slice(br.start - rows.start, br.stop - rows.start),
                       slice(bc.start - cols.start, bc.stop - cols.start))
                for key, (kind, value) in part.items():
                    if key not in out:
                        out[key] = _empty_like(kind, value, out["hw"])
                    _paste(out[key], out["hw"], dst, kind, value, src)
        return out

    # --- key textures ------------------------------------------------------------------
    def key_texture(self, frame: Frame) -> Callable[[tuple[int, int], Callable[[], Any]], Any]:
        """The key-texture hook for a :class:`~iste.engine.render.Renderer` of ``frame``:
        (window, compute) -> the window's key texture, computed once."""
        def lookup(window: tuple[int, int], compute: Callable[[], Any]) -> Any:
            return self.store.get_or_compute((self.name, "keys", frame.out_hw, window), compute)
        return lookup


def render_tile_shared(model, shared: SharedEncoding, frame: Frame, tile: Tile) -> torch.Tensor:
    """:func:`iste.engine.tiles.render_tile` with the work shared through ``shared``: the
    tile's features come from its blocks and its windows' key textures from the cache.

    ``tile`` is planned with ``shared.geom`` (:func:`tile_for`); only the part of its crop the
    queries read (no encoder halo) is assembled. Returns (1, 3, *tile.out_hw) in [0, 1].
    """
    geom = TileGeometry(halo=0, key_window=shared.geom.key_window)
    span = tile_for(frame, tile.out_rows, tile.out_cols, geom)
    feats = shared.features(span.lr_rows, span.lr_cols)
    renderer = Renderer(model, feats, frame, crop_origin=span.lr_origin, crop_hw=span.lr_hw,
                        options=shared.options, batch=1, key_texture=shared.key_texture(frame))
    return denormalize(renderer.render(tile.out_rows, tile.out_cols)).clamp_(0, 1)


# --- per-pixel features: tables (B, h*w, C) and maps (B, C, h, w) ----------------------------
def _crop(t, hw: tuple[int, int], rows: slice, cols: slice) -> tuple[str, torch.Tensor]:
    """("table", (B, h', w', C)) or ("map", (B, C, h', w')): the part of a feature in the
    rectangle rows x cols of its h x w grid."""
    h, w = hw
    if torch.is_tensor(t) and t.dim() == 3 and t.shape[1] == h * w:
        return "table", t.unflatten(1, (h, w))[:, rows, cols].contiguous()
    if torch.is_tensor(t) and t.dim() == 4 and tuple(t.shape[-2:]) == (h, w):
        return "map", t[..., rows, cols].contiguous()
    raise ValueError("shared encoding needs per-pixel features (tables (B, h*w, C) or maps "
                     f"(B, C, h, w)); got {type(t).__name__} "
                     f"{tuple(t.shape) if torch.is_tensor(t) else ''}")


def _empty_like(kind: str, part: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if kind == "table":
        return part.new_empty(part.shape[0], hw[0] * hw[1], part.shape[-1])
    return part.new_empty(part.shape[0], part.shape[1], *hw)


def _paste(out: torch.Tensor, hw: tuple[int, int], dst, kind: str, part: torch.Tensor,
           src) -> None:
    if kind == "table":
        grid = out.view(out.shape[0], hw[0], hw[1], out.shape[-1])
        grid[:, dst[0], dst[1]] = part[:, src[0], src[1]]
    else:
        out[..., dst[0], dst[1]] = part[..., src[0], src[1]]
