"""Li et al.'s WSI super-resolution generator (Medical Image Analysis 68, 2021).

"Single image super-resolution for whole slide image using convolutional neural networks and
self-supervised color normalization"; published code uw-loci/demo_wsi_superres (MIT),
``models.py``, class ``Generator`` (base width 32).

A U-Net-like network that works at the output size: the LR image is first resized to the HR
size (the published data pipeline uses PIL's bilinear resize), then

- four down blocks (4x4 stride-2 conv, PReLU, 1x1 conv; plus a 1x1 stride-2 skip conv; PReLU):
  3 -> 2b -> 4b -> 8b -> 16b channels at 1/2 .. 1/16 of the size;
- three up blocks (bilinear x2 with ``align_corners=True``, then 3x3 conv, PReLU, 1x1 conv,
  plus a 1x1 skip conv), each output concatenated with the down feature of its size and added
  to a 3x3-conv-PReLU-1x1-conv "skip block" of the down feature one level finer;
- a 1x1 conv to 12 channels and a pixel shuffle x2 back to 3 channels at the input size.

PReLUs have one shared slope each. The published ``ConvBlock`` passes its ``bias`` argument
(True) into ``nn.Conv2d``'s sixth positional slot, which is ``dilation``: PyTorch 1.x read it as
dilation 1 (and every conv kept its default bias); PyTorch 2 refuses a bool there. We build
what the published code computed: dilation 1, biases on.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.checks import check_int
from iste.models.fixed.base import FixedScaleSR

_OWNER = "Li2021Config"
PreUpsample = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class Li2021Config:
    """Attributes:
        base_channels: b (published 32).
        pre_upsample: how :meth:`Li2021Generator.sr` resizes the LR image to the output size:
            ``"bilinear"`` as the published data pipeline (PIL bilinear), or ``"bicubic"``.
    """

    base_channels: int = 32
    pre_upsample: PreUpsample = "bilinear"

    def __post_init__(self) -> None:
        check_int(_OWNER, "base_channels", self.base_channels)
        if self.pre_upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"{_OWNER}.pre_upsample must be 'bilinear' or 'bicubic', "
                             f"got {self.pre_upsample!r}")


class ConvUnit(nn.Module):
    """conv(k, stride, padding) -> PReLU -> 1x1 conv (no bias): (B, Cin, H, W) ->
    (B, Cout, H', W')."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.act = nn.PReLU()
        self.conv1 = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.act(self.conv0(x)))


class DownBlock(nn.Module):
    """(B, Cin, H, W) -> (B, Cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = ConvUnit(cin, cout, 4, 2, 1)
        self.skip = nn.Conv2d(cin, cout, 1, 2, bias=False)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv0(x) + self.skip(x))


class UpBlock(nn.Module):
    """(B, Cin, H, W) -> (B, Cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvUnit(cin, cout)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(x) + self.skip(x)


class Li2021Generator(FixedScaleSR):
    """``forward(x)``: (B, 3, H, W) in [0, 1] at the output size, H and W multiples of 16 ->
    (B, 3, H, W). :meth:`sr` does the resize from LR first."""

    def __init__(self, config: Li2021Config = Li2021Config(), scale: int = 4) -> None:
        super().__init__()
        if not 2 <= scale <= 8:
            raise ValueError(f"Li et al.'s generator is built here for x2..x8, got x{scale}")
        self.config = config
        self.global_context = True
        self.scale = scale
        # about 80 output pixels of convolutions and bilinear steps, plus the pre-upsampling
        self.reach = -(-96 // scale) + 1
        self.size_alignment = 16 // gcd(16, scale)
        b = config.base_channels
        self.down0, self.down1 = DownBlock(3, 2 * b), DownBlock(2 * b, 4 * b)
        self.down2, self.down3 = DownBlock(4 * b, 8 * b), DownBlock(8 * b, 16 * b)
        self.up0, self.up1 = UpBlock(16 * b, 8 * b), UpBlock(16 * b, 4 * b)
        self.up2 = UpBlock(8 * b, 2 * b)
        self.to_rgb = nn.Conv2d(4 * b, 3 * 4, 1)
        self.skip0, self.skip1 = ConvUnit(2 * b, 4 * b), ConvUnit(4 * b, 8 * b)
        self.skip2 = ConvUnit(8 * b, 16 * b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d0 = self.down0(x)
        d1 = self.down1(d0)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        u = self.up0(d3)
        u = self.up1(torch.cat([u, d2], dim=1) + self.skip2(d2))
        u = self.up2(torch.cat([u, d1], dim=1) + self.skip1(d1))
        return F.pixel_shuffle(self.to_rgb(torch.cat([u, d0], dim=1) + self.skip0(d0)), 2)

    def upsample_input(self, lr01: torch.Tensor,
                       size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 3, s h, s w) (or ``size``): the generator's input, the LR image
        resized by the configured ``pre_upsample``."""
        size = size or (self.scale * lr01.shape[-2], self.scale * lr01.shape[-1])
        return F.interpolate(lr01, size=size, mode=self.config.pre_upsample, align_corners=False)

    def sr(self, lr01: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, h, w) in [0, 1] -> (B, 3, s h, s w): resize, then :meth:`forward`."""
        return self.forward(self.upsample_input(lr01))


class Li2021Discriminator(nn.Module):
    """The conditional PatchGAN critic of Li et al.'s GAN loss (published ``Discriminator``,
    no normalisation): ``forward(image, condition)``, both (B, 3, H, W) with H, W multiples
    of 16 -> (B, 1, H/16, W/16) scores, one per patch.

    Four 4x4 stride-2 convs (6 -> 64 -> 128 -> 256 -> 512, LeakyReLU(0.2)), a one-pixel zero
    pad at the top and left, and a 4x4 conv to one channel without bias.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        widths = [6, width, 2 * width, 4 * width, 8 * width]
        self.blocks = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1) for i in range(4))
        self.score = nn.Conv2d(widths[-1], 1, 4, padding=1, bias=False)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, condition], dim=1)
        for conv in self.blocks:
            x = F.leaky_relu(conv(x), 0.2)
        return self.score(F.pad(x, (1, 0, 1, 0)))
