"""``iste bench``: child measurements, the published-code runner (on a stand-in checkout),
tables and argument errors. The real published code is never needed here."""

import math
import textwrap

import numpy as np
import pytest
import torch

from iste.bench import report
from iste.bench.suite import BenchConfig, run_child
from iste.cli.main import main
from iste.models.registry import HEADS
from model_zoo import tiny_config

# A stand-in for a published checkout: the same registry interface (models.make, gen_feat,
# query_rgb) and a hard-coded .cuda(), which the runner must neutralise on a CPU machine.
FAKE_MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    class MeanColour(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

        def gen_feat(self, inp):
            self.inp = inp.cuda()

        def query_rgb(self, coord, cell):
            colour = self.inp.mean((2, 3))[:, None, :] * self.gain
            return colour.expand(coord.shape[0], coord.shape[1], 3)

    def make(spec):
        return MeanColour()
''')


def test_children_measure_our_engine_and_published_code(tmp_path):
    lr = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    np.save(tmp_path / "lr.npy", lr)
    (tmp_path / "checkout" / "models").mkdir(parents=True)
    (tmp_path / "checkout" / "models" / "__init__.py").write_text(FAKE_MODELS)
    common = {"input": str(tmp_path / "lr.npy"), "out_hw": [30, 25], "threads": 1,
              "device": "cpu", "seed": 0, "chunk": 100, "precision": "fp32", "repeats": 2}
    ours = run_child({**common, "kind": "ours", "method": "liif", "config": tiny_config("liif"),
                      "save": str(tmp_path / "ours.npy")}, tmp_path)
    published = run_child({**common, "kind": "published", "method": "liif",
                           "checkout": str(tmp_path / "checkout"),
                           "save": str(tmp_path / "published.npy")}, tmp_path)
    for res in (ours, published):
        assert "error" not in res, res
        assert res["mpx"] == pytest.approx(30 * 25 / 1e6)
        assert res["seconds"] > 0 and res["mpx_per_s"] > 0 and res["peak_mb"] >= res["base_mb"] > 0
    assert np.load(tmp_path / "ours.npy").shape == (30, 25, 3)
    mean = lr.reshape(-1, 3).mean(0) / 255
    assert np.abs(np.load(tmp_path / "published.npy") - mean).max() < 1e-5


# A published registry without the benchmark's encoder (as ITSRN's): building raises the
# registry's KeyError until a donor checkout's models/edsr.py registers it.
REGISTRY_WITHOUT_ENCODER = FAKE_MODELS.replace("def make(spec):\n    return MeanColour()", """
registry = {}


def register(name):
    def add(cls):
        registry[name] = cls
        return cls
    return add


def make(spec):
    registry[spec["args"]["encoder_spec"]["name"]]
    return MeanColour()
""")
assert REGISTRY_WITHOUT_ENCODER != FAKE_MODELS
DONOR_ENCODER = textwrap.dedent('''
    from models import register

    @register("edsr-baseline")
    class EDSRBaseline:
        pass
''')


def test_a_missing_published_encoder_is_borrowed_from_another_checkout(tmp_path):
    lr = np.random.default_rng(1).integers(0, 256, (9, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "lr.npy", lr)
    for name, files in {"itsrn": {"__init__.py": REGISTRY_WITHOUT_ENCODER},
                        "donor": {"__init__.py": "", "edsr.py": DONOR_ENCODER}}.items():
        (tmp_path / name / "models").mkdir(parents=True)
        for file, text in files.items():
            (tmp_path / name / "models" / file).write_text(text)
    job = {"input": str(tmp_path / "lr.npy"), "out_hw": [18, 16], "threads": 1, "device": "cpu",
           "seed": 0, "chunk": 50, "precision": "fp32", "repeats": 1, "kind": "published",
           "method": "itsrn", "checkout": str(tmp_path / "itsrn"),
           "save": str(tmp_path / "published.npy")}
    alone = run_child(job, tmp_path)
    assert "LIIF-family checkout" in alone["error"]
    res = run_child({**job, "encoder_donors": [str(tmp_path / "missing"), str(tmp_path / "donor")]},
                    tmp_path)
    assert "error" not in res, res
    means = lr.reshape(-1, 3).mean(0) / 255
    assert np.abs(np.load(tmp_path / "published.npy") - means).max() < 1e-5


class RecordingModel:
    """Records how a calling convention drives it; answers each query with its own cell."""

    def __init__(self):
        self.seen = []

    def gen_feat(self, inp=None):
        self.seen.append(("gen_feat", inp is None, getattr(self, "inp", None) is not None,
                          getattr(self, "prev_feat", "unset")))

    def _answer(self, coord, cell):
        self.seen.append(("query", tuple(cell.shape), getattr(self, "prev_pred", "unset")))
        cell = cell if cell.dim() == 3 else cell[:, None].expand(-1, coord.shape[1], -1)
        return torch.cat([cell, coord[..., :1]], -1)

    query_rgb = query_texture = _answer


@pytest.mark.parametrize("method,encode_call,query_call,cell_factor", [
    ("liif", ("gen_feat", False, False, "unset"), ("query", (1, 5, 2), "unset"), 1.0),
    ("iste", ("gen_feat", False, False, "unset"), ("query", (1, 5, 2), "unset"), 1.0),
    ("lmi", ("gen_feat", False, True, "unset"), ("query", (1, 5, 2), "unset"), 1.0),
    ("itsrn", ("gen_feat", False, False, "unset"), ("query", (1, 5, 2), "unset"), 0.5),
    ("lit", ("gen_feat", True, True, None), ("query", (1, 2), None), 1.0),
])
def test_each_registry_entry_declares_its_published_calling_convention(
        method, encode_call, query_call, cell_factor):
    calls = HEADS[method].published.calls
    model = RecordingModel()
    if method == "lit":
        model.prev_pred = "left over from another chunk"
    inp = torch.zeros(1, 3, 4, 4)
    coord = torch.rand(1, 5, 2) * 2 - 1
    cell = torch.full((1, 5, 2), 0.25)
    calls.encode(model, inp)
    out = calls.query(model, coord, cell)
    assert model.seen == [encode_call, query_call]
    assert torch.equal(out[..., :2], cell * cell_factor) and torch.equal(out[..., 2], coord[..., 0])


def test_a_failing_child_is_reported_not_raised(tmp_path):
    res = run_child({"kind": "ours", "input": str(tmp_path / "missing.npy"), "out_hw": [8, 8],
                     "threads": 1, "device": "cpu"}, tmp_path)
    assert res["error"].startswith("its process exited with code 1: ")


def test_a_killed_child_is_said_to_be_killed(tmp_path):
    # the kernel's out-of-memory killer ended a measuring child: its row read "exit -9: no
    # output"
    (tmp_path / "killed_child.py").write_text("import os, signal\n"
                                              "os.kill(os.getpid(), signal.SIGKILL)\n")
    res = run_child({"kind": "ours"}, tmp_path, pythonpath=(str(tmp_path),),
                    module="killed_child")
    assert res["error"].startswith("its process was killed by SIGKILL (the kernel's "
                                   "out-of-memory killer"), res


def test_the_busy_process_of_a_killed_bench_ends(tmp_path):
    # the contention section's "while True: pass", its bench killed with -9 (or by the
    # out-of-memory killer), spun a core for good, an orphan
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "busy.pid"
    bench = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from iste.bench.contention import _busy_process
        open({str(pid_file)!r}, "w").write(str(_busy_process().pid))
        os.kill(os.getpid(), signal.SIGKILL)""")], stdout=subprocess.DEVNULL)
    assert bench.returncode == -signal.SIGKILL
    busy = int(pid_file.read_text())

    def running() -> bool:
        try:
            with open(f"/proc/{busy}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 60  # not a timing: the end of the wait for a loop that
    try:  # never ends
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running()
    finally:
        if running():
            os.kill(busy, signal.SIGKILL)


def test_tables_name_ratios_and_identical_outputs():
    pub = {"kind": "published", "method": "iste", "scale": 4.0, "precision": "fp32", "chunk": 4096,
           "seconds": 10.0, "cpu_seconds": 20.0, "mpx": 0.5, "mpx_per_s": 0.05, "peak_mb": 600}
    ours = {**pub, "kind": "ours", "seconds": 1.0, "cpu_seconds": 4.0, "mpx_per_s": 0.5,
            "max_abs_diff_vs_published": 3e-3}
    table = report.comparison_table([pub, ours])
    assert "| ISTE | x4 | ours | fp32 | 4096 | 0.5000 | 600 | 10.0x | 5.0x | 3.0e-03 |" in table
    # a published run of another scale is not the reference of this one
    other = {**pub, "scale": 2.0, "seconds": 1.0}
    assert "| ISTE | x4 | ours | fp32 | 4096 | 0.5000 | 600 | 10.0x |" \
        in report.comparison_table([other, pub, ours])
    keys = [{"scale": 4.0, "stf_keys": 2304, "precision": "fp32", "seconds": 2.0,
             "psnr_hr": 30.0, "psnr_ref": math.inf, "max_diff_ref": 0},
            {"scale": 4.0, "stf_keys": 64, "precision": "fp32", "seconds": 1.0,
             "psnr_hr": 29.9, "psnr_ref": 50.0, "max_diff_ref": 4}]
    lines = report.keys_table(keys).splitlines()
    assert "identical" in lines[2] and "| 0.50 | 29.900 | -0.100 | 50.00 | 4 |" in lines[3]


@pytest.mark.parametrize("argv,msg", [
    (["--sections", "engine,speed"], "speed"),
    (["--published-liif", "."], "not a checkout"),
    (["--scales", "1"], "scale must be a finite number > 1"),
    (["--scales", "nan"], "scale must be a finite number > 1"),
    (["--scales", "2_0"], "'2_0' is not a number"),  # float() read x20
    (["--keys", "2304,0_1"], "'0_1' is not a whole number"),  # int() read 1
    (["--scales", "9"], "max x8"),
    (["--scales", ""], "no scales"),
    (["--methods", ""], "no methods"),
    (["--sections", ""], "no --sections"),
    (["--json", "{file}/x.json"], "is a file, not a folder"),
    (["--markdown", "{tmp}"], "is a folder"),
    # the study options were read only when their section came (a negative --key-tiles
    # silently dropped tiles; --key-timing-size -5 failed after the key study had run)
    (["--key-tiles", "-1"], "--key-tiles must be at least 1"),
    (["--key-tiles", "0"], "--key-tiles must be at least 1"),
    (["--keys", "2304,0"], "--keys must be key counts >= 1"),
    (["--key-scales", "0.5"], "scale must be a finite number > 1"),
    (["--key-timing-size", "-5"], "--key-timing-size must be at least 16"),
    (["--train-steps", "0"], "--train-steps must be at least 1"),
    (["--published-iste-chunks", "0"], "--published-iste-chunks must be"),
    # the markdown replaced the JSON figures written to the same name (or the summary did)
    (["--json", "{tmp}/b", "--markdown", "{tmp}/b"], "--json and --markdown are the same file"),
    (["--json", "{tmp}/b", "--json-summary", "{tmp}/./b"], "are the same file"),
    (["--markdown", "{file}", "--log-file", "{file}"], "are the same file"),
    # saved after each section, the report replaced the checkpoint the later sections load
    (["--json", "{file}", "--model", "{tmp}/./f"], "--json {file} is the input {tmp}/./f"),
    (["--markdown", "{tmp}/b.md", "--published-liif", "{tmp}"], "is inside the input {tmp}"),
])
def test_bad_arguments_are_one_line_errors(argv, msg, capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    argv = [a.format(file=tmp_path / "f", tmp=tmp_path) for a in argv]
    msg = msg.format(file=tmp_path / "f", tmp=tmp_path)
    try:  # refused before any benchmark runs (a value argparse reads: a usage error)
        code = main(["bench", *argv])
    except SystemExit as ex:
        code = ex.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("iste: error:") and msg in err and err.count("\n") == 1


def test_config_rejects_unknown_methods():
    with pytest.raises(ValueError, match="srcnn"):
        BenchConfig(methods=("srcnn",))


def test_the_bench_command_restores_the_callers_thread_count(monkeypatch, tmp_path):
    from iste.bench import runner

    seen = []

    def fake_sections(cfg, sections, workdir, **kwargs):
        seen.append((torch.get_num_threads(), kwargs["command_threads"]))
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "run_sections", fake_sections)
    monkeypatch.delenv("ISTE_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(RuntimeError, match="stop here"):
            main(["bench", "--sections", "engine"])
        # 2: the bench's own default; 1: what a command (iste upscale) keeps here
        assert seen == [(2, 1)] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_repeats_apply_to_both_sides_of_the_published_comparison(tmp_path):
    from iste.bench.suite import _comparison_jobs

    (tmp_path / "models").mkdir()
    cfg = BenchConfig(published={"iste": str(tmp_path)}, methods=("iste",),
                      precisions=("fp32", "bf16"), repeats=2)
    jobs = _comparison_jobs(cfg, tmp_path / "lr.npy", (8, 8), tmp_path, "x4")
    assert {job["kind"] for _, job in jobs} == {"published", "ours"}
    assert all(job["repeats"] == 2 for _, job in jobs)


def test_the_published_codes_cuda_calls_move_to_the_jobs_device(tmp_path, monkeypatch):
    # its .cuda() calls were no-ops: on a GPU its models then ran on the CPU (or failed on
    # mixed devices) beside ours on the GPU
    import sys

    from iste.bench.published import import_published

    checkout = tmp_path / "published"
    (checkout / "models").mkdir(parents=True)
    (checkout / "models" / "__init__.py").write_text("")
    for owner in (torch.Tensor, torch.nn.Module):
        monkeypatch.setattr(owner, "cuda", owner.cuda)  # restored after the test
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "models", raising=False)
    import_published(str(checkout), "meta")  # a device other than the CPU, on any machine
    assert torch.zeros(2).cuda().device.type == "meta"
    assert next(torch.nn.Linear(2, 2).cuda().parameters()).device.type == "meta"
    import_published(str(checkout))  # the CPU: the calls leave tensors where they are
    assert torch.zeros(2).cuda().device.type == "cpu"
    sys.modules.pop("models", None)


def test_an_input_larger_than_every_real_tile_is_random_pixels_not_a_traceback():
    # --input-size 800 ended in IndexError from the list of real test tiles (none that large)
    from iste.bench.runner import _real_or_random

    with pytest.warns(UserWarning, match="random pixels"):
        lr, what = _real_or_random(800, None, seed=0)
    assert lr.shape == (800, 800, 3) and lr.dtype == np.uint8 and what == "random pixels"


def test_a_bench_whose_rows_failed_exits_1_after_its_whole_report(tmp_path, capsys):
    # the report listed the failed rows and the command exited 0: a script running the bench
    # took a run that measured nothing for a good one
    import json

    checkout = tmp_path / "liif"
    (checkout / "models").mkdir(parents=True)  # a checkout without its code: the run fails
    report_file = tmp_path / "bench.json"
    code = main(["bench", "--sections", "published", "--published-liif", str(checkout),
                 "--methods", "liif", "--compare-size", "16", "--compare-scales", "2",
                 "--compare-repeats", "1", "--precisions", "fp32", "--repeats", "1",
                 "--json", str(report_file)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "iste: error: 1 of 2 benchmark rows failed (their errors are in the report)")
    rows = json.loads(report_file.read_text())["published"]
    assert [r["kind"] for r in rows] == ["published", "ours"]  # the whole report, written
    assert "its process exited with code 1" in rows[0]["error"] and "| ours |" in out
