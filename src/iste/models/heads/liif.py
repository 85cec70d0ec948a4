"""LIIF: a local implicit image function (Chen et al., CVPR 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.heads.base import Features, SRHead, scaled_cell
from iste.models.layers.ensemble import (ensemble_sum, gather_pixels, local_neighbours,
                                         pixel_table, repeat_queries, stack_neighbours)
from iste.models.layers.mlp import MLP
from iste.typed import check_sizes


@dataclass(frozen=True)
class LIIFConfig:
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    feat_unfold: bool = True
    local_ensemble: bool = True
    cell_decode: bool = True

    def __post_init__(self):
        object.__setattr__(self, "hidden", check_sizes("liif.hidden", self.hidden))


class LIIF(SRHead):
    """Encoder features (3 x 3 unfolded) + relative coordinate + cell -> MLP, local ensemble.

    The MLP's first layer is split: the feature part is computed once per low-resolution pixel
    in :meth:`encode` (exactly the same function, ~s^2 fewer multiplications at scale s), as a
    3x3 convolution when features are unfolded.
    """

    def __init__(self, encoder: nn.Module, config: LIIFConfig = LIIFConfig()):
        super().__init__()
        self.config = config
        self.encoder = encoder
        feat_dim = encoder.out_dim * (9 if config.feat_unfold else 1)
        self.feat_dim = feat_dim
        self.imnet = MLP(feat_dim + 2 + (2 if config.cell_decode else 0), 3, config.hidden)

    def encode(self, inp: torch.Tensor) -> Features:
        feat = self.encoder(inp)
        if not self.config.feat_unfold:
            return {"hw": tuple(feat.shape[-2:]),
                    "proj": self.imnet.project_feat(pixel_table(feat))}
        # The first layer on the 3x3-unfolded features (zero padding; channel c*9 + tap) is a
        # 3x3 convolution with the same weights: no 9x larger unfolded map in memory.
        first = self.imnet.layers[0]
        c = feat.shape[1]
        weight = first.weight[:, : c * 9].reshape(-1, c, 3, 3)
        proj = F.conv2d(feat, weight, first.bias, padding=1)
        return {"hw": tuple(feat.shape[-2:]), "proj": pixel_table(proj)}

    def query(self, feats: Features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        hw = feats["hw"]
        nbs = local_neighbours(coord, hw, ensemble=self.config.local_ensemble)
        nb = stack_neighbours(nbs)  # all shifts decoded in one pass
        extra = [nb.rel]
        if self.config.cell_decode:
            extra.append(repeat_queries(scaled_cell(cell, hw), len(nbs)))
        pred = self.imnet.forward_projected(gather_pixels(feats["proj"], nb.index),
                                            torch.cat(extra, -1))
        return ensemble_sum(pred, nb.weight, len(nbs))
