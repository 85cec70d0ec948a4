"""What every encoder offers the heads and the engine.

Convention: ``forward(x)`` maps the normalised LR image (B, 3, h, w) in [-1, 1] to features
(B, out_dim, h, w) for any h, w >= 1.

``size_alignment``: the encoder's computation is a function of the input's position modulo this
many pixels (SwinIR pads to, and partitions into, ``window_size`` windows; convolutions have 1).
The tiled engine starts LR crops at multiples of it, so that a crop is partitioned exactly as
the whole image.
"""

from __future__ import annotations

from torch import nn


class Encoder(nn.Module):
    out_dim: int
    size_alignment: int = 1
