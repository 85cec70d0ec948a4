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
CASES = {"liif": ["", "3"], "lte": ["", "3"], "iste": ["", "2", "3"], "lit": ["", "3"],
         "clit": ["", "8", "20", "3"], "itsrn": ["", "3"], "lmi": ["", "3"]}
FIXTURE_HEAD = {"clit": "lit"}  # fixtures of a head's variant (CLIT: LIT's cascade, 3 stages)


def _near_a_stage_border(model, coord: torch.Tensor, hw: tuple[int, int],
                         cell: torch.Tensor) -> torch.Tensor:
    """(B, Q): queries within ``EPS_SHIFT`` (normalised units) of a pixel border of a grid a
    cascade stage attends over. Our nearest pixel nudges such queries by ``EPS_SHIFT`` so
    that tiles and the whole image agree (heads/lit.py); the published code rounds them as
    they are. On stage j's grid of (h, w) * 4^j pixels that band is 4^j times wider than on
    the LR grid."""
    from iste.models.heads.lit import cascade_stages
    from iste.models.layers.ensemble import EPS_SHIFT

    near = torch.zeros(coord.shape[:2], dtype=torch.bool)
    stages = cascade_stages(2 / (float(cell[0, 0, 0]) * hw[0]), model.config)
    for j in range(stages):
        for axis, n in enumerate(hw):
            pos = (coord[..., axis].double() + 1) * (n * 4 ** j) / 2  # pixel units
            near |= (pos - pos.round()).abs() < (n * 4 ** j) * EPS_SHIFT
    return near


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
    said = capsys.readouterr().out
    if name == "liif":  # the layers dropped, not the encoder they sit in
        assert said.strip().endswith("never uses: encoder.add_mean, encoder.sub_mean"), said
    model = iste.load(out, device="cpu")
    for case in CASES[name]:
        coord, cell = data[f"coord{case}"], data[f"cell{case}"]
        with torch.no_grad():
            pred = model(data["inp"], coord, cell)
        err = (pred - data[f"out{case}"]).abs().amax(-1)
        if name == "clit":  # the nudge at pixel borders of the fine stage grids, a rare case
            near = _near_a_stage_border(model, coord, tuple(data["inp"].shape[-2:]), cell)
            assert near.sum() <= 2
            err = err[~near]
        assert err.max().item() <= 1e-5, f"{name} case {case or 1}: max abs error {err.max():.2e}"


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
    from iste.models.registry import build_model
    cfg = replace(conv.config, head_args={**conv.config.head_args, "lfi_layout": "tokens"})
    model = build_converted(replace(conv, config=cfg))
    with torch.no_grad():
        pred = model(data["inp"], data["coord"], data["cell"])
    assert (pred - data["out"]).abs().max() > 1e-3
    # the two compute different functions: provenance and reports tell them apart (both
    # were "ISTE + edsr-baseline")
    assert model.architecture == "ISTE + edsr-baseline"
    assert build_converted(conv).architecture == "ISTE (published LFI) + edsr-baseline"
    no_lfi = replace(conv.config, head_args={**conv.config.head_args, "lfi": False})
    assert build_model(no_lfi).architecture == "ISTE (no-lfi) + edsr-baseline"


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


def test_a_checkpoint_is_read_as_what_it_holds_whatever_its_suffix(tmp_path):
    """torch.load picks safetensors by a .safetensors name: a published .pth renamed so was
    refused as 'header too large'; a safetensors state dict of another name still converts."""
    pth, _ = _published_pth("liif", tmp_path)
    renamed = pth.rename(tmp_path / "liif.safetensors")
    assert load_official(renamed).config.head == "liif"
    from safetensors.torch import save_file
    from test_fixed_parity import _published

    sd, _, _ = _published("swinir", 2)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "swinir.safetensors")
    assert load_official(tmp_path / "swinir.safetensors", arch="swinir").config.scale == 2


