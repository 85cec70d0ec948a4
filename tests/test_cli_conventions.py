"""CLI conventions: --version, --quiet, --log-file (progress without carriage returns),
--json-summary, --threads everywhere, --overwrite, provenance sidecars, folders of images."""

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from iste.cli.main import build_parser, main
from iste.data.imagemeta import read_image_meta
from iste.data.images import read_image
from iste.data.imagewrite import write_image
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_model(build_model(tiny_config("liif")),
                      tmp_path_factory.mktemp("m") / "tiny.safetensors")


def _image(path, seed=1, mpp=None):
    rgb = (np.random.default_rng(seed).random((16, 20, 3)) * 255).astype(np.uint8)
    write_image(path, rgb, mpp=mpp)
    return path


def test_version_names_iste_torch_and_slide_libraries(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for name in ("iste 0.1.0", "torch ", "tiffslide ", "openslide ", "wsidicom "):
        assert name in out


def test_version_into_a_pipe_whose_reader_left_exits_0_without_a_traceback(monkeypatch):
    # `iste --version | head -1`: head left after the first line and print raised
    # BrokenPipeError from argparse, before main's handler of it: a traceback, exit code 1
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left: every write raises BrokenPipeError
    stdout = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        with pytest.raises(SystemExit) as ex:
            main(["--version"])
    finally:
        stdout.close()
    assert ex.value.code == 0


def test_every_command_accepts_threads_and_logging_options():
    # after a command's last word too: `iste data fetch -q` was refused ("unrecognized
    # arguments"), only `iste data -q fetch` took it, where the README says they work with
    # every command
    for p in _parsers(build_parser()):
        if any(isinstance(a.choices, dict) for a in p._actions):
            continue  # the top level and the commands made of tasks: their tasks are checked
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"--threads", "--quiet", "--verbose", "--log-file", "--json-summary"} <= opts, (
            p.prog)


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_tasks_logging_options_work_before_and_after_its_name(tmp_path, where, capsys):
    summary = tmp_path / "s.json"
    options = ["-q", "--json-summary", str(summary)]
    argv = ["data", *options, "list"] if where == "before" else ["data", "list", *options]
    assert main(argv) == 0
    assert json.loads(summary.read_text())["exit_code"] == 0
    assert "wsidicom-tile" in capsys.readouterr().out


