"""One-call GPU check: tests on CUDA, Table 8 on the GPU, a slide region, training steps.

    python benchmarks/gpu_check.py --out gpu_check.md            # on a CUDA machine, < 10 min
    python benchmarks/gpu_check.py --dry-run --out dry.md        # anywhere (CI): CPU, tiny sizes

Steps (each a subprocess with its own time limit, so one failure does not stop the others;
the table says what ran, what failed and how long each took). The measurements come first and
the tests last, with what is left of ``--budget``: a lent GPU gives one call, and a slow test
file must not cost the table.

1. Table 8 on the GPU: ``iste.eval.cost.measure_costs`` of the paper-size ISTE, LIIF and LTE
   (EDSR-baseline) at 48/96/192 output px from a 96 x 96 LR (paper, RTX 3090: ISTE 104-407 ms,
   1.8-12.7 GB);
2. ``iste upscale`` of a region of the sample slide at x4 (shipped model, tissue on), timed as
   a user runs it (start-up and writing included), output Mpx/s; before it the same command
   with ``--estimate``, whose projection is set beside the job's own time; after it the same
   job in fp32, to weigh the precision ``auto`` chose (speed ratio, pixel difference);
3. ``iste train`` of the paper config (SwinIR ISTE, batch 4, 2304 queries) for a few steps on
   the sample training split, samples/s from its log;
4. the tests that run models (:data:`DEVICE_TESTS`) with CUDA visible (tests and the API pick
   CUDA by default where they do not name a device); their whole output is kept beside
   ``--out`` (``<name>_tests.log``).

``--dry-run`` runs the same steps on the CPU with tiny sizes (one test file, Table 8 at 48 px
with the compact model, a 64-px region of tissue, the compact config for 2 steps), to check the
script itself, each step refused the packages the GPU machine lacks (:func:`device_env`).
Results: a markdown table (``--out``) and the same as JSON beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_env(folder: Path) -> dict[str, str]:
    """The environment under which a dry run's steps can import only what the GPU machine
    has: a ``sitecustomize`` written to ``folder`` and put first on ``PYTHONPATH`` refuses
    the modules that ``gpu_bundle.absent_on_device`` names (OpenSlide, wsidicom, the
    viewer's web stack, ...), in every Python process a step starts, so that a step or a
    device test that needs one fails in the dry run as it would there."""
    spec = importlib.util.spec_from_file_location("gpu_bundle", Path(__file__).with_name(
        "gpu_bundle.py"))
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    absent = bundle.absent_on_device()
    (folder / "sitecustomize.py").write_text(
        '"""Written by benchmarks/gpu_check.py --dry-run: the GPU machine lacks these."""\n'
        "import sys\n"
        f"ABSENT = frozenset({absent!r})\n\n\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ABSENT:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (the GPU machine "
        "lacks it: gpu_check.py --dry-run)', name=name)\n\n\n"
        "sys.meta_path.insert(0, Absent())\n")
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(folder) + (os.pathsep + path if path else "")}


def _run(cmd: list[str], timeout: int, env: dict | None = None) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        code, out = proc.returncode, (proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired as exc:  # keep what it printed (bytes on some Pythons)
        partial = "".join(p.decode(errors="replace") if isinstance(p, bytes) else p
                          for p in (exc.stdout, exc.stderr) if p)
        code, out = 124, f"{partial}\ntimed out after {timeout} s"
    return code, time.perf_counter() - t0, out


def _last(out: str, n: int = 1) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[:300] if lines else ""


DEVICE_TESTS = tuple(f"tests/test_{name}.py" for name in """
    engine engine_budget engine_parallel engine_shared heads head_contract layers encoders
    fast_paths precision train train_parts api_inputs argmax fixed_models fixed_train
    gpu_train_scanner checkpoint official_parity runtime histo_training eval_metrics
    slides_pipeline slides_tiles cli deblock""".split())
"""The test files that run models on the default device (CUDA where present): the engine,
heads, encoders, training, the slide pipeline and the CLI. The others need what the lent
GPU machine lacks (the viewer's web stack and browser, DICOM, OpenSlide, Java) and run no
model on a device; so do those of :data:`NEEDS_ABSENT`."""
NEEDS_ABSENT = (
    "tests/test_fixed_models.py::test_slide_at_the_own_scale_equals_the_whole_image_there_and_"
    "refuses_others",
    "tests/test_slides_pipeline.py::test_slide_output_of_a_region_equals_whole_image_sr_there",
    "tests/test_slides_pipeline.py::test_an_output_another_job_finished_meanwhile_is_not_"
    "replaced[dicom-out.dcmdir]")
"""Tests of :data:`DEVICE_TESTS` that need what the machine lacks: the first two compare the
output with OpenSlide's reading, the last writes DICOM (wsidicom)."""


def step_tests(device: str, dry: bool, timeout: int, log: Path, env: dict) -> dict:
    if dry:
        target = ["tests/test_runtime.py", "-k", "requested"]
    else:
        target = [*DEVICE_TESTS, *(f"--deselect={t}" for t in NEEDS_ABSENT)]
    env = env if device == "cuda" else {**env, "CUDA_VISIBLE_DEVICES": ""}
    code, seconds, out = _run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p",
                               "no:cacheprovider", *target], timeout, env)
    log.write_text(out)
    return {"step": f"tests on {device} ({len(DEVICE_TESTS)} files)" if not dry
            else "tests (dry run)", "ok": code == 0, "seconds": seconds,
            "result": _last(out)}


