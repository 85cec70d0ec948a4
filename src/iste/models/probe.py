"""A loaded model's output on a small smooth test image, checked against the image range.

Weights can be finite and of the right layout yet absurd: every tensor scaled by 1e3, 10 or
1e30 (a converter's wrong factor, a damaged file). Such a model's prediction runs to 1e4 ..
Inf where the image range is [0, 1]; clamped, it is a black, white or two-tone image written
with exit code 0. A model that computes what a super-resolution model computes stays near
the range whatever its training: the shipped model and every registered architecture at its
random initialisation (the tests' tiny models) reach at most about 1.1 on the probe, where
those scaled weights reach 1.7e4 (x1e3) to 3e20 (x10: normalisation layers compound it).
:data:`PROBE_LIMIT` lies between, two orders of magnitude from both.

Weights scaled the other way (every tensor by 1e-30; all zero is refused before, by
:func:`iste.models.checkpoint.load_state`) make a model that predicts one colour for the whole
probe: its ramps of 0.2 .. 0.4 across the image vanish. At their random initialisation the
same tiny models spread their prediction over 0.07 .. 0.7; :data:`PROBE_FLAT` is five
orders of magnitude below that.
"""

from __future__ import annotations

import torch

from iste.data.coords import denormalize, make_cell, make_coord, normalize
from iste.models.fixed.base import FixedScaleSR

__all__ = ["PROBE_LIMIT", "PROBE_FLAT", "probe_output", "output_range_problem"]

PROBE_LIMIT = 100.0
"""Largest |value| of the probe's prediction (in the [0, 1] image range) taken as a model's."""

PROBE_FLAT = 1e-6
"""Largest spread (max - min) of the probe's prediction taken as an image that ignores its
input: below it, the model predicts one value for every pixel."""

_PROBE_SIDE = 16


def _probe_image() -> torch.Tensor:
    """(1, 3, 16, 16) float in [0.3, 0.8]: smooth ramps, a different one per channel."""
    ramp = torch.linspace(0, 1, _PROBE_SIDE, dtype=torch.float32)
    y, x = ramp[:, None].expand(-1, _PROBE_SIDE), ramp[None].expand(_PROBE_SIDE, -1)
    return torch.stack([0.3 + 0.4 * y, 0.5 + 0.2 * x, 0.6 - 0.3 * x * y])[None]


def probe_output(model: torch.nn.Module) -> torch.Tensor:
    """The model's prediction, not clamped, of the probe at x2 (a fixed-scale network: at
    its scale), in the [0, 1] image range: (1, 3, 8, 8), every 4th pixel of the 32 x 32
    output each way (fixed: (1, 3, 16 s, 16 s), the whole output). Runs on the model's
    device in float32, without gradients."""
    device = next(model.parameters()).device
    lr = _probe_image().to(device)
    with torch.no_grad():
        if isinstance(model, FixedScaleSR):
            align = max(model.size_alignment, 1)
            side = -(-_PROBE_SIDE // align) * align
            lr = torch.nn.functional.pad(lr, (0, side - _PROBE_SIDE, 0, side - _PROBE_SIDE),
                                         mode="replicate")
            return model.sr(lr).float()
        out_hw = (2 * _PROBE_SIDE, 2 * _PROBE_SIDE)
        # every 4th output pixel of every 4th row: a spread of the image, 16 times cheaper
        # for a head whose queries are also its keys (ISTE's STF)
        coord = make_coord(out_hw, flatten=False, device=device)[::4, ::4].reshape(1, -1, 2)
        cell = make_cell(out_hw, coord.shape[1], device=device)[None]
        rgb = model(normalize(lr), coord, cell).float()  # (1, Q, 3) in [-1, 1]
        return denormalize(rgb).transpose(1, 2).reshape(1, 3, *[n // 4 for n in out_hw])


def output_range_problem(model: torch.nn.Module) -> str | None:
    """Why ``model``'s prediction of the probe is no image's (not finite, beyond
    :data:`PROBE_LIMIT`, or one value everywhere: spread below :data:`PROBE_FLAT`), or None
    where it is within reach of the image range and follows the image."""
    out = probe_output(model)
    if not torch.isfinite(out).all():
        return "the model it makes predicts Inf or NaN for a smooth test image"
    reach = out.abs().max().item()
    if reach > PROBE_LIMIT:
        return (f"the model it makes predicts values up to {reach:.3g} for a smooth test image, "
                "whose pixels lie in [0, 1]")
    spread = (out.max() - out.min()).item()
    if spread < PROBE_FLAT:
        return (f"the model it makes predicts one value ({out.flatten()[0].item():.3g}) for "
                "every pixel of a smooth test image (weights zero or vanishingly small)")
    return None
