"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) for gland segmentation.

The original's layout: four down steps (two 3x3 convs + ReLU, then 2x2 max-pool, doubling the
width from 64 to 1024 at the bottom), four up steps (2x2 transposed conv halving the width,
concatenation with the skip, two 3x3 convs), a 1x1 conv to the classes. Two departures, both
usual today: the convs are padded (output size = input size, so no overlap-tile inference is
needed) and each is followed by batch normalisation (trains stably from scratch with Adam).
Inputs whose sides are not multiples of 2**depth are reflect-padded (edge-padded where a side is
too short to reflect: no longer than its padding) and the logits cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class UNet(nn.Module):
    """x (B, in_channels, H, W) normalised image -> logits (B, classes, H, W).

    width: channels of the first level (64 in the paper); depth: number of poolings (4).
    """

    def __init__(self, in_channels: int = 3, classes: int = 2, *, width: int = 64, depth: int = 4):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError("unet width and depth must be >= 1")
        self.depth = depth
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])]
                                  + [_double_conv(a, b) for a, b in zip(widths, widths[1:])])
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2)
                                for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(_double_conv(2 * a, a) for a in widths[:-1])
        self.out = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            x = merge(torch.cat([skips.pop(), up(x)], 1))
        return self.out(x)[..., :h, :w]
