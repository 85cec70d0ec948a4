"""SWD-Net: a spatial stage, then a wavelet stage (Chen et al., MICCAI 2020), for x2.

"Joint Spatial-Wavelet Dual-Stream Network for Super-Resolution"; published code
franciszchen/SWD-Net (``model/spatial_stage.py``, ``wavelet_stage.py``, ``swdnet.py``).

- Spatial stage, (B, 3, h, w) -> (B, 3, 2h, 2w): conv 3->64 + PReLU, a residual block, conv
  64->32 + PReLU, a residual block, two dual-stream modules (each added to its input), a 3x3
  merge of both modules' outputs (64->32) + PReLU, a pixel-shuffle x2 upsampler, conv-PReLU-
  conv(1x1)-PReLU-conv to RGB, plus the nearest-upsampled input.
- Dual-stream module: a full-resolution stream and a half-resolution one (stride-2 conv), three
  stages of 4 residual blocks per stream, each stage fusing the streams with a refined context
  fusion (RCF) and a LeakyReLU(0.1); the last stage keeps only the full-resolution stream.
- RCF(backbone, bypass) = SE(backbone) + W2 ReLU(W1 context), with context = the bypass pooled
  with softmax attention weights computed from the backbone (a GCNet-style context block).
- Wavelet stage, on the spatial SR (B, 3, 2h, 2w): one Haar level gives 12 bands at (h, w)
  (the "up" stream), a second level 48 bands at (h/2, w/2) (the "down" stream); each stream is
  adapted (squeeze-excite with tanh), then three encoder-decoder pairs of wavelet-aware blocks
  (3x3, 1x3, 3x1 and 3x3-3x3 paths summed), the streams exchanging features through RCF after
  each pair (the other stream brought over by an inverse or forward Haar level); a final conv
  on the up stream plus its input bands, and the inverse Haar level gives the SR image.

The published code computes less than that: its RCF keeps the SE term and drops the context
term (it adds it to a variable that is not returned), so the half-resolution stream of every
dual-stream module and the whole down stream of the wavelet stage never reach the output
(2.41 M of its 3.16 M parameters). ``rcf="published"`` builds exactly the function it computes
(without the unreachable layers: the converter drops their weights); ``rcf="paper"`` (the
default) builds both terms, so every stream is live. Input and output: RGB in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from iste.models.checks import check_int
from iste.models.fixed.base import FixedScaleSR
from iste.models.layers.haar import haar_forward, haar_inverse

RCFMode = Literal["paper", "published"]


@dataclass(frozen=True)
class SWDNetConfig:
    """SWD-Net's one size knob and one switch (defaults: the published network).

    Attributes:
        rcf: ``"paper"``: RCF = SE(backbone) + context term (both streams live);
            ``"published"``: SE(backbone) only, the function the published code computes.
        blocks: residual blocks per stream in each dual-stream stage (published 4; smaller for
            CPU-sized runs).
        wavelet_width: channels of the wavelet stage's up stream (published 24); the down
            stream has four times as many.
    """

    rcf: RCFMode = "paper"
    blocks: int = 4
    wavelet_width: int = 24

    def __post_init__(self) -> None:
        if self.rcf not in ("paper", "published"):
            raise ValueError(f"SWDNetConfig.rcf must be 'paper' or 'published', got {self.rcf!r}")
        check_int("SWDNetConfig", "blocks", self.blocks, max_value=64)
        check_int("SWDNetConfig", "wavelet_width", self.wavelet_width, min_value=2, max_value=1024)


class SWDNetOutputs(NamedTuple):
    """sr: (B, 3, 2h, 2w) the final SR; bands: (B, 12, h, w) the wavelet stage's predicted Haar
    bands of the SR (before the inverse level); spatial: (B, 3, 2h, 2w) the spatial stage's SR."""

    sr: torch.Tensor
    bands: torch.Tensor
    spatial: torch.Tensor


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class SqueezeExcite(nn.Module):
    """x * gate(mean over H, W of x): (B, C, H, W) -> same; gate = Linear-ReLU-Linear-sigmoid
    (C -> C/2 -> C), or Linear-PReLU-Linear-tanh for the wavelet adaptation (``tanh=True``)."""

    def __init__(self, channels: int, *, tanh: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // 2)
        self.act = nn.PReLU(channels // 2) if tanh else nn.ReLU()
        self.fc2 = nn.Linear(channels // 2, channels)
        self.tanh = tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3)))))
        gate = torch.tanh(gate) if self.tanh else torch.sigmoid(gate)
        return x * gate[:, :, None, None]


