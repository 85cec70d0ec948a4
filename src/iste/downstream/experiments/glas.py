"""Paper Table 5: U-Net gland segmentation on GlaS with SR images, at x4.

Settings (Test A and Test B scored separately; F1, object Dice, object Hausdorff):

- ``Original HR`` — U-Net trained on the HR training images, tested on HR;
- ``SISR: M`` — the same HR-trained U-Net tested on method M's SR of the LR test images
  (the paper's "SISR" row with M = ISTE);
- ``Trained on M`` — a U-Net trained on M's SR of the LR training images, tested on HR
  (the paper's "HR U-Net" row with M = ISTE, and its "Bicubic" row with M = bicubic).

A U-Net predicts gland vs background per pixel; glands are the connected components of the
predicted foreground after an opening (:func:`iste.downstream.gland_metrics.label_glands`,
``opening_radius`` and ``min_area``). Training samples are random crops (flips, 90 degree
rotations) of the training images; sample i is a pure function of (seed, i).

Output folder: ``sr/`` (cached SR images), ``runs/unet-*`` (resumable training runs),
``results_glas.json`` (per-image counts), ``table5_glas.{md,csv,json}``,
``fig11_segmentations.png``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from iste.downstream.experiments.common import (check_method_folders, run_locked,
                                                 setting_runs, sr_tag, super_resolve_cached)
from iste.downstream.glas import GLAS_SPLITS, GlasItem, load_glas_item, read_glas_index
from iste.downstream.gland_metrics import gland_counts, label_glands
from iste.downstream.images import Degradation, lr_pair, to_input
from iste.downstream.trainer import FitConfig, check_run_settings, fit
from iste.downstream.unet import UNet
from iste.engine.render import QueryOptions
from iste.eval.files import pixels_digest, write_json_atomic
from iste.data.places import folder_places
from iste.eval.methods import Method, load_methods, warn_seen
from iste import distributed as dist_util

__all__ = ["GlasRequest", "run_glas", "GlasCrops", "segment"]

TEST_SPLITS = ("testA", "testB")


@dataclass(frozen=True)
class GlasRequest:
    data: Path
    methods: tuple[str, ...]
    out: Path
    scale: float = 4.0
    degradation: Degradation = "bicubic"
    device: str | None = None
    options: QueryOptions = QueryOptions()
    fit: FitConfig = field(default_factory=lambda: FitConfig(steps=10000, batch_size=8, lr=1e-4))
    crop: int = 256
    unet_width: int = 64
    opening_radius: int = 2
    min_area: int = 100
    max_images: int | None = None  # per split; for quick runs
    figure_image: str | None = None
    progress: bool = True


class GlasCrops(Dataset):
    """Sample i: a random ``crop`` x ``crop`` window of a random training image (flipped and
    rotated by a random multiple of 90 degrees) -> (x (3, crop, crop) in [-1, 1],
    target (crop, crop) int64: 1 = gland)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], *, crop: int,
                 seed: int, length: int):
        self.check_crop(crop, images)
        self.images, self.masks, self.crop = images, masks, crop
        self.seed, self.length = seed, length

    @staticmethod
    def check_crop(crop: int, images: list[np.ndarray]) -> None:
        """ValueError unless every image (H, W, 3) holds a ``crop`` x ``crop`` window."""
        small = min(min(im.shape[:2]) for im in images)
        if crop > small:
            raise ValueError(f"--crop {crop} is larger than the smallest training image "
                             f"({small} px)")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.images)))
        im, mask = self.images[k], self.masks[k]
        r = int(rng.integers(im.shape[0] - self.crop + 1))
        c = int(rng.integers(im.shape[1] - self.crop + 1))
        im, mask = im[r:r + self.crop, c:c + self.crop], mask[r:r + self.crop, c:c + self.crop]
        turns = int(rng.integers(4))
        im, mask = np.rot90(im, turns), np.rot90(mask, turns)
        if rng.random() < 0.5:
            im, mask = im[:, ::-1], mask[:, ::-1]
        return to_input(im), torch.from_numpy((np.ascontiguousarray(mask) > 0).astype(np.int64))


@torch.no_grad()
def segment(unet: torch.nn.Module, image: np.ndarray, *, opening_radius: int,
            min_area: int) -> np.ndarray:
    """uint8 (H, W, 3) -> gland labels int32 (H, W) (whole image in one pass)."""
    device = next(unet.parameters()).device
    logits = unet(to_input(image)[None].to(device))
    foreground = (logits.argmax(1)[0] == 1).cpu().numpy()
    return label_glands(foreground, opening_radius=opening_radius, min_area=min_area)


def _load(index: dict[str, list[GlasItem]], req: GlasRequest):
    """HR crops, annotations and LR images of every split."""
    data = {}
    for split in GLAS_SPLITS:
        for item in index[split][:req.max_images]:
            image, anno = load_glas_item(item)
            try:
                lr, hr = lr_pair(image, req.scale, req.degradation)
            except ValueError as err:
                raise ValueError(f"{item.name}: {err}") from None
            data[item.name] = {"split": split, "hr": hr, "lr": lr,
                               "anno": anno[:hr.shape[0], :hr.shape[1]]}
    return data


def _super_resolve(methods: list[Method], data: dict, req: GlasRequest, info, log) -> dict:
    """method -> image name -> SR uint8 of the HR crop's size (rank 0 computes, the other
    ranks read the verified cache)."""
    sr: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        tag = sr_tag(m, req.scale, req.degradation, req.options)
        if info.is_main:
            log(f"SR of {len(data)} images with {m.name}")
        else:
            dist_util.barrier(info)  # rank 0 writes the cache first
        sr[m.name] = {n: super_resolve_cached(m, d["lr"], d["hr"].shape[:2],
                                              req.out / "sr" / m.name / f"{n}.npy", tag,
                                              req.options)
                      for n, d in data.items()}
        if info.is_main:
            dist_util.barrier(info)
    return sr


