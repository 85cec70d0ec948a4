"""Training speed: samples/s of ``iste train`` against the published ``train.py``, one run.

Both sides train the paper's ISTE (EDSR-baseline or SwinIR encoder) on the same HR tiles (the
CMU training split cut into 256 x 256 PNG tiles with tissue, written to a folder), batch 4,
48 x 48 LR crops at a random scale in [1, 4], 2304 sampled HR pixels, Adam. Each side runs in
a fresh child process (``python -m iste.bench.training JOB.json``), in interleaved rounds:

- ours: :func:`iste.train.loop.train` itself (data loader in the process, no validation);
  iteration times from its per-step log;
- published: the checkout's own ``train.train`` loop (its data wrapper, model, L1 loss, its
  per-step PSNR and logging, backward, Adam), fed by its own ``image-folder`` +
  ``sr-implicit-downsampled`` datasets. Patched in that process only (as in
  :mod:`iste.bench.published`): ``.cuda()`` is a no-op; its TensorBoard writer is a no-op;
  ``torchvision.transforms`` (which does not import beside this torch) is replaced by its PIL
  equivalents (ToTensor, ToPILImage, Resize with PIL bicubic), and timm's ``DropPath``,
  ``to_2tuple`` and ``trunc_normal_`` (SwinIR) by the same operations from torch.

The first ``warmup`` iterations (default 2) are not counted: the first two steps of either
side fill the heap (page faults on fresh memory, up to ~1.4x the steady step time; measured in
docs/performance.md). Their seconds (with the start-up) are reported as ``warmup_s``.
samples/s = batch x counted iterations / their wall time.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ENCODERS = {"edsr-baseline": "edsr-iste", "swinir": "swinir-iste"}  # -> our bundled config
_PUBLISHED_ENCODER = {"edsr-baseline": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
                      "swinir": {"name": "swinir", "args": {"no_upsampling": True}}}
BATCH, SAMPLE_Q, PATCH = 4, 2304, 48


def write_tiles(folder: Path, size: int = 256, count: int = 8) -> Path:
    """``count`` tissue tiles of the CMU training split as PNGs in ``folder``."""
    from iste.data.imagewrite import write_image
    from iste.data.samples import tissue_fraction
    from iste.slides.samples import load_cmu_region

    folder.mkdir(parents=True, exist_ok=True)
    found = 0
    for pixels in load_cmu_region("train"):
        for row in range(pixels.shape[0] // size):
            for col in range(pixels.shape[1] // size):
                tile = pixels[row * size:(row + 1) * size, col * size:(col + 1) * size]
                if found < count and tissue_fraction(tile) >= 0.5:
                    write_image(folder / f"tile{found:02d}.png", np.ascontiguousarray(tile))
                    found += 1
    if not found:
        raise RuntimeError("no tissue tile in the CMU training split")
    return folder


def _rate(stamps: list[float], warmup: int) -> dict:
    """stamps[i] = end of iteration i (stamps[0] = start)."""
    counted = stamps[warmup:]
    if len(counted) < 2:
        raise ValueError("need at least one counted iteration")
    seconds = counted[-1] - counted[0]
    steps = len(counted) - 1
    return {"samples_per_s": BATCH * steps / seconds, "seconds_per_step": seconds / steps,
            "steps": steps, "warmup_s": counted[0] - stamps[0]}


# ---- ours ---------------------------------------------------------------------------------
def our_config(job: dict):
    """The bundled paper config of ``job["encoder"]`` cut to the benchmark: the job's tiles,
    ``warmup + steps`` steps (not epochs), batch :data:`BATCH`, :data:`SAMPLE_Q` queries,
    no validation, ``job["precision"]``."""
    from dataclasses import replace

    from iste.train.config import load_train_config

    cfg = load_train_config(ENCODERS[job["encoder"]])
    steps = job["warmup"] + job["steps"]
    return replace(cfg, data=replace(cfg.data, train=(job["tiles"],), val=(), sample_q=SAMPLE_Q),
                   run=replace(cfg.run, steps=steps, epochs=None, repeat=1, batch_size=BATCH,
                               log_every=1, workers=0,
                               checkpoint_every=10 * steps, val_every=10 * steps,
                               precision=job.get("precision", "fp32")))


def ours(job: dict) -> dict:
    import torch

    from iste.train.loop import train

    cfg = our_config(job)
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.time()
        train(cfg, Path(run_dir), device=torch.device(job["device"]), progress=False)
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").open(
            encoding="utf-8")]
    stamps = [t0] + [r["time"] for r in records if "loss" in r]
    return _rate(stamps, job["warmup"])


# ---- the floor: dense products at the CPU's GEMM rate --------------------------------------
def step_flops(encoder: str) -> float:
    """FLOPs of the dense products (matmuls, convolutions) of one training step of our paper
    config for ``encoder``: forward and backward of a whole batch (:data:`BATCH` crops of
    :data:`PATCH` x :data:`PATCH`, :data:`SAMPLE_Q` queries each, uniform over the crop),
    counted by torch's ``FlopCounterMode`` as the step runs on the CPU. Elementwise work is
    not counted. STF's rows are one per distinct LR pixel a sample's queries read: ~1 456 of
    2 304 with these uniform queries (as at large scales), all 2 304 at scale 1, which adds
    31 GFLOP (13 % of an EDSR-baseline ISTE step, 4 % of a SwinIR one); so the count, and
    the floor made from it, is the lower end of the protocol's steps."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from iste.models.layers.linear import flop_formulas
    from iste.models.registry import build_model
    from iste.train.config import load_train_config

    gen = torch.Generator().manual_seed(0)
    model = build_model(load_train_config(ENCODERS[encoder]).model).train()
    lr = torch.rand(BATCH, 3, PATCH, PATCH, generator=gen) * 2 - 1
    coord = torch.rand(BATCH, SAMPLE_Q, 2, generator=gen) * 2 - 1
    cell = torch.full((BATCH, SAMPLE_Q, 2), 2 / (2.5 * PATCH))
    gt = torch.rand(BATCH, SAMPLE_Q, 3, generator=gen) * 2 - 1
    params = [p for p in model.parameters() if p.requires_grad]
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with counter:
        torch.autograd.grad(F.l1_loss(model(lr, coord, cell), gt), params)
    return float(counter.get_total_flops())


