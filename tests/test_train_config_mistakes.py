"""Mistaken training configs, as lab users write them: each refused in one line naming the key
(and, through ``iste train``, the file) before a model is built or any data indexed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import iste.train.loop as loop
from hostile_cases import run_cli
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.train.config import load_train_config, parse_train_config
from iste.typed import ConfigError
from model_zoo import tiny_config
from train_helpers import synthetic_folder, tiny_train_dict


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hr"), n=2, size=120)


def _with(base: dict, section: str, **values) -> dict:
    return {**base, section: {**base.get(section, {}), **values}}


@pytest.mark.parametrize("section,values,message", [
    # the first validation divided by zero (ZeroDivisionError after the first steps)
    ("data", {"val_scales": []}, r"data\.val_scales is empty.*data\.val: \[\]"),
    ("data", {"val_degradations": []}, r"data\.val_degradations is empty"),
    # scored twice, or drawn twice as often: a copy-paste slip
    ("data", {"val_scales": [2.0, 4.0, 2.0]}, r"data\.val_scales lists 2\.0 twice"),
    ("data", {"downsamples": [1, 2, 1]}, r"data\.downsamples lists 1\.0 twice"),
    ("data", {"val_degradations": ["paper", "jpeg75", "jpeg75"]}, "lists 'jpeg75' twice"),
    # Path("") is the folder iste runs in: the run trained on whatever lay there
    ("data", {"train": [""]}, r"data\.train\[0\] is empty"),
    ("data", {"val": ["  "]}, r"data\.val\[0\] is empty"),
    ("run", {"init": ""}, r"run\.init is empty"),
    # found only when the sources were opened, after the others were indexed, keyless
    ("data", {"val": ["sample:cmu-vall"]}, r"data\.val\[0\]: unknown sample set"),
    # MultiStepLR multiplies by gamma twice at a milestone given twice
    ("optim", {"milestones": [4, 4]}, "strictly increasing"),
    # never reached by the run's 6 steps: the learning rate silently never changed
    ("optim", {"milestones": [2, 6]}, r"optim\.milestones: \[6\] at or past the run's end"),
    ("optim", {"schedule": "step", "step_every": 10}, r"optim\.step_every: 10 is not before"),
    # settings the rest of the config makes no use of: the run silently did without them
    ("optim", {"min_lr_ratio": 0.1}, r"optim\.min_lr_ratio \(0\.1\) would be ignored: only "
                                     "schedule: cosine uses it"),
    ("optim", {"schedule": "cosine", "gamma": 0.1}, r"optim\.gamma .* schedule: multistep or"),
    ("loss", {"gan_weight": 0.1}, r"loss\.gan_weight \(0\.1\) would be ignored: only "
                                  r"loss\.kind gan uses it"),
    ("loss", {"sr_weight": 1.0}, r"loss\.sr_weight \(1\.0\) would be ignored"),
])
def test_a_mistaken_value_is_refused_naming_its_key(folder, section, values, message):
    base = tiny_train_dict(folder)
    base["data"]["val"] = [str(folder)]
    with pytest.raises(ConfigError, match=message):
        parse_train_config(_with(base, section, **values), where="run.yaml")


def test_milestones_in_epochs_are_measured_against_the_epochs(folder):
    base = tiny_train_dict(folder, steps=None, epochs=3)
    assert parse_train_config(_with(base, "optim", milestones=[2])).optim.milestones == (2,)
    with pytest.raises(ConfigError, match=r"\(run\.epochs: 3\).*count epochs"):
        parse_train_config(_with(base, "optim", milestones=[100]))


def test_empty_validation_scales_are_refused_only_where_validation_runs(folder):
    base = _with(tiny_train_dict(folder), "data", val_scales=[])
    assert parse_train_config(base).data.val_scales == ()  # data.val: [], no validation
    with pytest.raises(ConfigError, match="val_scales is empty"):
        parse_train_config(_with(base, "data", val=[str(folder)]))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MODEL = "model: {head: iste, encoder: edsr-baseline}\n"


@pytest.mark.parametrize("line,words", [
    ("run: {steps: " + "9" * 5000 + "}", "line 2: invalid value: Exceeds the limit"),
    ("run: {init: 2024-13-01}", "line 2: invalid value: month must be in 1..12"),
])
def test_a_value_yaml_cannot_build_names_the_file_and_line(tmp_path, line, words):
    path = _write(tmp_path, MODEL + line + "\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)


@pytest.mark.parametrize("line,words", [
    ("run: {steps: 5e5}", r"run\.steps: expected an integer, got '5e5' \(write the digits out: "
                          r"500000\)"),
    ("run: {epochs: 1.0e+3}", r"run\.epochs: expected an integer, got 1000\.0 \(write the "
                              r"digits out: 1000\)"),
    ("run: {batch_size: 16.0}", r"run\.batch_size: expected an integer, got 16\.0 \(write"),
])
def test_a_count_written_as_a_float_says_how_to_write_it(tmp_path, line, words):
    with pytest.raises(ConfigError, match=words):
        load_train_config(_write(tmp_path, MODEL + line + "\n"))


def test_a_number_with_an_unsigned_exponent_and_a_dot_is_the_number_meant(tmp_path):
    # YAML 1.1 reads 1.5e3 (no sign in its exponent) as text, as it reads 1e-4
    cfg = load_train_config(_write(tmp_path, MODEL + "optim: {clip_grad_norm: 1.5e3, "
                                                     "weight_decay: 2.E-2}\n"))
    assert cfg.optim.clip_grad_norm == 1500.0 and cfg.optim.weight_decay == 0.02
@pytest.fixture
def no_work(monkeypatch):
    """Building the model or opening a source fails the test: the error must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the config's mistake was reported")

    monkeypatch.setattr(loop, "build_model", refuse)
    monkeypatch.setattr(loop, "open_source", refuse)


