"""benchmarks/gpu_check.py in its dry (CPU) mode: the script runs and writes its table."""

import json
from pathlib import Path

import yaml

from iste.train.config import load_train_config
from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    module = load_script(SCRIPT)
    return module


def test_training_config_of_the_check_loads(tmp_path):
    text = _module()._train_yaml("swinir-iste", 20)
    path = tmp_path / "train.yaml"
    path.write_text(text)
    cfg = load_train_config(str(path))
    assert cfg.run.steps == 20 and cfg.run.batch_size == 4 and cfg.data.sample_q == 2304
    assert cfg.model.to_dict()["encoder"] == "swinir" if hasattr(cfg.model, "to_dict") else True
    assert yaml.safe_load(text)["data"]["train"] == ["sample:cmu-train"]


def test_dry_run_writes_the_table(tmp_path):
    out = tmp_path / "check.md"
    code = _module().main(["--dry-run", "--out", str(out), "--skip", "tests,table8,train"])
    table = out.read_text()
    assert code == 0, table
    assert "dry run on CPU" in table and "| iste upscale slide region x4 | yes |" in table
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["iste upscale slide region x4"] and rows[0]["ok"]
    assert "--estimate" in rows[0]["result"] and "against the job's" in rows[0]["result"]
    # the dry region is tissue: the model ran (a background region measured only bicubic)
    assert "1 of 1 tile(s) through the model" in rows[0]["result"]
    # the shipped model renders in fp32 under auto, so its fp32 twin gives the same pixels
    assert "precision auto (fp32)" in rows[0]["result"]
    assert "differ by mean 0.000, max 0 grey levels" in rows[0]["result"]


def test_steps_past_the_budget_are_named_not_run(tmp_path):
    out = tmp_path / "check.md"
    code = _module().main(["--dry-run", "--out", str(out), "--budget", "5"])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert code == 1
    assert [r["step"] for r in rows] == ["table8", "upscale", "train", "tests"]
    assert all(not r["ok"] and "budget was spent" in r["result"] for r in rows)


def test_the_device_tests_name_real_files_and_tests():
    module = _module()
    root = SCRIPT.parents[1]
    assert all((root / path).is_file() for path in module.DEVICE_TESTS)
    for node in module.NEEDS_ABSENT:
        path, name = node.split("::")
        assert path in module.DEVICE_TESTS
        assert f"def {name.split('[')[0]}(" in (root / path).read_text()


def test_the_dry_run_refuses_what_the_gpu_machine_lacks(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, **_module().device_env(tmp_path)}
    code = "import tiffslide, tifffile; print('carried'); import {}"
    for absent in ("wsidicom", "openslide", "fastapi"):
        run = subprocess.run([sys.executable, "-c", code.format(absent)], env=env,
                             capture_output=True, text=True)
        assert run.stdout == "carried\n" and run.returncode == 1
        assert f"No module named '{absent}' (the GPU machine lacks it" in run.stderr


def test_device_tests_needing_what_the_machine_lacks_are_deselected(tmp_path):
    """Run where the machine's packages are, a device test writing DICOM (wsidicom) failed:
    the GPU check's test step reported a failure of the package set, not of CUDA."""
    import os
    import subprocess
    import sys

    module = _module()
    env = {**os.environ, **module.device_env(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_slides_pipeline.py", "-k", "another_job_finished_meanwhile",
         *(f"--deselect={t}" for t in module.NEEDS_ABSENT)],
        cwd=SCRIPT.parents[1], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "1 passed, " in run.stdout  # the svs case; the dicom one deselected


def test_the_bundle_packs_what_the_machine_lacks_and_nothing_it_has():
    bundle = load_script(SCRIPT.with_name("gpu_bundle.py"))
    names = {pin.split("==")[0].lower() for pin in bundle.closure()}
    assert {"tiffslide", "tifffile", "imagecodecs", "zarr", "simplejpeg",
            "platformdirs"} <= names  # tifffile: the machine's is too old for zarr 3
    assert not names & {"torch", "numpy", "pillow"}  # the machine's own


def test_the_device_script_refuses_without_its_bundle(tmp_path):
    import shutil
    import subprocess

    copy = tmp_path / "repo"
    (copy / "benchmarks").mkdir(parents=True)
    shutil.copy(SCRIPT.with_name("gpu_check.sh"), copy / "benchmarks")
    run = subprocess.run(["bash", str(copy / "benchmarks" / "gpu_check.sh")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "gpu_bundle.py" in run.stderr
