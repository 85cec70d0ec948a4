"""LIT: local implicit transformer (Chen et al., CVPR 2023), and its cascade CLIT.

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

The cascade (CLIT, ``stages`` > 1): at scale s, the published inference plan
(``sample_system_scale``) splits s into steps of at most ``stage_scale`` = 4 and runs one
stage per step, up to ``stages``: stage j >= 1 attends over a grid of (h, w) * 4^j pixels
whose features are F sampled bilinearly at that grid's centres (zero padding), with its own
Q, K, V convs and decoder MLP (the positional bias and F are shared), the cell measured in
that grid's pixels. The stages' predictions accumulate, pred_j = MLP_j(...) + 0.75 pred_{j-1},
and the last one gets the bilinear skip. Every stage reads the same query coordinates; only
stage 0's grid is the LR image, so a stage j >= 1 reaches less far in LR pixels than stage 0
(:func:`cascade_reach`). The head reads the scale from the cell, so the engine passes it the
true cell (``reads_scale_from_cell``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.data.coords import coord_axis
from iste.models.heads.base import Features, SRHead, scaled_cell
from iste.models.layers.ensemble import COORD_CLAMP, EPS_SHIFT, nearest_index, pixel_table
from iste.models.layers.mlp import MLP
from iste.typed import check_size, check_sizes


MAX_STAGES = 8
"""Most cascade stages a config may ask for (CLIT's published configs have 3): stage j works
on a grid stage_scale^j times the LR size, and a count of 1e9 overflowed building the head."""
MAX_POS_SCALE = 64
"""Largest exponent of the bias's frequencies 2^linspace(0, pos_scale) (the published configs
have 6 and 10): at 1e40 building the head failed with a RuntimeError (a traceback)."""


@dataclass(frozen=True)
class LITConfig:
    """dim: channels of F, Q, K, V (published ``base_dim``); heads: attention heads;
    radius: r of the (2r+1)^2 window; hidden: the decoder MLP (GELU);
    pos_bias: the sinusoidal positional bias (published ``pb_spec``), with ``pos_dims``
    encoding channels and frequencies 2^linspace(0, pos_scale, pos_dims / 4) - 1;
    cell_decode: the cell as a decoder input (published ``is_cell``);
    stages: CLIT's cascade (published ``imnet_num`` = ``conv_num``; 1 is LIT);
    stage_scale: the largest scale step of one stage (the published test's ``scale_base``);
    stage j >= 1 works on a grid ``stage_scale``^j times the LR size."""

    dim: int = 256
    heads: int = 8
    radius: int = 3
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    pos_bias: bool = True
    pos_dims: int = 64
    pos_scale: float = 10.0
    cell_decode: bool = True
    stages: int = 1
    stage_scale: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "hidden", check_sizes("lit.hidden", self.hidden))
        check_size("lit.radius", self.radius, low=0, high=64)
        check_size("lit.pos_dims", self.pos_dims)
        check_size("lit.stages", self.stages, high=MAX_STAGES)
        if not 0 <= self.pos_scale <= MAX_POS_SCALE:  # NaN too; beyond, 2^scale overflowed
            raise ValueError(f"lit.pos_scale must be in 0..{MAX_POS_SCALE}, got "
                             f"{self.pos_scale}")
        if check_size("lit.dim", self.dim) % check_size("lit.heads", self.heads):
            raise ValueError(f"lit.dim must be a positive multiple of lit.heads, got "
                             f"{self.dim} and {self.heads}")
        if self.pos_dims % 4:
            raise ValueError("lit.pos_dims must be a positive multiple of 4")
        if not float(self.stage_scale).is_integer() or self.stage_scale < 2:
            raise ValueError(f"lit.stage_scale must be an integer >= 2, got {self.stage_scale}")


class SinusoidalBias(nn.Module):
    """Per-head attention bias of a relative position: Linear([sin(B rel); cos(B rel)]).

    B holds the frequencies ``2^linspace(0, scale, dims / 4) - 1`` along rows, then along
    columns (``dims / 2`` in all). rel: (..., 2) -> (..., heads), computed in float32.
    """

    def __init__(self, dims: int, scale: float, heads: int):
        super().__init__()
        freq = 2.0 ** torch.linspace(0, scale, dims // 4, dtype=torch.float32) - 1
        zero = torch.zeros_like(freq)
        basis = torch.cat([torch.stack([freq, zero], -1), torch.stack([zero, freq], -1)])
        self.register_buffer("basis", basis, persistent=False)  # (dims / 2, 2)
        self.proj = nn.Linear(dims, heads)

    def forward(self, rel: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rel.device.type, enabled=False):
            x = torch.matmul(rel.float(), self.basis.t())
            return self.proj(torch.cat([torch.sin(x), torch.cos(x)], -1))


CASCADE_DECAY = 0.75  # the published weight of the previous stage's prediction
_SCALE_TOLERANCE = 1e-4  # a scale within this (relative) of a stage step counts as that step


def lit_label(config: "LITConfig") -> str:
    """"CLIT" for a cascade (``stages`` > 1), else "LIT"."""
    return "CLIT" if config.stages > 1 else "LIT"


def cascade_stages(scale: float, config: LITConfig) -> int:
    """Stages run at ``scale``: the length of the published plan (steps of ``stage_scale``,
    the last one smaller), at most ``config.stages``. The published code fails where the plan
    is longer than its stages; ours stops at its last stage."""
    n = 1
    while scale > config.stage_scale * (1 + _SCALE_TOLERANCE) and n < config.stages:
        scale /= config.stage_scale
        n += 1
    return n


def cascade_reach(config: LITConfig) -> int:
    """LR pixels (Chebyshev, from the query's own) that any stage's output reads F at.

    Stage 0 attends over r LR pixels. Stage j >= 1 reads grid pixels within r + 1 (window plus
    its 3 x 3 convs) of the query's nearest one, i.e. LR positions within
    d = (r + 1.5) / stage_scale^j of the query, and each grid pixel interpolates the two LR
    pixels around it: floor(d + 0.5) + 1 LR pixels."""
    reach = config.radius
    for j in range(1, config.stages):
        d = (config.radius + 1.5) / config.stage_scale ** j
        reach = max(reach, math.floor(d + 0.5) + 1)
    return reach


class LITStage(nn.Module):
    """One cascade stage's own parts: Q, K, V convs of its grid's features and its decoder."""

    def __init__(self, config: LITConfig):
        super().__init__()
        self.conv_q, self.conv_k, self.conv_v = _qkv_convs(config.dim)
        self.imnet = _decoder(config)


def _qkv_convs(dim: int) -> list[nn.Conv2d]:
    return [nn.Conv2d(dim, dim, 3, padding=1) for _ in range(3)]


def _decoder(config: LITConfig) -> MLP:
    """The MLP on a query's attended values (P * dim) and, with ``cell_decode``, its cell."""
    window = (2 * config.radius + 1) ** 2
    return MLP(config.dim * window + (2 if config.cell_decode else 0), 3, config.hidden,
               act="gelu")


def _stage_maps(stage: nn.Module, feat: torch.Tensor) -> Features:
    """A stage's attention inputs on the grid of ``feat`` (B, dim, gh, gw): Q as a map for
    bilinear sampling, K and V as tables (B, gh*gw, dim)."""
    return {"hw": tuple(feat.shape[-2:]), "q": stage.conv_q(feat),
            "k": pixel_table(stage.conv_k(feat)), "v": pixel_table(stage.conv_v(feat))}


class LIT(SRHead):
    """Local attention over a (2r+1)^2 LR window, decoded by an MLP; optionally cascaded
    (module docstring). Stage 0's parts are the head's own ``conv_q``, ``conv_k``,
    ``conv_v``, ``imnet``; stage j >= 1's are ``cascade[j - 1]``."""

    def __init__(self, encoder: nn.Module, config: LITConfig = LITConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.query_reach = cascade_reach(config)
        self.reads_scale_from_cell = config.stages > 1
        self.conv_ch = nn.Conv2d(encoder.out_dim, config.dim, 3, padding=1)
        self.conv_q, self.conv_k, self.conv_v = _qkv_convs(config.dim)
        if config.pos_bias:
            self.pos_bias = SinusoidalBias(config.pos_dims, config.pos_scale, config.heads)
        self.imnet = _decoder(config)
        self.cascade = nn.ModuleList(LITStage(config) for _ in range(config.stages - 1))

    def encode(self, inp: torch.Tensor) -> Features:
        """Stage 0's Q map (B, dim, h, w) and K, V tables (B, h*w, dim); for a cascade also F
        (B, dim, h, w), from which :meth:`query` builds the later stages' grids."""
        feat = self.conv_ch(self.encoder(inp))
        out = {"inp": inp, **_stage_maps(self, feat)}
        if self.cascade:
            out["feat"] = feat
        return out

    def query_bytes_per_pixel(self, scale: float) -> int:
        """The later stages' grids: per LR pixel, stage_scale^(2j) grid pixels of F sampled,
        Q, K and V (dim channels each, float32) for every stage j >= 1 run at ``scale``."""
        step = int(self.config.stage_scale)
        return sum(step ** (2 * j) * 4 * self.config.dim * 4
                   for j in range(1, cascade_stages(scale, self.config)))

    def _stage_feats(self, feats: Features, j: int) -> Features:
        """Stage j's grid features, computed on first use and kept in ``feats`` (one grid per
        stage, whatever the queries: the grid depends only on the LR size)."""
        if j == 0:
            return feats
        key = f"stage{j}"
        if key not in feats:
            (h, w), step = feats["hw"], int(self.config.stage_scale) ** j
            feat = feats["feat"]
            rows = coord_axis(h * step, device=feat.device)
            cols = coord_axis(w * step, device=feat.device)
            grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), -1)  # (gh, gw, (x, y))
            grid = grid.unsqueeze(0).expand(feat.shape[0], -1, -1, -1)
            # positions in float32 whatever the precision (bf16 would move them by ~1/256)
            up = F.grid_sample(feat.float(), grid, mode="bilinear", align_corners=False)
            feats[key] = _stage_maps(self.cascade[j - 1], up)
        return feats[key]

    def _centres(self, coord: torch.Tensor, hw: tuple[int, int]):
        """Nearest LR pixel (row, col) of every query, (B, Q) each. A query on a pixel border
        is nudged by ``EPS_SHIFT`` (as the ensemble's shifts are), so that it picks the same
        pixel in every frame (the published code leaves that tie to rounding, and tiles'
        coordinates round differently from the whole image's)."""
        c = (coord + EPS_SHIFT).clamp(-COORD_CLAMP, COORD_CLAMP)
        return nearest_index(c[..., 0], hw[0]), nearest_index(c[..., 1], hw[1])

    def _rel(self, coord, ri, ci, hw):
        """(coord - centre(p)) * (h, w) for the window's pixels p: (B, Q, P, 2). Centres are the
        nearest pixel's centre plus r' * 2 / n in float32, the published arithmetic, so that
        the sinusoidal bias sees the published rel bit for bit."""
        (h, w), dr, dc = hw, *self._offsets(coord.device)
        rows = coord_axis(h, device=coord.device)[ri].unsqueeze(-1) + dr * (2 / h)
        cols = coord_axis(w, device=coord.device)[ci].unsqueeze(-1) + dc * (2 / w)
        return torch.stack([(coord[..., :1] - rows) * h, (coord[..., 1:] - cols) * w], -1)

    def _offsets(self, device):
        r = self.config.radius
        steps = torch.linspace(-r, r, 2 * r + 1, device=device, dtype=torch.float32)
        dr, dc = torch.meshgrid(steps, steps, indexing="ij")
        return dr.reshape(-1), dc.reshape(-1)

    def _window_pixels(self, rows: torch.Tensor, cols: torch.Tensor, hw):
        """Flat index (U, P) of each window's pixels (any valid pixel outside the image) and
        the inside mask (U, P), for windows centred at (rows, cols) (U,)."""
        (h, w), (dr, dc) = hw, self._offsets(rows.device)
        pr = rows.unsqueeze(-1) + dr.long()
        pc = cols.unsqueeze(-1) + dc.long()
        inside = (pr >= 0) & (pr < h) & (pc >= 0) & (pc < w)
        return pr.clamp(0, h - 1) * w + pc.clamp(0, w - 1), inside

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """The stages that the scale calls for (one per image: the first query's cell gives
        it), accumulated, plus the bilinear skip of the input."""
        if not self.cascade:
            return self._decode(self, feats, coord, cell) + self._skip(feats, coord)
        h = feats["hw"][0]
        counts = [cascade_stages(2 / (float(c) * h), self.config) for c in cell[:, 0, 0]]
        if len(set(counts)) > 1:  # images of one batch at different scales
            return torch.cat([self.query(_image(feats, i), coord[i:i + 1], cell[i:i + 1])
                              for i in range(coord.shape[0])])
        out = None
        for j in range(counts[0]):
            stage = self if j == 0 else self.cascade[j - 1]
            pred = self._decode(stage, self._stage_feats(feats, j), coord, cell)
            out = pred if out is None else pred + out * CASCADE_DECAY
        return out + self._skip(feats, coord)

    def _skip(self, feats: Features, coord: torch.Tensor) -> torch.Tensor:
        grid = coord.flip(-1).unsqueeze(1)
        skip = F.grid_sample(feats["inp"], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
        return skip[:, :, 0, :].transpose(1, 2)

    def _decode(self, stage: nn.Module, feats: Features, coord: torch.Tensor,
                cell: torch.Tensor) -> torch.Tensor:
        """One stage's decoder output (B, Q, 3) on its grid ``feats["hw"]`` (no skip).

        Queries are processed by attention window (their nearest pixel): a window's keys
        and values are gathered once for all of its queries, and when several queries share
        it, the decoder's first layer is reassociated per window (:func:`_first_layer`)."""
        cfg, hw = self.config, feats["hw"]
        b, n = coord.shape[:2]
        grid = coord.flip(-1).unsqueeze(1)
        q = F.grid_sample(feats["q"], grid, mode="bilinear", align_corners=False)
        q = q[:, :, 0].transpose(1, 2).reshape(b * n, cfg.heads, -1)
        ri, ci = self._centres(coord, hw)
        bias = self.pos_bias(self._rel(coord, ri, ci, hw)).flatten(0, 1) if cfg.pos_bias else None
        image = torch.arange(b, device=coord.device).unsqueeze(1).expand(b, n)
        key = ((image * hw[0] + ri) * hw[1] + ci).flatten()
        windows, group = torch.unique(key, return_inverse=True)
        hidden = _first_layer(self, stage.imnet, feats, q, bias, windows, group, hw)
        first = stage.imnet.layers[0]
        hidden = hidden.view(b, n, -1) + first.bias
        if cfg.cell_decode:
            hidden = hidden + F.linear(scaled_cell(cell, hw).to(hidden.dtype),
                                       first.weight[:, -2:])
        return stage.imnet.forward_from_first(hidden)


def _image(feats: Features, i: int) -> Features:
    """Image i's part of a batch's features (a cascade's grids are left to be rebuilt)."""
    return {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in feats.items()
            if not k.startswith("stage")}


_WINDOWS_PER_BLOCK = 256  # bounds what is held at once (~0.4 MB per window at paper size)


def _first_layer(model: LIT, imnet: MLP, feats: Features, q: torch.Tensor,
                 bias: torch.Tensor | None, windows: torch.Tensor, group: torch.Tensor,
                 hw) -> torch.Tensor:
    """Attention and the decoder's first layer (without bias and cell), window by window.

    imnet: the stage's decoder; feats: the stage's K, V tables;
    q: (N, heads, d) queries; bias: (N, P, heads) or None; windows: (U,) distinct window keys
    (image, row, col flattened), group: (N,) each query's window. Queries are padded into
    (U, G, ...) blocks, G the most queries of one window. The first layer is
    sum_{p,h} a[p,h] (W_{p,h} v_{p,h}); with two or more queries per window on average, the
    products W_{p,h} v_{p,h} (which depend only on the window) are computed once per window, and
    a query pays P * heads * width multiplications instead of P * dim * width. Returns (N, width).
    """
    cfg = model.config
    n, heads, d = q.shape
    pixels = hw[0] * hw[1]
    index, inside = model._window_pixels(windows % pixels // hw[1], windows % hw[1], hw)
    first = imnet.layers[0]
    p = index.shape[1]
    weight = first.weight[:, :p * cfg.dim]
    width = weight.shape[0]
    per_window = n >= 2 * windows.numel()
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=windows.numel())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=q.device) - starts[group[order]]  # rank inside its window
    out = None
    for u0 in range(0, windows.numel(), _WINDOWS_PER_BLOCK):
        u1 = min(u0 + _WINDOWS_PER_BLOCK, windows.numel())
        q0, q1 = int(starts[u0]), int(starts[u1 - 1] + counts[u1 - 1])
        rows, at = order[q0:q1], (group[order[q0:q1]] - u0, slot[q0:q1])
        image = windows[u0:u1] // pixels
        mask = inside[u0:u1].unsqueeze(-1).to(feats["k"].dtype)
        k = _gather(feats["k"], image, index[u0:u1]) * mask  # (Ub, P, dim)
        v = _gather(feats["v"], image, index[u0:u1]) * mask
        g = int(counts[u0:u1].max())
        qp = q.new_zeros(u1 - u0, g, heads, d)
        qp[at] = q[rows]
        logits = torch.einsum("ughd,uphd->ugph", qp, k.view(u1 - u0, p, heads, d)) / math.sqrt(d)
        if bias is not None:
            bp = logits.new_zeros(logits.shape)
            bp[at] = bias[rows].to(logits.dtype)
            logits = logits + bp
        attn = torch.softmax(logits.float(), dim=2).to(v.dtype)  # (Ub, G, P, heads)
        if per_window:
            products = torch.einsum("uphd,wphd->uphw", v.view(u1 - u0, p, heads, d),
                                    weight.view(width, p, heads, d))
            block = torch.bmm(attn.flatten(2), products.flatten(1, 2))
        else:
            x = v.view(u1 - u0, 1, p, heads, d) * attn.unsqueeze(-1)
            block = F.linear(x.flatten(2), weight)
        if out is None:
            out = block.new_empty(n, width)
        out[rows] = block[at]
    return out


def _gather(table: torch.Tensor, image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a per-pixel table (B, h*w, C) for windows of different images: image (U,),
    index (U, P) -> (U, P, C)."""
    flat = table.reshape(-1, table.shape[-1])
    return F.embedding(index + image.unsqueeze(1) * table.shape[1], flat)