def test_a_missing_validation_folder_is_named_before_training_data_is_indexed(
        folder, tmp_path, capsys, no_work):
    cfg = tiny_train_dict(folder)
    cfg["data"]["val"] = [str(tmp_path / "val-typo")]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_cli(["train", path, "--run-dir", tmp_path / "run"], capsys)
    assert out.code == 2, out
    assert re.search(r"iste: error: run\.yaml: data\.val\[0\]: validation source .*val-typo does "
                     "not exist", out.err), out.err
    assert not (tmp_path / "run").exists()


def test_a_missing_or_mismatched_init_is_named_before_any_work(folder, tmp_path, capsys,
                                                                no_work):
    other = tmp_path / "liif.safetensors"
    save_model(build_model(tiny_config("liif")), other)
    for init, words in ((tmp_path / "nope.safetensors", "checkpoint not found"),
                        (other, "its architecture differs")):
        cfg = tiny_train_dict(folder, init=str(init))
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = run_cli(["train", path, "--run-dir", tmp_path / "run"], capsys)
        assert out.code == 2, out
        assert re.search(r"iste: error: run\.yaml: run\.init.*" + words, out.err), out.err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, missing", [
    ({"arch": "edsr"}, "'scale'"),  # was "FixedConfig.__init__() missing 1 required ..."
    ({"head": "iste"}, "'encoder'"),
])
def test_a_model_without_a_required_key_names_the_key(model, missing):
    with pytest.raises(ConfigError, match=rf"^run\.yaml\.model: missing key\(s\) \[{missing}\]$"):
        parse_train_config({"model": model}, where="run.yaml")


@pytest.mark.parametrize("text, words", [
    # both were "invalid YAML: ReaderError" with no line and no cause
    (MODEL.encode() + b"# Pr\xe4parat (Latin-1)\n", r"line 2: not UTF-8 text \(byte #xe4: "),
    (MODEL.encode() + "# Präparat\nrun: {steps: 5}\x07\n".encode(),
     r"line 3: character #x07 is not allowed in YAML; remove it"),
])
def test_a_config_that_is_not_yaml_text_names_the_line(tmp_path, text, words):
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {words}"):
        load_train_config(path)


@pytest.mark.parametrize("line, words", [
    # YAML 1.1 reads these as other numbers than written: they were taken unsaid
    ("run: {seed: 010}", r"line 2: 010 is read by YAML as 8; write the number without its "
                         r"leading zero"),
    ("run: {steps: 1:30}", r"line 2: 1:30 is read by YAML as 90; write the number without "
                           "colons"),
])
def test_a_number_yaml_reads_otherwise_than_written_is_refused(tmp_path, line, words):
    path = _write(tmp_path, MODEL + line + "\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {words}"):
        load_train_config(path)
    assert load_train_config(_write(tmp_path, MODEL + "run: {seed: 007}\n")).run.seed == 7


def test_a_boolean_where_text_goes_says_to_quote_it(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.degradation: expected a string, got False "
                                          r"\(YAML reads no/off/yes/on as false/true: quote"):
        load_train_config(_write(tmp_path, MODEL + "data: {degradation: off}\n"))


def test_a_source_written_relative_to_the_config_says_where_paths_are_read_from(
        folder, tmp_path, capsys, monkeypatch, no_work):
    import shutil

    configs = tmp_path / "configs"
    shutil.copytree(folder, configs / "hr")
    cfg = tiny_train_dict(Path("hr"))
    (configs / "run.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    out = run_cli(["train", Path("configs") / "run.yaml", "--run-dir", "run"], capsys)
    assert out.code == 2, out
    assert ("run.yaml: data.train[0]: training source hr does not exist; configs/hr beside the "
            "config exists, but a config's paths are relative to the folder iste runs in"
            in out.err), out.err


@pytest.mark.parametrize("spec, near", [
    ("Compact-ISTE", "compact-iste"), ("compact-iste.yaml", "compact-iste"),
    ("swinir_iste", "swinir-iste"), ("swinir-lte-st", "swinir-lte-star"),
])
def test_a_slip_in_a_bundled_config_name_is_answered_with_the_name(tmp_path, monkeypatch, spec,
                                                                    near):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    with pytest.raises(ConfigError, match=rf"^config {re.escape(spec)} not found: did you mean "
                                          rf"{near}\? \(neither a file nor"):
        load_train_config(spec)
    with pytest.raises(ConfigError, match=r"^config foo not found \(neither"):
        load_train_config("foo")
