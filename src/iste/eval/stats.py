"""Mean +- std over images and paired Student's t-tests between methods (paper, Tables 1-4).

The std is the sample standard deviation over images (``ddof=1``); with a single image it is
undefined (nan). The t-test is ``scipy.stats.ttest_rel`` (two-sided) on the per-image values
of two methods over the same images, paired by image: it tests whether the mean per-image
difference is zero. When every difference is the same (e.g. two identical methods) the test
is undefined and the p-value is nan (a constant non-zero difference gives t = +-inf, p = 0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["Summary", "summarize", "TTest", "paired_ttest", "paired_values", "exact_notes"]


@dataclass(frozen=True)
class Summary:
    """Mean and sample std (ddof=1) of ``n`` finite values."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean +- sample std of ``values``; ValueError when empty or holding nan."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("cannot summarize an empty list of values")
    if np.any(np.isnan(arr)):
        raise ValueError("cannot summarize values containing nan")
    if not np.all(np.isfinite(arr)):  # PSNR = inf when an SR equals its HR: mean inf, std nan
        return Summary(float(arr.mean()), math.nan, int(arr.size))
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return Summary(float(arr.mean()), std, int(arr.size))


def exact_notes(records: Sequence[Mapping]) -> list[str]:
    """One line per method and scale whose SR equals the HR exactly on some test image (PSNR
    inf, as bicubic gives on a flat tile): that column's mean PSNR is then inf, shown as the
    best, and its t-tests n/a (:func:`summarize`, as the published test's averaging gives).
    ``records``: ``results.json``'s (method, image, scale, psnr). The warning and the
    report's line."""
    exact: dict[tuple[str, float], list[str]] = {}
    for r in records:
        if r["psnr"] == math.inf:
            exact.setdefault((r["method"], r["scale"]), []).append(str(r["image"]))
    notes = []
    for (method, scale), images in exact.items():
        shown = ", ".join(images[:3]) + (f" and {len(images) - 3} more" if len(images) > 3
                                         else "")
        notes.append(f"{method} reproduces {len(images)} test image(s) exactly at x{scale:g} "
                     f"({shown}: PSNR inf), so its mean PSNR there is inf and its t-tests n/a; "
                     "a flat image (no texture: glass, a blank tile) gives this and is best "
                     "left out of a test set")
    return notes


@dataclass(frozen=True)
class TTest:
    """Paired t-test of method A against B: statistic t (positive when A > B), two-sided p."""

    statistic: float
    pvalue: float
    n: int


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> TTest:
    """``scipy.stats.ttest_rel(a, b)``; a[i] and b[i] are two methods' values on image i.

    Needs >= 2 pairs; returns nan statistic and p-value when the test is undefined (fewer
    than 2 pairs, non-finite values, or all differences zero).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of one length, got {x.shape} and {y.shape}")
    diff = x - y
    if x.size < 2 or not np.all(np.isfinite(diff)) or np.all(diff == 0):
        return TTest(math.nan, math.nan, int(x.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision-loss warnings of scipy
        res = stats.ttest_rel(x, y)
    return TTest(float(res.statistic), float(res.pvalue), int(x.size))


def paired_values(by_image_a: Mapping[str, float],
                  by_image_b: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """Values of two methods on the images both have, paired by image name (sorted)."""
    common = sorted(set(by_image_a) & set(by_image_b))
    return [by_image_a[k] for k in common], [by_image_b[k] for k in common]
