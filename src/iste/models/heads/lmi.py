"""LMI: local mixed implicit function of the COZ code (Fu et al., CVPR 2024).

The published module is ``lmi`` with the ``MLP-mixer-all-no_norm-sr64-localE`` decoder
(pf0607/COZ). A query takes its 16 nearest LR pixels (shifts of -3, -1, 1, 3 half pixels per
axis, the 4 x 4 local ensemble: ``query_reach = 2``) as 16 tokens of C feature channels and
mixes them:
    meta = MLP([rel_1..rel_16; cell_row * h])                         (33 -> C -> 16 C)
    block(x) = y + channel_mix([y; rgb; rel; cell_row * h]),
               y = x + token_mix([x^T; meta])^T                       (per channel, per token)
    x_{k+1} = x_0 + block(x_k)  for ``depth`` blocks;  pred_t = Linear(x)_t   (C -> 3)
rgb is the token's LR pixel of the input image; ``token_mix`` (32 -> 32 -> 16) and
``channel_mix`` (C + 6 -> 2C -> C) are two GELU layers each. The 16 predictions are averaged
with the area of the diagonally opposite rectangle (the LIIF weighting on the 4 x 4 grid).
On 4 x 4 that weighting is no interpolation: it gives the query's own pixel at most 1/4 and
jumps at every LR pixel centre (along one axis from 1/4, 0, 1/4, 1/2 on pixels -2..1 just
before it to 1/2, 1/4, 0, 1/4 on pixels -1..2 just after), so the output is continuous only
where the 16 predictions agree, which the mixer learns; an undertrained LMI is blocky
(docs/same-budget.md, ``scripts/lmi_blockiness.py``).
The meta MLP sees only the query's position and cell, which repeat over an output grid: it
runs once per distinct input of a call (:mod:`iste.models.layers.distinct`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.heads.base import Features, SRHead
from iste.models.layers.distinct import distinct_rows
from iste.models.layers.ensemble import (ensemble_sum, gather_pixels, local_neighbours,
                                         pixel_table, stack_neighbours)
from iste.models.layers.linear import linear
from iste.models.layers.mlp import MLP
from iste.typed import check_size

_OFFSETS = (-3, -1, 1, 3)
MAX_DEPTH = 256
"""Most mixer blocks a config may ask for (the published configs have 1): a depth of 1e9
built module after module for minutes before the parameter count could refuse it."""
_TOKENS = len(_OFFSETS) ** 2


@dataclass(frozen=True)
class LMIConfig:
    """depth: mixer blocks (1 in the published configs)."""

    depth: int = 1

    def __post_init__(self):
        check_size("lmi.depth", self.depth, high=MAX_DEPTH)


class TwoGeluLayers(nn.Module):
    """Linear, GELU, Linear, GELU (the published FeedForward), each Linear fused with its
    GELU for CPU inference (:func:`~iste.models.layers.linear.linear`)."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_out),
                                 nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.net[0], self.net[2]
        x = linear(x, first.weight, first.bias, gelu=True)
        return linear(x, second.weight, second.bias, gelu=True)


class MixerBlock(nn.Module):
    """Token mixing (across the 16 tokens, with the meta weights), then channel mixing (with
    each token's rgb, rel and cell), both residual."""

    def __init__(self, channels: int, tokens: int = _TOKENS):
        super().__init__()
        self.token_mix = TwoGeluLayers(2 * tokens, 2 * tokens, tokens)
        self.channel_mix = TwoGeluLayers(channels + 6, 2 * channels, channels)

    def forward(self, x: torch.Tensor, meta: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """x: (N, T, C) tokens; meta: (N, C, T); extra: (N, T, 6) = rgb, rel, cell."""
        x = x + self.token_mix(torch.cat([x.transpose(1, 2), meta], -1)).transpose(1, 2)
        return x + self.channel_mix(torch.cat([x, extra], -1))


class LMI(SRHead):
    """16 neighbouring LR features mixed by an MLP-mixer, area-weighted (module docstring)."""

    query_reach = 2

    def __init__(self, encoder: nn.Module, config: LMIConfig = LMIConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        c = encoder.out_dim
        self.metanet = MLP(2 * _TOKENS + 1, c * _TOKENS, [c])
        self.mixer = nn.ModuleList(MixerBlock(c) for _ in range(config.depth))
        self.out = nn.Linear(c, 3)

    def encode(self, inp: torch.Tensor) -> Features:
        """One table (B, h*w, C + 3): each pixel's features, then its input RGB."""
        feat = self.encoder(inp)
        return {"hw": tuple(feat.shape[-2:]),
                "table": pixel_table(torch.cat([feat, inp.to(feat.dtype)], 1))}

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        hw = feats["hw"]
        b, q = coord.shape[:2]
        nbs = local_neighbours(coord, hw, offsets=_OFFSETS)
        nb = stack_neighbours(nbs)  # token t at rows [t*Q, (t+1)*Q)
        tokens = gather_pixels(feats["table"], nb.index).view(b, _TOKENS, q, -1)
        tokens = tokens.transpose(1, 2).reshape(b * q, _TOKENS, -1)  # (N, T, C + 3)
        rel = nb.rel.view(b, _TOKENS, q, 2).transpose(1, 2).reshape(b * q, _TOKENS, 2)
        cell_row = (cell[..., :1] * hw[0]).reshape(b * q, 1, 1)
        c = tokens.shape[-1] - 3
        # the meta weights depend only on the query's position and cell: once per distinct one.
        # Token t = 4 a + b has the row rel of row shift a and the column rel of column shift b,
        # so those 8 values and the cell determine the meta input.
        grid = rel.view(b * q, 4, 4, 2)
        key = torch.cat([grid[:, :, 0, 0], grid[:, 0, :, 1], cell_row[:, 0]], -1)
        inputs, which = distinct_rows(torch.cat([rel.reshape(b * q, -1), cell_row[:, 0]], -1),
                                      key)
        meta = F.embedding(which, self.metanet(inputs)).view(b * q, c, _TOKENS)
        extra = torch.cat([tokens[..., c:], rel, cell_row.expand(-1, _TOKENS, 1)], -1)
        extra = extra.to(tokens.dtype)
        x0 = x = tokens[..., :c]
        for block in self.mixer:
            x = x0 + block(x, meta.to(x.dtype), extra)
        pred = self.out(x).view(b, q, _TOKENS, 3).transpose(1, 2).reshape(b, _TOKENS * q, 3)
        return ensemble_sum(pred, nb.weight, len(nbs))
