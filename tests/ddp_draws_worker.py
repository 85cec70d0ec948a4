"""Run under torchrun by test_train.py: a tiny ISTE on a SwinIR encoder with stochastic depth
(rate 0.5) trained 3 steps into ``argv[2]``/run; saves which samples each stochastic-depth
draw of this rank kept."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_zoo import tiny_config  # noqa: E402
from train_helpers import tiny_train_dict  # noqa: E402

from iste.models.encoders import swinir  # noqa: E402
from iste.train import loop  # noqa: E402
from iste.train.config import parse_train_config  # noqa: E402

real, kept = swinir._add_residual, []


def recording(x, branch, p, training):
    out = real(x, branch, p, training)
    if training and p:  # a dropped sample's branch adds exactly nothing
        kept.append(((out - x).flatten(1) != 0).any(1).tolist())
    return out


swinir._add_residual = recording
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
raw = tiny_train_dict(folder, steps=3, checkpoint_every=100)
raw["model"] = tiny_config("iste", "swinir")
raw["model"]["encoder_args"]["drop_path_rate"] = 0.5
raw["data"].update(patch=16, sample_q=16)
cfg, cpu = parse_train_config(raw), torch.device("cpu")
loop.train(cfg, out / "run", progress=False, device=cpu)
torch.save(kept, out / f"kept{os.environ['RANK']}.pt")