def test_the_command_line_runs_under_python_OO(tmp_path, ckpt):
    """Python started with -OO (or PYTHONOPTIMIZE=2) has no docstrings: building the parser
    split the module docstrings for the help texts, and every command, ``--help`` and
    ``--version`` too, ended in "AttributeError: 'NoneType' object has no attribute
    'split'"."""
    import subprocess

    path = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    image, out = _image(tmp_path / "in.png"), tmp_path / "out.png"
    done = subprocess.run([sys.executable, "-OO", "-m", "iste", "upscale", str(image), "-o",
                           str(out), "--scale", "2", "--model", str(ckpt), "-q"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert read_image(out).shape == (32, 40, 3)


def test_threads_help_states_the_default_the_command_uses():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {name: next(a.help for a in p._actions if a.dest == "threads")
             for name, p in sub.choices.items()}
    assert "else 2 " in helps["bench"] and "per core" not in helps["bench"]  # bench's own 2
    assert "per core" in helps["upscale"] and "per core" in helps["train"]


def test_every_command_description_is_a_whole_sentence():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # the first docstring line, cut off mid-phrase before
        assert p.description.rstrip().endswith((".", ")")), name


def test_the_help_says_which_runs_exit_1():
    # iste bench exits 1 when rows of its report failed; --help named folder runs alone
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "bench" in parser.description and "exit code 1" in parser.description
    assert "exits 1" in " ".join(sub.choices["bench"].epilog.split())


def test_the_data_actions_say_what_they_do_and_which_samples_there_are():
    # `iste data --help` described fetch alone, `iste data fetch --help` had no description
    # and asked for "sample names" without naming one
    from iste.data.samples import SAMPLES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    data = sub.choices["data"]
    actions = next(a for a in data._actions if a.dest == "data_command").choices
    assert all(name in data.description for name in actions)
    for name, p in actions.items():
        assert p.description and p.description.rstrip().endswith("."), name
    names = next(a.help for a in actions["fetch"]._actions if a.dest == "names")
    upscale_input = next(a.help for a in sub.choices["upscale"]._actions if a.dest == "input")
    for sample in SAMPLES:
        assert sample in names and f"sample:{sample}" in upscale_input


def test_the_downstream_tasks_help_states_every_default(capsys):
    # their -h named no default (steps, batch, lr, crop, ...), which the docs quote
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    tasks = next(a for a in sub.choices["downstream"]._actions if a.dest == "task")
    for name, p in tasks.choices.items():
        for action in p._actions:
            if action.help is None or action.default is None or action.default is False \
                    or action.default == argparse.SUPPRESS:  # a default 0 (== False) is one
                continue
            text = action.help % {"default": action.default}
            value = (f"{action.default:g}" if isinstance(action.default, float)
                     else str(action.default))
            assert "default" in text and value in text, (name, action.dest, text)


def test_log_summary_quiet_overwrite_and_sidecar(tmp_path, ckpt, capsys):
    src = _image(tmp_path / "in.png", mpp=(0.5, 0.5))
    out, log, summary = tmp_path / "out.png", tmp_path / "run.log", tmp_path / "s.json"
    argv = ["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(ckpt), "-q",
            "--log-file", str(log), "--json-summary", str(summary), "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # --quiet
    text = log.read_text()
    assert "\r" not in text and "100%" in text and "wrote" in text
    s = json.loads(summary.read_text())
    assert s["exit_code"] == 0 and s["outputs"] == [str(out)] and s["versions"]["iste"]
    prov = json.loads((tmp_path / "out.png.json").read_text())
    assert prov["scale"] == 2 and prov["model"] == "tiny.safetensors" and prov["source_sha256"]
    assert read_image_meta(out).mpp == pytest.approx((0.25, 0.25))
    before = out.read_bytes()
    assert main(argv) == 2  # never silently replaced
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert json.loads(summary.read_text())["exit_code"] == 2
    assert main(argv + ["--overwrite"]) == 0


def test_an_output_of_the_default_without_its_weights_is_recorded_as_untrained(
        tmp_path, monkeypatch):
    # an install without the shipped weights, asked to (ISTE_UNTRAINED_DEFAULT=1), upscales
    # with a random initialisation (and a warning): its outputs' provenance read "model":
    # "shipped default", the release's name
    import iste.default_model as default_model

    monkeypatch.setattr(default_model, "default_weights_path", lambda: None)
    monkeypatch.setenv(default_model.UNTRAINED_ENV, "1")
    out = tmp_path / "out.png"
    with pytest.warns(default_model.UntrainedModelWarning):
        assert main(["upscale", str(_image(tmp_path / "in.png")), "-s", "2", "-o", str(out),
                     "-q", "--threads", "1"]) == 0
    prov = json.loads((tmp_path / "out.png.json").read_text())
    assert prov["model"].startswith("RANDOM-INITIALISED default"), prov["model"]


def test_folder_of_images_skip_resume_and_errors(tmp_path, ckpt, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", 1)
    _image(folder / "b.jpg", 2)
    (folder / "c.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(ckpt), "-q"]
    assert main(argv) == 1  # c.png fails, the others are written
    assert read_image(out / "a.png").shape == (32, 40, 3)
    assert read_image(out / "b.jpg").shape == (32, 40, 3)
    assert "c.png" in capsys.readouterr().err and not (out / "c.png").exists()
    (folder / "c.png").unlink()
    stamp = (out / "a.png").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun skips what exists
    assert (out / "a.png").stat().st_mtime_ns == stamp


def test_a_folder_runs_output_named_as_an_image_is_refused_unless_a_folder_is_there(
        tmp_path, ckpt, capsys):
    # 'iste upscale FOLDER -o x.png' made a folder named x.png and wrote the outputs in it
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", 1)
    for name in ("x.png", "x.TIFF"):
        assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / name), "--model",
                     str(ckpt), "-q"]) == 2
        assert "is named as an image" in capsys.readouterr().err
        assert not (tmp_path / name).exists()
    (tmp_path / "x.png").mkdir()
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "x.png"), "--model",
                 str(ckpt), "-q"]) == 0
    assert read_image(tmp_path / "x.png" / "a.png").shape == (32, 40, 3)


