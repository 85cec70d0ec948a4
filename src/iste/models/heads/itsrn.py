"""ITSRN: implicit transformer network for screen-content SR (Yang et al., NeurIPS 2021).

The published module is ``ITNSR`` (codyshen0000/ITSRN). For each of the four ensemble
neighbours p of a query (pixel centre c_p, 3 x 3-unfolded feature f_p):
    rel = (coord - c_p) * (h, w);  W = MLP_gelu([rel; scale * (h, w)])  as (C*9, 3);
    pred_p = f_p^T W + Score(rel)    (Score: a small MLP, its value added to every channel);
and the four predictions of each channel are merged by another small MLP (``Weight``, 4 -> 1)
instead of the LIIF family's area weights. ``scale`` is 1 / HR size where LIIF takes the cell
(2 / HR size): this head takes the cell like every other and halves it. The neighbours are
reached by shifting the query by +-(1 - scale) / (h - 1) (the published shift, slightly more
than half an LR pixel) plus 1e-6.

Speed, exactly: with W = A h + b (h the MLP's last hidden layer), f^T W = (f^T A) h + f^T b;
``f^T A`` (3 x width) and ``f^T b`` depend only on the pixel, so :meth:`ITSRN.encode` computes
them once per LR pixel and a query pays width x 3 multiplications instead of C*9 x 3 x width.
The weight MLP and ``Score`` depend only on (rel, scale), which repeat over an output grid
(at x4 every query sits at one of 4 x 4 positions inside its LR pixel; a position repeats
wherever its float32 value does): they run once per distinct input of a call, the four
neighbours stacked, and queries gather their rows
(:func:`~iste.models.layers.distinct.distinct_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.data.coords import coord_axis
from iste.models.heads.base import Features, SRHead
from iste.models.layers.distinct import distinct_rows
from iste.models.layers.ensemble import (COORD_CLAMP, EPS_SHIFT, gather_pixels, nearest_index,
                                         pixel_table)
from iste.models.layers.mlp import MLP
from iste.typed import check_size, check_sizes

_SHIFTS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class ITSRNConfig:
    """hidden: the weight-generating MLP (GELU), 4 (or 2) -> hidden -> C*9*3;
    feat_unfold: 3 x 3-unfolded features; local_ensemble: four neighbours merged by the
    ``Weight`` MLP (else the nearest one); scale_token: the scale as an MLP input;
    merge_hidden: width of the ``Weight`` and ``Score`` MLPs (256 in the published code)."""

    hidden: tuple[int, ...] = (256, 256, 256, 256)
    feat_unfold: bool = True
    local_ensemble: bool = True
    scale_token: bool = True
    merge_hidden: int = 256

    def __post_init__(self):
        object.__setattr__(self, "hidden", check_sizes("itsrn.hidden", self.hidden))
        check_size("itsrn.merge_hidden", self.merge_hidden)


class ITSRN(SRHead):
    """Per-query weights from the relative position, applied to the neighbours' features."""

    def __init__(self, encoder: nn.Module, config: ITSRNConfig = ITSRNConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.feat_dim = encoder.out_dim * (9 if config.feat_unfold else 1)
        self.imnet = MLP(4 if config.scale_token else 2, self.feat_dim * 3, config.hidden,
                         act="gelu")
        if config.local_ensemble:
            self.Weight = MLP(4, 1, [config.merge_hidden], act="gelu")
            self.Score = MLP(2, 1, [config.merge_hidden], act="gelu")

    def encode(self, inp: torch.Tensor) -> Features:
        """Per LR pixel: ``proj`` = f^T A (B, h*w, 3, width) and ``bias`` = f^T b (B, h*w, 3),
        f the (unfolded) feature, A and b the last layer of the weight MLP."""
        feat = self.encoder(inp)
        b, c, h, w = feat.shape
        if self.config.feat_unfold:
            feat = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
        table = pixel_table(feat)  # (B, h*w, C*9)
        last = self.imnet.layers[-1]
        width = last.weight.shape[1]
        weight = last.weight.view(self.feat_dim, 3, width).reshape(self.feat_dim, 3 * width)
        proj = (table @ weight).view(b, h * w, 3, width)
        bias = table @ last.bias.view(self.feat_dim, 3)
        return {"hw": (h, w), "proj": proj, "bias": bias}

    def _neighbour(self, coord, scale, hw, shift, image_hw):
        """Flat index (B, Q) and rel (B, Q, 2) of the neighbour reached through ``shift``;
        ``image_hw``: the whole LR image's size when ``hw`` is a crop's."""
        w, out = hw[1], []
        for axis, (n, v) in enumerate(zip(hw, shift)):
            c = coord[..., axis]
            if v:
                # the published shift, from the first query's scale of each image:
                # (1 - scale) / (N - 1) on an image of N pixels, (N - p) / (2 (N - 1)) LR
                # pixels for p LR pixels per output pixel; a crop of n takes the image's
                step = _shift_step(scale[:, :1, axis], n, image_hw[axis])
                c = c + (v * step + EPS_SHIFT)
            idx = nearest_index(c.clamp(-COORD_CLAMP, COORD_CLAMP), n)
            centre = coord_axis(n, device=coord.device, dtype=coord.dtype)[idx]
            out.append((idx, (coord[..., axis] - centre) * n))
        (ri, rel_r), (ci, rel_c) = out
        return ri * w + ci, torch.stack([rel_r, rel_c], -1)

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        hw = feats["hw"]
        image_hw = feats.get("image_hw", hw)
        b, q = coord.shape[:2]
        scale = cell / 2  # ITSRN's scale: 1 / HR size
        scale_hw = torch.stack([scale[..., 0] * hw[0], scale[..., 1] * hw[1]], -1)
        shifts = _SHIFTS if self.config.local_ensemble else ((0, 0),)
        found = [self._neighbour(coord, scale, hw, shift, image_hw) for shift in shifts]
        index = torch.cat([i for i, _ in found], 1)  # neighbour k at rows [k*Q, (k+1)*Q)
        rel = torch.cat([r for _, r in found], 1)  # (B, K*Q, 2)
        x = torch.cat([rel, scale_hw.repeat(1, len(shifts), 1)], -1) if self.config.scale_token \
            else rel
        inputs, which = distinct_rows(x.reshape(-1, x.shape[-1]))
        hidden = self.imnet.hidden_features(inputs)  # (U, width)
        pred = _project(feats, index, hidden, which).view(b, -1, 3)
        pred = pred + gather_pixels(feats["bias"], index)
        if not self.config.local_ensemble:
            return pred
        pred = pred + F.embedding(which, self.Score(inputs[:, :2])).view(b, -1, 1).to(pred.dtype)
        return self.Weight(pred.view(b, len(shifts), q, 3).permute(0, 2, 3, 1)).squeeze(-1)


def _shift_step(scale: torch.Tensor, n: int, n_image: int) -> torch.Tensor:
    """The published neighbour shift in the [-1, 1] units of a map of ``n`` pixels cut from
    an image of ``n_image``: (B, 1) from ``scale`` (B, 1), 1 / output size in the map's units.

    The published code shifts by (1 - scale) / (n - 1) on the whole image, a shift that
    depends on the image's size: a crop's own size (a slide's or the viewer's tile) moved it
    and picked other neighbours than the whole image for queries near an LR pixel centre (a
    random tiny ITSRN, 29 x 34 at x2.7 in 24 x 32 tiles: 31 grey levels on 312 pixels). On
    the image itself the published expression, bit for bit."""
    if n == n_image:
        return 1 / ((n - 1) / (1 - scale))
    return (n_image - scale * n) / ((n_image - 1) * n)


def _project(feats: Features, index: torch.Tensor, hidden: torch.Tensor,
             which: torch.Tensor) -> torch.Tensor:
    """(f^T A) h for every (neighbour, query) row: index (B, R) its pixel, ``which`` (B*R,) its
    row of ``hidden`` (U, width). Returns (B*R, 3).

    When the rows' distinct pixels P and distinct inputs U are few (P * U <= 4 rows: a grid
    at an integer scale, where a chunk covers a few LR rows and U counts the positions inside
    a pixel), the products of every pixel with every input are one (P * 3, width) x
    (width, U) matrix product, and a row gathers its three: up to 4x the multiplications of
    the rows' own, but a dense product instead of R (3 x width) rows gathered and multiplied
    one by one (memory-bound: ~10x slower per multiplication). Otherwise, the rows' own."""
    proj = feats["proj"]  # (B, h*w, 3, width)
    b, n = proj.shape[:2]
    flat = (index + torch.arange(b, device=index.device).unsqueeze(1) * n).flatten()
    table = proj.reshape(b * n, -1)
    hidden = hidden.to(table.dtype)
    pixels, at = torch.unique(flat, return_inverse=True)
    if pixels.numel() * hidden.shape[0] <= 4 * flat.numel():
        products = F.embedding(pixels, table).view(-1, hidden.shape[1]) @ hidden.t()
        products = products.view(pixels.numel(), 3, -1).transpose(1, 2).reshape(-1, 3)
        return F.embedding(at * hidden.shape[0] + which, products)
    rows = F.embedding(flat, table).view(flat.numel(), 3, -1)
    return torch.bmm(rows, F.embedding(which, hidden).unsqueeze(-1)).squeeze(-1)
