"""Tiny training configs on synthetic images, shared by the training tests."""

from pathlib import Path

import numpy as np

from iste.data.imagewrite import write_image


def synthetic_folder(root: Path, n: int = 3, size: int = 200) -> Path:
    """Images with structure at several frequencies (stripes + blobs), deterministic."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        f = rng.uniform(0.05, 0.3, 3)
        img = np.stack([128 + 100 * np.sin(f[c] * xx + (c + i) * yy * 0.07) for c in range(3)], -1)
        write_image(root / f"img{i}.png", img.clip(0, 255).astype(np.uint8))
    return root


def tiny_train_dict(folder: Path, **run) -> dict:
    return {
        "model": {"head": "iste", "encoder": "edsr-baseline",
                  "encoder_args": {"n_resblocks": 1, "n_feats": 8},
                  "head_args": {"hidden_dim": 16, "decoder_hidden": [16], "lfi_heads": 2}},
        "data": {"train": [str(folder)], "val": [], "sample_q": 64, "min_tissue": 0.0},
        "optim": {"lr": 1e-3},
        "run": {"steps": 6, "batch_size": 2, "checkpoint_every": 3, "val_every": 100,
                "log_every": 1, **run},
    }


def tiny_fixed_train_dict(folder: Path, arch: str = "edsr", scale: int = 2,
                          data: dict | None = None, *, loss: dict | None = None,
                          optim: dict | None = None, **run) -> dict:
    """A tiny fixed-scale network (``model_zoo.TINY_FIXED``) on 16 x 16 LR crops; ``data``,
    ``optim`` and ``run`` entries override the defaults, ``loss`` is the loss section."""
    from model_zoo import tiny_fixed

    cfg = {"model": tiny_fixed(arch, scale),
           "data": {"train": [str(folder)], "val": [str(folder)], "patch": 16,
                    "min_tissue": 0.0, "val_tile": 48, "val_tiles": 2, **(data or {})},
           "optim": {"lr": 2e-3, **(optim or {})},
           "run": {"steps": 6, "batch_size": 2, "checkpoint_every": 3, "val_every": 100,
                   "log_every": 1, **run}}
    if loss is not None:
        cfg["loss"] = loss
    return cfg


def train_straight_and_split(cfg, root: Path, *, stop_after: int) -> tuple[dict, dict, dict]:
    """Train ``cfg`` in one go (``root``/a) and stopped after ``stop_after`` steps then resumed
    (``root``/b); assert both reach the last step with equal weights. Returns the straight
    run's last metrics and both final training states (``train_state.pt``). On the CPU, whose
    arithmetic repeats bit for bit: CUDA's backward kernels add in no fixed order, so two
    straight runs there already differ in the last bits."""
    import torch

    from iste.train.loop import train

    cpu = torch.device("cpu")
    straight = train(cfg, root / "a", progress=False, device=cpu)
    train(cfg, root / "b", stop_after=stop_after, progress=False, device=cpu)
    split = train(cfg, root / "b", resume=True, progress=False, device=cpu)
    assert straight["step"] == split["step"] == cfg.run.steps
    a, b = (torch.load(root / run / "train_state.pt", weights_only=True) for run in "ab")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    return straight, a, b
