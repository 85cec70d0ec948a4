"""SwinIR for classical SR with its pixel-shuffle upsampler (Liang et al., ICCVW 2021;
JingyunLiang/SwinIR ``network_swinir.py``, ``upsampler='pixelshuffle'``), the paper's Table 1
row.

The body is ISTE's SwinIR encoder (:class:`~iste.models.encoders.swinir.SwinIREncoder`: conv,
RSTBs, norm, conv, long skip, ``conv_before_upsample`` = conv to ``num_feat`` + LeakyReLU 0.01),
returning the feature map padded to whole windows as the published network computes it; then
the upsampler (:func:`~iste.models.fixed.edsr.pixel_shuffle_upsampler` of ``num_feat``
channels) and ``conv_last`` to RGB, cropped to (scale h, scale w).

Input convention (SwinIR's): ``forward`` takes the LR image in [0, 1], subtracts the DIV2K RGB
mean (0.4488, 0.4371, 0.4040), multiplies by ``img_range``, and undoes both on the output; so
:meth:`sr` is ``forward``.

Parameter names: ``encoder.*`` = the published ``conv_first``, ``patch_embed``, ``layers``,
``norm``, ``conv_after_body``, ``conv_before_upsample``; ``upsample.*`` and ``conv_last`` as
published (the converter drops the published derived buffers ``attn_mask`` and
``relative_position_index``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from iste.models.checks import check_float, check_int
from iste.models.encoders.swinir import SwinBodyConfig, SwinIRConfig, SwinIREncoder
from iste.models.fixed.base import FixedScaleSR, pixel_shuffle_factors
from iste.models.fixed.edsr import pixel_shuffle_upsampler

__all__ = ["SwinIRNetConfig", "SwinIR", "DIV2K_RGB_MEAN", "SWIN_REACH_CAP"]

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SWIN_REACH_CAP = 64
"""Declared reach of SwinIR: shifted windows pass information across window borders at every
layer, so the true field of the paper-size network spans the image; tiles read this many LR
pixels of context (the same cap as the arbitrary-scale engine's halo, ``max_halo``)."""


@dataclass(frozen=True)
class SwinIRNetConfig(SwinBodyConfig):
    """Size of a classical-SR SwinIR: the body's fields
    (:class:`~iste.models.encoders.swinir.SwinBodyConfig`), then ``num_feat`` (channels of
    ``conv_before_upsample`` and the upsampler, the encoder's ``out_dim``) and ``img_range``
    (the published input scaling, 1.0 for classical SR). Defaults: the paper's (embed 180,
    6 RSTB x 6 layers, 6 heads, window 8, mlp ratio 2, '1conv', num_feat 64), about 11.8 M
    parameters at x4."""

    num_feat: int = 64
    img_range: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("SwinIRNetConfig", "num_feat", self.num_feat)
        value = check_float("SwinIRNetConfig", "img_range", self.img_range, min_value=0.0,
                            min_inclusive=False)
        object.__setattr__(self, "img_range", value)

    def body(self) -> SwinIRConfig:
        """The encoder config of the body (padded output, as the published network)."""
        return SwinIRConfig(**self.body_fields(), out_dim=self.num_feat, crop_to_input=False)


class SwinIR(FixedScaleSR):
    """Classical-SR SwinIR for one scale (2^n or 3).

    Shapes:
        forward(x): (B, 3, h, w) in [0, 1] -> (B, 3, scale * h, scale * w), about [0, 1].
    """

    def __init__(self, config: SwinIRNetConfig, scale: int) -> None:
        super().__init__()
        self.config = config
        self.scale = scale
        stages = pixel_shuffle_factors(scale)
        ws = config.window_size
        conv = 1 if config.resi_connection == "1conv" else 2
        bound = (2 + conv * (len(config.depths) + 1) + len(stages) + 1
                 + sum(config.depths) * (ws - 1))
        self.reach = min(bound, SWIN_REACH_CAP)
        self.size_alignment = ws
        self.encoder = SwinIREncoder(config.body())
        self.upsample = pixel_shuffle_upsampler(config.num_feat, scale)
        self.conv_last = nn.Conv2d(config.num_feat, 3, 3, padding=1)
        self.register_buffer("mean", torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mean = self.mean.to(x.dtype)
        feat = self.encoder((x - mean) * self.config.img_range)
        out = self.conv_last(self.upsample(feat)) / self.config.img_range + mean
        return out[..., :h * self.scale, :w * self.scale]

    def sr(self, lr01: torch.Tensor) -> torch.Tensor:
        return self(lr01)
