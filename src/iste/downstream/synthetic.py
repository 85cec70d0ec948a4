"""Small synthetic GlaS and PCam datasets, written in exactly the distributed formats, for the
tests and for smoke runs of ``iste downstream`` (``scripts/downstream_synthetic.py``).

GlaS: pink "stroma" with elliptic glands (dark rim, pale lumen), BMP images, ``_anno.bmp``
instance labels and a ``Grade.csv``. PCam: 96 x 96 patches, tumour patches crowded with large
dark nuclei, in the six HDF5 files with datasets ``x`` (N, 96, 96, 3) uint8 and ``y``
(N, 1, 1, 1) uint8.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image


__all__ = ["gland_image", "write_glas", "pcam_patch", "write_pcam"]


def gland_image(rng: np.random.Generator, shape=(64, 80), glands: int = 3):
    """An H&E-like image with elliptic glands (pale lumen, dark rim) and their labels."""
    h, w = shape
    rows, cols = np.mgrid[:h, :w]
    image = np.empty((h, w, 3), np.float32)
    image[:] = (225, 170, 205)  # eosin stroma
    image += rng.normal(0, 8, image.shape)
    labels = np.zeros(shape, np.uint8)
    for k in range(glands):
        cy, cx = rng.uniform(12, h - 12), rng.uniform(12, w - 12)
        ry, rx = rng.uniform(6, 11, 2)
        d = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2
        inside = (d <= 1) & (labels == 0)
        labels[inside] = k + 1
        image[inside & (d > 0.45)] = (110, 60, 150)  # hematoxylin rim
        image[inside & (d <= 0.45)] = (245, 235, 240)  # lumen
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_glas(root: Path, counts=(("train", 4), ("testA", 2), ("testB", 2)), seed: int = 0,
               shape=(64, 80)) -> Path:
    """Warwick QU layout: NAME.bmp, NAME_anno.bmp and Grade.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    for split, n in counts:
        for i in range(1, n + 1):
            image, labels = gland_image(rng, shape)
            Image.fromarray(image).save(root / f"{split}_{i}.bmp")
            Image.fromarray(labels).save(root / f"{split}_{i}_anno.bmp")
            lines.append(f"{split}_{i},{i},{'benign' if i % 2 else 'malignant'},adenomatous")
    (root / "Grade.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def pcam_patch(rng: np.random.Generator, tumour: bool) -> np.ndarray:
    """96 x 96 patch: tumour patches carry dense large dark nuclei."""
    patch = np.empty((96, 96, 3), np.float32)
    patch[:] = (230, 180, 210)
    rows, cols = np.mgrid[:96, :96]
    for _ in range(40 if tumour else 8):
        cy, cx = rng.uniform(0, 96, 2)
        r = rng.uniform(4, 7) if tumour else rng.uniform(2, 3)
        patch[(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = (90, 50, 140)
    return np.clip(patch + rng.normal(0, 6, patch.shape), 0, 255).astype(np.uint8)


def write_pcam(root: Path, sizes=(("train", 24), ("valid", 8), ("test", 12)),
               seed: int = 0) -> Path:
    """The six HDF5 files, datasets x (N, 96, 96, 3) uint8 and y (N, 1, 1, 1) uint8."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in sizes:
        y = (np.arange(n) % 2).astype(np.uint8)
        rng.shuffle(y)
        x = np.stack([pcam_patch(rng, bool(t)) for t in y])
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y.reshape(n, 1, 1, 1))
    return root