def step_table8(device: str, dry: bool, timeout: int, tmp: Path, env: dict) -> dict:
    methods = () if dry else ("iste", "liif", "lte")
    sides = "(48,)" if dry else "(48, 96, 192)"
    code = ("import json, torch; from iste.bench.suite import paper_config; "
            "from iste.models.registry import build_model; "
            "from iste.models.checkpoint import save_model; "
            "from iste.eval.cost import measure_costs; specs = []\n"
            f"for m in {methods!r}:\n"
            "    torch.manual_seed(0)\n"
            f"    specs.append(m.upper() + '=' + str(save_model(build_model(paper_config(m)), "
            f"{str(tmp)!r} + '/' + m + '.safetensors')))\n"
            f"rows = measure_costs(specs or ['default'], device={device!r}, "
            f"repeats={1 if dry else 3}, sides={sides}); "
            "print(json.dumps([r.__dict__ for r in rows]))")
    rc, seconds, out = _run([sys.executable, "-c", code], timeout, env)
    result = _last(out)
    if rc == 0:
        rows = json.loads(out.strip().splitlines()[-1])
        result = "; ".join(f"{r['method']} {r['query']}px {r['time_ms']:.0f} ms "
                           f"{r['peak_mb'] / 1024:.2f} GB" for r in rows)
    return {"step": "Table 8 (96 x 96 LR, random paper-size weights)", "ok": rc == 0,
            "seconds": seconds, "result": result}


DRY_REGION, REGION = (900, 1400, 64, 64), (700, 1300, 1024, 1024)
"""The slide regions (x, y, width, height) of the upscale step: tissue throughout, so that
the model runs on every tile (a background tile is only resized bicubically)."""


def step_upscale(device: str, dry: bool, timeout: int, tmp: Path, env: dict) -> dict:
    x, y, side, _ = DRY_REGION if dry else REGION
    cmd = [sys.executable, "-m", "iste", "upscale", "sample:cmu-svs", "-s", "4", "--region",
           f"{x},{y},{side},{side}", "--device", device]
    t0 = time.perf_counter()

    def left() -> int:
        return max(1, timeout - round(time.perf_counter() - t0))

    rc_est, _, out_est = _run([*cmd, "-o", str(tmp / "auto.tiff"), "--estimate",
                               "--json-summary", str(tmp / "est.json")], left(), env)
    rc, seconds, out = _run([*cmd, "-o", str(tmp / "auto.tiff"),
                             "--json-summary", str(tmp / "run.json")], left(), env)
    rc32, _, out32 = _run([*cmd, "-o", str(tmp / "fp32.tiff"), "--precision", "fp32",
                           "--json-summary", str(tmp / "fp32.json")], left(), env)
    mpx = (side * 4) ** 2 / 1e6
    result = f"{side} x {side} LR -> {side * 4} x {side * 4}: {mpx / seconds:.3f} Mpx/s " \
             f"(wall, start-up included)" if rc == 0 else _last(out)
    modelled = 0
    if rc == 0:
        job = json.loads((tmp / "run.json").read_text())["outputs"][0]
        modelled = job["tiles_model"]
        result += f", {modelled} of {job['tiles']} tile(s) through the model"
        if not modelled:
            result += " (none: the region is background, so the model was not measured)"
    if rc == 0 and rc_est == 0:
        est = json.loads((tmp / "est.json").read_text())["estimates"][0]
        job = json.loads((tmp / "run.json").read_text())["outputs"][0]
        result += (f"; --estimate {est['seconds']:.1f} s against the job's "
                   f"{job['seconds']:.1f} s, GPU peak "
                   f"{(est['peak_device_memory'] or 0) / 2**30:.2f} GB")
    elif rc_est != 0:
        result += f"; --estimate FAILED: {_last(out_est)}"
    if rc == 0 and rc32 == 0:
        import numpy as np
        import tifffile

        auto = tifffile.imread(tmp / "auto.tiff").astype(np.int16)
        fp32 = tifffile.imread(tmp / "fp32.tiff").astype(np.int16)
        diff = np.abs(auto - fp32)
        job_auto, job32 = (json.loads((tmp / f"{n}.json").read_text())["outputs"][0]["seconds"]
                           for n in ("run", "fp32"))
        result += (f"; precision auto ({_precision(tmp / 'auto.tiff')}) ran the job "
                   f"{job32 / job_auto:.2f}x as fast as fp32 ({job32:.1f} s); their pixels "
                   f"differ by mean {diff.mean():.3f}, max {diff.max()} grey levels (JPEG tiles)")
    elif rc32 != 0:
        result += f"; fp32 job FAILED: {_last(out32)}"
    return {"step": "iste upscale slide region x4",
            "ok": rc == 0 and rc_est == 0 and rc32 == 0 and modelled > 0,
            "seconds": seconds, "result": result}


