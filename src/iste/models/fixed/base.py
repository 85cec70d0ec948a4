"""What every fixed-scale network offers: one whole network trained for one integer scale.

The paper's Table 1 compares ISTE with networks that upscale by one integer factor only (EDSR,
RDN and SwinIR with pixel-shuffle upsamplers; SWD-Net, SRMFENet, Li et al.). Each is a
:class:`FixedScaleSR`, built for its ``scale`` from a config dataclass by its registry entry
(:data:`iste.models.registry.FIXED`).

Convention (shared by all fixed-scale networks; documented here once):
    ``forward(x)``: the published network's forward on the published network's input
        convention, so converted published weights give the published output
        (``iste convert-official``, parity fixtures). What that convention is (the LIIF
        family's [-1, 1], SwinIR's [0, 1] with its own mean shift, a bicubic-upsampled input)
        belongs to the network.
    ``sr(lr01)``: lr01 (B, 3, h, w) float in [0, 1] -> (B, 3, scale * h, scale * w), in [0, 1]
        up to the network's overshoot (not clamped): ``forward`` wrapped in the network's own
        input convention. The engine, training and evaluation only call ``sr``.

What the engine reads, declared once on every instance (never probed):
    scale: the integer factor the network was built (and trained) for.
    reach: LR pixels of context an output pixel depends on, on each side (the receptive-field
        radius, rounded up; for attention without a bounded field, a declared cap). The tiled
        engine reads LR crops with this margin, so tiles equal the whole image wherever the
        field is bounded.
    size_alignment: the LR size the network needs is a multiple of this (SwinIR's window,
        wavelet or U-Net strides; 1 for plain convolutions); the engine pads the LR input at the
        bottom and right by reflection up to a multiple, and crops the output back
        (:mod:`iste.engine.fixed`). Tiles also start at multiples of it.
    global_context: True when no tiling can equal the whole image: some layer reads the whole
        input (squeeze-excite gates and channel weights from global averages, attention pooled
        over all positions: SWD-Net, SRMFENet) or samples at positions that depend on the
        image size (``align_corners=True`` bilinear steps: Li et al.). A tile's output is then
        the network's output on the tile's crop (its statistics, its size). The
        engine still tiles such a network with ``reach`` (its convolutions' radius) as the halo
        when the image does not fit in memory; ``iste eval`` runs whole test images.
"""

from __future__ import annotations

import torch

from iste.data.coords import denormalize, normalize
from iste.models.base import SRModel


class FixedScaleSR(SRModel):
    """Base class of fixed-scale networks; subclasses set ``scale``, ``reach`` and
    ``size_alignment`` in ``__init__`` and implement ``forward``.

    The default :meth:`sr` is the LIIF family's convention (``forward`` on (x - 0.5) / 0.5, its
    output mapped back by y * 0.5 + 0.5); networks with another convention override it.
    """

    scale: int
    reach: int
    size_alignment: int = 1
    global_context: bool = False

    def sr(self, lr01: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, scale * h, scale * w), unclamped."""
        return denormalize(self(normalize(lr01)))


def pixel_shuffle_factors(scale: int) -> list[int]:
    """The pixel-shuffle stages of the EDSR/RDN/SwinIR upsamplers: [2] * n for scale 2^n,
    [3] for 3.

    Raises:
        ValueError: any other scale (the published upsamplers have no stage for it).
    """
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * (scale.bit_length() - 1)
    if scale == 3:
        return [3]
    raise ValueError(f"a pixel-shuffle upsampler supports scales 2^n and 3, got {scale}")
