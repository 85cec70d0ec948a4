"""Paper Fig. 11: one GlaS test image, its annotation and every setting's segmentation.

Each gland is drawn in its own colour over the image it was segmented from (skimage's
``label2rgb``): the HR image, or a SISR setting's SR image, whose artefacts are what its
U-Net saw (over the HR image a reader took them for the U-Net's mistakes). Panel titles give
that image's F1 / object Dice / object Hausdorff.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from iste.downstream.gland_metrics import gland_metrics
from iste.eval.plotting import new_figure, save_png

__all__ = ["segmentation_figure", "overlay"]


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) image with each label tinted (40 %) and outlined in black -> float RGB
    in [0, 1]; background pixels keep their colours."""
    colours = label2rgb(labels, bg_label=0)
    out = image.astype(np.float64) / 255
    inside = labels > 0
    out[inside] = 0.6 * out[inside] + 0.4 * colours[inside]
    out[find_boundaries(labels, mode="outer")] = 0
    return out


def segmentation_figure(path: Path, image: np.ndarray, truth: np.ndarray,
                        predictions: Sequence[tuple[str, np.ndarray, np.ndarray]], *,
                        title: str) -> Path:
    """Image (H, W, 3) uint8, its ground truth labels (H, W) and one panel per (setting,
    labels (H, W), the image (H, W, 3) uint8 they were segmented from), up to 4 panels a
    row."""
    panels = [("Image", image, None), ("Ground truth", overlay(image, truth), None)]
    for label, pred, segmented in predictions:
        m = gland_metrics(pred, truth)
        panels.append((label, overlay(segmented, pred),
                       f"F1 {m['f1']:.2f} Dice {m['object_dice']:.2f} "
                       f"H {m['object_hausdorff']:.0f}"))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    aspect = image.shape[1] / image.shape[0]
    fig, axes = new_figure(rows, cols, panel=3.0)
    fig.set_size_inches(3.0 * aspect * cols, 3.45 * rows)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (label, shown, note) in zip(axes.flat, panels):
        ax.imshow(shown)
        ax.set_title(label if note is None else f"{label}\n{note}", fontsize=9)
    fig.suptitle(f"GlaS {title}: U-Net segmentations (one colour per gland)", fontsize=10)
    return save_png(fig, path)