def _precision(tiff: Path) -> str:
    """The precision a slide output records in its description (``iste.precision = bf16``)."""
    import re

    import tifffile

    with tifffile.TiffFile(tiff) as tif:
        found = re.search(r"iste\.precision = (\w+)", tif.pages[0].description)
    return found.group(1) if found else "?"


def step_train(device: str, dry: bool, timeout: int, tmp: Path, env: dict) -> dict:
    config = "compact-iste" if dry else "swinir-iste"
    steps = 2 if dry else 20
    yaml_path = tmp / "train.yaml"
    yaml_path.write_text(
        _train_yaml(config, steps))
    cmd = [sys.executable, "-m", "iste", "train", str(yaml_path), "--run-dir", str(tmp / "run"),
           "--device", device]
    rc, seconds, out = _run(cmd, timeout, env)
    result = _last(out)
    log = tmp / "run" / "metrics.jsonl"
    if rc == 0 and log.is_file():
        records = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
        timed = [r for r in records if "loss" in r]
        if len(timed) >= 3:
            per = (timed[-1]["time"] - timed[1]["time"]) / (len(timed) - 2)
            result = f"{config}: {4 / per:.2f} samples/s ({per:.3f} s/step, batch 4, 2304 q)"
    return {"step": f"iste train {config} ({steps} steps)", "ok": rc == 0, "seconds": seconds,
            "result": result}


def _train_yaml(config: str, steps: int) -> str:
    """The bundled ``config`` with sample data, ``steps`` steps, a log line every step."""
    import yaml  # PyYAML comes with iste's config loading

    from iste.train.config import load_train_config

    cfg = load_train_config(config).to_dict()
    cfg["data"].update(train=["sample:cmu-train"], val=[])
    # a fixed number of steps instead of the paper's epochs over the data
    cfg["run"].update(steps=steps, epochs=None, repeat=1, log_every=1, workers=0,
                      checkpoint_every=10 * steps, val_every=10 * steps)
    cfg["optim"]["milestones"] = []
    return yaml.safe_dump(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    ap.add_argument("--skip", default="", help="comma list of steps to skip: table8,"
                                                "upscale,train,tests")
    ap.add_argument("--budget", type=int, default=480,
                    help="seconds for all steps (default 480): the tests get what the "
                         "measurements leave, at most their own limit")
    args = ap.parse_args(argv)
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run on CPU)"
    # seconds per step, within --budget; a dry run on a (possibly shared) CPU is only checking
    # the script, so its steps may take longer
    limits = {"table8": 120, "upscale": 120, "train": 120, "tests": 300}
    if args.dry_run:
        limits = {name: 900 for name in limits}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tests_log = args.out.with_name(args.out.stem + "_tests.log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="iste-gpu-check-") as tmp:
        env = device_env(Path(tmp)) if args.dry_run else {}
        steps = {"table8": lambda t: step_table8(device, args.dry_run, t, Path(tmp), env),
                 "upscale": lambda t: step_upscale(device, args.dry_run, t, Path(tmp), env),
                 "train": lambda t: step_train(device, args.dry_run, t, Path(tmp), env),
                 "tests": lambda t: step_tests(device, args.dry_run, t, tests_log, env)}
        for name, step in steps.items():
            if name in skip:
                continue
            left = args.budget - round(time.perf_counter() - started)
            if left < 10:
                rows.append({"step": name, "ok": False, "seconds": 0,
                             "result": f"not run: the {args.budget} s budget was spent"})
                continue
            row = step(min(limits[name], left))
            rows.append(row)
            print(f"{row['step']}: {'ok' if row['ok'] else 'FAILED'} ({row['seconds']:.0f} s) "
                  f"{row['result']}", flush=True)
    head = (f"GPU check: {gpu}; torch {torch.__version__}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            "| step | ok | seconds | result |\n|---|---|---|---|\n")
    body = "".join(f"| {r['step']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.0f} | "
                   f"{r['result'].replace('|', '/')} |\n" for r in rows)
    args.out.write_text(head + body)
    args.out.with_suffix(".json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
