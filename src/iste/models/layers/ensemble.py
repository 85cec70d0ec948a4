"""Local ensemble: the LR neighbours of each query (2 x 2, or 4 x 4) and their weights.

Convention:
    ``coord`` is (B, Q, 2) in [-1, 1], (row, col) order (see :mod:`iste.data.coords`).
    A low-resolution feature map of h x w is addressed by a flat index ``row * w + col``.
    ``rel`` is ``(coord - centre(neighbour)) * (h, w)``, (row, col): the published scaling, in
    which one low-resolution pixel measures 2, so a 2 x 2 neighbour has |rel| <= 2.

The neighbour of a shifted query is the feature pixel that ``grid_sample(mode='nearest',
align_corners=False)`` would read; we compute its index with the same arithmetic and gather
rows of a (B, h*w, C) table instead of sampling, which is cheaper and lets heads keep per-pixel
tables.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from iste.data.coords import coord_axis

EPS_SHIFT = 1e-6
COORD_CLAMP = 1 - 1e-6


@dataclass(frozen=True)
class Neighbour:
    """One of the (up to) four ensemble neighbours of every query.

    index: (B, Q) int64, flat index into an h x w map.
    rel: (B, Q, 2) float, (query - neighbour centre) * (h, w).
    weight: (B, Q) float, the ensemble weight (weights of all neighbours sum to 1).
    """

    index: torch.Tensor
    rel: torch.Tensor
    weight: torch.Tensor


def nearest_index(c: torch.Tensor, n: int) -> torch.Tensor:
    """Index read by grid_sample's nearest mode (align_corners=False) along one axis."""
    pos = ((c + 1) * n - 1) / 2
    return torch.round(pos).clamp_(0, n - 1).long()


def local_neighbours(coord: torch.Tensor, hw: tuple[int, int], *, ensemble: bool = True,
                     offsets: tuple[int, ...] = (-1, 1)) -> list[Neighbour]:
    """The ensemble neighbours of each query on an h x w feature map.

    With ``ensemble`` the query is shifted by (v_r/h, v_c/w) for every pair of ``offsets``
    (half LR pixels; rows outer, plus a 1e-6 nudge, clamped inside [-1, 1]): (-1, 1) reaches
    the 2 x 2 neighbours (LIIF), (-3, -1, 1, 3) the 4 x 4 ones (LMI). Each is weighted by the
    area of the diagonally opposite rectangle (neighbour k by the area of neighbour K-1-k);
    without ``ensemble``, the single nearest pixel has weight 1.

    coord: (B, Q, 2) in [-1, 1]. Returns a list of len(offsets)^2 (or 1) :class:`Neighbour`.
    """
    index, rel, weight = _neighbour_grid(coord, hw, offsets if ensemble else (0,),
                                         EPS_SHIFT if ensemble else 0.0)
    return [Neighbour(index=i, rel=r, weight=wt) for i, r, wt in zip(index, rel, weight)]


def neighbour_indices(coord: torch.Tensor, hw: tuple[int, int],
                      offsets: tuple[int, ...] = (-1, 1)) -> list[torch.Tensor]:
    """Only the flat indices of :func:`local_neighbours` (with ``ensemble``): one (B, Q) int64
    per shift, rows outer, equal to its ``index``; no offsets or weights computed (for work
    that needs only which pixels the queries reach)."""
    (h, w) = hw
    rows = _shifted_indices(coord[..., 0], h, offsets, EPS_SHIFT)
    cols = _shifted_indices(coord[..., 1], w, offsets, EPS_SHIFT)
    return [r * w + c for r in rows for c in cols]


def _shifted_indices(c: torch.Tensor, n: int, offsets: tuple[int, ...],
                     eps: float) -> torch.Tensor:
    """For each offset v (half LR pixels), the index of the pixel that the query ``c`` shifted
    by v (plus ``eps``, clamped) falls in along one axis of ``n`` pixels: (V, *c.shape) int64.
    All offsets in one pass of each operation (a query chunk's tensors are small, so the
    operations' count is their cost); each element as one offset at a time computes it."""
    # v * (2 / n / 2): the published arithmetic (equal to v / n for v = +-1)
    shifts = torch.tensor([v * (2 / n / 2) + eps for v in offsets], dtype=c.dtype,
                          device=c.device).view(-1, *[1] * c.dim())
    return nearest_index((c + shifts).clamp_(-COORD_CLAMP, COORD_CLAMP), n)


def _axis_neighbours(c: torch.Tensor, n: int, offsets: tuple[int, ...], eps: float):
    """Along one axis: for each offset v (half LR pixels), the index (V, B, Q) of the pixel
    that the shifted query ``c + v / n + eps`` (clamped) falls in, and ``(c - centre) * n``."""
    index = _shifted_indices(c, n, offsets, eps)
    return index, (c - coord_axis(n, device=c.device, dtype=c.dtype)[index]).mul_(n)


