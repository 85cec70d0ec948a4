"""What every super-resolution head offers: encode once, query coordinates many times.

Convention (shared by all heads; documented here once):
    inp: (B, 3, h, w) low-resolution image normalised to [-1, 1] (``(x - 0.5) / 0.5``).
    coord: (B, Q, 2) query positions in the output, in [-1, 1], (row, col) order.
    cell: (B, Q, 2) size of one output pixel, (2 / H_out, 2 / W_out).
    output: (B, Q, 3) RGB in the same normalised range as ``inp`` (not clamped).
``model(inp, coord, cell)`` follows the LIIF family's published tensor conventions, so a
converted published checkpoint gives the published model's output.

What a head reads, declared once here for the engine (which never probes for it):
    query_reach: a query's output reads features of LR pixels within this Chebyshev distance
        (in LR pixels) of the LR pixel containing the query: 1 for the 2 x 2 local ensemble,
        2 for a 4 x 4 one, r for a (2r+1)^2 attention window around the nearest pixel.
        Everything ``encode`` computes (convolutions, unfolding) is the encoder's halo, which
        the engine measures; the reach is only what ``query`` adds on top.
    uses_key_set (declared on :class:`~iste.models.base.SRModel`, False for every other
        model): whether ``query`` takes a key set (``keys=``, a :class:`KeySet` or what
        :meth:`SRHead.key_work` resolved it to); the engine then renders key windows.
    reads_scale_from_cell: whether the cell decides more than a decoder input (CLIT's cascade
        picks its stages by the scale it implies), so that the engine passes the true cell
        and never a clipped one (``QueryOptions.cell_clip``).

What the engine adds to a crop's features (:class:`iste.engine.render.Renderer`, in the dict
it is given, where a head may also keep what it computes on first use):
    ``feats["image_hw"]``: (h, w) of the whole LR image the crop was cut from, for a head
        whose output depends on the image's size (ITSRN's published neighbour shift); absent
        when the features are the image's own (``model(inp, coord, cell)``, training): the
        head then takes ``feats["hw"]``.

What every built model carries (its config, its checkpoint's metadata) is declared on
:class:`~iste.models.base.SRModel`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from iste.models.base import SRModel

Features = dict[str, Any]

class KeyWork(NamedTuple):
    """A head's work to resolve a key set for some queries (:meth:`SRHead.key_work`): run
    ``run(item)`` for every item of ``items`` (independent of each other: the engine runs them
    side by side on CPU, each with one intra-op thread and the caller's grad mode and
    autocast, :mod:`iste.engine.parallel`), then ``finish(results)`` with the results in the
    order of ``items`` gives what :meth:`SRHead.query` takes as ``keys``."""

    items: Sequence[Any]
    run: Callable[[Any], Any]
    finish: Callable[[list], Any]


class KeySet(NamedTuple):
    """Queries whose features serve as a head's key set: coord, cell (B, K, 2) each."""

    coord: torch.Tensor
    cell: torch.Tensor


class SRHead(SRModel):
    """Base class: an encoder plus an implicit decoder queried at continuous coordinates."""

    encoder: nn.Module
    query_reach: int = 1
    reads_scale_from_cell: bool = False

    def query_bytes_per_pixel(self, scale: float) -> int:
        """Bytes per LR pixel that queries at ``scale`` add to :meth:`encode`'s features and
        keep while a render lasts (CLIT's finer stage grids), for the engine's memory plan
        (:mod:`iste.engine.budget`). Default: 0."""
        return 0

    def key_texture(self, feats: Features, keys: KeySet) -> Any:
        """What of a key set depends only on the keys (not on the queries), so that tiles
        sharing a key window can share it (:mod:`iste.engine.shared`); passed back to
        :meth:`key_work` as ``texture``. Default: None (nothing to share)."""
        return None

    def key_work(self, feats: Features, keys: KeySet, coord: torch.Tensor, *,
                 texture: Any = None) -> KeyWork:
        """The work that resolves ``keys`` once for the queries at ``coord`` (B, Q, 2), so
        that several query calls covering only those queries can share it (:class:`KeyWork`;
        ``texture``: :meth:`key_texture` of ``keys`` when already known). Default: nothing to
        resolve (the key set itself)."""
        return KeyWork((), _no_part, lambda results: keys)

    def prepare_keys(self, feats: Features, keys: KeySet, coord: torch.Tensor, *,
                     texture: Any = None) -> Any:
        """:meth:`key_work` done in this thread: what :meth:`query` takes as ``keys``."""
        work = self.key_work(feats, keys, coord, texture=texture)
        return work.finish([work.run(item) for item in work.items])

    def encode(self, inp: torch.Tensor) -> Features:
        """Everything that depends only on the input: feature maps and per-pixel tables.

        The returned dict is passed back to :meth:`query`; nothing is cached on the module.
        """
        raise NotImplementedError

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """RGB at ``coord``: (B, Q, 2) -> (B, Q, 3)."""
        raise NotImplementedError

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.query(self.encode(inp), coord, cell)


def _no_part(item: Any) -> Any:
    raise AssertionError("a key set without parts has nothing to run")


def scaled_cell(cell: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The cell measured in low-resolution pixels: (B, Q, 2) * (h, w)."""
    return torch.stack([cell[..., 0] * hw[0], cell[..., 1] * hw[1]], -1)


def cell_layer(layer: nn.Module, cell: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``layer`` on the scaled cell in float32 (its output enters a sine, where bf16 would
    round the argument): (B, Q, out), or (B, 1, out) when ``cell`` is one cell broadcast to
    every query (stride 0, as the engine passes it), computed once."""
    if cell.shape[1] > 1 and cell.stride(1) == 0:
        cell = cell[:, :1]
    with torch.autocast(cell.device.type, enabled=False):
        return layer(scaled_cell(cell.float(), hw))
