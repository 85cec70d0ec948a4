"""Run under torchrun by test_train.py: three runs in this one process, each making its own
process group: a tiny ISTE trained 3 steps into ``argv[2]``/straight, and 2 steps then
resumed for 1 into ``argv[2]``/split. A rank still waiting after 60 s ends with its
traceback (a group made again on the keys of the one before waited forever)."""

import faulthandler
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_train_dict  # noqa: E402

from iste.train import loop  # noqa: E402
from iste.train.config import parse_train_config  # noqa: E402

faulthandler.dump_traceback_later(60, exit=True)
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg, cpu = parse_train_config(tiny_train_dict(folder, steps=3, checkpoint_every=100)), "cpu"
loop.train(cfg, out / "straight", progress=False, device=torch.device(cpu))
loop.train(cfg, out / "split", progress=False, device=torch.device(cpu), stop_after=2)
loop.train(cfg, out / "split", progress=False, device=torch.device(cpu), resume=True)
