"""Paper Table 6: ResNet-50 tumour detection on PCam with SR test images, at x2.

One ResNet-50 is trained on PCam's training split (HR patches, flips and 90 degree rotations),
then tested on the test split in these settings:

- ``Original`` — the HR 96 x 96 patches;
- ``Low resolution`` — the 48 x 48 LR patches themselves (the network pools globally);
- one row per method (``bicubic``, ``LIIF=...``, ``default`` ...) — the method's SR of the LR
  patches back to 96 x 96.

At a scale that does not divide 96 every row sees the HR cropped to what its LR covers
(:func:`~iste.data.degrade.crop_to_scale`: 95 x 95 at x2.5), ``Original`` included, so the
rows score the same pixels.

Accuracy, F1 of the tumour class (threshold 0.5 on the softmax) and ROC AUC; the validation
split's accuracy on HR patches is logged as a check of the trained network. The validation and
test splits are read in blocks (``block`` patches); each test block's tumour probabilities are
cached under ``prob/SETTING/`` (its SR is made only when they are not), so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from iste.downstream.cache import cached_array
from iste.downstream.experiments.common import check_method_folders, run_locked, sr_tag
from iste.downstream.images import Degradation, lr_pair, to_input
from iste.downstream.pcam import PCamSplit, PCamTrainSet
from iste.downstream.resnet50 import resnet50
from iste.downstream.trainer import WEIGHTS_FILE, FitConfig, fit
from iste.engine.render import QueryOptions
from iste.eval.files import pixels_digest, write_json_atomic
from iste.data.places import place
from iste.eval.methods import Method, load_methods, warn_seen
from iste.digest import sha256_file
from iste import distributed as dist_util

__all__ = ["PCamRequest", "run_pcam", "classification_scores", "FIXED_SETTINGS"]

FIXED_SETTINGS = ("Original", "Low resolution")


@dataclass(frozen=True)
class PCamRequest:
    data: Path
    methods: tuple[str, ...]
    out: Path
    scale: float = 2.0
    degradation: Degradation = "bicubic"
    device: str | None = None
    options: QueryOptions = QueryOptions()
    fit: FitConfig = field(default_factory=lambda: FitConfig(steps=12000, batch_size=64,
                                                             lr=1e-4, weight_decay=1e-5))
    resnet_width: int = 64
    block: int = 1024
    max_train: int | None = None
    max_test: int | None = None
    progress: bool = True


def classification_scores(prob: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 (positive = tumour, prediction prob >= 0.5) and ROC AUC (rank form of
    the Mann-Whitney U; nan when one class is absent) of tumour probabilities (N,)."""
    pred = prob >= 0.5
    truth = labels.astype(bool)
    tp = int((pred & truth).sum())
    fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    pos, neg = int(truth.sum()), int((~truth).sum())
    auc = float("nan")
    if pos and neg:
        ranks = rankdata(prob)
        auc = (ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg)
    return {"accuracy": float((pred == truth).mean()), "f1": float(f1), "auc": float(auc)}


