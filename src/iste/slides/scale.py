"""A slide's recorded scale, as numbers iste trusts: microns per pixel and objective power.

What a slide file or library reports is text or a number of any kind; these keep only finite
positive values, and a pixel size no microscope gives (outside :data:`MPP_RANGE`, 10 pm to
10 cm) is taken as unknown, with a warning, rather than scaling a result wrong. A slide job
whose output's pixel size would fall outside that range is refused before any work
(:func:`output_mpp_refusal`): written, it would read back as unknown.
"""

from __future__ import annotations

import math
import warnings

__all__ = ["MPP_RANGE", "mpp_pair", "positive", "output_mpp_refusal"]


MPP_RANGE = (1e-5, 1e5)
"""Microns per pixel iste takes for a pixel size, read or written: 10 pm (electron
microscopy's finest sampling; a slide at 0.1 nm upscaled x8 stays in) to 10 cm. The floor
also keeps a pyramid's resolution tags (pixels per cm, a fraction of 32-bit integers: no
finer than 2.3e-6 um) writable."""


def positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def mpp_pair(mx, my) -> tuple[float, float] | None:
    try:
        x, y = float(mx), float(my if my is not None else mx)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    if not _in_range(x, y):
        warnings.warn(f"the slide records {x:g} x {y:g} microns per pixel, no pixel size a "
                      "microscope gives: taken as unknown", stacklevel=3)
        return None
    return (x, y)


def _in_range(*values: float) -> bool:
    return all(MPP_RANGE[0] <= v <= MPP_RANGE[1] for v in values)


def output_mpp_refusal(mpp: tuple[float, float] | None) -> str | None:
    """Why an output cannot be given the pixel size ``mpp`` (x, y; None: unknown, nothing to
    say), or None: outside :data:`MPP_RANGE`, :func:`mpp_pair` would read it back as unknown
    (a slide at 1e-4 um upscaled x8 was written at 1.25e-5 um and read back without a pixel
    size, by iste info, iste serve and a second iste upscale)."""
    if mpp is None or _in_range(*mpp):
        return None
    fix = ("a smaller scale or a coarser --level" if min(mpp) < MPP_RANGE[0]
           else "a larger scale or a finer --level")
    return (f"the output's pixels would be {mpp[0]:.3g} x {mpp[1]:.3g} um, outside the "
            f"{MPP_RANGE[0]:g} to {MPP_RANGE[1]:g} um iste records and reads as a pixel "
            f"size; choose {fix}")
