"""PatchCamelyon (Veeling et al. 2018) read from its HDF5 files, streamed with h5py.

The distribution is six files, ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``
(gunzip the ``.h5.gz`` downloads first): dataset ``x`` of (N, 96, 96, 3) uint8 patches and
dataset ``y`` of (N, 1, 1, 1) labels (1 = metastatic tissue in the centre 32 x 32 region).
Splits: 262 144 train, 32 768 valid, 32 768 test. No patches are loaded whole: training reads
one patch per sample, testing reads contiguous blocks; the labels (a byte a patch) are checked
whole when a split is opened, so a label other than 0 or 1 is refused before any training.
Files are opened lazily in each process (a DataLoader worker gets its own handle).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from iste.downstream.images import to_input
from iste.text import error_line
from iste.typed import clip_text

__all__ = ["PCAM_SPLITS", "pcam_files", "PCamSplit", "PCamTrainSet", "PATCH"]

PCAM_SPLITS = ("train", "valid", "test")
PATCH = 96


def pcam_files(root: str | Path, split: str) -> tuple[Path, Path]:
    """Paths of the ``x`` and ``y`` files of ``split``; ValueError when missing."""
    if split not in PCAM_SPLITS:
        raise ValueError(f"unknown PCam split {split!r}")
    root = Path(root)
    paths = tuple(root / f"camelyonpatch_level_2_split_{split}_{k}.h5" for k in "xy")
    for p in paths:
        if not p.is_file():
            gzipped = p.with_name(p.name + ".gz").exists()
            hint = " (gunzip the .h5.gz download first)" if gzipped else ""
            raise ValueError(f"PCam file missing: {p}{hint}")
    return paths  # type: ignore[return-value]


class PCamSplit:
    """One split: ``len``, and :meth:`read` of a block of patches and labels."""

    def __init__(self, root: str | Path, split: str):
        self.split = split
        self.x_path, self.y_path = pcam_files(root, split)
        self._x = self._y = None
        try:
            with h5py.File(self.x_path, "r") as fx, h5py.File(self.y_path, "r") as fy:
                x, y = self._datasets(fx, fy)
                self.length = int(x.shape[0])
                self._labels(y[()], 0)
        except OSError as err:  # h5py: not HDF5, truncated, unreadable
            raise self._unreadable(err) from None
        if not self.length:
            raise ValueError(f"{self.x_path}: PCam split {split!r} has no patches")

    def _unreadable(self, err: OSError, where: str = "") -> ValueError:
        return ValueError(f"cannot read {where}PCam split {self.split!r} ({self.x_path.name}, "
                          f"{self.y_path.name}): {error_line(err)}")

    def _labels(self, raw: np.ndarray, start: int) -> np.ndarray:
        """Labels (n,) int64 of y's values for patches start, start + 1, ... (any shape with n
        values); ValueError naming the first value that is not 0 or 1."""
        raw = np.asarray(raw).reshape(-1)
        ok = (np.isin(raw, (0, 1)) if raw.dtype.kind in "biuf"
              else np.zeros(raw.shape, bool))
        if not ok.all():
            k = int(np.argmin(ok))
            raise ValueError(f"{self.y_path}: labels must be 0 or 1, patch {start + k} has "
                             f"{clip_text(repr(raw[k].item()))}")
        return raw.astype(np.int64)

    def _datasets(self, fx, fy):
        x, y = fx.get("x"), fy.get("y")
        if not isinstance(x, h5py.Dataset) or not isinstance(y, h5py.Dataset):
            raise ValueError(f"{self.x_path.name} / {self.y_path.name}: datasets 'x' and 'y' "
                             "expected")
        if x.ndim != 4 or x.shape[1:] != (PATCH, PATCH, 3) or x.dtype != np.uint8:
            raise ValueError(f"{self.x_path}: x must be (N, 96, 96, 3) uint8, got "
                             f"{x.shape} {x.dtype}")
        if y.ndim < 1 or y.shape[0] != x.shape[0] or int(np.prod(y.shape[1:])) != 1:
            raise ValueError(f"{self.y_path}: y must be (N, 1, 1, 1) with N = {x.shape[0]}, "
                             f"got {y.shape}")
        return x, y

    def _open(self):
        if self._x is None:
            self._x, self._y = self._datasets(h5py.File(self.x_path, "r"),
                                              h5py.File(self.y_path, "r"))
        return self._x, self._y

    def __len__(self) -> int:
        return self.length

    def identity(self) -> dict[str, list[int]]:
        """(bytes, mtime_ns) of the split's two files: a network trained on them is redone
        when they change (hashing gigabytes of patches on every run would cost minutes)."""
        return {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                for p in (self.x_path, self.y_path)}

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Patches [start, stop): (n, 96, 96, 3) uint8 and labels (n,) int64."""
        x, y = self._open()
        try:
            patches, raw = np.asarray(x[start:stop]), y[start:stop]
        except OSError as err:  # a damaged chunk: h5py's traceback otherwise
            raise self._unreadable(err, f"patches {start}-{stop} of ") from None
        return patches, self._labels(raw, start)

    def __getstate__(self):  # h5py handles do not pickle: a worker reopens the files
        return {**self.__dict__, "_x": None, "_y": None}


class PCamTrainSet(Dataset):
    """Sample ``i``: patch ``perm_e[i mod N]`` of epoch ``e = i // N`` (a seeded permutation
    per epoch), randomly flipped and rotated by multiples of 90 degrees.

    Returns (x (3, 96, 96) float in [-1, 1], label int64).
    """

    def __init__(self, split: PCamSplit, *, seed: int, length: int, limit: int | None = None):
        self.split, self.seed, self.length = split, seed, length
        self.n = len(split) if limit is None else min(limit, len(split))
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        epoch = i // self.n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][i % self.n])

    def __getitem__(self, i: int):
        k = self._index(i)
        x, y = self.split.read(k, k + 1)
        rng = np.random.default_rng([self.seed, i, 1])
        patch = np.rot90(x[0], int(rng.integers(4)))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        return to_input(patch), torch.tensor(int(y[0]))

