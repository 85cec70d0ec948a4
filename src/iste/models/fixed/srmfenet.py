"""SRMFENet: the super-resolution branch of SHISRCNet (Xie et al., MICCAI 2023).

"SHISRCNet: Super-resolution And Classification Network For Low-resolution Breast Cancer
Histopathology Image"; published code xiely-123/SHISRCNet (``SRResNet_class.py``, class
``SRResNet``, built by ``SIHSRCNet`` with its defaults: 64 channels, 3 blocks, x4).

An SRResNet whose residual body is made of multi-scale feature extraction (MFE) blocks:

- head: conv3x3 3 -> C; body: ``n_blocks`` MFE blocks then a conv3x3, added to the head's
  output (long skip);
- MFE block on x (B, C, H, W): y0 = BN-ReLU(conv3x3(x)), y1 = BN-ReLU(dilated conv(y0 + x),
  dilation 2), y2 = the same on y1 + x with dilation 4, y3 on y2 + x with dilation 8 (no
  biases); channel weighting: g_k = ReLU(BN(conv1x1(mean over H, W of y_k))) per channel,
  w = softmax over the four k of sigmoid(g_k); out = BN-ReLU(conv1x1(sum_k w_k y_k + x));
- upsampler: per factor 2 (x2: one, x4: two) or once for x3, conv3x3 C -> C r^2, pixel
  shuffle r, LeakyReLU(0.1); tail: conv3x3 + LeakyReLU(0.1), conv3x3 C -> 3 without bias.

The gate is the second ``oneConv`` of ``SRResNet_class.py`` (conv1x1 with bias, BN, ReLU): the
file defines the name twice, and ``MFEblock`` is built after the module finished loading, so
it gets the later definition, not the bias-free conv above it.

Input convention of the published code: images read with OpenCV (BGR), divided by 255 and
transposed with numpy's ``.T``, i.e. the network sees (B, 3, W, H) BGR in [0, 1]. ``forward``
takes whatever layout the weights were trained on; :meth:`SRMFENet.sr` takes RGB (B, 3, h, w)
in [0, 1] and converts when ``published_layout`` is set (converted published weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.checks import check_int
from iste.models.fixed.base import FixedScaleSR

_OWNER = "SRMFENetConfig"
DILATIONS = (2, 4, 8)


@dataclass(frozen=True)
class SRMFENetConfig:
    """Attributes:
        channels: width C (published 64).
        n_blocks: number of MFE blocks (published 3).
        published_layout: the weights expect the published input layout (BGR, height and
            width swapped); set by the converter of published checkpoints.
    """

    channels: int = 64
    n_blocks: int = 3
    published_layout: bool = False

    def __post_init__(self) -> None:
        check_int(_OWNER, "channels", self.channels)
        check_int(_OWNER, "n_blocks", self.n_blocks, max_value=256)
        if not isinstance(self.published_layout, bool):
            raise ValueError(f"{_OWNER}.published_layout must be true or false")


class MFEBlock(nn.Module):
    """(B, C, H, W) -> (B, C, H, W); see the module docstring."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=False)
            for d in (1, *DILATIONS))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(4))
        self.gates = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(4))
        self.gate_norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(4))
        self.project = nn.Conv2d(channels, channels, 1, bias=False)
        self.project_norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches, prev = [], None
        for conv, norm in zip(self.convs, self.norms):
            prev = F.relu(norm(conv(x if prev is None else prev + x)))
            branches.append(prev)
        logits = torch.stack([F.relu(norm(gate(y.mean(dim=(2, 3), keepdim=True))))
                              for gate, norm, y in zip(self.gates, self.gate_norms, branches)],
                             dim=0)  # (4, B, C, 1, 1)
        weights = torch.softmax(torch.sigmoid(logits), dim=0)
        mixed = sum(w * y for w, y in zip(weights, branches))
        return F.relu(self.project_norm(self.project(mixed + x)))


class SRMFENet(FixedScaleSR):
    """``forward(lr)``: (B, 3, h, w) in [0, 1] in the weights' layout -> (B, 3, s h, s w)."""

    def __init__(self, config: SRMFENetConfig = SRMFENetConfig(), scale: int = 4) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"SRMFENet's upsampler supports x2, x3 and x4, got x{scale}")
        self.config = config
        self.global_context = True
        self.scale = scale
        # head 1, each MFE block 1 + 2 + 4 + 8, body conv 1, upsampler and tail 2
        self.reach = 1 + 15 * config.n_blocks + 1 + 2
        self.size_alignment = 1
        c = config.channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(MFEBlock(c) for _ in range(config.n_blocks))
        self.body_conv = nn.Conv2d(c, c, 3, padding=1)
        factors = (3,) if scale == 3 else (2,) * (scale // 2)
        self.factors = factors
        self.upsample = nn.ModuleList(nn.Conv2d(c, c * r * r, 3, padding=1) for r in factors)
        self.tail = nn.Conv2d(c, c, 3, padding=1)
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1, bias=False)

    def features(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, C, h, w): head plus body (the published ``SR_feature``)."""
        if self.training and lr.shape[0] < 2:
            raise ValueError("SRMFENet trains with batches of at least 2 images: its channel "
                             "gates batch-normalise one value per image and channel")
        x = self.head(lr)
        y = x
        for block in self.blocks:
            y = block(y)
        return x + self.body_conv(y)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        y = self.features(lr)
        for conv, r in zip(self.upsample, self.factors):
            y = F.leaky_relu(F.pixel_shuffle(conv(y), r), 0.1)
        return self.to_rgb(F.leaky_relu(self.tail(y), 0.1))

    def sr(self, lr01: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, h, w) in [0, 1] -> RGB (B, 3, s h, s w)."""
        if not self.config.published_layout:
            return self.forward(lr01)
        bgr_t = lr01.flip(1).transpose(2, 3)
        return self.forward(bgr_t).transpose(2, 3).flip(1)
