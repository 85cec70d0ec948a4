"""Object-level gland segmentation metrics of the GlaS challenge (Sirinukunwattana et al.,
Med. Image Anal. 35, 2017), and the labelling of a predicted foreground into glands.

Definitions (G = ground-truth objects, S = segmented objects, per image):

- **Detection / F1.** Each segmented object S_j is matched to the ground-truth object with
  which it overlaps most; it is a true positive when that overlap covers at least 50 % of the
  ground-truth object's area, otherwise a false positive. Ground-truth objects that no
  segmented object detects are false negatives. F1 = 2 TP / (2 TP + FP + FN). (The
  challenge's Matlab code tests ``> 0.5``; the paper and we use ``>= 0.5``: they differ only
  for an overlap of exactly half a gland.) A ground-truth object is counted as detected once,
  however many segmented objects pass the test for it (at most two can, both at exactly 50 %).
- **Object Dice.** ``1/2 [sum_i g_i Dice(G_i, S*(G_i)) + sum_j s_j Dice(G*(S_j), S_j)]`` with
  area weights g_i = |G_i| / sum |G|, s_j = |S_j| / sum |S|; S*(G_i) is the segmented object
  overlapping G_i most (the empty set, Dice 0, when none overlaps), and G*(S_j) likewise.
- **Object Hausdorff.** The same weighted sum with the (symmetric) Hausdorff distance between
  the objects' pixel sets; where an object overlaps nothing, its partner is the object of the
  other map *nearest by Hausdorff distance*.

Degenerate images follow the challenge's code: no objects on either side gives F1 1, Dice 1,
Hausdorff 0; objects on one side only gives F1 0, Dice 0 and Hausdorff ``inf``.

Over a test set (:func:`pooled_gland_metrics`) the challenge pools the objects of all its
images: F1 comes from TP, FP and FN summed over the images, and object Dice and object
Hausdorff are the sums above over every object of the set, each weighted by its area over the
area of all the set's objects of its side (partners are still found in the object's own image).
A large gland counts for more than a small one wherever it is; it is not a mean of the images'
scores (which gave an image of one small gland the weight of one of twenty large ones).

Convention: label maps are integer arrays (H, W); 0 is background, every other value one
object (an object need not be connected). Distances are in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage
from skimage import measure, morphology
from skimage.metrics import hausdorff_distance

__all__ = ["GlandCounts", "gland_metrics", "gland_counts", "pooled_gland_metrics",
           "label_glands", "DETECTION_OVERLAP"]

DETECTION_OVERLAP = 0.5  # share of the ground-truth gland a detection must cover


@dataclass(frozen=True)
class GlandCounts:
    """Per-image results: detection counts, and each side's object areas and area-weighted
    score sums, from which the image's scores and a test set's pooled ones follow.

    ``truth_area`` = sum |G_i|, ``dice_truth`` = sum |G_i| Dice(G_i, S*(G_i)),
    ``hausdorff_truth`` likewise with the Hausdorff distance (``inf`` when the image has no
    segmented object to pair with); the ``seg`` fields the same over the segmented objects.
    """

    tp: int
    fp: int
    fn: int
    truth_area: int = 0
    seg_area: int = 0
    dice_truth: float = 0.0
    dice_seg: float = 0.0
    hausdorff_truth: float = 0.0
    hausdorff_seg: float = 0.0

    @property
    def f1(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    @property
    def object_dice(self) -> float:
        return _object_dice([self])

    @property
    def object_hausdorff(self) -> float:
        return _object_hausdorff([self])


def _object_dice(counts: list[GlandCounts]) -> float:
    """Object Dice over all the objects of ``counts``' images (1 where there are none)."""
    return _object_score(counts, [c.dice_truth for c in counts], [c.dice_seg for c in counts],
                         empty=1.0)


def _object_hausdorff(counts: list[GlandCounts]) -> float:
    """Object Hausdorff over all the objects of ``counts``' images (0 where there are none)."""
    return _object_score(counts, [c.hausdorff_truth for c in counts],
                         [c.hausdorff_seg for c in counts], empty=0.0)


def _object_score(counts: list[GlandCounts], truth_sums: list[float], seg_sums: list[float],
                  *, empty: float) -> float:
    """1/2 (sum |G_i| score_i / sum |G| + sum |S_j| score_j / sum |S|) over the objects of
    ``counts``' images, ``truth_sums`` and ``seg_sums`` each image's area-weighted score sums
    of its two sides; a side without objects adds 0, and ``empty`` when neither has any."""
    truth = sum(c.truth_area for c in counts)
    seg = sum(c.seg_area for c in counts)
    if not truth and not seg:
        return empty
    sides = ((sum(truth_sums), truth), (sum(seg_sums), seg))
    return 0.5 * sum(total / area for total, area in sides if area)


class _Objects:
    """The objects of one label map: labels, areas, and the overlap table with another map."""

    def __init__(self, labels: np.ndarray):
        self.map = labels
        self.ids = np.unique(labels[labels != 0])
        self.areas = np.asarray(ndimage.sum_labels(np.ones_like(labels), labels, self.ids),
                                dtype=np.int64) if self.ids.size else np.zeros(0, np.int64)

    def mask(self, k: int) -> np.ndarray:
        return self.map == self.ids[k]


