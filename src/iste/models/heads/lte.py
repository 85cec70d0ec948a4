"""LTE: local texture estimator (Lee and Jin, CVPR 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.heads.base import Features, SRHead, cell_layer
from iste.models.layers.ensemble import (ensemble_sum, gather_pixels, local_neighbours,
                                         pixel_table, repeat_or_broadcast, stack_neighbours)
from iste.models.layers.mlp import MLP
from iste.typed import check_size, check_sizes


@dataclass(frozen=True)
class LTEConfig:
    hidden_dim: int = 256
    hidden: tuple[int, ...] = (256, 256, 256)

    def __post_init__(self):
        if check_size("lte.hidden_dim", self.hidden_dim) % 2:
            raise ValueError(f"lte.hidden_dim must be a positive even number, "
                             f"got {self.hidden_dim}")
        object.__setattr__(self, "hidden", check_sizes("lte.hidden", self.hidden))


class LTE(SRHead):
    """Amplitude x Fourier basis of the relative coordinate, decoded by an MLP, plus bilinear.

    For a query at ``rel`` (:class:`Neighbour` units) from neighbour p: ``x_j = f_{2j}(p) rel_row +
    f_{2j+1}(p) rel_col + phase_j(cell)``; the MLP decodes ``amp(p) * [cos(pi x); sin(pi x)]``;
    the four neighbours are area-weighted and the bilinear upsampling of the input is added.
    """

    def __init__(self, encoder: nn.Module, config: LTEConfig = LTEConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        dim = config.hidden_dim
        self.coef = nn.Conv2d(encoder.out_dim, dim, 3, padding=1)
        self.freq = nn.Conv2d(encoder.out_dim, dim, 3, padding=1)
        self.phase = nn.Linear(2, dim // 2, bias=False)
        self.imnet = MLP(dim, 3, config.hidden)

    def encode(self, inp: torch.Tensor) -> Features:
        feat = self.encoder(inp)
        # float32 tables also under autocast: the sine's argument needs the precision
        return {"hw": tuple(feat.shape[-2:]), "inp": inp,
                "coef": pixel_table(self.coef(feat)).float(),
                "freq": pixel_table(self.freq(feat)).float()}

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        hw = feats["hw"]
        phase = cell_layer(self.phase, cell, hw)
        nbs = local_neighbours(coord, hw)
        nb = stack_neighbours(nbs)  # all shifts decoded in one pass
        freq = gather_pixels(feats["freq"], nb.index)
        x = torch.addcmul(repeat_or_broadcast(phase, len(nbs)), freq[..., 0::2], nb.rel[..., :1])
        x = x.addcmul_(freq[..., 1::2], nb.rel[..., 1:]).mul_(math.pi)
        coef = gather_pixels(feats["coef"], nb.index)
        if torch.is_grad_enabled():
            basis = coef * torch.cat([torch.cos(x), torch.sin(x)], -1)
        else:  # in place: no autograd graph to keep
            basis = torch.cat([torch.cos(x), x.sin_()], -1).mul_(coef)
        out = ensemble_sum(self.imnet(basis), nb.weight, len(nbs))
        skip = F.grid_sample(feats["inp"], coord.flip(-1).unsqueeze(1), mode="bilinear",
                             padding_mode="border", align_corners=False)
        return out + skip[:, :, 0, :].transpose(1, 2)
