"""Run under torchrun by test_train.py: ``iste train`` (the CLI) where the loss of rank 1
alone turns NaN from step 4 on (its weights stay finite: the NaN does not reach the
gradients); prints this rank's exit code."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from iste.cli.main import main  # noqa: E402
from iste.train import loop  # noqa: E402

real, calls = loop._query_loss, []


def nan_on_rank_1(net, batch):
    calls.append(1)
    loss = real(net, batch)
    return loss + float("nan") if os.environ["RANK"] == "1" and len(calls) >= 4 else loss


loop._query_loss = nan_on_rank_1
code = main(["train", sys.argv[1], "--run-dir", sys.argv[2], "--device", "cpu"])
sys.stdout.write(f"rank {os.environ['RANK']} exit {code}\n")  # one write: see runlog.print_line
sys.stdout.flush()
sys.exit(code)
