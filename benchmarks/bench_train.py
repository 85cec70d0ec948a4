"""Training speed: samples/s of full training steps (data + forward + backward + Adam).

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 5] [CONFIG ...]

CONFIG: bundled config names (default: compact-iste compact-liif swinir-iste swinir-liif).
Paper configs read their crops from the sample split instead of data/train. Each config runs
in this process, one after the other; compare the rates of one run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from iste.data.coords import normalize
from iste.models.registry import build_model, count_parameters
from iste.train.config import load_train_config
from iste.train.dataset import CropDataset
from iste.train.sources import open_source


def bench(name: str, steps: int) -> tuple[int, float, float]:
    cfg = load_train_config(name)
    cfg = replace(cfg, data=replace(cfg.data, train=("sample:cmu-train",)))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    data = CropDataset([open_source(s) for s in cfg.data.train], cfg.data, seed=0,
                       length=(steps + 1) * cfg.run.batch_size)
    b = cfg.run.batch_size
    times = []
    for step in range(steps + 1):  # the first step warms up and is not counted
        t0 = time.perf_counter()
        items = [data[step * b + i] for i in range(b)]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        pred = model(normalize(batch["lr"]), batch["coord"], batch["cell"])
        loss = (pred - normalize(batch["gt"])).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = sum(times[1:]) / steps
    return count_parameters(model), b / per_step, per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*",
                        default=["compact-iste", "compact-liif", "swinir-iste", "swinir-liif"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} timed steps each")
    print(f"{'config':<14}{'params (M)':>11}{'batch':>7}{'s/step':>9}{'samples/s':>11}")
    for name in args.configs:
        n, rate, per_step = bench(name, args.steps)
        b = load_train_config(name).run.batch_size
        print(f"{name:<14}{n / 1e6:>11.2f}{b:>7}{per_step:>9.2f}{rate:>11.2f}")


if __name__ == "__main__":
    main()
