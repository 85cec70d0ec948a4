"""Converted published fixed-scale networks reproduce the published outputs (golden fixtures).

tests/fixtures/official/README.md ("Fixed-scale networks") says how each fixture was made from
the published code. Each case goes the way a user's file goes: a .pth in the published layout
-> ``iste convert-official`` -> ``iste.load`` -> ``model(inp)`` (the published forward) and
``model.sr`` (the [0, 1] convention the engine uses).
"""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import iste
from iste.cli.main import main
from iste.models.checkpoint import CheckpointError
from iste.models.official import load_official
from hashed_weights import hashed_weights

FIXTURES = Path(__file__).parent / "fixtures" / "official"
# arch -> (scales, how the published file wraps its weights)
CASES = {"edsr": ((2, 3, 4), "liif"), "rdn": ((2, 3, 4), "liif"),
         "swinir": ((2, 3, 4), "params")}


def _published(arch: str, scale: int) -> tuple[dict, dict, dict]:
    """(published state dict, fixture tensors, case spec)."""
    data = load_file(str(FIXTURES / f"{arch}.safetensors"))
    case = json.loads((FIXTURES / f"{arch}.json").read_text())["cases"][f"x{scale}"]
    prefix = f"x{scale}.sd."
    sd = {k[len(prefix):]: v.float() if v.is_floating_point() else v
          for k, v in data.items() if k.startswith(prefix)}
    if "weights_seed" in case:  # parameters from the formula the generator applied
        sd.update(hashed_weights(case["shapes"], case["weights_seed"]))
        if "keys" in case:  # the published key order
            sd = {k: sd[k] for k in case["keys"]}
    return sd, data, case


def _pth(arch: str, scale: int, tmp_path: Path, wrap: str) -> Path:
    sd, _, case = _published(arch, scale)
    path = tmp_path / f"{arch}_x{scale}_{wrap}.pth"
    if wrap == "liif":
        spec = {k: v for k, v in case.items() if k in ("name", "args")}
        torch.save({"model": {**spec, "sd": sd}, "epoch": 1}, path)
    elif wrap == "params":
        torch.save({"params": sd}, path)
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("arch,scale", [(a, s) for a, (scales, _) in CASES.items()
                                        for s in scales])
def test_converted_network_reproduces_the_published_output(arch, scale, tmp_path, capsys):
    wrap = CASES[arch][1]
    pth = _pth(arch, scale, tmp_path, wrap)
    out = tmp_path / f"{arch}.safetensors"
    extra = [] if wrap == "liif" else ["--arch", arch]
    assert main(["convert-official", str(pth), "-o", str(out), *extra]) == 0
    assert f"x{scale}" in capsys.readouterr().out
    model = iste.load(out, device="cpu")
    assert model.scale == scale
    _, data, _ = _published(arch, scale)
    inp, expected = data["inp"], data[f"x{scale}.out"]
    with torch.no_grad():
        pred = model(inp)
        err = (pred - expected).abs().max().item()
        assert err <= 1e-5, f"{arch} x{scale}: max abs error {err:.2e}"
        # sr() is forward() in the network's own convention: [0, 1] in and out
        lr01 = (inp + 1) / 2 if wrap == "liif" else inp
        want01 = expected * 0.5 + 0.5 if wrap == "liif" else expected
        assert (model.sr(lr01) - want01).abs().max() <= 1e-5


def test_a_bare_state_dict_converts_with_arch_and_drops_derived_buffers(tmp_path):
    pth = _pth("swinir", 3, tmp_path, "bare")
    conv = load_official(pth, arch="swinir")
    assert conv.config.scale == 3 and conv.config.args["num_heads"] == [2, 3]
    assert conv.dropped and all(k.endswith(("attn_mask", "relative_position_index"))
                                for k in conv.dropped)
    edsr = load_official(_pth("edsr", 4, tmp_path, "bare"), arch="edsr")
    assert edsr.config.scale == 4 and edsr.config.args["n_resblocks"] == 2
    assert {k.split(".")[0] for k in edsr.dropped} == {"sub_mean", "add_mean"}


def test_a_bare_edsr_whose_mean_shift_is_on_0_255_pixels_is_refused(tmp_path, capsys):
    """EDSR-PyTorch's released models: LIIF's keys, but the forward runs the mean shift on
    0-255 pixels, which the converted LIIF EDSR never would (its output differed by 0.14 on
    the [0, 1] scale on this fixture's weights)."""
    sd, _, _ = _published("edsr", 2)
    mean = torch.tensor([0.4488, 0.4371, 0.4040])
    sd = {**sd, "sub_mean.bias": -255 * mean, "add_mean.bias": 255 * mean}
    torch.save(sd, tmp_path / "edsr_x2.pt")
    out = tmp_path / "o.safetensors"
    code = main(["convert-official", str(tmp_path / "edsr_x2.pt"), "--arch", "edsr",
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "mean shift is on 0-255 pixels" in err and len(err.splitlines()) == 1
    assert not out.exists()
    sd["sub_mean.bias"], sd["add_mean.bias"] = -mean, mean  # LIIF's rgb_range 1: converted
    torch.save(sd, tmp_path / "liif_edsr.pt")
    assert load_official(tmp_path / "liif_edsr.pt", arch="edsr").config.scale == 2
    sd["sub_mean.bias"] = torch.zeros(0)  # never used, dropped: no mean shift to read
    torch.save(sd, tmp_path / "liif_edsr.pt")
    assert load_official(tmp_path / "liif_edsr.pt", arch="edsr").config.scale == 2


_KILLED_AT_THE_RENAME = """
import os, signal, sys
from iste.cli.main import main
def killed(*a, **k):  # the data written, not put in place (renamed, or linked without
    os.kill(os.getpid(), signal.SIGKILL)  # --overwrite)
os.replace = os.link = killed
main(sys.argv[1:])
"""


def test_a_killed_conversions_temporary_is_removed_by_the_rerun(tmp_path):
    # convert-official killed (kill -9, an OOM kill) as it wrote its output left a temporary
    # as large as the model ('.x2.safetensors.k3j2.<pid>-<start>-<host>.tmp') that every rerun
    # kept: its write never looked for a killed writer's leftovers
    pth = _pth("edsr", 2, tmp_path, "bare")
    out = tmp_path / "out" / "x2.safetensors"
    argv = ["convert-official", str(pth), "--arch", "edsr", "-o", str(out)]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        src, os.environ.get("PYTHONPATH")]))}
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_THE_RENAME, *argv], env=env)
    assert killed.returncode == -9
    (temp,) = out.parent.iterdir()
    assert temp.name.startswith(".x2.safetensors.") and temp.name.endswith(".tmp")
    assert main(argv) == 0
    assert [p.name for p in out.parent.iterdir()] == ["x2.safetensors"]
    assert iste.load(out, device="cpu").scale == 2


