"""Run under torchrun by test_train.py: a tiny ISTE validated every 2 steps, trained 4 steps
into ``argv[2]``/straight, and into ``argv[2]``/split with a stop noted on rank 0 alone in
the middle of step 2's validation (rank 0 alone validates), then resumed. Each rank writes
what its runs returned to ``argv[2]``/rank<N>.json. A rank still waiting after 120 s ends
with its traceback (the ranks disagreed on the stop)."""

import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_train_dict  # noqa: E402

from iste import stopping  # noqa: E402
from iste.train import loop, validate  # noqa: E402
from iste.train.config import parse_train_config  # noqa: E402

faulthandler.dump_traceback_later(120, exit=True)
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
raw = tiny_train_dict(folder, steps=4, checkpoint_every=100, val_every=2)
raw["data"].update(val=[str(folder)], val_tile=64, val_tiles=3, val_scales=[2.0])
cfg, cpu = parse_train_config(raw), torch.device("cpu")
upscale, tiles = validate.upscale_to, []


def stop_in_the_second_tile(*args, **kwargs):
    tiles.append(1)
    if len(tiles) == 2:
        stopping.note(signal.SIGTERM)  # as the signal handler of iste train does
    return upscale(*args, **kwargs)


results = {"straight": loop.train(cfg, out / "straight", progress=False, device=cpu)}
validate.upscale_to = stop_in_the_second_tile
with stopping.at_boundaries():
    results["stopped"] = loop.train(cfg, out / "split", progress=False, device=cpu)
results["tiles"] = len(tiles)
stopping.forget()
validate.upscale_to = upscale
results["resumed"] = loop.train(cfg, out / "split", progress=False, device=cpu, resume=True)
(out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(results))
