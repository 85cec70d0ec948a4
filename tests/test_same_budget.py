"""scripts/train_same_budget.py: one budget for every method, skip finished runs, resume others."""

import json
from pathlib import Path

import pytest
import yaml

from iste.train.config import parse_train_config
from train_helpers import synthetic_folder, tiny_train_dict
from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_same_budget.py"


@pytest.fixture(scope="module")
def script():
    module = load_script(SCRIPT)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hr"), n=2, size=200)


def _tiny_liif() -> dict:
    return {"head": "liif", "encoder": "edsr-baseline",
            "encoder_args": {"n_resblocks": 1, "n_feats": 8}, "head_args": {"hidden": [16]}}


def _write_configs(tmp_path: Path, folder: Path) -> tuple[Path, Path, Path]:
    """A base (tiny data, 20 steps) and two methods: ISTE with its own optimiser (10 steps,
    milestones 5/8) and data/run sections the budget must ignore, and a bare LIIF."""
    base = tiny_train_dict(folder, steps=20, seed=3)
    base["optim"]["milestones"] = [15, 18]
    iste = tiny_train_dict(folder, steps=10, batch_size=5, seed=7)
    iste["data"].update(sample_q=32, scale_min=2.0, scale_max=2.0, val_scales=[2.0])
    iste["optim"].update(lr=0.5, milestones=[5, 8])
    liif = {"model": _tiny_liif(), "run": {"steps": 7}}
    paths = []
    for name, cfg in (("base", base), ("tiny-iste", iste), ("tiny-liif", liif)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg))
    return tuple(paths)


def test_the_budget_takes_the_method_its_optimiser_and_scales_and_the_rest_from_the_base(
        script, folder, tmp_path):
    base_path, iste_path, liif_path = _write_configs(tmp_path, folder)
    load = lambda p: parse_train_config(yaml.safe_load(p.read_text()))  # noqa: E731
    base = load(base_path)
    iste = script.budget_config(base, load(iste_path), steps=4, batch=3)
    liif = script.budget_config(base, load(liif_path), steps=4, batch=3)
    assert iste.model.head == "iste" and liif.model.head == "liif"
    assert iste.run == liif.run
    assert (iste.run.steps, iste.run.batch_size, iste.run.seed) == (4, 3, 3)
    assert iste.optim.lr == 0.5 and iste.optim.milestones == (2, 3)  # 5/10, 8/10 of 4 steps
    assert liif.optim.lr == 2e-4 and liif.optim.milestones == ()  # the default optimiser
    assert iste.data.sample_q == liif.data.sample_q == base.data.sample_q
    assert iste.data.train == liif.data.train == base.data.train
    assert (iste.data.scale_min, iste.data.scale_max, iste.data.val_scales) == (2.0, 2.0, (2.0,))
    assert (liif.data.scale_min, liif.data.scale_max) == (base.data.scale_min, base.data.scale_max)
    assert iste.run.val_every == 4  # validation at the end only, unless asked for a curve
    curve = script.budget_config(base, load(iste_path), steps=4, batch=3, val_every=2)
    assert curve.run.val_every == 2 and curve.optim == iste.optim and curve.data == iste.data


def test_names_must_be_unique(script):
    assert script.parse_entries(["a=x.yaml", "compact-iste"]) == [("a", "x.yaml"),
                                                                 ("compact-iste", "compact-iste")]
    with pytest.raises(ValueError, match="unique"):
        script.parse_entries(["dir1/m.yaml", "dir2/m.yaml"])


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(script, folder, tmp_path):
    base, iste, liif = _write_configs(tmp_path, folder)
    out = tmp_path / "out"
    entries = [("iste", str(iste)), ("liif", str(liif))]
    kwargs = dict(out=out, base=str(base), steps=2, batch=2, progress=False)

    script.train_all(entries, stop_after=1, **kwargs)  # both interrupted after step 1
    assert script.finished_step(out / "iste") == script.finished_step(out / "liif") == 1
    (out / "liif" / "train_state.pt").unlink()  # as if killed before its first checkpoint

    summary = script.train_all(entries, **kwargs)
    assert summary["runs"]["iste"]["segments"][-1]["from_step"] == 1  # resumed
    assert summary["runs"]["liif"]["segments"][-1]["from_step"] == 0  # started again
    for name in ("iste", "liif"):
        assert script.finished_step(out / name) == 2
        saved = json.loads((out / name / "config.json").read_text())
        assert (saved["run"]["steps"], saved["run"]["batch_size"]) == (2, 2)
    state_time = (out / "iste" / "train_state.pt").stat().st_mtime_ns

    again = script.train_all(entries, **kwargs)  # everything finished: nothing trains
    assert (out / "iste" / "train_state.pt").stat().st_mtime_ns == state_time
    assert again["runs"] == summary["runs"]
    assert again["budget"] == {"base": str(base), "steps": 2, "batch_size": 2, "crops": 4}


def test_the_report_notes_each_checkpoints_training_budget(script, folder, tmp_path):
    from iste.eval.report_text import _training_note
    from iste.models.checkpoint import read_metadata

    base, iste, _ = _write_configs(tmp_path, folder)
    script.train_all([("iste", str(iste))], out=tmp_path / "out", base=str(base), steps=2,
                     batch=3, progress=False)
    _, meta = read_metadata(tmp_path / "out" / "iste" / "model.safetensors")
    assert _training_note(meta) == "trained 2 steps x batch 3 (6 crops), from scratch"
    meta["init_sha256"] = "ab" * 32
    assert _training_note(meta).endswith(", starting from weights abababababab")
    assert _training_note({}) == ""  # converted weights record no training
