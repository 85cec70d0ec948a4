"""One level of the 2-D Haar wavelet packet transform and its inverse, as SWD-Net uses them.

Convention: each 2 x 2 block of a (B, C, H, W) image with pixels ``a`` (top left), ``b`` (top
right), ``c`` (bottom left), ``d`` (bottom right) becomes four bands at (H/2, W/2):

    LL = (a + b + c + d) / 2      HL = (-a + b - c + d) / 2
    LH = (-a - b + c + d) / 2     HH = (a - b - c + d) / 2

stacked band-major: channels ``[LL(0..C-1), HL(0..C-1), LH(0..C-1), HH(0..C-1)]``. The 4 x 4
matrix is orthonormal, so :func:`haar_inverse` is its transpose and the pair is exact.
These are the band definitions and channel order of franciszchen/SWD-Net (Chen et al.,
MICCAI 2020, Eq. 2), so converted weights see the same bands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BANDS = ((1.0, 1.0, 1.0, 1.0),      # LL; columns: a, b, c, d (pixel_unshuffle order)
          (-1.0, 1.0, -1.0, 1.0),    # HL
          (-1.0, -1.0, 1.0, 1.0),    # LH
          (1.0, -1.0, -1.0, 1.0))    # HH


def _matrix(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_BANDS, dtype=x.dtype, device=x.device) * 0.5


def haar_forward(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with H, W even -> (B, 4C, H/2, W/2), bands as in the module docstring."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"haar_forward needs an even height and width, got {h} x {w}")
    blocks = F.pixel_unshuffle(x, 2).view(b, c, 4, h // 2, w // 2)
    bands = torch.einsum("kp,bcphw->bkchw", _matrix(x), blocks)
    return bands.reshape(b, 4 * c, h // 2, w // 2)


def haar_inverse(x: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) bands -> (B, C, 2h, 2w); the exact inverse of :func:`haar_forward`."""
    b, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"haar_inverse needs a multiple of 4 channels, got {c4}")
    c = c4 // 4
    bands = x.view(b, 4, c, h, w)
    blocks = torch.einsum("kp,bkchw->bcphw", _matrix(x), bands)
    return F.pixel_shuffle(blocks.reshape(b, 4 * c, h, w), 2)
