"""EDSR-baseline without its upsampler: the LIIF family's default encoder.

Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution" (CVPRW 2017),
used the way LIIF uses it: a 3x3 head conv, ``n_resblocks`` residual blocks (conv-ReLU-conv,
no batch norm), a 3x3 body conv, and a long skip from the head. No mean shift is applied in
``forward`` (the inputs are already centred, in [-1, 1]) and there is no upsampling tail.

Parameter names equal the published ones (``head.0.*``, ``body.{i}.body.{0,2}.*``,
``body.{n_resblocks}.*``), so published encoder weights load with ``strict=True`` once their
unused ``sub_mean``/``add_mean`` entries are dropped (see ``official_encoder_state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from iste.models.checks import check_float, check_int
from .base import Encoder, conv_layout

_OWNER = "EDSRConfig"


@dataclass(frozen=True)
class EDSRConfig:
    """Size of an EDSR encoder. Defaults are EDSR-baseline (16 blocks, 64 channels).

    Attributes:
        n_resblocks: number of residual blocks.
        n_feats: channels everywhere in the network; also ``out_dim``.
        res_scale: factor applied to each block's residual branch before the skip (1 for the
            baseline, 0.1 for the large EDSR of 32 blocks x 256 channels).
    """

    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0

    def __post_init__(self) -> None:
        check_int(_OWNER, "n_resblocks", self.n_resblocks, min_value=0, max_value=256)
        check_int(_OWNER, "n_feats", self.n_feats)
        value = check_float(_OWNER, "res_scale", self.res_scale, min_value=0.0,
                            min_inclusive=False)
        object.__setattr__(self, "res_scale", value)


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    """x + res_scale * conv(relu(conv(x))); (B, C, H, W) -> (B, C, H, W).

    The convs live in ``self.body`` at indices 0 and 2 (1 is the ReLU), as in the published code.
    """

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv3x3(n_feats, n_feats), nn.ReLU(),
                                  _conv3x3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSREncoder(Encoder):
    """EDSR feature extractor.

    Args:
        config: network size, see :class:`EDSRConfig`.

    Shapes:
        forward(x): x is (B, 3, h, w), the normalised image in [-1, 1]; returns the LR feature
        map (B, ``out_dim``, h, w), ``out_dim = config.n_feats``. Any h, w >= 1 (zero padding).
    """

    def __init__(self, config: EDSRConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim: int = config.n_feats
        self.head = nn.Sequential(_conv3x3(3, config.n_feats))
        blocks: list[nn.Module] = [ResBlock(config.n_feats, config.res_scale)
                                   for _ in range(config.n_resblocks)]
        blocks.append(_conv3x3(config.n_feats, config.n_feats))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(conv_layout(x))
        return self.body(feat) + feat


def deepened_state_dict(encoder: EDSREncoder, shallower: dict[str, torch.Tensor],
                        blocks: int) -> dict[str, torch.Tensor]:
    """Weights for ``encoder`` that compute what a ``blocks``-block EDSR's ``shallower``
    weights compute (a function-preserving deepening, as in Net2Net's Net2DeeperNet).

    The first ``blocks`` residual blocks, the head and the body conv are copied; every added
    block keeps ``encoder``'s own initialisation except its second conv, which is zeroed, so
    the block starts as the identity and its first conv still receives gradients once the
    second conv moves. ``shallower`` holds the encoder's names without a prefix.
    """
    added = encoder.config.n_resblocks - blocks
    if added < 0:
        raise ValueError(f"cannot deepen {blocks} blocks to {encoder.config.n_resblocks}")
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    for name, tensor in shallower.items():
        parts = name.split(".")
        if parts[0] == "body" and int(parts[1]) == blocks:  # the body conv moves to the end
            parts[1] = str(encoder.config.n_resblocks)
        target = ".".join(parts)
        if state[target].shape != tensor.shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not fit "
                             f"{target} {tuple(state[target].shape)}")
        state[target] = tensor.clone()
    for block in range(blocks, encoder.config.n_resblocks):
        state[f"body.{block}.body.2.weight"].zero_()
        state[f"body.{block}.body.2.bias"].zero_()
    return state