@pytest.mark.parametrize("arch,key", [("edsr", "head.0.weight"),
                                      ("swinir", "conv_first.weight"),
                                      ("swinir", "conv_before_upsample.0.weight")])
def test_weights_of_no_channels_are_one_line(arch, key, tmp_path, capsys):
    """The sizes are read from the shapes; a tensor of 0 channels divided by zero there (a
    ZeroDivisionError traceback)."""
    sd, _, _ = _published(arch, 2)
    sd[key] = torch.zeros(0, *sd[key].shape[1:])
    torch.save(sd, tmp_path / "zero.pth")
    code = main(["convert-official", str(tmp_path / "zero.pth"), "--arch", arch,
                 "-o", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "malformed published checkpoint" in err and "Traceback" not in err


def test_bare_state_dicts_need_their_architecture_named(tmp_path, capsys):
    pth = _pth("edsr", 2, tmp_path, "bare")
    with pytest.raises(CheckpointError, match="does not name its architecture; give --arch"):
        load_official(pth)
    with pytest.raises(CheckpointError, match="not a classical-SR SwinIR"):
        load_official(pth, arch="swinir")
    with pytest.raises(CheckpointError, match="not a published RDN"):
        load_official(pth, arch="rdn")
    liif_style = _pth("edsr", 2, tmp_path, "liif")
    with pytest.raises(CheckpointError, match=r"\(edsr\), not rdn"):
        load_official(liif_style, arch="rdn")
    code = main(["convert-official", str(pth), "-o", str(tmp_path / "o.safetensors")])
    assert code == 2 and "--arch" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_a_liif_spec_that_disagrees_with_its_weights_is_refused(tmp_path):
    sd, _, case = _published("edsr", 2)
    torch.save({"model": {"name": "edsr-baseline", "args": {**case["args"], "scale": 3},
                          "sd": sd}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="scale 3 but its upsampler is x2"):
        load_official(tmp_path / "bad.pth")
    torch.save({"model": {"name": "edsr-baseline", "args": {**case["args"],
                                                            "no_upsampling": True},
                          "sd": sd}}, tmp_path / "enc.pth")
    with pytest.raises(CheckpointError, match="no_upsampling: true is an encoder"):
        load_official(tmp_path / "enc.pth")


@pytest.mark.parametrize("spec,says", [
    ({"name": "liif", "args": {"encoder_spec": {"args": {}}}, "sd": {"x": torch.zeros(1)}},
     "encoder_spec needs a 'name'"),
    ({"name": "liif", "args": [1, 2], "sd": {"x": torch.zeros(1)}}, "'args' are a list"),
    ({"name": "liif", "args": {}, "sd": torch.zeros(1)}, "no 'sd' \\(state dict\\) mapping"),
])
def test_a_malformed_liif_spec_is_one_line(tmp_path, capsys, spec, says):
    torch.save({"model": spec}, tmp_path / "m.pth")
    assert main(["convert-official", str(tmp_path / "m.pth"), "-o",
                 str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(says, err) and "\n" not in err


def test_an_output_that_is_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "o.safetensors").mkdir()
    assert main(["convert-official", str(tmp_path / "in.pth"), "-o",
                 str(tmp_path / "o.safetensors")]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_an_output_folder_that_is_a_file_is_said_before_the_conversion(tmp_path, capsys):
    """It was '[Errno 17] File exists: ...' once the checkpoint was converted; a checkpoint
    refused leaves no folders made for its output."""
    pth = _pth("edsr", 2, tmp_path, "liif")
    (tmp_path / "taken").write_text("a file")
    assert main(["convert-official", str(pth), "-o", str(tmp_path / "taken" / "o.safetensors")
                 ]) == 2
    assert "taken is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    out = tmp_path / "new" / "sub" / "o.safetensors"
    assert main(["convert-official", str(tmp_path / "bad.pth"), "-o", str(out)]) == 2
    assert not (tmp_path / "new").exists()


def test_an_iste_checkpoint_is_not_converted_again(tmp_path, capsys):
    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    ours = save_model(build_model(tiny_config("liif")), tmp_path / "ours.safetensors")
    assert main(["convert-official", str(ours), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "already an iste checkpoint" in capsys.readouterr().err


def test_a_checkpoint_with_ema_weights_says_which_set_is_converted():
    from iste.models.official import bare_state_dict

    params, ema = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    with pytest.warns(UserWarning, match="'params' and 'params_ema'.*'params' is converted"):
        assert bare_state_dict({"params": params, "params_ema": ema})["w"].sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one set alone: nothing to say
        assert bare_state_dict({"params_ema": ema})["w"].sum() == 2
