"""LIT: local implicit transformer (Chen et al., CVPR 2023; the one-stage case of CLIT).

For a query at ``coord`` with nearest LR pixel ``n``:
    q = bilinear sample of Q = conv_q(F) at the query (zero padding), split into heads;
    for the (2r+1)^2 pixels p = n + (dr, dc), |dr|, |dc| <= r: k_p, v_p = K(p), V(p)
    (zero outside the image), rel_p = (coord - centre(p)) * (h, w);
    a_{p,h} = softmax_p(q_h . k_{p,h} / sqrt(d) + bias_h(rel_p)), bias = Linear of a sinusoidal
    encoding of rel_p;
    rgb = MLP_gelu([a_{p,h} v_{p,h} for every p, h (concatenated); cell * (h, w)])
          + bilinear(inp) (border padding).
F = conv(encoder(inp)) has ``dim`` channels; Q, K, V are 3x3 convs of F. The published
attention reaches ``r`` LR pixels from the nearest one: ``query_reach = r``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.data.coords import coord_axis
from iste.models.heads.base import Features, SRHead, scaled_cell
from iste.models.layers.ensemble import (COORD_CLAMP, EPS_SHIFT, gather_pixels,
                                         nearest_index, pixel_table)
from iste.models.layers.mlp import MLP


@dataclass(frozen=True)
class LITConfig:
    """dim: channels of F, Q, K, V (published ``base_dim``); heads: attention heads;
    radius: r of the (2r+1)^2 window; hidden: the decoder MLP (GELU);
    pos_bias: the sinusoidal positional bias (published ``pb_spec``), with ``pos_dims``
    encoding channels and frequencies 2^linspace(0, pos_scale, pos_dims / 4) - 1;
    cell_decode: the cell as a decoder input (published ``is_cell``)."""

    dim: int = 256
    heads: int = 8
    radius: int = 3
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    pos_bias: bool = True
    pos_dims: int = 64
    pos_scale: float = 10.0
    cell_decode: bool = True

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.dim <= 0 or self.heads <= 0 or self.dim % self.heads:
            raise ValueError(f"lit.dim must be a positive multiple of lit.heads, got "
                             f"{self.dim} and {self.heads}")
        if self.radius < 0 or self.pos_dims <= 0 or self.pos_dims % 4:
            raise ValueError("lit.radius must be >= 0 and lit.pos_dims a positive multiple of 4")


class SinusoidalBias(nn.Module):
    """Per-head attention bias of a relative position: Linear([sin(B rel); cos(B rel)]).

    B holds the frequencies ``2^linspace(0, scale, dims / 4) - 1`` along rows, then along
    columns (``dims / 2`` in all). rel: (..., 2) -> (..., heads), computed in float32.
    """

    def __init__(self, dims: int, scale: float, heads: int):
        super().__init__()
        freq = 2.0 ** torch.linspace(0, scale, dims // 4) - 1
        zero = torch.zeros_like(freq)
        basis = torch.cat([torch.stack([freq, zero], -1), torch.stack([zero, freq], -1)])
        self.register_buffer("basis", basis, persistent=False)  # (dims / 2, 2)
        self.proj = nn.Linear(dims, heads)

    def forward(self, rel: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rel.device.type, enabled=False):
            x = torch.matmul(rel.float(), self.basis.t())
            return self.proj(torch.cat([torch.sin(x), torch.cos(x)], -1))


class LIT(SRHead):
    """Local attention over a (2r+1)^2 LR window, decoded by an MLP (module docstring)."""

    def __init__(self, encoder: nn.Module, config: LITConfig = LITConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.query_reach = config.radius
        dim = config.dim
        self.conv_ch = nn.Conv2d(encoder.out_dim, dim, 3, padding=1)
        self.conv_q = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv_k = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv_v = nn.Conv2d(dim, dim, 3, padding=1)
        if config.pos_bias:
            self.pos_bias = SinusoidalBias(config.pos_dims, config.pos_scale, config.heads)
        window = (2 * config.radius + 1) ** 2
        self.imnet = MLP(dim * window + (2 if config.cell_decode else 0), 3, config.hidden,
                         act="gelu")

    def encode(self, inp: torch.Tensor) -> Features:
        """Q as a map (B, dim, h, w) for bilinear sampling; K, V as tables (B, h*w, dim)."""
        feat = self.conv_ch(self.encoder(inp))
        return {"hw": tuple(feat.shape[-2:]), "inp": inp, "q": self.conv_q(feat),
                "k": pixel_table(self.conv_k(feat)), "v": pixel_table(self.conv_v(feat))}

    def _window(self, coord: torch.Tensor, hw: tuple[int, int]):
        """The window of every query: flat pixel index (B, Q, P) (any valid pixel where it
        falls outside the image), inside mask (B, Q, P) and rel (B, Q, P, 2), P = (2r+1)^2.

        Centres are the nearest pixel's centre plus r' * 2 / n in float32, the published
        arithmetic, so that the sinusoidal bias sees the published rel bit for bit. A query
        on a pixel border is nudged by ``EPS_SHIFT`` (as the ensemble's shifts are), so that it
        picks the same pixel in every frame (the published code leaves that tie to rounding,
        and tiles' coordinates round differently from the whole image's)."""
        h, w = hw
        r = self.config.radius
        c = (coord + EPS_SHIFT).clamp(-COORD_CLAMP, COORD_CLAMP)
        ri, ci = nearest_index(c[..., 0], h), nearest_index(c[..., 1], w)
        steps = torch.linspace(-r, r, 2 * r + 1, device=coord.device)
        dr, dc = torch.meshgrid(steps, steps, indexing="ij")
        dr, dc = dr.reshape(-1), dc.reshape(-1)
        rows = coord_axis(h, device=coord.device)[ri].unsqueeze(-1) + dr * (2 / h)
        cols = coord_axis(w, device=coord.device)[ci].unsqueeze(-1) + dc * (2 / w)
        rel = torch.stack([(coord[..., :1] - rows) * h, (coord[..., 1:] - cols) * w], -1)
        pr = ri.unsqueeze(-1) + dr.long()
        pc = ci.unsqueeze(-1) + dc.long()
        inside = (pr >= 0) & (pr < h) & (pc >= 0) & (pc < w)
        index = pr.clamp(0, h - 1) * w + pc.clamp(0, w - 1)
        return index, inside, rel

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        cfg, hw = self.config, feats["hw"]
        b, n = coord.shape[:2]
        heads, d = cfg.heads, cfg.dim // cfg.heads
        grid = coord.flip(-1).unsqueeze(1)
        q = F.grid_sample(feats["q"], grid, mode="bilinear", align_corners=False)
        q = q[:, :, 0].transpose(1, 2).reshape(b, n, heads, d)
        index, inside, rel = self._window(coord, hw)
        p = index.shape[-1]
        mask = inside.unsqueeze(-1).to(feats["k"].dtype)
        k = gather_pixels(feats["k"], index.view(b, -1)).view(b, n, p, -1) * mask
        v = gather_pixels(feats["v"], index.view(b, -1)).view(b, n, p, -1) * mask
        logits = torch.einsum("bnhd,bnphd->bnph", q, k.view(b, n, p, heads, d)) / math.sqrt(d)
        if cfg.pos_bias:
            logits = logits + self.pos_bias(rel)
        attn = torch.softmax(logits.float(), dim=2).to(v.dtype)
        first = self.imnet.layers[0]
        centre = index[..., p // 2] + torch.arange(b, device=index.device).unsqueeze(1) * hw[0] * hw[1]
        hidden = None
        if not torch.is_grad_enabled():
            hidden = _first_layer_per_pixel(v.flatten(0, 1), attn.flatten(0, 1),
                                            centre.flatten(), first.weight[:, :v[0, 0].numel()])
        if hidden is None:
            x = (v.view(b, n, p, heads, d) * attn.unsqueeze(-1)).reshape(b, n, -1)
            hidden = F.linear(x, first.weight[:, :x.shape[-1]])
        hidden = hidden.view(b, n, -1) + first.bias
        if cfg.cell_decode:
            hidden = hidden + F.linear(scaled_cell(cell, hw).to(hidden.dtype),
                                       first.weight[:, -2:])
        out = self.imnet.forward_from_first(hidden)
        skip = F.grid_sample(feats["inp"], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
        return out + skip[:, :, 0, :].transpose(1, 2)


_PIXELS_PER_BLOCK = 256  # bounds the per-pixel products held at once (~0.4 MB each at paper size)


def _first_layer_per_pixel(v: torch.Tensor, attn: torch.Tensor, centre: torch.Tensor,
                           weight: torch.Tensor) -> torch.Tensor | None:
    """The decoder's first layer on the attended values, reassociated per window.

    v: (N, P, dim) window values (zero outside the image), attn: (N, P, heads), centre: (N,)
    the window's centre pixel (queries with the same centre have the same window), weight:
    (width, P * dim). The first layer is sum_{p,h} attn[p,h] * (W_{p,h} v_{p,h}); the products
    W_{p,h} v_{p,h} depend only on the window, so they are computed once per window and each
    query pays P * heads * width multiplications instead of P * dim * width. Returns (N, width),
    or None when the queries share too few windows to gain (then the plain product is cheaper).
    """
    windows, group = torch.unique(centre, return_inverse=True)
    n, p, heads = attn.shape
    if n < 2 * windows.numel():
        return None
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=windows.numel())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=v.device) - starts[group[order]]  # rank inside its window
    rep = order[starts]  # one query of each window
    width, d = weight.shape[0], v.shape[-1] // heads
    w = weight.view(width, p, heads, d)
    out = v.new_empty(n, width)
    for u0 in range(0, windows.numel(), _PIXELS_PER_BLOCK):
        u1 = min(u0 + _PIXELS_PER_BLOCK, windows.numel())
        q0, q1 = int(starts[u0]), int(starts[u1 - 1] + counts[u1 - 1])
        products = torch.einsum("uphd,wphd->uphw", v[rep[u0:u1]].view(u1 - u0, p, heads, d), w)
        rows = order[q0:q1]
        padded = attn.new_zeros(u1 - u0, int(counts[u0:u1].max()), p * heads)
        padded[group[rows] - u0, slot[q0:q1]] = attn[rows].flatten(1)
        block = torch.bmm(padded, products.reshape(u1 - u0, p * heads, width))
        out[rows] = block[group[rows] - u0, slot[q0:q1]]
    return out
