"""The paper's training samples: random-scale crops, degraded, with sampled HR queries."""

from __future__ import annotations


import numpy as np
import torch
from torch.utils.data import Dataset

from iste.data.coords import make_coord
from iste.data.degradations import parse_degradation
from iste.train.config import DataConfig
from iste.train.sources import Source


class CropDataset(Dataset):
    """Sample ``i`` is a pure function of ``(seed, i)``: any index can be drawn in any order.

    Per sample (DESIGN.md section 4): s ~ U(scale_min, scale_max); an HR crop of
    round(patch * s) pixels from a source chosen uniformly (within an in-memory source, an
    image is chosen by area); LR = the configured degradation (paper: blur + bicubic) of HR
    to patch x patch; random flips and transpose; ``sample_q`` HR pixels drawn without
    replacement as (coord, rgb) pairs.

    Returns a dict of tensors:
        lr: (3, patch, patch) float in [0, 1]; coord: (Q, 2) in [-1, 1] (row, col);
        cell: (Q, 2) = (2 / H_crop, 2 / W_crop); gt: (Q, 3) float in [0, 1].
    With ``whole_hr`` (fixed-scale networks, which predict the whole crop) instead of coord,
    cell and gt: hr: (3, H_crop, W_crop) float in [0, 1], the whole (augmented) HR crop.
    """

    def __init__(self, sources: list[Source], config: DataConfig, *, seed: int, length: int,
                 whole_hr: bool = False):
        self.sources, self.cfg, self.seed, self.length = sources, config, seed, length
        self.whole_hr = whole_hr
        need = round(config.patch * config.scale_max)
        usable = [s for s in sources if s.max_side() >= need]
        if not usable:
            sizes = ", ".join(f"{s.name}: {s.max_side()} px" for s in sources)
            raise ValueError(f"training data too small: a crop at scale {config.scale_max} needs "
                             f"{need} x {need} HR pixels, but the largest images are ({sizes})")
        self.usable = usable
        self.degradation = parse_degradation(config.degradation)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, index])
        scale = rng.uniform(cfg.scale_min, cfg.scale_max)
        size = round(cfg.patch * scale)
        source = self.usable[rng.integers(len(self.usable))]
        hr = source.crop(rng, size, cfg.min_tissue)
        lr = self.degradation.apply(hr, scale, (cfg.patch, cfg.patch), rng)
        if cfg.augment:
            if rng.random() < 0.5:
                hr, lr = hr[::-1], lr[::-1]
            if rng.random() < 0.5:
                hr, lr = hr[:, ::-1], lr[:, ::-1]
            if rng.random() < 0.5:
                hr, lr = hr.transpose(1, 0, 2), lr.transpose(1, 0, 2)
        lr_t = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1).float() / 255
        if self.whole_hr:
            hr_t = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1).float() / 255
            return {"lr": lr_t, "hr": hr_t, "scale": torch.tensor(size / cfg.patch)}
        pick = rng.choice(size * size, cfg.sample_q, replace=False)
        coord = make_coord((size, size))[torch.from_numpy(pick)]
        gt = torch.from_numpy(np.ascontiguousarray(hr).reshape(-1, 3)[pick]).float() / 255
        return {
            "lr": lr_t,
            "coord": coord,
            "cell": torch.full_like(coord, 2 / size),
            "gt": gt,
            "scale": torch.tensor(size / cfg.patch),
        }


def validation_tiles(sources: list[Source], *, size: int, count: int,
                     min_tissue: float, seed: int = 1234) -> list[np.ndarray]:
    """A fixed list of ``count`` tissue tiles of ``size`` pixels for validation PSNR."""
    rng = np.random.default_rng(seed)
    usable = [s for s in sources if s.max_side() >= size]
    if not usable:
        sizes = ", ".join(f"{s.name}: {s.max_side()} px" for s in sources)
        raise ValueError(f"validation data too small for data.val_tile {size}: a tile needs "
                         f"{size} x {size} pixels, but the largest images are ({sizes})")
    return [np.ascontiguousarray(usable[i % len(usable)].crop(rng, size, min_tissue))
            for i in range(count)]


