"""Run under torchrun by test_histo_training.py: 2 steps of a tiny Li et al. network with its
GAN loss and scale curriculum, batch 2 a rank, into ``argv[2]``/run; saves the generator's
inputs (the curriculum's degraded crops) of this rank's steps."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_fixed_train_dict  # noqa: E402

from iste.train import loop, objectives  # noqa: E402
from iste.train.config import parse_train_config  # noqa: E402

real, inputs = objectives.curriculum_input, []


def recording(*args, **kwargs):
    inputs.append(real(*args, **kwargs))
    return inputs[-1]


objectives.curriculum_input = recording
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
raw = tiny_fixed_train_dict(folder, "li2021", steps=2, checkpoint_every=100, batch_size=2,
                            loss={"kind": "gan", "curriculum": True}, data={"val": []})
loop.train(parse_train_config(raw), out / "run", progress=False, device=torch.device("cpu"))
torch.save(inputs, out / f"inputs{os.environ['RANK']}.pt")
