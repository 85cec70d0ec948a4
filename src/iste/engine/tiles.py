"""Tiled super-resolution whose result equals the whole-image one.

An output tile (a rectangle of the global output, see :mod:`iste.engine.frame`) is rendered
from an LR crop that holds everything its pixels depend on:

1. the LR pixels under the tile, plus the head's declared ``query_reach`` around each (the
   LR pixels a query reads beyond its own, :mod:`iste.models.heads.base`), plus one pixel
   for the rounding of shifted query coordinates;
2. for heads with an STF key set (ISTE): the **whole key windows** the tile's pixels fall in
   (``stf_window`` LR pixels per side, starting at multiples of ``stf_window``), because a
   pixel's keys are all key pixels of its window (:mod:`iste.engine.render`);
3. a halo of ``halo`` LR pixels, the receptive field of ``model.encode`` (encoder plus the
   head's own 3 x 3 convs / LFI windows), measured once by :func:`encode_radius`;
4. the crop's origin is snapped down to a multiple of the encoder's attention window
   (its declared ``size_alignment``, SwinIR's ``window_size``), so its windows partition the
   image exactly as for the whole image.

Fixed-scale networks (:mod:`iste.engine.fixed`) use the same plan with their declared
``reach`` as the halo (nothing to measure) and ``size_alignment`` as the alignment; their tiles
run the whole network on the crop and cut the tile's pixels out.

Crops are clipped to the image, so border pixels see the same padding as the whole image.
A frame that is a window of a larger LR image (a slide ``--region`` on its level) may give
the LR ``context`` around it (:func:`tile_for`): crops then read across the frame's border
as they would inside, and the window renders as the larger image's output does there.
With a finite receptive field (EDSR, RDN, no-shift Swin) the tiled result equals the whole
result to float rounding; with shifted-window attention the receptive field is unbounded and
``halo`` is capped (``max_halo``), which leaves differences far below 8-bit precision.

Convention: ranges are global pixel indices, rows then columns; tensors are (B, 3, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from iste.data.coords import denormalize, normalize
from iste.data.tensors import unit_to_uint8
from iste.engine.fixed import is_fixed_scale, render_fixed_tile
from iste.engine.frame import Frame, axis_coord
from iste.engine.render import QueryOptions, Renderer, autocast_for

__all__ = ["TileGeometry", "Tile", "TileGrid", "tile_geometry", "encode_radius", "plan_tiles",
           "tile_for", "check_context",
           "render_tile", "bicubic_tile", "render_tiles", "tiled_super_resolve", "default_tile",
           "TILE_STEP", "TILE_LR_SPAN"]

TILE_STEP = 512
"""Default inference tiles are multiples of this, the whole-slide output's TIFF tile
(:func:`iste.slides.job.tiff_tile_for`: the largest multiple of 16 up to TILE_STEP that
divides the tile)."""
TILE_LR_SPAN = 256
"""LR pixels a default inference tile spans at least, per side."""


def default_tile(scale: float) -> int:
    """Inference tile side in output pixels when none is given: the smallest multiple of
    :data:`TILE_STEP` spanning at least :data:`TILE_LR_SPAN` LR pixels, 512 x ceil(scale / 2)
    (512 up to x2, 1024 up to x4, 2048 at x8).

    Why it grows with the scale: a tile's LR crop holds, besides its own pixels, the whole STF
    key windows they fall in and the encoder's halo on every side, a margin fixed in LR
    pixels. A fixed 512-px tile spans 256 LR pixels at x2 but 128 at x4 and 64 at x8, where
    that margin is most of the crop. Peak memory follows the LR crop (256-512 px a side
    here), so it stays within that of an x2 job with 1024-px tiles. On the sample slide
    (shipped model, 2 threads, 512-px against the larger tile): x3.3 1.27x, x4 1.20x, x8
    1.38x faster (docs/wsi.md)."""
    return TILE_STEP * max(1, math.ceil(scale * TILE_LR_SPAN / TILE_STEP - 1e-9))



@dataclass(frozen=True)
class TileGeometry:
    """What an LR crop must contain around the pixels it renders.

    halo: LR pixels of receptive field of ``model.encode`` on each side.
    key_window: STF window side in LR pixels, or None for heads without a key set.
    align: crop origins are multiples of this (the encoder's attention window, else 1).
    reach: LR pixels a query reads around the pixel containing it (the head's
        ``query_reach``).
    """

    halo: int
    key_window: int | None
    align: int = 1
    reach: int = 1

    def __post_init__(self):
        if self.halo < 0 or self.align < 1 or self.reach < 0 or (
                self.key_window is not None and self.key_window < 1):
            raise ValueError(f"invalid tile geometry {self}")


@dataclass(frozen=True)
class Tile:
    """out_rows/out_cols: global output pixels rendered; lr_rows/lr_cols: the LR crop read."""

    out_rows: range
    out_cols: range
    lr_rows: range
    lr_cols: range

    @property
    def out_hw(self) -> tuple[int, int]:
        return len(self.out_rows), len(self.out_cols)

    @property
    def lr_origin(self) -> tuple[int, int]:
        return self.lr_rows.start, self.lr_cols.start

    @property
    def lr_hw(self) -> tuple[int, int]:
        return len(self.lr_rows), len(self.lr_cols)


def encode_radius(model, *, max_halo: int = 64) -> int:
    """Receptive-field radius of ``model.encode`` in LR pixels, measured by a gradient.

    The gradient of the features at the centre of a (2 max_halo + 1)^2 random probe with
    respect to the input is non-zero exactly on the receptive field. When it reaches the
    probe's border (attention across shifted windows, very deep encoders) ``max_halo`` is
    returned: the halo is then a cap, not the true field.
    """
    p = 2 * max_halo + 1
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.rand(1, 3, p, p, generator=gen, dtype=torch.float32) * 2 - 1).to(device)
    x.requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            feats = model.encode(x)
            maps = [t for t in feats.values() if torch.is_tensor(t) and t.is_floating_point()]
            score = sum(_centre_value(t, p) for t in maps)
            (grad,) = torch.autograd.grad(score, x)
    finally:
        model.train(was_training)
    hit = grad.abs().sum(dim=(0, 1)) > 0
    rows = hit.any(dim=1).nonzero().squeeze(1)
    cols = hit.any(dim=0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return 0
    radius = int(max(max_halo - rows.min(), rows.max() - max_halo,
                     max_halo - cols.min(), cols.max() - max_halo))
    return max_halo if radius >= max_halo else radius


def _centre_value(t: torch.Tensor, p: int) -> torch.Tensor:
    """Sum of squares of a feature at the probe's centre; maps are (B, C, p, p), per-pixel
    tables (B, p * p, ...)."""
    c = p // 2
    if t.dim() == 4 and t.shape[-2:] == (p, p):
        return t[..., c, c].square().sum()
    if t.dim() >= 3 and t.shape[1] == p * p:
        return t[:, c * p + c].square().sum()
    return t.new_zeros(())


def tile_geometry(model, options: QueryOptions = QueryOptions(), *,
                  halo: int | None = None, max_halo: int = 64) -> TileGeometry:
    """The crop rule for ``model``: for an :class:`~iste.models.heads.base.SRHead` the
    measured halo (unless given), key windows, encoder alignment and query reach as the model
    declares them; for a fixed-scale network its declared ``reach`` as the halo (unless given)
    and its ``size_alignment``."""
    if is_fixed_scale(model):
        return TileGeometry(halo=model.reach if halo is None else int(halo), key_window=None,
                            align=model.size_alignment, reach=0)
    if halo is None:
        halo = encode_radius(model, max_halo=max_halo)
    key_window = options.stf_window if model.uses_key_set else None
    return TileGeometry(halo=int(halo), key_window=key_window,
                        align=model.encoder.size_alignment, reach=model.query_reach)


def _lr_span(out: range, n_out: int, n_lr: int, geom: TileGeometry,
             readable: range | None = None) -> range:
    """LR indices a crop needs along one axis to render output indices ``out``, within
    ``readable`` (the LR indices that exist along the axis; default the frame's own,
    ``range(n_lr)``)."""
    lo = out.start * n_lr / n_out  # LR position of the first pixel's top edge
    hi = out.stop * n_lr / n_out
    if geom.key_window is not None:
        w = geom.key_window
        first = ((2 * out.start + 1) * n_lr) // (2 * n_out * w)  # as frame.axis_window
        last = ((2 * out.stop - 1) * n_lr) // (2 * n_out * w)
        # the windows' keys are output pixels of the frame: inside its LR image
        lo, hi = min(lo, max(0, first * w)), max(hi, min(n_lr, (last + 1) * w))
    margin = geom.halo + geom.reach + 1  # + 1: rounding of the shifted query coordinates
    bounds = range(n_lr) if readable is None else readable
    start = max(bounds.start, math.floor(lo) - margin)
    start -= (start - bounds.start) % geom.align  # windows laid from the readable origin
    stop = min(bounds.stop, math.ceil(hi) + margin)
    return range(start, stop)


def check_context(frame: Frame, context: tuple[range, range] | None) -> None:
    """Refuse a ``context`` (LR rows, columns that can be read, in the frame's LR indices)
    that does not hold the frame's own LR image (rows 0..h, columns 0..w)."""
    if context is None:
        return
    for axis, n_lr in zip(context, frame.lr_hw):
        if axis.step != 1 or axis.start > 0 or axis.stop < n_lr:
            raise ValueError(f"LR context {context} does not hold the frame's {frame.lr_hw}")


def tile_for(frame: Frame, out_rows: range, out_cols: range, geom: TileGeometry, *,
             context: tuple[range, range] | None = None) -> Tile:
    """The tile rendering ``out_rows`` x ``out_cols`` with the LR crop it needs.

    context: (rows, cols) of LR pixels that exist around the frame's LR image, in its
    indices (a slide region's surroundings on its level: ``range(-y0, level_h - y0)``);
    the crop reads what it needs of them, so pixels at the frame's border are rendered
    from the same LR pixels as inside, as in the output of the whole level. None: the
    frame's LR image is all there is (crops are clipped to it, its border padded).
    """
    check_context(frame, context)
    (h_out, w_out), (h, w) = frame.out_hw, frame.lr_hw
    rows, cols = context if context is not None else (None, None)
    return Tile(out_rows, out_cols, _lr_span(out_rows, h_out, h, geom, rows),
                _lr_span(out_cols, w_out, w, geom, cols))


@dataclass(frozen=True)
class TileGrid:
    """The output cut into tiles of ``tile_hw`` output pixels (smaller at the bottom/right);
    tiles are built on demand, so a huge slide costs no memory per tile. ``context``: the LR
    pixels around the frame that crops may read (:func:`tile_for`)."""

    frame: Frame
    tile_hw: tuple[int, int]
    geom: TileGeometry
    context: tuple[range, range] | None = None

    def __post_init__(self):
        if min(self.tile_hw) < 1:
            raise ValueError(f"tile size must be positive, got {self.tile_hw}")
        check_context(self.frame, self.context)

    @property
    def shape(self) -> tuple[int, int]:
        """(tile rows, tile columns)."""
        (h, w), (th, tw) = self.frame.out_hw, self.tile_hw
        return -(-h // th), -(-w // tw)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def out_ranges(self, i: int, j: int) -> tuple[range, range]:
        """(rows, columns) of the output pixels of tile (i, j): what :meth:`tile` renders,
        without its LR geometry."""
        (h, w), (th, tw) = self.frame.out_hw, self.tile_hw
        return range(i * th, min((i + 1) * th, h)), range(j * tw, min((j + 1) * tw, w))

    def tile(self, i: int, j: int) -> Tile:
        """Tile (row i, column j) of the grid."""
        return tile_for(self.frame, *self.out_ranges(i, j), self.geom, context=self.context)

    def __iter__(self) -> Iterator[Tile]:
        rows, cols = self.shape
        return (self.tile(i, j) for i in range(rows) for j in range(cols))


def plan_tiles(frame: Frame, tile_hw: tuple[int, int], geom: TileGeometry, *,
               context: tuple[range, range] | None = None) -> list[Tile]:
    """All tiles of :class:`TileGrid`, row-major."""
    return list(TileGrid(frame, tuple(tile_hw), geom, context))


def render_tile(model, lr_crop: torch.Tensor, frame: Frame, tile: Tile, *,
                options: QueryOptions = QueryOptions()) -> torch.Tensor:
    """Super-resolve one tile from its LR crop.

    lr_crop: (B, 3, *tile.lr_hw) in [0, 1] on the model's device.
    Returns (B, 3, *tile.out_hw) in [0, 1].
    """
    if tuple(lr_crop.shape[-2:]) != tile.lr_hw:
        raise ValueError(f"crop is {tuple(lr_crop.shape[-2:])}, the tile needs {tile.lr_hw}")
    if is_fixed_scale(model):
        return render_fixed_tile(model, lr_crop, tile.lr_origin, tile.out_rows, tile.out_cols,
                                 precision=options.resolved(model).precision)
    options = options.resolved(model)
    with torch.no_grad(), autocast_for(lr_crop.device, options.precision):
        feats = model.encode(normalize(lr_crop))
    renderer = Renderer(model, feats, frame, crop_origin=tile.lr_origin, crop_hw=tile.lr_hw,
                        options=options, batch=lr_crop.shape[0])
    return denormalize(renderer.render(tile.out_rows, tile.out_cols)).clamp_(0, 1)


def bicubic_tile(lr_crop: torch.Tensor, frame: Frame, tile: Tile) -> torch.Tensor:
    """The cheap path: bicubic interpolation at the tile's output pixel centres, in the same
    frame as the model (seamless across tiles; equal to a whole-image bicubic resize with
    edge clamping, away from the crop border).

    lr_crop: (B, 3, *tile.lr_hw) in [0, 1]. Returns (B, 3, *tile.out_hw) in [0, 1].
    """
    (h_out, w_out), (h, w) = frame.out_hw, frame.lr_hw
    dev = lr_crop.device
    r = axis_coord(torch.arange(tile.out_rows.start, tile.out_rows.stop), h_out, h,
                   tile.lr_rows.start, len(tile.lr_rows)).to(dev)
    c = axis_coord(torch.arange(tile.out_cols.start, tile.out_cols.stop), w_out, w,
                   tile.lr_cols.start, len(tile.lr_cols)).to(dev)
    grid = torch.stack(torch.meshgrid(c, r, indexing="xy"), -1)  # (th, tw, 2) as (x, y)
    grid = grid.unsqueeze(0).expand(lr_crop.shape[0], -1, -1, -1)
    out = F.grid_sample(lr_crop.float(), grid, mode="bicubic", padding_mode="border",
                        align_corners=False)
    return out.clamp_(0, 1)


def render_tiles(model, lr: torch.Tensor, out_hw: tuple[int, int], *,
                 tile_hw: tuple[int, int], options: QueryOptions = QueryOptions(),
                 geom: TileGeometry | None = None) -> Iterator[tuple[Tile, torch.Tensor]]:
    """The whole-image result, one tile at a time, in row-major order.

    lr: (B, 3, h, w) in [0, 1] (float, or uint8 in [0, 255]). Yields (tile, sr) with sr
    (B, 3, *tile.out_hw) in [0, 1]; memory holds one tile's work at a time.
    """
    frame = Frame(tuple(lr.shape[-2:]), tuple(out_hw))
    geom = geom or tile_geometry(model, options)
    for tile in TileGrid(frame, tuple(tile_hw), geom):
        crop = lr[..., tile.lr_rows.start:tile.lr_rows.stop, tile.lr_cols.start:tile.lr_cols.stop]
        if not crop.is_floating_point():
            crop = crop.float() / 255
        yield tile, render_tile(model, crop, frame, tile, options=options)


def tiled_super_resolve(model, lr: torch.Tensor, out_hw: tuple[int, int], *,
                        tile_hw: tuple[int, int], options: QueryOptions = QueryOptions(),
                        geom: TileGeometry | None = None,
                        on_tile: Callable[[Tile], None] | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """Whole-image result computed tile by tile (in memory; for slides see iste.slides).

    lr: (B, 3, h, w) in [0, 1] (float, or uint8 in [0, 255]). out: where the tiles go,
    (B, 3, *out_hw) on any device; a uint8 one gets each tile quantised as it comes
    (:func:`iste.data.tensors.unit_to_uint8`), so no float copy of the whole result is held
    (a numpy (H, W, 3) image's permuted view, for one). Returns ``out``, by default a new
    float (B, 3, *out_hw) in [0, 1] on ``lr``'s device.
    """
    if out is None:
        out = torch.empty(lr.shape[0], 3, *out_hw, device=lr.device, dtype=torch.float32)
    for tile, sr in render_tiles(model, lr, out_hw, tile_hw=tile_hw, options=options, geom=geom):
        out[..., tile.out_rows.start:tile.out_rows.stop,
            tile.out_cols.start:tile.out_cols.stop] = \
            unit_to_uint8(sr) if out.dtype == torch.uint8 else sr
        if on_tile is not None:
            on_tile(tile)
    return out