@torch.no_grad()
def _tumour_prob(net: torch.nn.Module, patches: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 (N, H, W, 3) -> tumour probabilities (N,) float32."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(patches), batch):
        x = torch.stack([to_input(p) for p in patches[i:i + batch]]).to(device)
        out.append(torch.softmax(net(x).float(), 1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _hr_probabilities(net: torch.nn.Module, split: PCamSplit, n: int,
                      block: int) -> tuple[np.ndarray, np.ndarray]:
    """Tumour probabilities (n,) of the first ``n`` HR patches of ``split``, read ``block``
    patches at a time (the validation split whole is 0.9 GB), and their labels (n,)."""
    probs, labels = [], []
    for start in range(0, n, block):
        x, y = split.read(start, min(n, start + block))
        probs.append(_tumour_prob(net, x))
        labels.append(y)
    return np.concatenate(probs), np.concatenate(labels)


def _block_settings(block: np.ndarray, req: PCamRequest, methods) -> dict[str, Callable]:
    """setting -> function giving the block's uint8 patches in that setting."""
    pairs = [lr_pair(p, req.scale, req.degradation) for p in block]
    lr = np.stack([p[0] for p in pairs])
    hr = np.stack([p[1] for p in pairs])
    out = dict(zip(FIXED_SETTINGS, (lambda: hr, lambda: lr)))
    for m in methods:
        out[m.name] = (lambda m=m: np.stack([m.upscale(x, hr.shape[1:3], options=req.options)
                                             for x in lr]))
    return out


def _test_probabilities(net, net_id: str, test: PCamSplit, n: int, methods: list[Method],
                        tags: dict[str, dict],
                        req: PCamRequest) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tumour probabilities of the first ``n`` test patches per setting, block by block
    (each block cached under ``prob/SETTING/``), and the labels. ``tags``: method name ->
    :func:`sr_tag`."""
    from tqdm import tqdm

    probs: dict[str, list[np.ndarray]] = {}
    labels = []
    for start in tqdm(range(0, n, req.block), desc="PCam test", unit="block",
                      disable=not req.progress):
        stop = min(n, start + req.block)
        x, y = test.read(start, stop)
        digest = pixels_digest([x, y])  # the test patches themselves: changed data, redone
        labels.append(y)
        for setting, patches in _block_settings(x, req, methods).items():
            tag = {"net": net_id, "setting": setting, "start": start, "stop": stop,
                   "scale": req.scale, "degradation": req.degradation,
                   "method": tags.get(setting), "patches": digest}
            path = req.out / "prob" / setting / f"{start:08d}.npy"
            probs.setdefault(setting, []).append(
                cached_array(path, tag, lambda p=patches: _tumour_prob(net, p())))
    return {s: np.concatenate(p) for s, p in probs.items()}, np.concatenate(labels)


def run_pcam(req: PCamRequest, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the classifier, test every setting; ``{"table", "scores", "files"}``.
    A second run into ``req.out`` is refused while this one writes there (two mixed their
    training runs and results)."""
    return run_locked(req, _run_pcam, log)


def _run_pcam(req: PCamRequest, info: dist_util.DistInfo, device,
              log: Callable[[str], None]) -> dict:
    from iste.downstream.tables import table6
    from iste.eval.tables import write_table

    train, valid, test = (PCamSplit(req.data, s) for s in ("train", "valid", "test"))
    methods = load_methods(req.methods, device=device)
    warn_seen(methods, (place(req.data),))
    # in any case: prob/original is prob/Original on a disk that ignores case
    fixed = {name.casefold() for name in FIXED_SETTINGS}
    clash = [m.name for m in methods if m.name.casefold() in fixed]
    if clash:
        raise ValueError(f"method name {clash[0]!r} is a fixed row of Table 6; label it "
                         "differently (LABEL=...)")
    check_method_folders(methods, req.out, ("prob/{}",))
    # before the training: a fixed-scale method without --scale is refused there
    tags = {m.name: sr_tag(m, req.scale, req.degradation, req.options) for m in methods}
    spec = {"network": "resnet50", "width": req.resnet_width, "max_train": req.max_train,
            "train_files": train.identity()}
    dataset = PCamTrainSet(train, seed=req.fit.seed, limit=req.max_train,
                           length=req.fit.steps * req.fit.batch_size * info.world)
    net = fit(lambda: resnet50(width=req.resnet_width), dataset, F.cross_entropy, req.fit,
              req.out / "runs" / "resnet50", spec=spec, device=device, progress=req.progress,
              desc="ResNet-50")
    if not info.is_main:
        return {}
    n_val = min(len(valid), req.max_test or len(valid))
    val_acc = classification_scores(*_hr_probabilities(net, valid, n_val, req.block))["accuracy"]
    log(f"ResNet-50: validation accuracy on HR patches {val_acc:.4f} ({n_val} patches)")
    n = min(len(test), req.max_test or len(test))
    net_id = sha256_file(req.out / "runs" / "resnet50" / WEIGHTS_FILE)
    probs, labels = _test_probabilities(net, net_id, test, n, methods, tags, req)
    scores = {s: classification_scores(p, labels) for s, p in probs.items()}
    table = table6(scores, n)
    files = write_table(table, req.out)
    write_json_atomic(req.out / "results_pcam.json",
                      {"request": {**asdict(req), "fit": asdict(req.fit)}, "test_patches": n,
                       "validation_accuracy": val_acc, "scores": scores})
    files.append(req.out / "results_pcam.json")
    return {"table": table, "scores": scores, "files": files}