def _unet_specs(methods: list[Method], data: dict, train_names: list[str],
                req: GlasRequest) -> dict[str, dict]:
    """The spec of each U-Net's run (:func:`setting_runs`: "hr" and one per method): the
    network, the data and the SR its training images come from."""
    spec = {"network": "unet", "width": req.unet_width, "crop": req.crop, "scale": req.scale,
            "degradation": req.degradation, "train_count": len(train_names),
            "train_data": pixels_digest([data[n][k] for n in train_names for k in ("hr",
                                                                                  "anno")])}
    by_name = {m.name: m for m in methods}
    return {run: {**spec, "train_images": "hr" if method is None else sr_tag(
                by_name[method], req.scale, req.degradation, req.options)}
            for run, method in setting_runs(methods)}


def _train_unets(methods: list[Method], data: dict, train_names: list[str], sr: dict,
                 specs: dict[str, dict], req: GlasRequest, info,
                 device) -> dict[str, torch.nn.Module]:
    """One U-Net per training set: "hr" and one per method (trained on its SR images)."""
    masks = [data[n]["anno"] for n in train_names]
    unets = {}
    for run, method in setting_runs(methods):
        images = [data[n]["hr"] if method is None else sr[method][n] for n in train_names]
        dataset = GlasCrops(images, masks, crop=req.crop, seed=req.fit.seed,
                            length=req.fit.steps * req.fit.batch_size * info.world)
        unets[run] = fit(lambda: UNet(width=req.unet_width), dataset, F.cross_entropy, req.fit,
                         req.out / "runs" / f"unet-{run}", spec=specs[run],
                         device=device, progress=req.progress, desc=f"U-Net {run}")
    return unets


def _evaluate(settings, unets, data: dict, names: dict, sr: dict, req: GlasRequest):
    """Per-image records of every (setting, test image), and per (setting, image) the
    predicted labels (H, W) int32 and the image (H, W, 3) uint8 segmented: the HR test image,
    or for a SISR setting the method's SR of it."""
    records, predictions = [], {}
    for label, run, test_sr in settings:
        for split in TEST_SPLITS:
            for n in names[split]:
                image = data[n]["hr"] if test_sr is None else sr[test_sr][n]
                pred = segment(unets[run], image, opening_radius=req.opening_radius,
                               min_area=req.min_area)
                c = gland_counts(pred, data[n]["anno"])
                records.append({"setting": label, "split": split, "image": n, **asdict(c),
                                "f1": c.f1, "object_dice": c.object_dice,
                                "object_hausdorff": c.object_hausdorff})
                predictions[(label, n)] = pred, image
    return records, predictions


def _figure_image(req: GlasRequest, data: dict, names: dict) -> str:
    test = names["testA"] + names["testB"]
    if req.figure_image is None:  # the test image with the most glands
        return max(test, key=lambda n: len(np.unique(data[n]["anno"])))
    if req.figure_image not in test:
        raise ValueError(f"--figure-image {req.figure_image!r} is not a test image")
    return req.figure_image


def run_glas(req: GlasRequest, log: Callable[[str], None] = print) -> dict:
    """Run every setting (resuming what is done); returns ``{"table", "records", "files"}``.
    A second run into ``req.out`` is refused while this one writes there (two mixed their
    training runs and results)."""
    return run_locked(req, _run_glas, log)


def _run_glas(req: GlasRequest, info: dist_util.DistInfo, device,
              log: Callable[[str], None]) -> dict:
    from iste.downstream.figures_seg import segmentation_figure
    from iste.downstream.tables import table5
    from iste.eval.tables import write_table

    index = read_glas_index(req.data)
    methods = load_methods(req.methods, device=device)
    warn_seen(methods, folder_places(Path(req.data), [i.image for items in index.values()
                                                      for i in items]))
    setting_runs(methods)  # a label that clashes with a fixed run: refused before any work
    check_method_folders(methods, req.out, ("sr/{}", "runs/unet-{}"))
    data = _load(index, req)
    names = {s: [n for n, d in data.items() if d["split"] == s] for s in GLAS_SPLITS}
    figure = _figure_image(req, data, names)
    GlasCrops.check_crop(req.crop, [data[n]["hr"] for n in names["train"]])  # before any SR
    if info.is_main:
        log(f"GlaS: {', '.join(f'{len(v)} {k}' for k, v in names.items())} images, "
            f"x{req.scale:g}")
    specs = _unet_specs(methods, data, names["train"], req)
    for run, spec in specs.items():  # a run folder of other settings: refused before the SR
        check_run_settings(req.out / "runs" / f"unet-{run}", spec, req.fit)
    sr = _super_resolve(methods, data, req, info, log)
    unets = _train_unets(methods, data, names["train"], sr, specs, req, info, device)
    if not info.is_main:
        return {}
    settings = [("Original HR", "hr", None)]
    for m in methods:
        settings += [(f"SISR: {m.name}", "hr", m.name), (f"Trained on {m.name}", m.name, None)]
    records, predictions = _evaluate(settings, unets, data, names, sr, req)
    table = table5(records, [s[0] for s in settings])
    files = write_table(table, req.out)
    write_json_atomic(req.out / "results_glas.json",
                      {"request": {**asdict(req), "fit": asdict(req.fit)}, "records": records})
    files.append(req.out / "results_glas.json")
    files.append(segmentation_figure(
        req.out / "fig11_segmentations.png", data[figure]["hr"], data[figure]["anno"],
        [(label, *predictions[(label, figure)]) for label, _, _ in settings], title=figure))
    return {"table": table, "records": records, "files": files}