def _neighbour_grid(coord: torch.Tensor, hw: tuple[int, int], offsets: tuple[int, ...],
                    eps: float):
    """All shifts (rows outer) at once: index (K, B, Q), rel (K, B, Q, 2), weight (K, B, Q).
    Rows and columns are shifted separately (a shift's row depends only on its row offset),
    then paired; every element is computed as one shift at a time would."""
    (h, w), v = hw, len(offsets)
    ri, rel_r = _axis_neighbours(coord[..., 0], h, offsets, eps)
    ci, rel_c = _axis_neighbours(coord[..., 1], w, offsets, eps)
    index = (ri.unsqueeze(1) * w + ci.unsqueeze(0)).flatten(0, 1)
    side_r = _area_sides(rel_r).unsqueeze(1).expand(-1, v, -1, -1).flatten(0, 1)
    side_c = _area_sides(rel_c).unsqueeze(0).expand(v, -1, -1, -1).flatten(0, 1)
    rel_r = rel_r.unsqueeze(1).expand(-1, v, -1, -1).flatten(0, 1)
    rel_c = rel_c.unsqueeze(0).expand(v, -1, -1, -1).flatten(0, 1)
    area = ((rel_r * rel_c).abs() if _PUBLISHED_AREAS.get() else side_r * side_c) + 1e-9
    # each neighbour is weighted by the area of the diagonally opposite one
    weight = area.flip(0) / area.sum(0)
    return index, torch.stack([rel_r, rel_c], -1), weight


def _area_sides(rel: torch.Tensor) -> torch.Tensor:
    """|rel| along one axis (V, B, Q), the sides of the ensemble's rectangles; 1 for every
    shift of a query whose shifts all land on its own pixel centre (rel all exactly 0: at an
    odd integer scale, the last LR row or column, where the clamped shifts reach one pixel).

    There the published areas are all 1e-9, so the four weights were equal and that row or
    column lost its interpolation along the other axis (a line up to 83 grey levels off with
    the shipped model at x3); 0 or not is decided by float32 rounding of the coordinates
    (a tile's frame and the whole image's round differently), and a rel of 1e-6 gives the
    other axis' weights as for any query. With equal sides the weights are that limit."""
    size = rel.abs()
    return torch.where((size == 0).all(0), torch.ones_like(size), size)


_PUBLISHED_AREAS = contextvars.ContextVar("published_ensemble_areas", default=False)


@contextlib.contextmanager
def published_areas() -> Iterator[None]:
    """The published ensemble areas in this thread (and the chunk workers its renders start,
    :meth:`iste.engine.parallel.ChunkQueue.submit`) for the block, the degenerate case of
    :func:`_area_sides` included (equal weights there): for reproducing the published test
    (``iste eval --protocol published``, :mod:`iste.eval.published`)."""
    token = _PUBLISHED_AREAS.set(True)
    try:
        yield
    finally:
        _PUBLISHED_AREAS.reset(token)


def stack_neighbours(nbs: list[Neighbour]) -> Neighbour:
    """The neighbours of all K shifts as one batch of K*Q queries (shift k at rows
    [k*Q, (k+1)*Q)): index (B, K*Q), rel (B, K*Q, 2), weight (B, K*Q). Decoding them in one
    pass means K times fewer, larger operations."""
    if len(nbs) == 1:
        return nbs[0]
    return Neighbour(index=torch.cat([n.index for n in nbs], 1),
                     rel=torch.cat([n.rel for n in nbs], 1),
                     weight=torch.cat([n.weight for n in nbs], 1))


def repeat_queries(t: torch.Tensor, k: int) -> torch.Tensor:
    """A per-query tensor for K stacked shifts: (B, Q, ...) -> (B, K*Q, ...)."""
    return t if k == 1 else torch.cat([t] * k, 1)


def repeat_or_broadcast(t: torch.Tensor, k: int) -> torch.Tensor:
    """Like :func:`repeat_queries`, but a tensor of one row (B, 1, ...) is returned as is: for
    operands of broadcasting arithmetic (e.g. one phase shared by every query)."""
    return t if t.shape[1] == 1 else repeat_queries(t, k)


def ensemble_sum(pred: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """Weighted sum over K stacked shifts: pred (B, K*Q, C), weight (B, K*Q) -> (B, Q, C).

    Summed in shift order, as a loop over :func:`local_neighbours` would.
    """
    parts = (pred * weight.unsqueeze(-1)).unflatten(1, (k, -1))
    out = parts[:, 0]
    for i in range(1, k):
        out = out + parts[:, i]
    return out


def gather_pixels(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a per-pixel table: table (B, N, C), index (B, Q) -> (B, Q, C).

    Whole rows are copied by an embedding lookup (one index per row, not one per element as
    ``torch.gather`` needs), which is several times faster for wide tables.
    """
    b, n, c = table.shape
    if b == 1:
        return F.embedding(index[0], table[0]).unsqueeze(0)
    offset = torch.arange(b, device=index.device).unsqueeze(1) * n
    return F.embedding(index + offset, table.reshape(b * n, c))


def pixel_table(feat: torch.Tensor) -> torch.Tensor:
    """A feature map as a per-pixel table: (B, C, h, w) -> (B, h*w, C), contiguous (rows are
    gathered per query, which is several times faster from contiguous rows)."""
    return feat.flatten(2).transpose(1, 2).contiguous()
