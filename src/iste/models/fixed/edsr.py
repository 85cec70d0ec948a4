"""EDSR with its pixel-shuffle upsampler (Lim et al., CVPRW 2017), as yinboc/liif builds it with
``no_upsampling: false``.

The body is the EDSR encoder (:class:`~iste.models.encoders.edsr.EDSREncoder`: head conv,
residual blocks, body conv, long skip) and its config is :class:`EDSRConfig` (defaults:
EDSR-baseline, 16 blocks x 64 channels; the paper's EDSR is 32 x 256 with ``res_scale`` 0.1).
The tail: for each pixel-shuffle stage (x2: one, x3: one of 3, x4: two of 2) a 3x3 conv to
stage^2 x n_feats channels and a pixel shuffle, then a 3x3 conv to RGB. No activation in the
tail, no mean shift (the published forward leaves both MeanShift calls commented out).

Input convention (LIIF's): ``forward`` takes the LR image normalised to [-1, 1] and returns the
SR in the same range; :meth:`FixedScaleSR.sr` wraps it for [0, 1] images.

Parameter names: ``encoder.*`` = the published ``head.*`` / ``body.*``; ``tail.0.<2i>`` = the
published ``tail.0.<2i>`` (upsampler convs), ``tail.1`` = the published ``tail.1``.
"""

from __future__ import annotations

import torch
from torch import nn

from iste.models.encoders.edsr import EDSRConfig, EDSREncoder
from iste.models.fixed.base import FixedScaleSR, pixel_shuffle_factors

__all__ = ["EDSRConfig", "EDSR", "pixel_shuffle_upsampler"]


def pixel_shuffle_upsampler(channels: int, scale: int, kernel_size: int = 3) -> nn.Sequential:
    """conv(C -> r^2 C) + PixelShuffle(r) per stage r of :func:`pixel_shuffle_factors`:
    (B, C, h, w) -> (B, C, scale * h, scale * w); convs at indices 0, 2, ..."""
    layers: list[nn.Module] = []
    for r in pixel_shuffle_factors(scale):
        layers += [nn.Conv2d(channels, r * r * channels, kernel_size,
                             padding=kernel_size // 2), nn.PixelShuffle(r)]
    return nn.Sequential(*layers)


class EDSR(FixedScaleSR):
    """EDSR for one scale.

    Args:
        config: body size (:class:`EDSRConfig`).
        scale: 2, 3 or 4 (any 2^n).

    Shapes:
        forward(x): (B, 3, h, w) in [-1, 1] -> (B, 3, scale * h, scale * w), same range.
    """

    def __init__(self, config: EDSRConfig, scale: int) -> None:
        super().__init__()
        self.config = config
        self.scale = scale
        stages = len(pixel_shuffle_factors(scale))
        # head conv + 2 per block + body conv, each upsampler conv, the last conv: 1 LR px each
        self.reach = 2 + 2 * config.n_resblocks + stages + 1
        self.size_alignment = 1
        self.encoder = EDSREncoder(config)
        self.tail = nn.Sequential(pixel_shuffle_upsampler(config.n_feats, scale),
                                  nn.Conv2d(config.n_feats, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.encoder(x))