def test_the_parser_is_built_without_the_evaluation_libraries():
    """Every command builds the whole parser: its choices must not pull scikit-image and
    scipy.ndimage in (0.3-0.6 s of every start); the commands that use them import them
    when they run."""
    import subprocess
    import sys

    code = ("import sys; from iste.cli.main import build_parser; build_parser(); "
            "print(' '.join(m for m in ('skimage', 'scipy.ndimage', 'iste.eval.runner') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


class _Writes(io.RawIOBase):
    """A pipe's writing end that keeps each write apart: ``io.TextIOWrapper(_Writes(),
    write_through=True)`` is stdout as ``PYTHONUNBUFFERED`` makes it."""

    def __init__(self):
        self.writes: list[str] = []

    def writable(self):
        return True

    def write(self, data):
        self.writes.append(bytes(data).decode())
        return len(data)


def test_each_line_is_one_write_so_ranks_sharing_a_pipe_keep_their_lines_whole(
        tmp_path, ckpt, monkeypatch):
    """Unbuffered (PYTHONUNBUFFERED, which CI and many containers set), print wrote a line and
    its line break apart: two torchrun ranks writing at once ran their lines together in the
    pipe they share ('rank 1 exit 0rank 0 exit 0')."""
    out, err = _Writes(), _Writes()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(err, write_through=True))
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
                 str(ckpt)]) == 1
    said = [w for w in out.writes if "wrote" in w or "written" in w]
    errors = [w for w in err.writes if "iste: error" in w]
    assert len(said) == 2 and len(errors) == 1, (out.writes, err.writes)
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in said + errors)


def test_an_error_naming_a_file_with_a_line_break_is_one_line(tmp_path, ckpt, capsys):
    # the name's newline split the error in two, on stderr and in --log-file: the second
    # half read as a line of its own
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "bad\nname.png").write_bytes(b"not a png")
    log = tmp_path / "run.log"
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
                 str(ckpt), "-q", "--log-file", str(log)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "bad\\nname.png: cannot read" in err[0], err
    logged = [line for line in log.read_text().splitlines() if "name.png" in line]
    assert len(logged) == 1 and " ERROR " in logged[0]
    assert all(line.startswith("20") for line in log.read_text().splitlines())  # timestamped


def test_every_line_naming_a_file_with_a_line_break_is_one_line(tmp_path, ckpt, capsys):
    """Errors were one line already; results ('skip a\\nb.png: ...', 'wrote ...'), progress
    lines and every --log-file record split at the name's line break: the half after it read
    as a line of its own, in the log one without its time."""
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "new\nline.png")
    out, log = tmp_path / "out", tmp_path / "run.log"
    argv = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(ckpt),
            "--log-file", str(log)]
    assert main(argv) == 0
    assert main(argv) == 0  # the rerun skips it, and says so
    said = capsys.readouterr()
    lines = said.out.splitlines() + said.err.splitlines()
    assert all("new" not in ln or "new\\nline.png" in ln for ln in lines), lines
    assert f"wrote {out}/new\\nline.png (40 x 32 px" in said.out
    assert f"skip new\\nline.png: {out}/new\\nline.png exists" in said.out
    assert all(line.startswith("20") for line in log.read_text().splitlines())  # timestamped


def test_a_command_to_copy_keeps_its_arguments_through_the_shell(tmp_path):
    """A train run's 'continues with: iste train ...' quoted a run folder with a line break
    over two lines; now bash's $'...' form, one line that bash reads back as it was."""
    import subprocess

    from iste.cli.runlog import shell_join

    argv = ["iste", "runs/a b", "new\nline", "it's\ta\\tab", os.fsdecode(b"caf\xe9"), "plain"]
    line = shell_join(argv)
    assert "\n" not in line and "\t" not in line
    got = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True,
                         check=True).stdout
    assert got.split(b"\0")[:-1] == [os.fsencode(a) for a in argv]


def test_a_file_name_that_is_not_utf8_is_shown_with_its_bytes_escaped(tmp_path, ckpt, capsys):
    """Its bytes, kept by Python as lone surrogates, made --log-file's handler fail on every
    line naming it (a '--- Logging error ---' traceback on stderr each time, the line lost
    from the log), and showed as '\\udce9' in errors and provenance; now 'caf\\xe9.png'
    everywhere (iste.text.shown)."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / os.fsdecode(b"caf\xe9.png"), 1)
    out, log = tmp_path / "out", tmp_path / "run.log"
    argv = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(ckpt),
            "--log-file", str(log)]
    assert main(argv) == 0
    said = capsys.readouterr()
    assert "Logging error" not in said.err and "caf\\xe9.png" in said.out
    assert f"wrote {out}/caf\\xe9.png" in log.read_text(encoding="utf-8")
    sidecar = json.loads((out / os.fsdecode(b"caf\xe9.png.json")).read_text())
    assert sidecar["source"] == "caf\\xe9.png"
    assert main([*argv[:3], "3", *argv[4:]]) == 1  # an error naming it
    assert "caf\\xe9.png exists, but it was made with scale 2" in capsys.readouterr().err


def test_a_result_naming_a_file_on_an_ascii_stdout_is_written_with_escapes(tmp_path, ckpt,
                                                                           monkeypatch):
    """Under an ASCII locale (LC_ALL=C with PYTHONUTF8=0, PYTHONIOENCODING=ascii) the result
    line of an image named Schnitt_ä.png raised UnicodeEncodeError: exit code 2 ("'ascii'
    codec can't encode ..."), its output written (iste.cli.runlog.open_standard_streams)."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="ascii",
                                                        write_through=True))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BytesIO(), encoding="ascii",
                                                        errors="backslashreplace"))
    image = _image(tmp_path / "Schnitt_ä.png")
    assert main(["upscale", str(image), "-s", "2", "-o", str(tmp_path / "切片.png"),
                 "--model", str(ckpt)]) == 0
    assert f"wrote {tmp_path}/\\u5207\\u7247.png (40 x 32 px" in out.getvalue().decode()


