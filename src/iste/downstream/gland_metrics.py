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

Over a test set (:func:`pooled_gland_metrics`) F1 comes from TP, FP and FN summed over the
images, object Dice and object Hausdorff are means over the images.

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
    """Per-image results: detection counts and the two object-level scores."""

    tp: int
    fp: int
    fn: int
    object_dice: float
    object_hausdorff: float

    @property
    def f1(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)


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
    """sum_k |O_k| / sum|O| * score(O_k, partner of O_k); ``overlap`` is (objs, partner)."""
    total = objs.areas.sum()
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
        out += objs.areas[k] / total * score(mine, theirs)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def gland_counts(pred: np.ndarray, truth: np.ndarray) -> GlandCounts:
    """TP, FP, FN, object Dice and object Hausdorff of one image (see the module notes).

    pred, truth: integer label maps (H, W), 0 = background.
    """
    pred, truth = _check(pred, truth)
    s, g = _Objects(pred), _Objects(truth)
    if not s.ids.size or not g.ids.size:
        both_empty = not s.ids.size and not g.ids.size
        return GlandCounts(0, int(s.ids.size), int(g.ids.size), float(both_empty),
                           0.0 if both_empty else math.inf)
    ov = _overlaps(s, g)  # (S, G)
    best_g = ov.argmax(1)
    hit = ov[np.arange(s.ids.size), best_g] >= DETECTION_OVERLAP * g.areas[best_g]
    hit &= ov.any(1)
    detected = np.unique(best_g[hit])
    tp = int(detected.size)
    fp = int(s.ids.size - hit.sum()) + int(hit.sum() - tp)
    fn = int(g.ids.size - tp)
    dice = 0.5 * (_weighted(g, s, ov.T, _dice, nearest_if_none=False)
                  + _weighted(s, g, ov, _dice, nearest_if_none=False))
    haus = 0.5 * (_weighted(g, s, ov.T, hausdorff_distance, nearest_if_none=True)
                  + _weighted(s, g, ov, hausdorff_distance, nearest_if_none=True))
    return GlandCounts(tp, fp, fn, float(dice), float(haus))


def gland_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``{"f1", "object_dice", "object_hausdorff"}`` of one image, as the GlaS challenge
    defines them. pred, truth: integer label maps (H, W), 0 = background, one label per gland.
    """
    c = gland_counts(pred, truth)
    return {"f1": c.f1, "object_dice": c.object_dice, "object_hausdorff": c.object_hausdorff}


def pooled_gland_metrics(counts: Iterable[GlandCounts]) -> dict[str, float]:
    """A test set's scores: F1 of the summed TP/FP/FN, mean object Dice and Hausdorff."""
    counts = list(counts)
    if not counts:
        raise ValueError("no images to score")
    total = GlandCounts(sum(c.tp for c in counts), sum(c.fp for c in counts),
                        sum(c.fn for c in counts), 0.0, 0.0)
    return {"f1": total.f1,
            "object_dice": float(np.mean([c.object_dice for c in counts])),
            "object_hausdorff": float(np.mean([c.object_hausdorff for c in counts])),
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
