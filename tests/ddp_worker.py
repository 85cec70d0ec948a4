"""Run under torchrun by test_train.py (and test_fixed_train.py with a third argument
"fixed": a fixed-scale network): train a few steps, dump this rank's weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_fixed_train_dict, tiny_train_dict  # noqa: E402

from iste.train.config import parse_train_config  # noqa: E402
from iste.train import loop  # noqa: E402

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
captured = {}
original = loop.build_model


def build_and_keep(cfg):
    captured["model"] = original(cfg)
    return captured["model"]


loop.build_model = build_and_keep
make = tiny_fixed_train_dict if sys.argv[3:] == ["fixed"] else tiny_train_dict
cfg = parse_train_config(make(folder, steps=3, checkpoint_every=100))
rank = int(__import__("os").environ["RANK"])
loop.train(cfg, out / "run", device=torch.device("cpu"), progress=False)
torch.save(captured["model"].state_dict(), out / f"rank{rank}.pt")
assert not dist.is_initialized()