def gemm_rate_per_thread(repeats: int = 5) -> float:
    """The best fp32 FLOP/s of one CPU thread over a few dense products of the paper configs'
    shapes (SwinIR's 180 -> 540 projection and an ISTE decoder layer through iste's linear, a
    3 x 3 convolution of 64 channels, a square BLAS product), each the best of ``repeats``."""
    import torch
    import torch.nn.functional as F

    from iste.models.layers.linear import linear

    gen = torch.Generator().manual_seed(0)
    own = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = []
        for rows, fan_in, fan_out in ((4608, 180, 540), (4096, 256, 256)):
            x = torch.randn(rows, fan_in, generator=gen)
            w, b = torch.randn(fan_out, fan_in, generator=gen), torch.randn(fan_out, generator=gen)
            cases.append((2 * rows * fan_in * fan_out, lambda x=x, w=w, b=b: linear(x, w, b)))
        image = torch.randn(1, 64, 48, 48, generator=gen)
        kernel = torch.randn(64, 64, 3, 3, generator=gen)
        cases.append((2 * 48 * 48 * 64 * 64 * 9, lambda: F.conv2d(image, kernel, padding=1)))
        square = torch.randn(1024, 1024, generator=gen)
        cases.append((2 * 1024 ** 3, lambda: square @ square))
        best = 0.0
        with torch.no_grad():
            for flops, run in cases:
                run()
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run()
                    best = max(best, flops / (time.perf_counter() - t0))
        return best
    finally:
        torch.set_num_threads(own)


def step_floor(encoder: str, threads: int) -> dict:
    """The least time any fp32 implementation of our step's products could take here: its
    FLOPs (:func:`step_flops`) at ``threads`` x the best one-thread GEMM rate
    (:func:`gemm_rate_per_thread`), as if every thread ran at that rate all the time."""
    flops, rate = step_flops(encoder), gemm_rate_per_thread()
    return {"step_gflop": flops / 1e9, "gemm_gflops_per_thread": rate / 1e9,
            "floor_s_per_step": flops / (threads * rate)}


# ---- published ----------------------------------------------------------------------------
def _torchvision_stand_in() -> None:
    """``torchvision.transforms`` as the published data code uses it, through PIL."""
    import torch
    from PIL import Image

    def to_tensor():
        return lambda img: (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
                            .permute(2, 0, 1).contiguous())

    def to_pil():
        return lambda t: Image.fromarray((t.mul(255).byte().permute(1, 2, 0).numpy()))

    def resize(size, interpolation=Image.BILINEAR):
        def apply(img):
            if isinstance(size, int):  # the shorter side to ``size``, as torchvision does
                w, h = img.size
                short = min(w, h)
                new = (size, round(h * size / w)) if w == short else (round(w * size / h), size)
            else:
                new = (size[1], size[0])
            return img.resize(new, interpolation)
        return apply

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    tr.ToTensor, tr.ToPILImage, tr.Resize = to_tensor, to_pil, resize
    tv.transforms = tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr})