def test_closed_standard_streams_are_the_null_device_not_a_traceback(tmp_path, ckpt):
    """Run with stdout and stderr closed (``>&- 2>&-``, some schedulers and daemons), Python's
    sys.stdout and sys.stderr are None: the progress bar's check of stderr raised
    AttributeError, a traceback to nowhere and exit code 1, no output. And a file opened
    meanwhile took descriptor 1 or 2, where C libraries write their warnings."""
    import subprocess

    image, out = _image(tmp_path / "a.png"), tmp_path / "b.png"
    probe = tmp_path / "fds.txt"
    code = ("import os, sys\n"
            "from iste.cli.main import main\n"
            "code = main(sys.argv[1:])\n"
            f"with open({str(probe)!r}, 'w') as f:\n"
            "    f.write(' '.join(os.readlink(f'/proc/self/fd/{n}') for n in (0, 1, 2)))\n"
            "sys.exit(code)\n")

    def close_standard_streams():
        for fd in (0, 1, 2):
            os.close(fd)

    done = subprocess.run([sys.executable, "-c", code, "upscale", str(image), "-s", "2",
                           "-o", str(out), "--model", str(ckpt)],
                          preexec_fn=close_standard_streams, timeout=300)
    assert done.returncode == 0
    assert read_image(out).shape == (32, 40, 3)
    assert probe.read_text() == " ".join([os.devnull] * 3)


