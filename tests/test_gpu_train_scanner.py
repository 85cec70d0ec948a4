"""scripts/gpu_train_scanner.py builds the shipped default's recipe at a larger size."""

from __future__ import annotations

from pathlib import Path

from iste.default_model import DEFAULT_CONFIG
from iste.train.config import load_train_config
from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train_scanner.py"


def test_large_run_uses_the_last_stage_degradation_and_the_large_model():
    module = load_script(SCRIPT)
    cfg = module.build_config("large", steps=1000, dry_run=False)
    assert cfg.data.degradation == load_train_config(DEFAULT_CONFIG).data.degradation
    assert cfg.data.train == load_train_config("scanner-iste").data.train
    assert cfg.model.encoder_args == {"n_resblocks": 16, "n_feats": 64}
    assert cfg.run.init is None and cfg.run.batch_size == 32 and cfg.run.steps == 1000
