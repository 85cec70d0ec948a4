"""Brief ablation models for the Fig. 10 comparison (docs/figures/): the paper's two
single-branch variants (``tl-ltd-only``, ``lfi-lpd-only``) of the shipped compact ISTE, and the
full model trained for the same extra steps (``full``), so all three have the same budget.

Each starts from the shipped default weights wherever the variant has the same module (the
encoder always; the Texture Learner and LTD, or the LFI, F_LFIC conv and LPD), then trains
with the default model's own protocol (``compact-iste``: paper degradation, CMU train band)
for ``--steps`` steps. The warm start is written as step 0 of a normal ``iste train`` run, so
the run is resumable like any other. These are *brief* fine-tunes, not the paper's ablations
trained from scratch: they show what each branch contributes to this model, nothing more.

    nice python scripts/train_ablation_figures.py --steps 600 --out runs/ablations \
        --variants full,tl-ltd-only,lfi-lpd-only
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from iste.default_model import DEFAULT_CONFIG, load_default
from iste.models.heads.iste import ABLATIONS
from iste.models.registry import build_model, count_parameters
from iste.train.config import load_train_config
from iste.train.loop import train
from iste.train.state import save_state


def warm_start(variant: str, steps: int, batch: int, run_dir: Path) -> None:
    base = load_train_config(DEFAULT_CONFIG)
    head_args = {**base.model.head_args, **ABLATIONS[variant]}
    cfg = replace(base, model=replace(base.model, head_args=head_args),
                  run=replace(base.run, steps=steps, batch_size=batch, checkpoint_every=25,
                              val_every=steps),
                  optim=replace(base.optim, milestones=()))
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    shipped = load_default().state_dict()
    own = model.state_dict()
    shared = {k: v for k, v in shipped.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    print(f"{variant}: {len(shared)}/{len(own)} tensors from the default model")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [], cfg.optim.gamma)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "train_state.pt").exists():
        save_state(run_dir, model=model, optimizer=opt, scheduler=sched, step=0,
                   config=cfg.to_dict(), meta={"train_config": cfg.to_dict(),
                                               "parameters": count_parameters(model),
                                               "warm_start": "default.safetensors"})
    train(cfg, run_dir, resume=True, device=torch.device("cpu"))


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--variants", default="full,tl-ltd-only,lfi-lpd-only")
    args = p.parse_args()
    for variant in args.variants.split(","):
        warm_start(variant, args.steps, args.batch_size, Path(args.out) / variant)


if __name__ == "__main__":
    main()
