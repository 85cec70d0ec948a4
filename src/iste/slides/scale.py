"""A slide's recorded scale, as numbers iste trusts: microns per pixel and objective power.

What a slide file or library reports is text or a number of any kind; these keep only finite
positive values, and a pixel size no microscope gives (outside 0.1 nm to 10 cm) is taken as
unknown, with a warning, rather than scaling a result wrong.
"""

from __future__ import annotations

import math
import warnings

__all__ = ["mpp_pair", "positive"]


_MPP_RANGE = (1e-4, 1e5)  # microns per pixel: 0.1 nm (electron microscopy) to 10 cm


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
    if not all(_MPP_RANGE[0] <= v <= _MPP_RANGE[1] for v in (x, y)):
        warnings.warn(f"the slide records {x:g} x {y:g} microns per pixel, no pixel size a "
                      "microscope gives: taken as unknown", stacklevel=3)
        return None
    return (x, y)
