"""Run under torchrun by test_slides_cli.py: ``iste`` (the CLI) with torch's collective
timeout cut to 2 s once the process group is made and each cohort item of rank 0 started 6 s
late, so that rank 1 waits for rank 0 longer than that timeout; prints this rank's exit
code."""

import datetime
import os
import sys
import time

import torch.distributed as dist

from iste.cli import upscale_slides
from iste.cli.main import main

real_init, real_one = dist.init_process_group, upscale_slides._upscale_one


def init_with_short_timeout(*args, **kwargs):
    # made with the default timeout: the group's making waits for every rank to join, and
    # two ranks can reach it seconds apart on a loaded machine (2 s failed the test there)
    real_init(*args, **kwargs)
    dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=2))


def late_on_rank_0(*args, **kwargs):
    if os.environ["RANK"] == "0":
        time.sleep(6)
    return real_one(*args, **kwargs)


dist.init_process_group, upscale_slides._upscale_one = init_with_short_timeout, late_on_rank_0
code = main(sys.argv[1:])
sys.stdout.write(f"rank {os.environ['RANK']} exit {code}\n")  # one write: see runlog.print_line
sys.stdout.flush()
sys.exit(code)