class ContextFusion(nn.Module):
    """RCF: (backbone, bypass), both (B, C, H, W) -> (B, C, H, W).

    SE(backbone), plus (``with_context``) W2 ReLU(W1 c), where c (B, C, 1, 1) is the bypass
    averaged over positions with softmax weights from a 1x1 conv of the backbone. W2 starts at
    zero, so a fresh model starts from the SE term alone.
    """

    def __init__(self, channels: int, *, with_context: bool) -> None:
        super().__init__()
        self.se = SqueezeExcite(channels)
        self.with_context = with_context
        if with_context:
            # no bias: the softmax over positions ignores a constant (the published conv has
            # one, which never changes the output; the converter drops it)
            self.attend = nn.Conv2d(channels, 1, 1, bias=False)
            self.add1 = nn.Conv2d(channels, channels // 2, 1)
            self.add2 = nn.Conv2d(channels // 2, channels, 1)
            nn.init.kaiming_normal_(self.attend.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.add2.weight)
            nn.init.zeros_(self.add2.bias)

    def forward(self, backbone: torch.Tensor, bypass: torch.Tensor) -> torch.Tensor:
        out = self.se(backbone)
        if not self.with_context:
            return out
        weights = torch.softmax(self.attend(backbone).flatten(2), dim=2)      # (B, 1, HW)
        context = torch.einsum("bcn,bon->bc", bypass.flatten(2), weights)     # (B, C)
        return out + self.add2(F.relu(self.add1(context[:, :, None, None])))


class ResidualBlock(nn.Module):
    """act2(conv(act1(conv(x))) + x) with per-channel PReLUs; (B, C, H, W) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3(channels, channels)
        self.act1 = nn.PReLU(channels)
        self.conv2 = _conv3(channels, channels)
        self.act2 = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))) + x)


def _stream(channels: int, n_blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(n_blocks)])


class DualStreamStage(nn.Module):
    """Both streams through their residual blocks, then fused (RCF + LeakyReLU(0.1)).

    high: (B, C, H, W), low: (B, C, H/2, W/2) or None (published RCF: the low stream is
    unreachable and not built). Returns the new (high, low); low is None in the last stage.
    """

    def __init__(self, channels: int, *, with_context: bool, keep_low: bool, blocks: int) -> None:
        super().__init__()
        self.high = _stream(channels, blocks)
        self.fuse_high = ContextFusion(channels, with_context=with_context)
        self.with_context = with_context
        self.keep_low = keep_low and with_context
        if with_context:
            self.low = _stream(channels, blocks)
            self.low_to_high = nn.Conv2d(channels, channels, 1)
        if self.keep_low:
            self.high_to_low = _conv3(channels, channels, stride=2)
            self.fuse_low = ContextFusion(channels, with_context=True)

    def forward(self, high: torch.Tensor, low: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        high = self.high(high)
        if not self.with_context:
            return F.leaky_relu(self.fuse_high(high, high), 0.1), None
        low = self.low(low)
        bypass = F.interpolate(self.low_to_high(low), scale_factor=2, mode="nearest")
        new_high = F.leaky_relu(self.fuse_high(high, bypass), 0.1)
        if not self.keep_low:
            return new_high, None
        new_low = F.leaky_relu(self.fuse_low(low, self.high_to_low(high)), 0.1)
        return new_high, new_low


class DualStreamModule(nn.Module):
    """(B, 32, H, W) -> (B, 32, H, W): the low stream starts as a stride-2 conv + PReLU of x."""

    def __init__(self, channels: int, *, with_context: bool, blocks: int) -> None:
        super().__init__()
        self.with_context = with_context
        if with_context:
            self.to_low = _conv3(channels, channels, stride=2)
            self.to_low_act = nn.PReLU(channels)
        self.stages = nn.ModuleList(
            DualStreamStage(channels, with_context=with_context, keep_low=i < 2, blocks=blocks)
            for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.to_low_act(self.to_low(x)) if self.with_context else None
        high = x
        for stage in self.stages:
            high, low = stage(high, low)
        return high


class SpatialStage(nn.Module):
    """(B, 3, h, w) in [0, 1] -> (B, 3, 2h, 2w); h, w even."""

    def __init__(self, *, with_context: bool, blocks: int) -> None:
        super().__init__()
        self.head = _conv3(3, 64)
        self.head_act = nn.PReLU(64)
        self.head_block = ResidualBlock(64)
        self.reduce = _conv3(64, 32)
        self.reduce_act = nn.PReLU(32)
        self.reduce_block = ResidualBlock(32)
        self.dual1 = DualStreamModule(32, with_context=with_context, blocks=blocks)
        self.dual2 = DualStreamModule(32, with_context=with_context, blocks=blocks)
        self.merge = _conv3(64, 32)
        self.merge_act = nn.PReLU(32)
        self.upsample = _conv3(32, 32 * 4)
        self.tail1 = _conv3(32, 32)
        self.tail1_act = nn.PReLU(32)
        self.tail2 = nn.Conv2d(32, 32, 1)
        self.tail2_act = nn.PReLU(32)
        self.to_rgb = _conv3(32, 3)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = self.head_block(self.head_act(self.head(lr)))
        x = self.reduce_block(self.reduce_act(self.reduce(x)))
        t0 = self.dual1(x) + x
        t1 = self.dual2(t0) + t0
        y = self.merge_act(self.merge(torch.cat([t0, t1], dim=1)))
        y = F.pixel_shuffle(self.upsample(y), 2)
        y = self.to_rgb(self.tail2_act(self.tail2(self.tail1_act(self.tail1(y)))))
        return y + F.interpolate(lr, scale_factor=2, mode="nearest")


class WaveletBlock(nn.Module):
    """Wavelet-aware conv block, (B, Cin, H, W) -> (B, Cout, H, W): the sum of a 3x3 path, a
    horizontal (1x3, 1x3), a vertical (3x1, 3x1) and a diagonal (3x3, 3x3) path, each conv
    followed by a per-channel PReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.l_conv, self.l_act = _conv3(cin, cout), nn.PReLU(cout)
        for name, k, p in (("h", (1, 3), (0, 1)), ("v", (3, 1), (1, 0)), ("d", 3, 1)):
            setattr(self, f"{name}_conv1", nn.Conv2d(cin, cout, k, padding=p))
            setattr(self, f"{name}_act1", nn.PReLU(cout))
            setattr(self, f"{name}_conv2", nn.Conv2d(cout, cout, k, padding=p))
            setattr(self, f"{name}_act2", nn.PReLU(cout))

    def _path(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, f"{name}_act1")(getattr(self, f"{name}_conv1")(x))
        return getattr(self, f"{name}_act2")(getattr(self, f"{name}_conv2")(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l_act(self.l_conv(x)) + self._path("h", x) + self._path("v", x) \
            + self._path("d", x)


class WaveletStage(nn.Module):
    """(B, 3, H, W) with H, W multiples of 4 -> (SR (B, 3, H, W), bands (B, 12, H/2, W/2)).

    Stream widths (published w = 24): up 12 -> w -> w -> 12 bands; down 48 -> 4w -> 4w -> 48
    (the streams swap features through one Haar level, which turns w channels into 4w).
    """

    def __init__(self, *, with_context: bool, width: int) -> None:
        super().__init__()
        self.with_context = with_context
        self.adapt_up = SqueezeExcite(12, tanh=True)
        up = [12] + [width] * 5 + [12]
        self.up = nn.ModuleList(WaveletBlock(up[i], up[i + 1]) for i in range(6))
        self.fuse_up = nn.ModuleList(ContextFusion(c, with_context=with_context)
                                     for c in (width, width, 12))
        self.to_bands = _conv3(12, 12)
        if with_context:
            self.adapt_down = SqueezeExcite(48, tanh=True)
            down = [48] + [4 * width] * 5 + [48]
            self.down = nn.ModuleList(WaveletBlock(down[i], down[i + 1]) for i in range(6))
            self.fuse_down = nn.ModuleList(ContextFusion(4 * width, with_context=True)
                                           for _ in range(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bands = haar_forward(x)
        up = self.up[1](self.up[0](self.adapt_up(bands)))
        if not self.with_context:
            for i in range(2):
                up = self.up[2 * i + 3](self.up[2 * i + 2](self.fuse_up[i](up, up)))
            pred = self.to_bands(self.fuse_up[2](up, up)) + bands
            return haar_inverse(pred), pred
        down = self.down[1](self.down[0](self.adapt_down(haar_forward(bands))))
        for i in range(2):
            new_up = self.fuse_up[i](up, haar_inverse(down))
            new_down = self.fuse_down[i](down, haar_forward(up))
            up = self.up[2 * i + 3](self.up[2 * i + 2](new_up))
            down = self.down[2 * i + 3](self.down[2 * i + 2](new_down))
        pred = self.to_bands(self.fuse_up[2](up, haar_inverse(down))) + bands
        return haar_inverse(pred), pred


def receptive_radius(config: SWDNetConfig) -> int:
    """Receptive-field radius in LR pixels of the convolutions (the global poolings come on
    top). Published RCF: 9 + 2 x (6 blocks) per dual-stream module (3 stages of ``blocks``
    residual blocks of two 3x3 convs) in the spatial stage, 14 in the wavelet up stream; the
    paper's RCF adds the half-resolution paths (convs there count twice) and the wavelet down
    stream (30)."""
    per_module = 3 * 2 * config.blocks
    if config.rcf == "published":
        return 9 + 2 * per_module + 14
    return 9 + 2 * (2 * per_module + 3) + 30


class SWDNet(FixedScaleSR):
    """SWD-Net for x2: ``forward(lr)`` (B, 3, h, w) RGB in [0, 1], h and w even ->
    (B, 3, 2h, 2w), the wavelet stage's SR (the published network's final output); ``sr`` is
    the same function (the published input convention is RGB in [0, 1])."""

    def __init__(self, config: SWDNetConfig = SWDNetConfig(), scale: int = 2) -> None:
        super().__init__()
        if scale != 2:
            raise ValueError(f"SWD-Net is built for x2 only (its wavelet stage), got x{scale}")
        self.config = config
        self.global_context = True
        self.scale = 2
        self.reach = receptive_radius(config)
        self.size_alignment = 2
        with_context = config.rcf == "paper"
        self.spatial = SpatialStage(with_context=with_context, blocks=config.blocks)
        self.wavelet = WaveletStage(with_context=with_context, width=config.wavelet_width)

    def stages(self, lr: torch.Tensor) -> SWDNetOutputs:
        """All three outputs the training loss (Eq. 4) uses; see :class:`SWDNetOutputs`."""
        spatial = self.spatial(lr)
        sr, bands = self.wavelet(spatial)
        return SWDNetOutputs(sr, bands, spatial)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.stages(lr).sr

    def sr(self, lr01: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1], h and w even -> (B, 3, 2h, 2w)."""
        return self.forward(lr01)
