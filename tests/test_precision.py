"""Precision chosen by hardware and model width (QueryOptions(precision="auto"))."""

import json
import warnings

import numpy as np
import pytest
import torch

from iste import runtime
from iste.api import upscale
from iste.cli.main import main
from iste.engine.render import NARROW_WIDTH, QueryOptions, auto_precision, autocast_for
from iste.models.registry import build_model
from model_zoo import tiny_config


def _model(width: int):
    return build_model(tiny_config("liif", hidden=[width, width])).eval()


@pytest.fixture()
def fast_bf16(monkeypatch):
    def set_fast(value: bool):
        monkeypatch.setattr(runtime, "bf16_is_fast", lambda device: value)
    return set_fast


def test_auto_is_bf16_only_for_wide_models_on_fast_hardware(fast_bf16):
    wide, narrow = _model(NARROW_WIDTH), _model(NARROW_WIDTH // 2)
    fast_bf16(True)
    assert auto_precision(wide) == "bf16" and auto_precision(narrow) == "fp32"
    assert QueryOptions().resolved(wide).precision == "bf16"
    assert QueryOptions(precision="fp32").resolved(wide).precision == "fp32"  # explicit wins
    fast_bf16(False)
    assert auto_precision(wide) == "fp32"
    assert QueryOptions(precision="bf16").resolved(wide).precision == "bf16"


def test_auto_output_is_the_resolved_precisions_output(fast_bf16):
    model = _model(NARROW_WIDTH)
    image = (np.random.default_rng(0).random((10, 12, 3)) * 255).astype(np.uint8)
    out = {p: upscale(image, 2.5, model, options=QueryOptions(precision=p))
           for p in ("fp32", "bf16")}
    assert not np.array_equal(out["fp32"], out["bf16"])  # the test can tell them apart
    for fast, expected in ((True, "bf16"), (False, "fp32")):
        fast_bf16(fast)
        np.testing.assert_array_equal(upscale(image, 2.5, model), out[expected])


def test_the_eval_cache_keys_and_records_the_resolved_precision(fast_bf16):
    from iste.eval.protocol import Protocol

    wide = _model(NARROW_WIDTH)
    auto, fp32, bf16 = (Protocol(options=QueryOptions(precision=p)) for p in ("auto", "fp32",
                                                                            "bf16"))
    fast_bf16(True)
    assert auto.precision_for(wide) == "bf16" and auto.precision_for(None) == "fp32"
    assert auto.fingerprint(wide) == bf16.fingerprint(wide)
    fast_bf16(False)
    assert auto.fingerprint(wide) == fp32.fingerprint(wide)
    assert auto.fingerprint(wide)["precision"] == "fp32"


def test_cpu_flags_decide_cpu_bf16(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nflags\t: other\n")
    assert runtime.cpu_flags.__wrapped__(str(info)) == {"fpu", "avx512f", "avx512_bf16"}
    for flags, fast in (({"avx512f"}, False), ({"avx512f", "amx_bf16"}, True), ({"bf16"}, True)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert runtime.bf16_is_fast("cpu") is fast


def test_bf16_asked_for_where_it_is_emulated_warns_once(fast_bf16, tmp_path):
    from iste.data.imagewrite import write_image
    from iste.models.checkpoint import save_model

    runtime.warn_if_bf16_is_emulated.cache_clear()
    fast_bf16(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autocast_for(torch.device("cpu"), "bf16")  # native units: no warning
    runtime.warn_if_bf16_is_emulated.cache_clear()
    fast_bf16(False)
    with pytest.warns(UserWarning, match="no native bfloat16 units"):
        autocast_for(torch.device("cpu"), "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autocast_for(torch.device("cpu"), "bf16")  # once per device and process
        autocast_for(torch.device("cpu"), "fp32")
    runtime.warn_if_bf16_is_emulated.cache_clear()
    image = tmp_path / "in.png"
    write_image(image, np.zeros((8, 8, 3), np.uint8))
    ckpt = save_model(_model(32), tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="emulated there"):
        assert main(["upscale", str(image), "-s", "2", "--precision", "bf16",
                     "-o", str(tmp_path / "out.png"), "--model", str(ckpt)]) == 0


def test_unresolved_auto_is_refused_and_bad_names_too():
    with pytest.raises(ValueError, match="resolved"):
        autocast_for(torch.device("cpu"), "auto")
    with pytest.raises(ValueError, match="precision"):
        QueryOptions(precision="fp16")


def test_cli_precision_choices(tmp_path, capsys):
    from iste.data.imagewrite import write_image
    from iste.models.checkpoint import save_model

    image = tmp_path / "in.png"
    write_image(image, np.zeros((8, 8, 3), np.uint8))
    ckpt = save_model(_model(32), tmp_path / "m.safetensors")
    for precision in ("auto", "fp32", "bf16"):
        out = tmp_path / f"{precision}.png"
        assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(ckpt),
                     "--precision", precision]) == 0
        assert out.is_file()


def test_the_eval_report_states_the_precision_each_model_ran_in(tmp_path, fast_bf16):
    from iste.data.imagewrite import write_image
    from iste.models.checkpoint import save_model

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(data / f"t{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    wide = save_model(_model(NARROW_WIDTH), tmp_path / "wide.safetensors")
    narrow = save_model(_model(NARROW_WIDTH // 2), tmp_path / "narrow.safetensors")
    fast_bf16(True)

    def report(name, *argv):
        out = tmp_path / name
        assert main(["eval", "--data", str(data), "--scales", "2", "--out", str(out),
                     "--no-cost", "--no-progress", *argv]) == 0
        return (out / "report.md").read_text()

    both = report("both", "--methods", f"bicubic,wide={wide},narrow={narrow}",
                  "--precision", "auto")
    assert "resolved per model on this machine: wide bf16, narrow fp32" in both
    assert "precision=auto" not in both
    one = report("one", "--methods", f"narrow={narrow}", "--precision", "auto")
    assert "precision=fp32 (`--precision auto` on this machine)" in one
    assert "precision=bf16;" in report("bf16", "--methods", f"narrow={narrow}",
                                       "--precision", "bf16")


def test_the_output_records_the_precision_that_ran(tmp_path, fast_bf16):
    from iste.data.imagewrite import write_image
    from iste.models.checkpoint import save_model
    from iste.provenance import sidecar_path

    image = tmp_path / "in.png"
    write_image(image, (np.random.default_rng(2).random((10, 12, 3)) * 255).astype(np.uint8))
    for width, fast, expected in ((NARROW_WIDTH, True, "bf16"), (NARROW_WIDTH // 2, True, "fp32"),
                                  (NARROW_WIDTH, False, "fp32")):
        fast_bf16(fast)
        ckpt = save_model(_model(width), tmp_path / f"m{width}.safetensors")
        out = tmp_path / f"o{width}{fast}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model",
                         str(ckpt)]) == 0
        assert json.loads(sidecar_path(out).read_text())["precision"] == expected


def test_each_gpu_answers_for_its_own_bf16(monkeypatch):
    # cuda:0 a Turing card, cuda:1 a Hopper one; torch's is_bf16_supported() answers for the
    # current device only, so it must not decide for the one asked about
    capability = {0: (7, 5), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device: capability[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.bf16_is_fast("cuda:0") is False
    assert runtime.bf16_is_fast("cuda:1") is True
