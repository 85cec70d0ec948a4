"""scripts/lmi_blockiness.py: LMI's published 4 x 4 area weighting jumps at LR pixel centres."""

from pathlib import Path

import numpy as np
import pytest
import torch

from iste.models.registry import ModelConfig, build_model
from model_zoo import tiny_config
from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lmi_blockiness.py"


@pytest.fixture(scope="module")
def script():
    module = load_script(SCRIPT)
    return module


def _model(head: str):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_dict(tiny_config(head))).eval()


def test_lmi_jumps_at_pixel_centres_where_liif_is_continuous(script):
    image = np.random.default_rng(0).integers(0, 256, (24, 28, 3), dtype=np.uint8)
    lmi = script.measure(_model("lmi"), [image], 2.0)
    liif = script.measure(_model("liif"), [image], 2.0)
    assert lmi["jump"] > 20 * liif["jump"] and lmi["jump"] > 0.1  # 8-bit levels
    assert lmi["token_spread"] > 0 and "token_spread" not in liif
