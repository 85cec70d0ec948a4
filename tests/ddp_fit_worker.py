"""Run under torchrun by test_downstream.py: iste.downstream.trainer.fit of a small linear
regression, 3 steps of ``argv[2]`` samples per rank, into the run folder ``argv[1]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fit_helpers import fit_regression  # noqa: E402

fit_regression(Path(sys.argv[1]), int(sys.argv[2]))