def _overlaps(a: _Objects, b: _Objects) -> np.ndarray:
    """(len(a.ids), len(b.ids)) pixel counts of every pair's intersection."""
    both = (a.map != 0) & (b.map != 0)
    ia = np.searchsorted(a.ids, a.map[both])
    ib = np.searchsorted(b.ids, b.map[both])
    table = np.zeros((a.ids.size, b.ids.size), np.int64)
    np.add.at(table, (ia, ib), 1)
    return table


def _check(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"label maps must be 2-D and of one shape, got {pred.shape} and "
                         f"{truth.shape}")
    for name, arr in (("pred", pred), ("truth", truth)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    return pred.astype(np.int64), truth.astype(np.int64)


def _weighted(objs: _Objects, partner: _Objects, overlap: np.ndarray, score, *,
              nearest_if_none: bool) -> float:
    """sum_k |O_k| * score(O_k, partner of O_k); ``overlap`` is (objs, partner)."""
    out = 0.0
    for k in range(objs.ids.size):
        mine = objs.mask(k)
        if overlap[k].any():
            theirs = partner.mask(int(overlap[k].argmax()))
        elif nearest_if_none:
            theirs = min((partner.mask(m) for m in range(partner.ids.size)),
                         key=lambda other: hausdorff_distance(mine, other))
        else:
            theirs = np.zeros_like(mine)
        out += float(objs.areas[k]) * score(mine, theirs)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def gland_counts(pred: np.ndarray, truth: np.ndarray) -> GlandCounts:
    """TP, FP, FN, object Dice and object Hausdorff of one image (see the module notes).

    pred, truth: integer label maps (H, W), 0 = background.
    """
    pred, truth = _check(pred, truth)
    s, g = _Objects(pred), _Objects(truth)
    areas = {"truth_area": int(g.areas.sum()), "seg_area": int(s.areas.sum())}
    if not s.ids.size or not g.ids.size:  # Dice 0; no partner: Hausdorff inf
        return GlandCounts(0, int(s.ids.size), int(g.ids.size), **areas,
                           hausdorff_truth=math.inf if g.ids.size else 0.0,
                           hausdorff_seg=math.inf if s.ids.size else 0.0)
    ov = _overlaps(s, g)  # (S, G)
    best_g = ov.argmax(1)
    hit = ov[np.arange(s.ids.size), best_g] >= DETECTION_OVERLAP * g.areas[best_g]
    hit &= ov.any(1)
    detected = np.unique(best_g[hit])
    tp = int(detected.size)
    fp = int(s.ids.size - hit.sum()) + int(hit.sum() - tp)
    fn = int(g.ids.size - tp)
    return GlandCounts(
        tp, fp, fn, **areas,
        dice_truth=_weighted(g, s, ov.T, _dice, nearest_if_none=False),
        dice_seg=_weighted(s, g, ov, _dice, nearest_if_none=False),
        hausdorff_truth=_weighted(g, s, ov.T, hausdorff_distance, nearest_if_none=True),
        hausdorff_seg=_weighted(s, g, ov, hausdorff_distance, nearest_if_none=True))


def gland_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``{"f1", "object_dice", "object_hausdorff"}`` of one image, as the GlaS challenge
    defines them. pred, truth: integer label maps (H, W), 0 = background, one label per gland.
    """
    c = gland_counts(pred, truth)
    return {"f1": c.f1, "object_dice": c.object_dice, "object_hausdorff": c.object_hausdorff}


def pooled_gland_metrics(counts: Iterable[GlandCounts]) -> dict[str, float]:
    """A test set's scores as the challenge pools them: F1 of the summed TP/FP/FN, object
    Dice and object Hausdorff over all the set's objects (area weights across its images)."""
    counts = list(counts)
    if not counts:
        raise ValueError("no images to score")
    total = GlandCounts(sum(c.tp for c in counts), sum(c.fp for c in counts),
                        sum(c.fn for c in counts))
    return {"f1": total.f1,
            "object_dice": _object_dice(counts),
            "object_hausdorff": _object_hausdorff(counts),
            "images": len(counts), "tp": total.tp, "fp": total.fp, "fn": total.fn}


def label_glands(foreground: np.ndarray, *, opening_radius: int = 2,
                 min_area: int = 100) -> np.ndarray:
    """Glands from a predicted binary foreground: (H, W) bool -> (H, W) int32 labels.

    A morphological opening with a disk of ``opening_radius`` pixels detaches glands joined
    by thin bridges; connected components (8-connectivity) of what remains are the glands,
    and components smaller than ``min_area`` pixels are dropped as noise. Radius 0 skips the
    opening, ``min_area`` 0 keeps every component.
    """
    mask = np.asarray(foreground, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"foreground must be (H, W), got shape {mask.shape}")
    if opening_radius < 0 or min_area < 0:
        raise ValueError("opening_radius and min_area must be >= 0")
    if opening_radius:
        mask = ndimage.binary_opening(mask, structure=morphology.disk(opening_radius))
    labels = measure.label(mask, connectivity=2)
    if min_area:
        keep = np.bincount(labels.ravel()) >= min_area
        keep[0] = False
        labels = measure.label(keep[labels], connectivity=2)
    return labels.astype(np.int32)
