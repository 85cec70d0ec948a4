"""RDN without its upsampler, an alternative encoder of the LIIF family (paper Table 7).

Zhang et al., "Residual Dense Network for Image Super-Resolution" (CVPR 2018):
two shallow convs (``SFENet1``, ``SFENet2``), D residual dense blocks (``RDBs``) of C densely
connected conv+ReLU layers of growth G followed by a 1x1 local fusion (``LFF``) and a local skip,
then global fusion (``GFF``: 1x1 over the concatenated block outputs, then a conv) and a global
skip from ``SFENet1``. Variant 'B' (D=16, C=8, G=64) is the one LIIF and ISTE use.

Parameter names equal the published ones, so published encoder weights load with
``strict=True`` unchanged.

Published-code fact kept on purpose: ``kernel_size`` (the published ``RDNkSize``) sets the
shallow and global-fusion convs only; the convs inside the dense blocks are always 3x3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from iste.models.checks import check_choice, check_int
from .base import Encoder, conv_layout

_OWNER = "RDNConfig"

#: variant -> (D blocks, C conv layers per block, G growth channels)
RDN_VARIANTS: dict[str, tuple[int, int, int]] = {"A": (20, 6, 32), "B": (16, 8, 64)}


@dataclass(frozen=True)
class RDNConfig:
    """Size of an RDN encoder.

    Attributes:
        n_feats: G0, the channels between blocks; also ``out_dim`` (published ``G0``).
        kernel_size: odd kernel of the shallow and global-fusion convs (published ``RDNkSize``).
        variant: 'A' = (D, C, G) = (20, 6, 32), 'B' = (16, 8, 64) (published ``RDNconfig``).
        n_blocks, n_layers, growth: D, C, G when given (None: the variant's). The published
            code knows only the two variants; these make compact RDNs for CPU training.
    """

    n_feats: int = 64
    kernel_size: int = 3
    variant: Literal["A", "B"] = "B"
    n_blocks: int | None = None
    n_layers: int | None = None
    growth: int | None = None

    def __post_init__(self) -> None:
        check_int(_OWNER, "n_feats", self.n_feats)
        check_int(_OWNER, "kernel_size", self.kernel_size, max_value=15)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{_OWNER}.kernel_size must be odd, got {self.kernel_size}")
        check_choice(_OWNER, "variant", self.variant, tuple(RDN_VARIANTS))
        for name in ("n_blocks", "n_layers", "growth"):
            if getattr(self, name) is not None:
                check_int(_OWNER, name, getattr(self, name), max_value=256)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(D blocks, C conv layers per block, G growth channels)."""
        d, c, g = RDN_VARIANTS[self.variant]
        return (self.n_blocks or d, self.n_layers or c, self.growth or g)


def _conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2)


class DenseLayer(nn.Module):
    """Appends relu(conv3x3(x)) to x: (B, C_in, H, W) -> (B, C_in + G, H, W).

    The conv is ``self.conv[0]`` (published name ``conv.0``).
    """

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(in_ch, growth, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), dim=1)


class ResidualDenseBlock(nn.Module):
    """C dense layers, 1x1 local feature fusion, local skip: (B, G0, H, W) -> (B, G0, H, W)."""

    def __init__(self, n_feats: int, growth: int, n_layers: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(n_feats + i * growth, growth)
                                     for i in range(n_layers)])
        self.LFF = nn.Conv2d(n_feats + n_layers * growth, n_feats, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDNEncoder(Encoder):
    """RDN feature extractor.

    Args:
        config: network size, see :class:`RDNConfig`.

    Shapes:
        forward(x): x is (B, 3, h, w), the normalised image in [-1, 1]; returns the LR feature
        map (B, ``out_dim``, h, w), ``out_dim = config.n_feats``. Any h, w >= 1 (zero padding).
    """

    def __init__(self, config: RDNConfig) -> None:
        super().__init__()
        self.config = config
        n_blocks, n_layers, growth = config.sizes
        g0, k = config.n_feats, config.kernel_size
        self.out_dim: int = g0
        self.SFENet1 = _conv(3, g0, k)
        self.SFENet2 = _conv(g0, g0, k)
        self.RDBs = nn.ModuleList([ResidualDenseBlock(g0, growth, n_layers)
                                   for _ in range(n_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(n_blocks * g0, g0, kernel_size=1), _conv(g0, g0, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.SFENet1(conv_layout(x))
        x = self.SFENet2(shallow)
        block_outputs = []
        for block in self.RDBs:
            x = block(x)
            block_outputs.append(x)
        return self.GFF(torch.cat(block_outputs, dim=1)) + shallow