def test_a_removed_current_folder_is_one_line_before_torch_loads(tmp_path):
    """Run from a folder removed after the shell entered it, torch's import ended the process
    with "Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so", which named no cause."""
    import subprocess

    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_and_remove():
        os.chdir(gone)
        os.rmdir(gone)

    # a relative PYTHONPATH (src:tests) is made absolute at start-up: there, Python's own
    # "Fatal Python error: error evaluating path"
    path = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    done = subprocess.run([sys.executable, "-m", "iste", "info"], preexec_fn=enter_and_remove,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("iste: error: the current folder no longer exists (it was removed "
                           "after this shell entered it): cd to a folder that exists and "
                           "rerun\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("option", ["--log-file", "--json-summary"])
@pytest.mark.parametrize("name", ["x" * 300, "x/" * 2100 + "log"])
def test_a_log_or_summary_name_too_long_is_one_line(tmp_path, ckpt, capsys, monkeypatch, option,
                                                     name):
    """A name longer than the file system allows (one part over 255 bytes, or the whole path
    over 4096): pathlib's is_dir raised 'File name too long', a traceback, before the log was
    set up. Now one line, nothing made (no folder of the path's first part)."""
    monkeypatch.chdir(tmp_path)
    code = main(["info", option, name, str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"iste: error: {option} ") and err.count("\n") == 1
    assert err.rstrip().endswith("file name too long") and not (tmp_path / "x").exists()


def test_a_log_file_on_a_full_disk_is_one_warning_and_the_work_goes_on(tmp_path, ckpt, capsys):
    # Python's handler printed a '--- Logging error ---' traceback for every line, and its
    # flush at the end raised: a traceback and exit code 1 after the output was written.
    # /dev/full refuses every write with ENOSPC, as a full disk does (a log is appended to)
    src, out = _image(tmp_path / "in.png"), tmp_path / "out.png"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(ckpt),
                 "--threads", "1", "--log-file", "/dev/full"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    said = [line for line in err.splitlines() if "/dev/full" in line]
    assert said == ["iste: --log-file /dev/full: no space left on device; its later lines "
                    "are dropped"], err
    assert read_image(out).shape == (32, 40, 3) and (tmp_path / "out.png.json").exists()


def _stdout_on_a_full_disk(monkeypatch):
    """stdout redirected to a file of a full disk (``> /dev/full``: ENOSPC on every write)."""
    full = open("/dev/full", "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", full)
    return full


def test_a_full_disk_under_stdout_fails_no_item_and_ends_in_one_line_naming_it(
        tmp_path, ckpt, capsys, monkeypatch):
    # `iste upscale DIR -o OUT > run.out` on a full disk: each item's "wrote" line raised,
    # so each item was counted as failed, 'in/a.png: [Errno 28] No space left on device'
    # (naming the input, whose output had been written), and the run ended in the same
    # line naming no file
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", 1)
    _image(folder / "b.png", 2)
    out, summary = tmp_path / "out", tmp_path / "s.json"
    with _stdout_on_a_full_disk(monkeypatch):
        code = main(["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(ckpt),
                     "--threads", "1", "--json-summary", str(summary)])
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "error" in line]
    assert code == 2 and said == [
        "iste: error: cannot write stdout (/dev/full): no space left on device: the lines "
        "from then on were not written; the command itself ended with exit code 0"], err
    for name in ("a.png", "b.png"):
        assert read_image(out / name).shape == (32, 40, 3) and (out / f"{name}.json").exists()
    recorded = json.loads(summary.read_text())
    assert recorded["exit_code"] == 2 and not recorded.get("failures"), recorded


def test_a_listing_to_a_full_disk_is_not_a_success(capsys, monkeypatch):
    # `iste data list > samples.txt` on a full disk: '[Errno 28] No space left on device',
    # naming no file (print's write raised where the command's own errors are caught)
    with _stdout_on_a_full_disk(monkeypatch):
        assert main(["data", "list"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "iste: error: cannot write stdout (/dev/full): no space left on device: the lines "
        "from then on were not written; the command itself ended with exit code 0"]


def test_versions_written_to_a_full_disk_are_not_a_success(capsys, monkeypatch):
    # `iste --version > versions.txt` on a full disk: a traceback, exit code 1
    with _stdout_on_a_full_disk(monkeypatch):
        with pytest.raises(SystemExit) as ex:
            main(["--version"])
    assert ex.value.code == 2
    assert capsys.readouterr().err == ("iste: error: cannot write stdout (/dev/full): no "
                                       "space left on device\n")


def test_a_stderr_on_a_full_disk_ends_nothing(tmp_path, ckpt, monkeypatch):
    # `nohup iste ... > run.log 2>&1` on a full disk: the first message raised ENOSPC, so a
    # folder run stopped at its first failed item (the items after it never made) and
    # `iste serve` died before serving (it names its slides on stderr first); nothing can
    # be said there, the exit code still says how the run went
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", 1)
    (folder / "b.png").write_bytes(b"not a png")
    _image(folder / "c.png", 3)
    out = tmp_path / "out"
    with open("/dev/full", "w", encoding="utf-8") as full:
        monkeypatch.setattr(sys, "stderr", full)
        code = main(["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(ckpt),
                     "--threads", "1", "-q"])
    assert code == 1  # b.png failed, the others are written
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a.png.json", "c.png",
                                                     "c.png.json"]


def test_a_stop_signal_after_the_work_keeps_the_json_summary(tmp_path, ckpt, monkeypatch):
    # the summary read the library versions when the command had ended (0.6 s of imports):
    # a SIGTERM or Ctrl-C then lost the summary of a finished run. Here the signal comes
    # whenever the versions are read once the output exists
    import iste.provenance

    src, out, summary = _image(tmp_path / "in.png"), tmp_path / "out.png", tmp_path / "s.json"
    real = iste.provenance.versions

    def read_versions():
        if out.exists():
            raise KeyboardInterrupt
        return real()

    monkeypatch.setattr(iste.provenance, "versions", read_versions)
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(ckpt),
                 "--threads", "1", "-q", "--json-summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["exit_code"] == 0 and s["outputs"] == [str(out)] and s["versions"]["iste"]


def test_a_summary_that_alone_cannot_be_written_says_the_command_itself_ended(
        tmp_path, ckpt, capsys, monkeypatch):
    """The summary is written once the command has ended; its failure said only "cannot write
    s.json: ... (nothing was written)", as if the upscale's output had not been written."""
    import iste.eval.files
    from iste.refusals import DiskFullError

    def disk_full(path, data):
        raise DiskFullError(f"cannot write {path}: no space left on device "
                                       "(nothing was written)")

    monkeypatch.setattr(iste.eval.files, "write_json_atomic", disk_full)
    src, out, summary = _image(tmp_path / "in.png"), tmp_path / "out.png", tmp_path / "s.json"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(ckpt),
                 "--json-summary", str(summary)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"iste: error: --json-summary cannot write {summary}: no space left on "
                       "device (nothing was written); the command itself ended with exit code 0")
    assert read_image(out).shape == (32, 40, 3) and not summary.exists()


def test_an_empty_input_does_not_upscale_the_current_folder(tmp_path, ckpt, monkeypatch,
                                                            capsys):
    # `iste upscale "$SLIDE" -s 2 -o out/` with SLIDE unset: Path("") is ".", and every image
    # of the current folder was upscaled into out/ (exit code 0)
    _image(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ex:
        main(["upscale", "", "-s", "2", "-o", "out", "--model", str(ckpt), "-q"])
    assert ex.value.code == 2
    assert "argument input: must not be empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # nothing written


@pytest.mark.parametrize("argv, option", [
    (["upscale", "in.png", "-s", "2", "-o", ""], "-o/--output"),
    (["upscale", "in.png", "-s", "2", "-o", "o.png", "--log-file", " "], "--log-file"),
    (["upscale", "in.png", "-s", "2", "-o", "o.png", "--json-summary", ""], "--json-summary"),
    (["info", ""], "model"),  # it printed the paper's parameter counts, exit code 0
    (["serve", "slide.svs", "--host", ""], "--host"),  # it listened on every interface
    (["figures", "--out", "figs", "--ablations", ""], "--ablations"),  # ran without Fig. 10
    (["convert-official", "", "-o", "x.safetensors"], "checkpoint"),
    (["train", "compact-iste", "--run-dir", ""], "--run-dir"),
    (["downstream", "glas", "--data", "", "--methods", "bicubic", "--out", "g"], "--data"),
    (["bench", "--json", ""], "--json"),
])
def test_an_empty_value_is_a_usage_error_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as ex:
        build_parser().parse_args(argv)
    assert ex.value.code == 2
    assert f"argument {option}: must not be empty" in capsys.readouterr().err



@pytest.mark.parametrize("argv, said", [
    # "chunk, stf_window and stf_keys must be positive" / "--chunk must be <= 4194304,
    # --stf-keys <= 65536 and the STF window <= 1024", whichever was wrong
    (["upscale", "in.png", "-s", "2", "-o", "o.png", "--chunk", "0"],
     "argument --chunk: must be a whole number from 1 to 4194304, got '0'"),
    (["serve", "slide.svs", "--stf-keys", "70000"],
     "argument --stf-keys: must be a whole number from 1 to 65536, got '70000'"),
    (["eval", "--data", "d", "--methods", "bicubic", "--out", "r", "--max-images", "0"],
     "argument --max-images: must be a whole number >= 1"),  # "max_images must be positive"
    (["bench", "--chunk", "-3"], "argument --chunk: must be a whole number from 1 to"),
    (["bench", "--compare-repeats", "0"],  # "threads and repeats must be positive"
     "argument --compare-repeats: must be a whole number >= 1, got '0'"),
    (["bench", "--input-size", "100000"],  # "input sizes must be at most 4096 pixels"
     "argument --input-size: must be a whole number from 16 to 4096, got '100000'"),
    (["downstream", "pcam", "--data", "p", "--methods", "bicubic", "--out", "o",
      "--batch-size", "0"],  # "steps, batch size, checkpoint and log intervals must be >= 1"
     "argument --batch-size: must be a whole number >= 1, got '0'"),
])
def test_a_count_out_of_range_is_a_usage_error_naming_the_option_and_range(argv, said,
                                                                           capsys):
    with pytest.raises(SystemExit) as ex:
        build_parser().parse_args(argv)
    assert ex.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["upscale", "in.png", "-s", "2", "-o", "o.png", "--chunk", "0"],
     "iste: error: argument --chunk: must be a whole number from 1 to 4194304, got '0' "
     "(iste upscale --help lists the options)"),
    (["upscale", "in.png"], "iste: error: the following arguments are required: -o/--output "
                            "(iste upscale --help lists the options)"),
    # reported by the top parser, which pointed to `iste --help`: no option of upscale there
    (["upscale", "in.png", "-s", "2", "-o", "o.png", "--bogus"],
     "iste: error: unrecognized arguments: --bogus (iste upscale --help lists the options)"),
    (["nope"], "iste: error: argument COMMAND: invalid choice: 'nope'"),
])
def test_a_usage_error_is_one_line_as_every_refusal(argv, said, capsys):
    # argparse printed its usage block (13 lines for upscale) above "iste upscale: error: ..."
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err