def _timm_stand_in() -> None:
    """timm's DropPath (stochastic depth), to_2tuple and trunc_normal_, from torch."""
    import torch
    from torch import nn

    class DropPath(nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    del torch


class _Timed:
    """A finite loader that stamps the time each batch is asked for (= the end of the
    previous iteration)."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self.stamps = loader, n, []

    def __len__(self):
        return self.n

    def __iter__(self):
        self.stamps = [time.time()]
        for i, batch in enumerate(self.loader):
            if i == self.n:
                break
            yield batch
            self.stamps.append(time.time())


def published(job: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader

    _torchvision_stand_in()
    _timm_stand_in()
    from iste.bench.published import import_published

    device = torch.device(job["device"])  # its .cuda() calls move there, as ours runs
    import_published(job["checkout"], device)  # the checkout on sys.path
    os.chdir(job["checkout"])
    import datasets
    import models
    import train as published_train
    import utils

    n = job["warmup"] + job["steps"]
    spec = {"dataset": {"name": "image-folder", "args": {"root_path": job["tiles"], "repeat": 20,
                                                         "cache": "in_memory"}},
            "wrapper": {"name": "sr-implicit-downsampled",
                        "args": {"inp_size": PATCH, "scale_max": 4, "augment": True,
                                 "sample_q": SAMPLE_Q}},
            "batch_size": BATCH}
    dataset = datasets.make(spec["wrapper"], args={"dataset": datasets.make(spec["dataset"])})
    loader = _Timed(DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0), n)
    config = {"train_dataset": spec, "data_norm": {"inp": {"sub": [0.5], "div": [0.5]},
                                                   "gt": {"sub": [0.5], "div": [0.5]}},
              "model": {"name": "iste", "args": {
                  "encoder_spec": _PUBLISHED_ENCODER[job["encoder"]],
                  "imnet_spec": {"name": "mlp", "args": {"out_dim": 3,
                                                         "hidden_list": [256, 256, 256]}},
                  "hidden_dim": 256}},
              "optimizer": {"name": "adam", "args": {"lr": 2e-4}}}
    torch.manual_seed(0)
    random.seed(0)  # its crops, scales and flips: the same samples in every run, as ours
    np.random.seed(0)
    model = models.make(config["model"]).to(device)
    optimizer = utils.make_optimizer(model.parameters(), config["optimizer"])
    published_train.config = config
    published_train.log = lambda *a, **k: None
    published_train.writer = types.SimpleNamespace(add_scalars=lambda *a, **k: None,
                                                   add_scalar=lambda *a, **k: None)
    published_train.train(loader, model, optimizer, 1)
    return _rate(loader.stamps, job["warmup"])


def main(argv: list[str]) -> int:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    torch.set_num_threads(int(job["threads"]))
    result = ours(job) if job["kind"] == "ours" else published(job)
    print(json.dumps({**result, "threads": torch.get_num_threads()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def training_study(cfg, workdir: Path, *, encoders=("edsr-baseline", "swinir"), steps: int = 3,
                   warmup: int = 2, rounds: int = 1, log=print,
                   codes: tuple[str, ...] | None = None) -> list[dict]:
    """Rows {encoder, code, samples_per_s, warmup_s, ...}; the published side only when
    ``cfg.published`` has an ``iste`` checkout. Interleaved rounds, fastest kept.

    codes: which sides run, of "published", "ours", "ours bf16" (``run.precision: bf16``);
    default: all that this machine can run.
    The fp32 rows also carry the floor of our step's products (:func:`step_floor`: step_gflop,
    gemm_gflops_per_thread, floor_s_per_step) and floor_over_step, the share of the row's step
    time that the floor is; for the published row, the largest speed-up over it that an fp32
    implementation of our products could reach here is 1 / floor_over_step."""
    from iste.bench.suite import machine_load, run_child
    from iste.runtime import bf16_is_fast

    tiles = str(write_tiles(workdir / "train_tiles"))
    checkout = cfg.published.get("iste")
    if codes is None:
        codes = (("published",) if checkout else ()) + ("ours",)
        if bf16_is_fast(cfg.device):  # run.precision bf16 where the device has bf16 units
            codes += ("ours bf16",)
    best: dict[tuple[str, str], dict] = {}
    for rnd in range(rounds):
        for encoder in encoders:
            for code in codes:
                kind = "published" if code == "published" else "ours"
                job = {"kind": kind, "encoder": encoder, "tiles": tiles, "steps": steps,
                       "warmup": warmup, "threads": cfg.threads, "device": cfg.device,
                       "checkout": checkout,
                       "precision": "bf16" if code.endswith("bf16") else "fp32"}
                res = {**run_child(job, workdir, module="iste.bench.training",
                                   pythonpath=cfg.published_pythonpath if kind == "published"
                                   else ()), **machine_load()}
                log(f"train round {rnd + 1} {code} {encoder}: "
                    f"{res.get('samples_per_s', res.get('error'))}")
                old = best.get((encoder, code))
                if old is None or "error" in old \
                        or res.get("samples_per_s", 0) > old["samples_per_s"]:
                    best[(encoder, code)] = res
    floors = {encoder: step_floor(encoder, cfg.threads) for encoder in encoders}
    rows = []
    for (encoder, code), res in best.items():
        ref = best.get((encoder, "published"), {}).get("samples_per_s")
        speedup = res["samples_per_s"] / ref if ref and "samples_per_s" in res else None
        row = {"encoder": encoder, "code": code, "batch": BATCH, "sample_q": SAMPLE_Q,
               "vs_published": speedup, **res}
        if not code.endswith("bf16") and "seconds_per_step" in res:
            row.update(floors[encoder])
            row["floor_over_step"] = floors[encoder]["floor_s_per_step"] / res["seconds_per_step"]
        rows.append(row)
    return rows
