"""RDN with its pixel-shuffle upsampler (Zhang et al., CVPR 2018), as yinboc/liif builds it with
``no_upsampling: false``.

The body is the RDN encoder (:class:`~iste.models.encoders.rdn.RDNEncoder`) with its config
:class:`RDNConfig` (variant 'B': 16 blocks x 8 layers, growth 64). The upsampler ``UPNet``
(kernel ``kernel_size``): x2 / x3: conv G0 -> G r^2, PixelShuffle(r), conv G -> 3;
x4: conv G0 -> 4G, PixelShuffle(2), conv G -> 4G, PixelShuffle(2), conv G -> 3 (G the growth).

Input convention (LIIF's): [-1, 1] in and out, like :mod:`iste.models.fixed.edsr`.
Parameter names: ``encoder.*`` = the published ``SFENet*`` / ``RDBs.*`` / ``GFF.*``,
``UPNet.*`` as published.
"""

from __future__ import annotations

import torch
from torch import nn

from iste.models.encoders.rdn import RDNConfig, RDNEncoder
from iste.models.fixed.base import FixedScaleSR, pixel_shuffle_factors

__all__ = ["RDNConfig", "RDN"]


class RDN(FixedScaleSR):
    """RDN for one scale (2, 3 or 4, as the published upsampler).

    Shapes:
        forward(x): (B, 3, h, w) in [-1, 1] -> (B, 3, scale * h, scale * w), same range.
    """

    def __init__(self, config: RDNConfig, scale: int) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"RDN's upsampler supports scales 2, 3 and 4, got {scale}")
        self.config = config
        self.scale = scale
        n_blocks, n_layers, growth = config.sizes
        g0, k = config.n_feats, config.kernel_size
        pad = k // 2
        stages = pixel_shuffle_factors(scale)
        # shallow convs, C 3x3 convs per dense block (the longest path), global fusion conv,
        # then the upsampler's convs (each at most k // 2 LR px, rounded up to 1)
        self.reach = 3 * pad + n_blocks * n_layers + (len(stages) + 1) * max(1, pad)
        self.size_alignment = 1
        self.encoder = RDNEncoder(config)
        layers: list[nn.Module] = []
        channels = g0
        for r in stages:
            layers += [nn.Conv2d(channels, growth * r * r, k, padding=pad), nn.PixelShuffle(r)]
            channels = growth
        layers.append(nn.Conv2d(growth, 3, k, padding=pad))
        self.UPNet = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.UPNet(self.encoder(x))