def test_a_file_whose_name_begins_with_a_dash_is_named_in_the_usage_error(tmp_path, ckpt,
                                                                          monkeypatch, capsys):
    """``iste upscale -s 2 -o o.png -lead.png``: argparse reads -lead.png as an option and
    said only 'the following arguments are required: input', naming no file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "-lead.png").write_bytes(b"")
    for argv, said in ((["-lead.png"], "the following arguments are required: input"),
                       (["a.png", "-lead.png"], "unrecognized arguments: -lead.png")):
        with pytest.raises(SystemExit) as ex:
            main(["upscale", "-s", "2", "-o", "o.png", *argv])
        assert ex.value.code == 2
        err = capsys.readouterr().err
        assert err == (f"iste: error: {said}; -lead.png was read as an option: give it as "
                       "./-lead.png (iste upscale --help lists the options)\n"), err
    with pytest.raises(SystemExit):  # a mistyped option is said as before
        main(["upscale", "-s", "2", "-o", "o.png", "a.png", "-lead"])
    assert "unrecognized arguments: -lead (iste upscale" in capsys.readouterr().err


def test_a_web_address_is_named_whole_as_one_iste_does_not_read(tmp_path, ckpt, monkeypatch,
                                                                capsys):
    """As a path, a web address lost a '/': 'cannot open slide https:/host/a.svs: no such
    file', a name the user had not given, and nothing said iste reads local files only."""
    monkeypatch.chdir(tmp_path)
    said = ("iste: error: {} is a web address: iste reads local files only (it never "
            "downloads); download the file and give its path\n")
    for argv, address in (
            (["upscale", "https://host/a.svs", "-s", "2", "-o", "o.tiff"], "https://host/a.svs"),
            (["upscale", "a.png", "-s", "2", "-o", "o.png", "--model=http://h/m.safetensors"],
             "http://h/m.safetensors"),
            (["eval", "--data", "d", "--methods", "bicubic,s3://b/m.safetensors", "--out", "r"],
             "s3://b/m.safetensors")):
        assert main(argv) == 2
        assert capsys.readouterr().err == said.format(address)
    (tmp_path / "a:").mkdir()  # a path that exists is one, '//' and all
    _image(tmp_path / "a:" / "b.png", 1)
    assert main(["upscale", "a://b.png", "-s", "2", "-o", "o.png", "--model", str(ckpt),
                 "-q"]) == 0