def test_a_scale_given_for_an_arbitrary_scale_checkpoint_is_refused(tmp_path, capsys):
    """--scale names a fixed-scale network's factor; an ISTE file converted with --scale 4
    was written without a word about it, as if the model were made a x4 one."""
    pth, _ = _published_pth("iste", tmp_path)
    out = tmp_path / "o.safetensors"
    assert main(["convert-official", str(pth), "--scale", "4", "-o", str(out)]) == 2
    assert "leave out --scale" in capsys.readouterr().err and not out.exists()


def test_unused_published_iste_parameters_match_what_iste_info_reports(tmp_path):
    from iste.cli.info import PUBLISHED_ISTE_UNUSED

    pth, data = _published_pth("iste", tmp_path)
    conv = load_official(pth)
    unused = sum(data["sd." + k].numel() for k in conv.dropped if not k.startswith("encoder."))
    assert unused == PUBLISHED_ISTE_UNUSED


@pytest.mark.parametrize("name,patch,message", [
    ("lit", {"imnet_num": 2, "conv_num": 3}, "imnet_num 2 and conv_num 3"),
    ("lit", {"pb_spec": {"name": "posenc", "args": {"posenc_type": "learn"}}}, "sinusoid"),
    ("itsrn", {"embedding_coord": {"name": "x"}}, "embeddings"),
    ("lmi", {"imnet_spec": {"name": "mlp", "args": {}}}, "decoder"),
    ("lmi", {"bogus": 1}, "bogus"),
    # its imnet_rgb stays 256 x 3 whatever the spec: was 'weights do not match (lpd.* ...)'
    ("iste", {"imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [128]}}},
     r"imnet_rgb\) is always \[256, 256, 256\]"),
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

    assert {FIXTURE_HEAD.get(name, name) for name in CASES} == set(HEADS)


def test_the_cascade_fixture_runs_every_stage_count_and_its_border_rule_is_exercised(tmp_path):
    from iste.models.heads.lit import cascade_stages
    from iste.models.official import build_converted

    pth, data = _published_pth("clit", tmp_path)
    model = build_converted(load_official(pth)).eval()
    assert model.config.stages == 3 and len(model.cascade) == 2
    h = data["inp"].shape[-2]
    used = {case: cascade_stages(2 / (float(data[f"cell{case}"][0, 0, 0]) * h), model.config)
            for case in CASES["clit"]}
    assert used == {"": 2, "8": 2, "20": 3, "3": 1}
    # the one query of the x20 case within EPS_SHIFT of a 16x-grid border: published and ours
    # pick neighbouring pixels there, a visible difference, by design
    near = _near_a_stage_border(model, data["coord20"], tuple(data["inp"].shape[-2:]),
                                data["cell20"])
    assert near.sum() == 1
    with torch.no_grad():
        pred = model(data["inp"], data["coord20"], data["cell20"])
    assert (pred - data["out20"]).abs().amax(-1)[near].item() > 1e-5


PROTOCOL = Path(__file__).parent / "fixtures" / "published_protocol"


def _gradients(model, data, weight):
    inp = data["inp"].clone().requires_grad_(True)
    loss = (model(inp, data["coord"], data["cell"]) * weight).sum()
    loss.backward()
    return inp.grad, loss.detach()


def test_published_lfi_switch_reproduces_the_published_gradients(tmp_path):
    # lfi_gradients.safetensors: the published ISTE (fixture weights) after one backward pass of
    # sum(out * weight) (tests/fixtures/published_protocol/README.md).
    golden = load_file(str(PROTOCOL / "lfi_gradients.safetensors"))
    pth, data = _published_pth("iste", tmp_path)
    conv = load_official(pth)
    from dataclasses import replace

    from iste.models.official import build_converted, convert_spec
    model = build_converted(conv).train()
    inp_grad, loss = _gradients(model, data, golden["weight"])
    assert loss.item() == pytest.approx(golden["loss"].item(), rel=1e-5)
    assert torch.allclose(inp_grad, golden["inp"], rtol=1e-4, atol=1e-6)
    # every parameter gradient, mapped to our names by the checkpoint converter
    spec = json.loads((FIXTURES / "iste.json").read_text())["model"]
    sd = {k[3:]: torch.zeros_like(v, dtype=torch.float32) for k, v in data.items()
          if k.startswith("sd.")}
    sd.update({k[5:]: v for k, v in golden.items() if k.startswith("grad.")})
    ours = dict(model.named_parameters())
    expected = convert_spec({**spec, "sd": sd}).state
    checked = 0
    for name, grad in expected.items():
        if name in ours and grad.abs().max() > 0:
            assert torch.allclose(ours[name].grad, grad, rtol=1e-4, atol=1e-6), name
            checked += 1
    assert checked >= 10 and any(n.startswith("encoder.") for n in expected)

    # the paper's LFI (proper tokens, gradients through keys and values) differs
    cfg = replace(conv.config, head_args={**conv.config.head_args, "lfi_layout": "tokens"})
    paper = build_converted(replace(conv, config=cfg)).train()
    paper_grad, _ = _gradients(paper, data, golden["weight"])
    change = ((paper_grad - golden["inp"]).norm() / golden["inp"].norm()).item()
    assert change > 0.05


def test_lmi_trains_with_the_published_gradients(tmp_path):
    # forward parity cannot see a detached or unused path in training: one L1 backward in
    # train() mode must give every parameter the gradient the published code gave it
    # (lmi_train.*: the same weights, inputs and loss through pf0607/COZ).
    from iste.models.official import convert_spec

    pth, data = _published_pth("lmi", tmp_path)
    assert main(["convert-official", str(pth), "-o", str(tmp_path / "lmi.safetensors")]) == 0
    model = iste.load(tmp_path / "lmi.safetensors", device="cpu").train()
    fixture = load_file(str(FIXTURES / "lmi_train.safetensors"))
    spec = json.loads((FIXTURES / "lmi.json").read_text())["model"]
    published = convert_spec({**spec, "sd": {k[5:]: v for k, v in fixture.items()
                                             if k.startswith("grad.")}}).state
    loss = torch.nn.functional.l1_loss(model(data["inp"], data["coord"], data["cell"]),
                                       fixture["target"])
    assert abs(loss.item() - fixture["loss"].item()) <= 1e-6
    loss.backward()
    grads = dict(model.named_parameters())
    assert sorted(grads) == sorted(published)
    for name, expected in published.items():
        got = grads[name].grad
        assert got is not None and got.abs().max() > 0, f"{name}: no gradient"
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 1e-5 * scale, name


def test_malformed_specs_and_code_pickles_are_one_line_and_an_output_is_not_replaced(
        tmp_path, capsys):
    import os

    from iste.cli.main import main

    pth, _ = _published_pth("liif", tmp_path)
    spec = torch.load(pth, weights_only=True)
    for inner in ({"imnet_spec": "mlp"}, {"encoder_spec": {"name": ["x"], "args": {}}}):
        bad = {"model": {**spec["model"], "args": {**spec["model"]["args"], **inner}}}
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(CheckpointError, match="malformed published checkpoint"):
            load_official(tmp_path / "bad.pth")

    class Code:
        def __reduce__(self):
            return os.system, ("true",)

    torch.save({"model": Code()}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="a pickle of code, refused unread") as err:
        load_official(tmp_path / "code.pth")
    assert "weights_only" not in str(err.value)
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"a training run's weights")
    assert main(["convert-official", str(pth), "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"a training run's weights"
    assert main(["convert-official", str(pth), "-o", str(out), "--overwrite"]) == 0


def test_an_output_another_conversion_writes_meanwhile_is_kept(tmp_path, capsys, monkeypatch):
    # two conversions into one -o at once (a shared models folder): each found it missing,
    # and the later silently replaced the other's weights without --overwrite (exit 0)
    from iste.models import official

    pth, _ = _published_pth("liif", tmp_path)
    out = tmp_path / "shared.safetensors"
    real = official.load_official

    def other_writes_meanwhile(*args, **kwargs):  # after this run's check of -o
        out.write_bytes(b"the other conversion's weights")
        return real(*args, **kwargs)

    monkeypatch.setattr(official, "load_official", other_writes_meanwhile)
    assert main(["convert-official", str(pth), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists (written by another process meanwhile); pass " \
        "--overwrite to replace it" in err[0], err
    assert out.read_bytes() == b"the other conversion's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liif.pth", "shared.safetensors"]
    assert main(["convert-official", str(pth), "-o", str(out), "--overwrite"]) == 0
    assert iste.load(out, device="cpu") is not None


def test_every_refusal_of_a_published_checkpoint_names_the_file_and_what_is_wrong(tmp_path):
    """Weights that do not fit the spec's architecture were "converted checkpoint: ..."
    (which file?); a folder named .safetensors was "No such device (os error 19)"; an iste
    checkpoint of a newer format "a bare state dict ... give --arch"; an empty file
    "EOFError"; float8 weights were converted without a word."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from iste.models.checkpoint import save_model
    from iste.models.official import build_converted
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    pth, _ = _published_pth("liif", tmp_path)
    ckpt = torch.load(pth, weights_only=True)
    spec, sd = ckpt["model"], ckpt["model"]["sd"]

    def refused(name: str, obj, *words: str) -> None:
        path = tmp_path / name
        if obj is not None:
            torch.save(obj, path)
        with pytest.raises(CheckpointError) as err:
            build_converted(load_official(path))
        text = str(err.value)
        assert text.startswith(str(path)) or f"checkpoint {path}" in text, text
        assert "\n" not in text
        for w in words:
            assert w in text, text

    last = next(k for k in sorted(sd) if k.startswith("imnet."))
    refused("short.pth", {"model": {**spec, "sd": {k: v for k, v in sd.items() if k != last}}},
            f"weights do not match the architecture (missing: {last})")
    refused("fp8.pth", {"model": {**spec, "sd": {k: v.to(torch.float8_e4m3fn)
                                                  for k, v in sd.items()}}},
            "weights stored as float8_e4m3fn")
    refused("number.pth", {"model": {**spec, "sd": {**sd, "epoch": 3}}},
            "'epoch' is not a tensor (a int)")
    (tmp_path / "folder.safetensors").mkdir()
    refused("folder.safetensors", None, "is a folder")
    (tmp_path / "empty.pth").touch()
    refused("empty.pth", None, "is empty (0 bytes)")
    (tmp_path / "torn.pth").write_bytes(pth.read_bytes()[:len(pth.read_bytes()) // 2])
    refused("torn.pth", None, "damaged or truncated")
    refused("train_state.pt", {"step": 1, "model": sd, "optimizer": {}},
            "the resumable state of a training run")
    ours = save_model(build_model(tiny_config("liif")), tmp_path / "ours.safetensors")
    with safe_open(str(ours), framework="pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(weights, str(tmp_path / "newer.safetensors"), metadata={**meta, "version": "9"})
    refused("newer.safetensors", None, "unsupported checkpoint version '9'")


def test_a_published_checkpoint_scaled_absurdly_is_refused_before_it_is_written(tmp_path,
                                                                                capsys):
    # iste convert-official wrote it (exit 0), and every later load refused the file it made
    # ('predicts ... for a smooth test image'): the converter's wrong factor the probe is for
    pth, _ = _published_pth("liif", tmp_path)
    ckpt = torch.load(pth, weights_only=True)
    ckpt["model"]["sd"] = {k: v * 1e3 for k, v in ckpt["model"]["sd"].items()}
    torch.save(ckpt, pth)
    out = tmp_path / "liif.safetensors"
    assert main(["convert-official", str(pth), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(pth) in err[0] and "scaled wrongly" in err[0], err
    assert not out.exists()
