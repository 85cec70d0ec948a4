"""Run under torchrun by test_train.py: a tiny ISTE with validation, 2 steps then resumed for
2 more, with torch's collective timeout cut to 2 s once each process group is made, where
rank 0 takes 4 s longer to read the validation tiles of the first run and to check the
resumed run's best record; prints "rank R done" at the end.""" 

import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_train_dict  # noqa: E402

from iste.train import loop  # noqa: E402
from iste.train.config import parse_train_config  # noqa: E402

real_init, real_tiles, real_best = (dist.init_process_group, loop.validation_tiles,
                                    loop.best_for_tiles)
slowed = []


def init_with_short_timeout(*args, **kwargs):
    real_init(*args, **kwargs)  # made with the default timeout (see ddp_slow_rank_worker.py)
    dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=2))


def late_on_rank_0(real):
    def late(*args, **kwargs):
        if os.environ["RANK"] == "0" and real.__name__ not in slowed:
            slowed.append(real.__name__)
            time.sleep(4)
        return real(*args, **kwargs)
    return late


dist.init_process_group = init_with_short_timeout
loop.validation_tiles, loop.best_for_tiles = late_on_rank_0(real_tiles), late_on_rank_0(real_best)
folder, run = Path(sys.argv[1]), Path(sys.argv[2])
raw = tiny_train_dict(folder, steps=4, checkpoint_every=100, val_every=2)
raw["data"].update(val=[str(folder)], val_tile=64, val_tiles=1, val_scales=[2.0])
cfg, cpu = parse_train_config(raw), torch.device("cpu")
loop.train(cfg, run, progress=False, device=cpu, stop_after=2)
loop.train(cfg, run, progress=False, device=cpu, resume=True)
sys.stdout.write(f"rank {os.environ['RANK']} done\n")
sys.stdout.flush()