@pytest.mark.parametrize("given", [["--allowed-host", "http://lab-pc"],
                                   ["--allowed-host=http://lab-pc"]])
def test_a_web_address_given_for_a_host_name_is_said_as_no_host_name(tmp_path, monkeypatch,
                                                                   capsys, given):
    # serve's --allowed-host takes host names, not files: a web address there was refused as
    # a file to download ('iste reads local files only ... download the file')
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "x.svs", *given]) == 2
    assert capsys.readouterr().err == ("iste: error: --allowed-host 'http://lab-pc' is not a "
                                       "host name (no port, no scheme)\n")


def _parsers(parser):
    """``parser`` and every command and task parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action.choices, dict):  # sub-commands
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_of_every_command_is_explained():
    # figures --scale, bench --precisions and --key-scales were listed with no word
    for p in _parsers(build_parser()):
        for action in p._actions:
            if not isinstance(action.choices, dict):  # sub-commands have their own help
                assert action.help, (p.prog, action.option_strings or action.dest)


def test_the_figures_example_is_shown_as_it_runs(capsys):
    # argparse reflowed the docstring: the path broke at its hyphen ("tl-ltd-" / "only/...")
    with pytest.raises(SystemExit):
        main(["figures", "--help"])
    assert "--ablations TL+LTD=runs/ablations/tl-ltd-only/model.safetensors," in (
        capsys.readouterr().out)


@pytest.mark.parametrize("own", ["--json-summary", "--log-file"])
@pytest.mark.parametrize("named", ["output", "input"])
def test_a_log_or_summary_that_is_the_commands_own_file_is_refused(tmp_path, ckpt, capsys,
                                                                  own, named):
    # -o o.png --json-summary o.png: the summary, written last, replaced the image (exit 0);
    # --log-file in.png appended the log to the input
    src = _image(tmp_path / "in.png")
    before = src.read_bytes()
    out = tmp_path / "o.png"
    same = {"output": out, "input": tmp_path / "." / "in.png"}[named]
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(ckpt),
                 own, str(same), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"iste: error: {own} and the command's {named} are the same file")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]  # nothing written


@pytest.mark.parametrize("own", ["--json-summary", "--log-file"])
@pytest.mark.parametrize("named", ["sidecar", "an item's output", "an item's sidecar",
                                   "a later item's output", "a temporary's name"])
def test_a_log_or_summary_the_upscale_run_would_write_over_is_refused(tmp_path, ckpt, capsys,
                                                                    own, named):
    # -o o.png --json-summary o.png.json replaced the output's provenance sidecar (exit 0), and
    # a folder run's summary named out/a.png.json made the rerun fail on its item a.png
    (tmp_path / "in").mkdir()
    src = _image(tmp_path / "in" / "a.png")
    single = named == "sidecar"
    out = tmp_path / ("o.png" if single else "out")
    mine = {"sidecar": tmp_path / "o.png.json", "an item's output": out / "a.png",
            "an item's sidecar": out / "a.png.json", "a later item's output": out / "b.TIFF",
            "a temporary's name": out / ".run.json"}
    args = ["upscale", str(src if single else src.parent), "-s", "2", "-o", str(out),
            "--model", str(ckpt), own, str(mine[named]), "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    said = (f"is the provenance sidecar of the output {out}" if single
            else f"lies inside {out}, the output folder of this folder run, under a name the "
                 "command may write")
    assert err.startswith(f"iste: error: {own} {mine[named]} {said}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written
    assert main([*args[:-3], own, str(tmp_path / "run.json"), "-q"]) == 0  # beside it: taken


@pytest.mark.parametrize("own", ["--json-summary", "--log-file"])
def test_a_log_or_summary_of_its_own_name_in_a_folder_runs_output_folder_is_taken(
        tmp_path, ckpt, own):
    # out/run.json and out/logs/run.log are no item's: a lab keeps its logs beside the outputs
    (tmp_path / "in").mkdir()
    _image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    for mine in (out / "run.json", out / "logs" / "run.log"):
        mine.parent.mkdir(parents=True, exist_ok=True)
        assert main(["upscale", str(tmp_path / "in"), "-s", "2", "-o", str(out), "--model",
                     str(ckpt), own, str(mine), "-q", "--overwrite"]) == 0
        assert mine.stat().st_size > 0 and (out / "a.png").exists()



# A library function, as its own module: warnings raised in it are the library's
_LIBRARY = '''
import warnings
def cached_path(name):
    warnings.warn("library.cached_path is deprecated", DeprecationWarning)
    warnings.warn(f"library says {name}", UserWarning)
    return real_cached_path(name)
'''


def test_a_librarys_deprecation_notice_is_not_shown_to_a_user():
    # every warning was shown: a notice a user can do nothing about, as "iste: WARNING: ..."
    import subprocess

    code = ("import sys, iste.data.samples as samples; from iste.cli.main import main; "
            f"lib = {{'__name__': 'library', 'real_cached_path': samples.cached_path}}; "
            f"exec(compile({_LIBRARY!r}, 'library.py', 'exec'), lib); "
            "samples.cached_path = lib['cached_path']; sys.exit(main(['data', 'list']))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "iste: WARNING: library says" in done.stderr  # the library's other warnings are
    assert "deprecated" not in done.stderr               # shown


def test_a_deprecation_raised_from_iste_code_fails_a_test_after_the_command_line_ran(capsys):
    # pyproject.toml's filters make it an error; main() put "default" for every warning before
    # them, so a deprecated call on a command's path only printed a line in the in-process runs
    assert main(["data", "list"]) == 0
    capsys.readouterr()
    deprecated = compile("import warnings\nwarnings.warn('old', DeprecationWarning)",
                         "iste/old.py", "exec")
    with pytest.raises(DeprecationWarning):
        exec(deprecated, {"__name__": "iste.old"})


def test_the_names_a_folder_run_may_write_in_its_output_folder():
    from iste.cli.upscale import _item_name

    taken = ["a.tiff", "a.TIF", "a.png.json", "a.tiff.iste-work", ".a.tiff.tmp", "a.jpeg"]
    assert all(_item_name(n, dicom=False) for n in taken)
    assert not any(_item_name(n, dicom=False) for n in ["run.log", "run.json", "logs", "a.txt"])
    # a DICOM folder run writes each slide as a folder named by its stem
    assert _item_name("logs", dicom=True) and not _item_name("run.log", dicom=True)
