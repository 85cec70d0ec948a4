"""Where iste train, iste eval and iste downstream write: a --log-file or --json-summary that
would take the name of one of the run's own files, or of what it reads, is refused before
anything is written (as iste upscale refuses one naming its outputs and sidecars)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from iste.cli.main import main
from iste.data.imagewrite import write_image
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.train.config import load_train_config
from train_helpers import tiny_train_dict


@pytest.fixture
def setup(tmp_path):
    """(data folder with one 200 px image, its config, a checkpoint), all under tmp_path/in."""
    src = tmp_path / "in"
    (src / "data").mkdir(parents=True)
    rgb = (np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8)
    write_image(src / "data" / "a.png", rgb)
    ckpt = src / "m.safetensors"
    config = src / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_train_dict(src / "data", steps=2, init=str(ckpt))))
    save_model(build_model(load_train_config(config).model), ckpt)  # the run's architecture
    return src, config, ckpt


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _refused(tmp_path, capsys, argv: list[str], said: str) -> None:
    before = _contents(tmp_path / "in")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("iste: error: ") and said in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written
    assert _contents(tmp_path / "in") == before  # nothing appended to what it reads


@pytest.mark.parametrize("own", ["--json-summary", "--log-file"])
@pytest.mark.parametrize("named, said", [
    # the metrics overwrote a log named metrics.jsonl; a log named model.safetensors made a
    # new run refuse its own folder ('already holds a run')
    ("run/metrics.jsonl", "lies inside {run}, the run folder, under a name the command may"),
    ("run/model.safetensors", "lies inside {run}, the run folder"),
    ("run/tb", "lies inside {run}, the run folder"),
    ("run/.lock", "lies inside {run}, the run folder"),
    # a log appended to a training image damaged it; one named as an image became data
    ("in/data/a.png", "a data.train folder, under a name the command reads as input"),
    ("in/data/new.PNG", "a data.train folder, under a name the command reads as input"),
    ("in/m.safetensors", "is the run.init checkpoint {ckpt}, which the command reads"),
])
def test_a_log_or_summary_on_a_training_runs_own_or_input_files_is_refused(
        tmp_path, capsys, setup, own, named, said):
    _, config, ckpt = setup
    run = tmp_path / "run"
    _refused(tmp_path, capsys, ["train", str(config), "--run-dir", str(run), own,
                                str(tmp_path / named), "-q"],
             said.format(run=run, ckpt=ckpt))


def test_a_log_beside_a_training_runs_files_is_taken(tmp_path, setup):
    _, config, _ = setup
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--log-file",
                 str(run / "train.log"), "--json-summary", str(run / "summary.json"),
                 "-q"]) == 0
    assert (run / "train.log").stat().st_size and (run / "summary.json").stat().st_size
    assert (run / "model.safetensors").exists()


@pytest.mark.parametrize("own", ["--json-summary", "--log-file"])
@pytest.mark.parametrize("named, said", [
    # the summary, written last, replaced the results (or the report); a log in --data as an
    # image became a test image; one appended to a checkpoint damaged it
    ("out/results.json", "lies inside {out}, the report folder, under a name the command may"),
    ("out/report.md", "lies inside {out}, the report folder"),
    ("out/tables/t.md", "lies inside {out}, the report folder"),
    ("in/data/b.png", "the --data folder, under a name the command reads as input"),
    ("in/m.safetensors", "is the checkpoint {ckpt} of --methods, which the command reads"),
])
def test_a_log_or_summary_on_an_evaluations_own_or_input_files_is_refused(
        tmp_path, capsys, setup, own, named, said):
    src, _, ckpt = setup
    out = tmp_path / "out"
    _refused(tmp_path, capsys, ["eval", "--data", str(src / "data"), "--methods",
                                f"bicubic,m={ckpt}", "--scales", "2", "--out", str(out),
                                "--no-cost", "--no-figures", own, str(tmp_path / named), "-q"],
             said.format(out=out, ckpt=ckpt))


@pytest.mark.parametrize("named, said", [
    ("out/results_glas.json", "lies inside {out}, the experiment's --out folder"),
    ("out/table5_glas.md", "lies inside {out}, the experiment's --out folder"),
    ("out/runs", "lies inside {out}, the experiment's --out folder"),
    ("in/m.safetensors", "is the checkpoint {ckpt} of --methods, which the command reads"),
])
def test_a_log_or_summary_on_a_downstream_experiments_own_or_input_files_is_refused(
        tmp_path, capsys, setup, named, said):
    src, _, ckpt = setup
    out = tmp_path / "out"
    _refused(tmp_path, capsys, ["downstream", "glas", "--data", str(src / "data"), "--methods",
                                f"B=bicubic,M={ckpt}", "--out", str(out), "--json-summary",
                                str(tmp_path / named)],
             said.format(out=out, ckpt=ckpt))


@pytest.mark.parametrize("named, said", [
    # with --overwrite the summary replaced the figure; without, the run refused it as existing
    ("out/fig9_decoders.png", "lies inside {out}, the figures folder, under a name the command"),
    ("out/fig10_ablations.png", "lies inside {out}, the figures folder"),
    ("in/m.safetensors", "is the checkpoint {ckpt} of --ablations, which the command reads"),
])
def test_a_log_or_summary_on_the_figures_own_or_input_files_is_refused(
        tmp_path, capsys, setup, named, said):
    src, _, ckpt = setup
    out = tmp_path / "out"
    _refused(tmp_path, capsys, ["figures", "--image", str(src / "data" / "a.png"), "--out",
                                str(out), "--ablations", f"X={ckpt}", "--overwrite",
                                "--json-summary", str(tmp_path / named)],
             said.format(out=out, ckpt=ckpt))


@pytest.mark.parametrize("inside", ["figures", "cache", "tables/hr"])
def test_test_images_inside_what_the_report_writes_are_refused(tmp_path, capsys, inside):
    # --data OUT/figures: the report's figures were written among the test images
    out = tmp_path / "out"
    data = out / inside
    data.mkdir(parents=True)
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    write_image(data / "a.png", rgb)
    assert main(["eval", "--data", str(data), "--methods", "bicubic", "--scales", "2",
                 "--out", str(out), "--no-cost", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"--data {data} lies inside --out {out}" in err and err.count("\n") == 1, err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(
        [*(str(Path(*Path(inside).parts[:i])) for i in range(1, len(Path(inside).parts) + 1)),
         f"{inside}/a.png"])
