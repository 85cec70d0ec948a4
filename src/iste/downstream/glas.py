"""GlaS (MICCAI 2015 gland segmentation challenge) read in the layout it is distributed in.

The "Warwick QU Dataset" folder holds, flat:

- ``train_N.bmp`` / ``testA_N.bmp`` / ``testB_N.bmp`` — RGB images (85 / 60 / 20 of them);
- ``train_N_anno.bmp`` etc. — the instance annotation: 0 = background, one value per gland
  (a binary mask, 0/255 or 0/1 as some copies and converters hold it, is split into its
  connected regions);
- ``Grade.csv`` — one row per image; its first column (``name``) names the image without
  suffix, and the prefix before ``_`` is the split. Further columns (patient, grades) are kept
  as text but not used.

Every row of Grade.csv must have its image and annotation, of the same size.

Convention: images uint8 (H, W, 3); annotations int32 (H, W).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


__all__ = ["GLAS_SPLITS", "GlasItem", "read_glas_index", "load_glas_item"]

GLAS_SPLITS = ("train", "testA", "testB")


@dataclass(frozen=True)
class GlasItem:
    name: str  # e.g. "testA_12"
    split: str
    image: Path
    annotation: Path
    grade: str = ""


def read_glas_index(root: str | Path) -> dict[str, list[GlasItem]]:
    """The images of each split named by ``root/Grade.csv`` (file order kept).

    ValueError for a missing Grade.csv, an unknown split prefix, an image named twice, a
    missing image or annotation, or a split without images.
    """
    root = Path(root)
    grade = root / "Grade.csv"
    if not grade.is_file():
        raise ValueError(f"{root} is not a GlaS folder: no Grade.csv (expected the Warwick QU "
                         "layout: train_N.bmp, train_N_anno.bmp, testA_N..., Grade.csv)")
    try:
        with grade.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{grade}: not UTF-8 text (byte {err.start}); save it as UTF-8 "
                         "(the Warwick QU download is)") from None
    if not rows or rows[0][0].strip().lower() != "name":
        raise ValueError(f"{grade}: the first column must be headed 'name'")
    out: dict[str, list[GlasItem]] = {s: [] for s in GLAS_SPLITS}
    seen: set[str] = set()
    for row in rows[1:]:
        name = row[0].strip()
        if name in seen:  # it would count twice in the metrics and in --max-images
            raise ValueError(f"{grade} names {name!r} twice")
        seen.add(name)
        split = name.split("_", 1)[0]
        if split not in out:
            raise ValueError(f"{grade}: image {name!r} is in no known split "
                             f"({', '.join(GLAS_SPLITS)})")
        image, anno = root / f"{name}.bmp", root / f"{name}_anno.bmp"
        for path in (image, anno):
            if not path.is_file():
                raise ValueError(f"{grade} names {name!r} but {path.name} is missing")
        out[split].append(GlasItem(name, split, image, anno,
                                   row[2].strip() if len(row) > 2 else ""))
    empty = [s for s, items in out.items() if not items]
    if empty:
        raise ValueError(f"{grade}: no images in split(s) {', '.join(empty)}")
    return out


def load_glas_item(item: GlasItem) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), annotation int32 (H, W)) of one GlaS image."""
    try:
        with Image.open(item.image) as im:
            image = np.array(im.convert("RGB"))
        with Image.open(item.annotation) as im:
            anno = np.array(im)
    except OSError as err:
        raise ValueError(f"{item.name}: cannot read its BMP files ({err})") from err
    if anno.ndim == 3:  # some copies store the labels as gray RGB
        if not (anno[..., :1] == anno).all():
            raise ValueError(f"{item.annotation}: an annotation must be a label map "
                             "(single channel, or RGB with equal channels)")
        anno = anno[..., 0]
    if anno.shape != image.shape[:2]:
        raise ValueError(f"{item.name}: annotation {anno.shape} and image {image.shape[:2]} "
                         "differ in size")
    return image, _instances(anno, item)


def _instances(anno: np.ndarray, item: GlasItem) -> np.ndarray:
    """The instance label map (H, W) int32 of an annotation (ValueError for values that are
    not whole labels >= 0: a float map's 1.6 was truncated to 1). A binary mask (0 and 255,
    or 0 and 1: a 1-bit BMP, a converter's 0/1 mask, as some copies of GlaS store it) would
    make every gland of the image one object in the object-level metrics: its connected
    regions (8-connected) become the glands, with a warning. A 0/1 map of one region is
    a label map of one gland as much as a mask: kept as it is, unsaid."""
    if anno.dtype == bool:  # a 1-bit BMP
        anno = anno.astype(np.uint8)
    values = np.unique(anno)
    bad = values[(values != np.round(values)) | (values < 0) | (values > 2**31 - 1)]
    if bad.size:  # a float map was truncated to labels it does not hold
        raise ValueError(f"{item.annotation}: an annotation holds whole gland labels >= 0; "
                         f"it has {bad[0]:g} ({anno.dtype} values)")
    if values.size == 2 and values[0] == 0 and values[1] in (1, 255):
        from skimage.measure import label

        labels = label(anno > 0, connectivity=2).astype(np.int32)
        if values[1] == 255 or labels.max() > 1:
            warnings.warn(f"{item.annotation.name} is a binary mask (0 and {values[1]:g}): "
                          f"its {int(labels.max())} connected regions are taken as the glands")
            return labels
    return anno.astype(np.int32)
