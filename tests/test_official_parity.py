"""Converted published checkpoints reproduce the published models' outputs (golden fixtures).

The fixtures (tests/fixtures/official/README.md) hold the published state dicts, inputs and
the outputs the published LIIF, LTE and ISTE code computed on them. Here each state dict goes
through the same path a user's checkpoint takes: a .pth in the published layout, read with
``torch.load(weights_only=True)`` by ``iste convert-official``, saved as safetensors, loaded
with ``iste.load``.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import iste
from iste.cli.main import main
from iste.models.checkpoint import CheckpointError
from iste.models.official import load_official

FIXTURES = Path(__file__).parent / "fixtures" / "official"
CASES = {"liif": ["", "3"], "lte": ["", "3"], "iste": ["", "2", "3"], "lit": ["", "3"], "itsrn": ["", "3"], "lmi": ["", "3"]}


def _published_pth(name: str, tmp_path: Path) -> tuple[Path, dict]:
    data = load_file(str(FIXTURES / f"{name}.safetensors"))
    spec = json.loads((FIXTURES / f"{name}.json").read_text())["model"]
    sd = {k[3:]: v.float() for k, v in data.items() if k.startswith("sd.")}
    path = tmp_path / f"{name}.pth"
    torch.save({"model": {**spec, "sd": sd}, "epoch": 1}, path)
    return path, data


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_checkpoint_reproduces_the_published_outputs(name, tmp_path, capsys):
    pth, data = _published_pth(name, tmp_path)
    out = tmp_path / f"{name}.safetensors"
    assert main(["convert-official", str(pth), "-o", str(out)]) == 0
    model = iste.load(out, device="cpu")
    for case in CASES[name]:
        with torch.no_grad():
            pred = model(data["inp"], data[f"coord{case}"], data[f"cell{case}"])
        err = (pred - data[f"out{case}"]).abs().max().item()
        assert err <= 1e-5, f"{name} case {case or 1}: max abs error {err:.2e}"


def test_iste_converts_with_the_published_token_layout_and_drops_unused_modules(tmp_path):
    pth, _ = _published_pth("iste", tmp_path)
    conv = load_official(pth)
    assert conv.config.head_args["lfi_layout"] == "published"
    dropped = {k.split(".")[0] for k in conv.dropped}
    assert dropped == {"imnet_texture_auxiliary", "imnet_query", "pix_attn", "encoder"}


def test_paper_token_layout_differs_from_the_published_one(tmp_path):
    pth, data = _published_pth("iste", tmp_path)
    conv = load_official(pth)
    from dataclasses import replace
    from iste.models.official import build_converted
    cfg = replace(conv.config, head_args={**conv.config.head_args, "lfi_layout": "tokens"})
    model = build_converted(replace(conv, config=cfg))
    with torch.no_grad():
        pred = model(data["inp"], data["coord"], data["cell"])
    assert (pred - data["out"]).abs().max() > 1e-3


def test_files_that_are_not_published_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_official(bad)
    torch.save({"model": {"name": "srgan", "args": {"encoder_spec": {"name": "edsr-baseline",
                "args": {"no_upsampling": True}}}, "sd": {}}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unsupported published model"):
        load_official(tmp_path / "other.pth")
    torch.save({"weights": {}}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="'model'"):
        load_official(tmp_path / "nomodel.pth")


def test_unused_published_iste_parameters_match_what_iste_info_reports(tmp_path):
    from iste.cli.info import PUBLISHED_ISTE_UNUSED

    pth, data = _published_pth("iste", tmp_path)
    conv = load_official(pth)
    unused = sum(data["sd." + k].numel() for k in conv.dropped if not k.startswith("encoder."))
    assert unused == PUBLISHED_ISTE_UNUSED


@pytest.mark.parametrize("name,patch,message", [
    ("lit", {"imnet_num": 2, "conv_num": 2}, "one-stage"),
    ("lit", {"pb_spec": {"name": "posenc", "args": {"posenc_type": "learn"}}}, "sinusoid"),
    ("itsrn", {"embedding_coord": {"name": "x"}}, "embeddings"),
    ("lmi", {"imnet_spec": {"name": "mlp", "args": {}}}, "decoder"),
    ("lmi", {"bogus": 1}, "bogus"),
])
def test_published_variants_we_do_not_build_are_refused_by_name(name, patch, message, tmp_path):
    pth, _ = _published_pth(name, tmp_path)
    ckpt = torch.load(pth, weights_only=True)
    ckpt["model"]["args"].update(patch)
    torch.save(ckpt, pth)
    with pytest.raises(CheckpointError, match=message):
        load_official(pth)


def test_every_registered_head_has_a_parity_fixture():
    from iste.models.registry import HEADS

    assert set(CASES) == set(HEADS)
