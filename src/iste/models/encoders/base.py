"""What every encoder offers the heads and the engine.

Convention: ``forward(x)`` maps the normalised LR image (B, 3, h, w) in [-1, 1] to features
(B, out_dim, h, w) for any h, w >= 1.

``size_alignment``: the encoder's computation is a function of the input's position modulo this
many pixels (SwinIR pads to, and partitions into, ``window_size`` windows; convolutions have 1).
The tiled engine starts LR crops at multiples of it, so that a crop is partitioned exactly as
the whole image.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, h, w) in the memory layout the convolutional encoders run fastest in:
    channels-last for inference on CPU, where oneDNN then convolves without reordering every
    layer's input and output (measured on this project's CPU, interleaved: EDSR-baseline
    encodes 1.1-1.4x faster, the gain growing with the crop, RDN 1.2-1.4x;
    docs/performance.md); as is when training (channels-last training steps measured within
    noise) and on other devices (not measured). The values are the same up to the
    convolutions' float rounding (features within ~1e-5); later layers follow the layout.

    The strides are made exactly channels-last: a batch of one read from an (h, w, 3) image
    counts as channels-last for torch whatever its batch stride (3 there), but oneDNN reads
    that stride and ran the whole encoder channels-first (docs/performance.md, session 15)."""
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        b, c, h, w = x.shape
        if x.stride() != (c * h * w, 1, w * c, c):
            return x.clone(memory_format=torch.channels_last)
    return x


class Encoder(nn.Module):
    out_dim: int
    size_alignment: int = 1
