"""ResNet-50 (He, Zhang, Ren & Sun, CVPR 2016) for patch classification, without torchvision.

The ImageNet layout (7x7 stride-2 stem, 3x3 max-pool, bottleneck stages of 3, 4, 6, 3 blocks
with widths 64..512 and expansion 4, global average pooling, one linear layer), stride on the
3x3 conv of a stage's first block (the "v1.5" variant torchvision ships), zero-initialised last
BN of each block. Any input size works (96 x 96 PCam patches, 48 x 48 LR patches).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet", "resnet50"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(True),
            nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        nn.init.zeros_(self.body[-1].weight)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """x (B, 3, H, W) normalised image -> logits (B, classes).

    blocks: bottleneck blocks per stage ((3, 4, 6, 3) = ResNet-50); width: the first stage's
    bottleneck width (64).
    """

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), *, classes: int = 2,
                 width: int = 64):
        super().__init__()
        if width < 1 or not blocks or min(blocks) < 1:
            raise ValueError("resnet width and block counts must be >= 1")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(True),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        layers, c_in = [], width
        for i, n in enumerate(blocks):
            w = width * 2 ** i
            for j in range(n):
                layers.append(Bottleneck(c_in, w, stride=2 if (j == 0 and i > 0) else 1))
                c_in = w * Bottleneck.expansion
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean((-2, -1)))


def resnet50(classes: int = 2, *, width: int = 64) -> ResNet:
    return ResNet((3, 4, 6, 3), classes=classes, width=width)
