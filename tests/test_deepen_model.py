"""scripts/deepen_model.py: a deeper checkpoint that computes what the trained one computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from iste.models.checkpoint import load_model, read_metadata, save_model
from iste.models.registry import ModelConfig, build_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "deepen_model.py"


def test_deepened_checkpoint_predicts_the_same_and_records_its_start(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(head="iste", encoder="edsr-baseline",
                         encoder_args={"n_resblocks": 1, "n_feats": 8},
                         head_args={"hidden_dim": 16, "decoder_hidden": [16], "lfi_heads": 2})
    save_model(build_model(config), tmp_path / "small.safetensors")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "small.safetensors"),
                           "--blocks", "3", "--out", str(tmp_path / "deep.safetensors")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    small, deep = (load_model(tmp_path / f"{n}.safetensors") for n in ("small", "deep"))
    assert deep.encoder.config.n_resblocks == 3
    inp = torch.rand(1, 3, 12, 12) * 2 - 1
    coord = torch.rand(1, 50, 2) * 2 - 1
    cell = torch.full((1, 50, 2), 2 / 30)
    with torch.no_grad():
        assert torch.allclose(deep(inp, coord, cell), small(inp, coord, cell), atol=1e-6)
    meta = read_metadata(tmp_path / "deep.safetensors")[1]
    assert meta["deepened"]["from_blocks"] == 1 and len(meta["deepened"]["from_sha256"]) == 64
