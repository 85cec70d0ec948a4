"""The command line as a user meets it: outputs, one-line errors, exit codes, no partial files."""

import subprocess
import sys

import numpy as np
import pytest

from iste.cli.main import main
from iste.data.imagemeta import read_image_meta, upright
from iste.data.images import read_image
from iste.data.imagewrite import write_image
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from icc_profiles import gray_profile
from model_zoo import tiny_config


@pytest.fixture()
def tiny_ckpt(tmp_path):
    return save_model(build_model(tiny_config("iste")), tmp_path / "tiny.safetensors")


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "in.png"
    write_image(path, (np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8))
    return path


def test_upscale_writes_the_expected_size(tmp_path, image, tiny_ckpt, capsys):
    out = tmp_path / "sub" / "out.tif"
    assert main(["upscale", str(image), "-s", "2.5", "-o", str(out), "--model",
                 str(tiny_ckpt)]) == 0
    assert read_image(out).shape == (50, 60, 3)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["-s", "1"], "scale"),
    (["-s", "-2"], "scale"),
    (["-s", "two"], "scale"),
    (["-s", "nan"], "scale"),
    # Python's float() read these as numbers: 2_0 as x20 (refused as too large), the
    # full-width digit as x2; int() read --chunk 1_000 and --threads 1_6
    (["-s", "2_0"], "'2_0' is not a number (write it with digits and a point only"),
    (["-s", "\uff12"], "is not a number (write it with the digits 0-9)"),
])
def test_bad_scales(tmp_path, image, tiny_ckpt, capsys, args, message):
    out = tmp_path / "o.png"
    assert main(["upscale", str(image), *args, "-o", str(out), "--model", str(tiny_ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iste: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    # int() read these as 1000, 16 and 1
    (["--chunk", "1_000"], "argument --chunk: must be a whole number from 1"),
    (["--threads", "1_6"], "argument --threads: '1_6' is not a whole number (write it with"),
    (["--threads", "\uff11"], "argument --threads: '\uff11' is not a whole number"),
    (["--quality", "9_0"], "argument --quality: '9_0' is not a whole number"),
    (["--target-mpp", "inf"], "argument --target-mpp: 'inf' is not a number"),
    # int() refused over 4300 digits with "use sys.set_int_max_str_digits()", and --chunk's
    # message quoted all 5000
    (["--threads", "1" * 5000], f"argument --threads: '{'1' * 40}' is beyond the range"),
    (["--chunk", "1" * 5000], f"must be a whole number from 1 to 4194304, got '{'1' * 40}' ("),
])
def test_number_options_take_numbers_as_users_write_them(tmp_path, image, capsys, args,
                                                         message):
    out = tmp_path / "o.png"
    with pytest.raises(SystemExit) as ex:  # a usage error, before anything is read
        main(["upscale", str(image), "-s", "2", *args, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_missing_and_corrupt_inputs_and_wrong_checkpoints(tmp_path, image, tiny_ckpt, capsys):
    out = tmp_path / "o.png"
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(image.read_bytes()[:100])
    cases = [
        ([str(tmp_path / "none.png"), "-s", "2", "--model", str(tiny_ckpt)], "no such file"),
        ([str(corrupt), "-s", "2", "--model", str(tiny_ckpt)], "c.png"),
        ([str(image), "-s", "2", "--model", str(tmp_path / "none.safetensors")], "not found"),
        ([str(image), "-s", "2", "--model", str(image)], "not a safetensors"),
    ]
    for args, message in cases:
        assert main(["upscale", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    assert list(tmp_path.glob(".o.png*")) == []


def test_a_failed_job_leaves_no_output_folders_it_made(tmp_path, image, tiny_ckpt, capsys):
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "deeper" / "o.png"
    assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(image)]) == 2
    assert "not a safetensors" in capsys.readouterr().err
    assert [p.name for p in tmp_path.joinpath("kept").iterdir()] == []  # "kept" was there
    assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt)]) == 0
    assert out.is_file()


def test_unsupported_output_suffix_fails_before_work(tmp_path, image, tiny_ckpt, capsys):
    assert main(["upscale", str(image), "-s", "2", "-o", str(tmp_path / "o.bmp"),
                 "--model", str(tiny_ckpt)]) == 2
    assert "unsupported suffix" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "iste", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "upscale" in done.stdout


def test_info_prints_parameter_counts_next_to_the_paper(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "iste-swinir" in out and "12.5" in out
    from iste.models.registry import HEADS
    for name, entry in HEADS.items():  # every registered head, next to the paper's count
        row = next(line for line in out.splitlines() if line.startswith(f"{name}-swinir "))
        assert row.split()[-1] == f"{entry.paper_params_m:.1f}"
    assert "liif*-swinir" in out and "13.2" in out and "lte*-swinir" in out


def test_info_on_a_checkpoint_loads_its_weights(tmp_path, capsys):
    import json

    from safetensors.torch import load_file, save_file

    from iste.models.checkpoint import save_model
    from iste.models.registry import build_model
    from model_zoo import tiny_config

    path = save_model(build_model(tiny_config("liif")), tmp_path / "m.safetensors")
    assert main(["info", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["head"] == "liif"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors.pop(sorted(tensors)[0])  # a tensor lost: the metadata alone still reads
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    assert main(["info", str(tmp_path / "bad.safetensors")]) == 2
    assert "weights do not match the architecture" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["upscale", "IMAGE", "-s", "2", "-o", "OUT"],
                                     ["train", "compact-iste", "--steps", "1", "--run-dir", "RUN"],
                                     ["bench", "--sections", "engine"]])
def test_unknown_or_absent_devices_are_one_line_errors(command, tmp_path, image, capsys):
    import torch

    devices = ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"]) + ["cuda:99"]
    fill = {"IMAGE": str(image), "OUT": str(tmp_path / "o.png"), "RUN": str(tmp_path / "run")}
    for device in devices:
        assert main([fill.get(a, a) for a in command] + ["--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("iste: error:") and device in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "run").exists()


def test_names_beyond_ascii_reach_every_output_and_the_scale_asked_is_recorded(
        tmp_path, image, tiny_ckpt, capsys):
    import json
    import os

    import tifffile

    source = tmp_path / os.fsdecode("Präparat-\xff.png".encode("utf-8")[:-2] + b"\xff.png")
    source.write_bytes(image.read_bytes())
    for suffix in (".tif", ".png", ".jpg"):
        out = tmp_path / f"o{suffix}"
        assert main(["upscale", str(source), "-s", "3.3", "-o", str(out),
                     "--model", str(tiny_ckpt)]) == 0, capsys.readouterr().err
        prov = json.loads((tmp_path / f"o{suffix}.json").read_text())
        assert prov["source"].startswith("Präparat-") and "\\xff" in prov["source"]
        assert prov["scale"] == 3.3 and prov["scale_hw"] == [3.3, round(79 / 24, 6)]
    description = tifffile.TiffFile(tmp_path / "o.tif").pages[0].description
    assert "Pr\\xe4parat-" in description and description.isascii()


def test_outputs_that_cannot_be_written_are_refused_before_the_model_runs(
        tmp_path, image, tiny_ckpt, capsys, monkeypatch):
    import errno
    import tempfile

    import iste.cli.upscale_image as upscale_image

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(upscale_image, "_upscale_with_progress", must_not_run)
    run = ["upscale", str(image), "-s", "2", "--model", str(tiny_ckpt), "-o"]
    (tmp_path / "taken.png.json").write_text('{"mine": 1}')
    (tmp_path / "dir.png.json").mkdir()
    cases = [("taken.png", "taken.png.json exists"), ("dir.png", "is a directory"),
             # its sidecar's name is too long: said as 'File name too long: OUT.json'
             ("L" * 250 + ".png", ".png: its provenance sidecar " + "L" * 250 + ".png.json: its "
              "name is longer than the 255 bytes"),
             ("L" * 252 + ".png", ".png: its name is longer than the 255 bytes")]
    for name, message in cases:
        assert main([*run, str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "taken.png.json").read_text() == '{"mine": 1}'
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        if kwargs.get("dir") == tmp_path / "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kwargs)

    import os
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    for args in (["-o", str(tmp_path / "ro" / "x.png")],
                 ["-o", str(tmp_path / "x.png"), "--json-summary", str(tmp_path / "ro" / "s.json")],
                 ["-o", str(tmp_path / "x.png"), "--log-file", str(tmp_path / "ro" / "s.log")]):
        assert main([*run[:-1], *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("iste: error:") and "read-only file system" in err[-1], err
    assert not (tmp_path / "x.png").exists()


def test_a_long_output_name_gets_a_temporary_that_fits(tmp_path, image, tiny_ckpt):
    out = tmp_path / ("L" * 240 + ".png")
    assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt),
                 "-q"]) == 0
    assert read_image(out).shape == (40, 48, 3)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_another_job_writes_meanwhile_is_kept_without_overwrite(
        tmp_path, image, tiny_ckpt, capsys, monkeypatch, overwrite):
    # two jobs on one -o both passed the check before the model and both exited 0, the
    # second replacing the first's output (and the pair could mix their image and sidecar)
    from iste.cli import upscale_image

    out = tmp_path / "out.png"
    foreign = np.full((40, 48, 3), 7, np.uint8)
    write_pair = upscale_image._write_with_provenance

    def other_job_first(out_path, *args, **kwargs):
        write_image(out_path, foreign)  # the other job's image lands after our check
        return write_pair(out_path, *args, **kwargs)

    monkeypatch.setattr(upscale_image, "_write_with_provenance", other_job_first)
    argv = ["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt)]
    code = main(argv + (["--overwrite"] if overwrite else []))
    if overwrite:
        assert code == 0 and not (read_image(out) == foreign).all()
        assert (tmp_path / "out.png.json").is_file()
    else:
        assert code == 2 and "exists" in capsys.readouterr().err
        assert (read_image(out) == foreign).all()  # the other job's, kept
        assert not (tmp_path / "out.png.json").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png",
                                                             "tiny.safetensors"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_disk_full_at_the_sidecar_leaves_neither_file_changed(
        tmp_path, image, tiny_ckpt, capsys, monkeypatch, overwrite):
    # the image was put in place, then its sidecar failed: an image without provenance that a
    # rerun refused as existing ("nothing was written" said the error); with --overwrite the
    # new image beside the old image's provenance
    import errno
    import os

    from iste import files

    out = tmp_path / "out.png"
    argv = ["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt), "-q"]
    old = {}
    if overwrite:  # the pair of an earlier job at another scale
        assert main([*argv[:3], "3", *argv[4:]]) == 0
        old = {p.name: p.read_bytes() for p in (out, tmp_path / "out.png.json")}

    def full(path, data, **kwargs):
        def write(tmp):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return files.write_atomic(path, write, **kwargs)

    monkeypatch.setattr(files, "write_bytes_atomic", full)
    assert main(argv + (["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err.strip()
    assert "out.png.json: no space left" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.png", "tiny.safetensors", *old])
    assert {name: (tmp_path / name).read_bytes() for name in old} == old


def test_sigterm_while_writing_removes_the_temporary_and_exits_143(
        tmp_path, image, tiny_ckpt, capsys, monkeypatch):
    # a scheduler's SIGTERM ended the process at once: the half-written temporary beside the
    # output (and the output folder the job made) stayed, and no run removes them
    import os
    import signal

    from PIL import Image

    save = Image.Image.save

    def terminated_while_saving(self, fp, *args, **kwargs):
        save(self, fp, *args, **kwargs)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            raise AssertionError("SIGTERM would end the process with nothing cleaned up")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Image.Image, "save", terminated_while_saving)
    out = tmp_path / "sub" / "out.png"
    code = main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt),
                 "-q"])
    assert code == 143 and capsys.readouterr().err.strip() == "iste: stopped by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "tiny.safetensors"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's, restored


# Ctrl-C (or SIGTERM) arrives while torch is being imported, the first second of any command:
# a finder asked for torch sends the signal to its own process, at that very point
_SIGNAL_AT_TORCH = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal: a background
signal.signal(signal.SIGTERM, signal.SIG_DFL)  # job of a script starts with SIGINT ignored
class SignalAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signal})
sys.meta_path.insert(0, SignalAtTorch())
sys.argv = ["iste", "info"]
"""
_ENTRY_POINTS = {  # as `python -m iste` runs, and as the installed `iste` script does
    "python -m iste": "import runpy; runpy.run_module('iste', run_name='__main__', "
                      "alter_sys=True)",
    "console script": "from iste.cli.main import main; sys.exit(main())",
}


@pytest.mark.parametrize("entry", list(_ENTRY_POINTS))
@pytest.mark.parametrize("signal,said,code", [("SIGINT", "interrupted", 130),
                                               ("SIGTERM", "stopped by SIGTERM", 143)])
def test_a_signal_while_torch_is_imported_is_one_line(entry, signal, said, code):
    import os
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AT_TORCH.format(signal=signal)
                           + _ENTRY_POINTS[entry]], capture_output=True, text=True, env=env,
                          timeout=120)
    assert (proc.returncode, proc.stderr.strip()) == (code, f"iste: {said}")


# ... and is lost there: torch's C import clears a failed import of numpy, and an exception
# raised in the import lock's weakref callback is printed as "Exception ignored" and dropped
_SIGNAL_LOST_AT_TORCH = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
signal.signal(signal.SIGTERM, signal.SIG_DFL)
class SignalLostAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            try:
                signal.raise_signal(signal.{signal})
            except KeyboardInterrupt:
                pass
sys.meta_path.insert(0, SignalLostAtTorch())
sys.argv = ["iste", "info"]
"""


@pytest.mark.parametrize("signal,said,code", [("SIGINT", "interrupted", 130),
                                               ("SIGTERM", "stopped by SIGTERM", 143)])
def test_a_signal_whose_exception_an_import_drops_still_stops_the_command(signal, said, code):
    # SIGTERM's exception raised inside torch's import and dropped there: `iste upscale` ran
    # on to the end and exit code 0 (a second SIGTERM, now the default action, killed it
    # with nothing cleaned up)
    import os
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_LOST_AT_TORCH.format(signal=signal)
                           + _ENTRY_POINTS["console script"]], capture_output=True, text=True,
                          env=env, timeout=120)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (code, f"iste: {said}", "")


def test_with_overwrite_the_image_and_its_provenance_are_written_holding_their_folder(
        tmp_path, image, tiny_ckpt, monkeypatch):
    # two --overwrite jobs on one -o could leave one job's image beside the other's sidecar
    import fcntl
    import os

    from iste import provenance

    held = []
    write_sidecar = provenance.write_sidecar

    def probing(path, *args, **kwargs):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:  # another job's attempt at the folder, between the image and the sidecar
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return write_sidecar(path, *args, **kwargs)

    monkeypatch.setattr(provenance, "write_sidecar", probing)
    out = tmp_path / "out.png"
    for _ in range(2):
        assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model",
                     str(tiny_ckpt), "--overwrite", "-q"]) == 0
    assert held == [True, True]


def test_a_pngs_gamma_chromaticity_and_srgb_chunks_are_carried_to_a_png_output(
        tmp_path, tiny_ckpt):
    # they were dropped: a PNG tagged with gAMA only was shown darker or lighter after SR
    import struct

    from PIL import Image, ImageCms
    from PIL.PngImagePlugin import PngInfo

    rgb = (np.random.default_rng(2).random((20, 24, 3)) * 255).astype(np.uint8)
    white_and_primaries = (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)
    tags = {
        "gamma": [(b"gAMA", struct.pack(">I", 55555))],
        "all": [(b"gAMA", struct.pack(">I", 45455)),
                (b"cHRM", struct.pack(">8I", *(round(v * 1e5) for v in white_and_primaries))),
                (b"sRGB", bytes([1]))],
    }
    for name, chunks in tags.items():
        info = PngInfo()
        for kind, data in chunks:
            info.add(kind, data)
        Image.fromarray(rgb).save(tmp_path / f"{name}.png", pnginfo=info)
        for suffix in (".png", ".jpg"):
            out = tmp_path / f"{name}_out{suffix}"
            assert main(["upscale", str(tmp_path / f"{name}.png"), "-s", "2", "-o", str(out),
                         "--model", str(tiny_ckpt), "-q"]) == 0
            with Image.open(out) as img, Image.open(tmp_path / f"{name}.png") as src:
                colour = {k: img.info.get(k) for k in ("gamma", "chromaticity", "srgb")}
                if suffix == ".png":
                    assert colour == {k: src.info.get(k) for k in colour}
                else:  # JPEG has no such chunks
                    assert colour == dict.fromkeys(colour)
    # beside an ICC profile, PNG allows no sRGB chunk: the profile and gAMA are kept
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    info = PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))
    Image.fromarray(rgb).save(tmp_path / "icc.png", pnginfo=info, icc_profile=srgb)
    out = tmp_path / "icc_out.png"
    assert main(["upscale", str(tmp_path / "icc.png"), "-s", "2", "-o", str(out),
                 "--model", str(tiny_ckpt), "-q"]) == 0
    with Image.open(out) as img:
        assert img.info["icc_profile"] == srgb and img.info["gamma"] == 0.45455
        assert "srgb" not in img.info


@pytest.mark.parametrize("suffix,orientation", [(".jpg", 6), (".png", 8), (".tif", 5),
                                               (".jpg", 3)])
def test_an_image_with_an_exif_orientation_is_written_upright(tmp_path, tiny_ckpt, suffix,
                                                              orientation):
    """A phone or scanner snapshot stored sideways with EXIF orientation 6 was upscaled in its
    stored order and written without the tag: a viewer showed the input upright and the
    output on its side. The output is now turned as the tag says (and its pixel size with
    it): the same pixels as the untagged image's output, turned."""
    import json

    from PIL import Image, ImageOps

    rgb = (np.random.default_rng(4).random((20, 28, 3)) * 255).astype(np.uint8)
    mpp = (0.5, 1.0)  # x, y of the stored pixels (a JPEG records at most 65535 dpi)

    def save(path, tagged):
        if suffix == ".tif":
            tags = [(274, "H", 1, orientation, True)] if tagged else []
            import tifffile

            tifffile.imwrite(path, rgb, resolution=(1e4 / mpp[0], 1e4 / mpp[1]),
                             resolutionunit="CENTIMETER", extratags=tags)
            return
        exif = Image.Exif()
        if tagged:
            exif[274] = orientation
        Image.fromarray(rgb).save(path, exif=exif, dpi=(25400 / mpp[0], 25400 / mpp[1]),
                                  quality=95)

    save(tmp_path / f"plain{suffix}", False)
    save(tmp_path / f"tagged{suffix}", True)
    outs = {}
    for name in ("plain", "tagged"):
        outs[name] = tmp_path / f"{name}_out.png"
        assert main(["upscale", str(tmp_path / f"{name}{suffix}"), "-s", "2", "-o",
                     str(outs[name]), "--model", str(tiny_ckpt), "-q"]) == 0
    plain, tagged = read_image(outs["plain"]), read_image(outs["tagged"])
    np.testing.assert_array_equal(tagged, upright(plain, orientation))
    if suffix != ".tif":  # what a viewer that honours the tag shows of the input, at x2
        with Image.open(tmp_path / f"tagged{suffix}") as img:
            assert ImageOps.exif_transpose(img).size == (tagged.shape[1] // 2,
                                                         tagged.shape[0] // 2)
    meta = read_image_meta(outs["tagged"])
    assert meta.orientation is None
    turned = orientation >= 5
    want = (mpp[1] / 2, mpp[0] / 2) if turned else (mpp[0] / 2, mpp[1] / 2)
    assert meta.mpp == pytest.approx(want, rel=1e-3)
    sidecar = json.loads(outs["tagged"].with_name("tagged_out.png.json").read_text())
    assert sidecar["exif_orientation"] == orientation
    assert "exif_orientation" not in json.loads(
        outs["plain"].with_name("plain_out.png.json").read_text())


def test_a_folder_rerun_redoes_an_output_left_in_the_stored_order(tmp_path, tiny_ckpt, capsys):
    """An output an older iste wrote of a sideways-tagged image (unturned, its provenance
    without ``exif_orientation``) is not taken for this run's by a folder rerun."""
    import json

    from PIL import Image

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray((np.random.default_rng(5).random((16, 24, 3)) * 255).astype(np.uint8)) \
        .save(folder / "snap.jpg", exif=exif)
    argv = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt)]
    assert main(argv) == 0
    assert main(argv) == 0 and "skip snap.jpg" in capsys.readouterr().out  # this run's
    sidecar = out / "snap.jpg.json"
    older = json.loads(sidecar.read_text())
    del older["exif_orientation"]
    sidecar.write_text(json.dumps(older))
    assert main(argv) == 1
    assert "made with exif_orientation none (this run: 6)" in capsys.readouterr().err


def test_a_gray_image_is_written_gray_with_its_gray_profile(tmp_path, tiny_ckpt):
    """A gray image ran as three equal channels, which the model does not keep equal: its
    output was written RGB, tinted (the shipped model: 2.5, -7.5, +6.6 levels on a gray
    image), and its gray ICC profile dropped. Now gray, the mean of the channels (as
    iste.upscale returns a gray array), with the profile that describes it."""
    import tifffile
    from PIL import Image

    gray = (np.random.default_rng(6).random((18, 26)) * 255).astype(np.uint8)
    profile = gray_profile()
    Image.fromarray(gray).save(tmp_path / "g.png", icc_profile=bytes(profile))
    tifffile.imwrite(tmp_path / "g.tif", 255 - gray, photometric="miniswhite")
    write_image(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, axis=-1))
    outs = {}
    for name in ("g.png", "g.tif", "rgb.png"):
        outs[name] = tmp_path / f"out_{name}"
        assert main(["upscale", str(tmp_path / name), "-s", "2.5", "-o", str(outs[name]),
                     "--model", str(tiny_ckpt), "-q"]) == 0
    rgb_sr = np.asarray(Image.open(outs["rgb.png"]), np.float64)
    for name in ("g.png", "g.tif"):
        with Image.open(outs[name]) as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), np.round(rgb_sr.mean(axis=-1)))
    assert read_image_meta(outs["g.png"]).icc_profile == bytes(profile)


def test_an_alpha_channel_is_carried_and_a_jpeg_output_of_one_refused(tmp_path, tiny_ckpt,
                                                                      capsys):
    """An RGBA PNG (an OpenSlide read_region saved: transparent, black, outside the scanned
    area) was written without its alpha: black where a viewer showed the input transparent.
    The alpha is now resized as iste.upscale resizes it and written with the colours (PNG,
    TIFF); a JPEG output, which cannot hold it, is refused in one line before the model
    runs. A wholly opaque alpha stays out of the output, as before."""
    import iste
    from PIL import Image

    from iste.models.checkpoint import load_model

    rng = np.random.default_rng(7)
    rgba = (rng.random((18, 26, 4)) * 255).astype(np.uint8)
    rgba[:, :8, 3] = 0
    rgba[:, 8:, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    write_image(tmp_path / "rgb.png", rgba[..., :3])
    opaque = rgba.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    want_alpha = iste.upscale(rgba, 2, model=load_model(tiny_ckpt))[..., 3]
    for name, suffix in (("a.png", ".png"), ("a.png", ".tif"), ("rgb.png", ".png"),
                         ("opaque.png", ".tif"), ("la.png", ".tif")):
        out = tmp_path / f"out_{name}{suffix}"
        assert main(["upscale", str(tmp_path / name), "-s", "2", "-o", str(out),
                     "--model", str(tiny_ckpt), "-q"]) == 0
    rgb_sr = read_image(tmp_path / "out_rgb.png.png")
    for suffix in (".png", ".tif"):
        with Image.open(tmp_path / f"out_a.png{suffix}") as img:
            assert img.mode == "RGBA"
            got = np.asarray(img)
        np.testing.assert_array_equal(got[..., :3], rgb_sr)
        np.testing.assert_array_equal(got[..., 3], want_alpha)
    assert got[:, :12, 3].max() < 64 and got[:, 20:, 3].min() == 255
    with Image.open(tmp_path / "out_opaque.png.tif") as img:
        assert img.mode == "RGB"
    with Image.open(tmp_path / "out_la.png.tif") as img:
        assert img.mode == "LA" and np.array_equal(np.asarray(img)[..., 1], want_alpha)
    out = tmp_path / "a_out.jpg"
    assert main(["upscale", str(tmp_path / "a.png"), "-s", "2", "-o", str(out),
                 "--model", str(tiny_ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has transparency" in err and ".png or .tif" in err
    assert not out.exists() and not out.with_name("a_out.jpg.json").exists()


def test_stf_keys_are_refused_for_a_model_without_stf_and_recorded_only_with_stf(
        tmp_path, image, tiny_ckpt, capsys):
    """--stf-keys with LIIF or a fixed-scale network was accepted, did nothing, and the
    output's provenance recorded it (as it recorded the default 2304 for every model)."""
    import json

    from model_zoo import tiny_fixed

    liif = save_model(build_model(tiny_config("liif")), tmp_path / "liif.safetensors")
    edsr = save_model(build_model(tiny_fixed("edsr", 2)), tmp_path / "edsr.safetensors")
    for model in (liif, edsr):
        out = tmp_path / f"{model.stem}.png"
        assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(model),
                     "--stf-keys", "64"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("iste: error: --stf-keys") and len(err.splitlines()) == 1
        assert not out.exists()
        assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(model),
                     "--overwrite"]) == 0
        assert "stf_keys" not in json.loads((tmp_path / f"{out.name}.json").read_text())
        capsys.readouterr()
    out = tmp_path / "o.png"
    assert main(["upscale", str(image), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt),
                 "--stf-keys", "64"]) == 0
    assert json.loads((tmp_path / "o.png.json").read_text())["stf_keys"] == 64


def test_the_stf_keys_refusal_is_one_rule_for_upscale_and_eval():
    """The refusal was written twice (cli.options and eval.report); now one rule,
    iste.engine.render.check_stf_keys, that both read."""
    from iste.engine.render import check_stf_keys

    check_stf_keys(False, {"LIIF": False})
    check_stf_keys(True, {"LIIF": False, "ISTE": True})
    with pytest.raises(ValueError, match=r"^--stf-keys applies to models with STF \(ISTE\); "
                                         "model LIIF has none$"):
        check_stf_keys(True, {"LIIF": False}, what="model")
    with pytest.raises(ValueError, match=r"; none of the methods \(bicubic, a\) has it$"):
        check_stf_keys(True, {"bicubic": False, "a": False})


def test_a_file_named_like_a_sample_is_named_in_the_unknown_sample_error(
        tmp_path, image, tiny_ckpt, monkeypatch, capsys):
    """A file 'sample:x.png' from a share was refused as "unknown sample 'x.png'" alone: the
    user saw it listed and could not tell why it was not read, nor how to give it."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(image, tmp_path / "sample:x.png")
    (tmp_path / "sample:tiles").mkdir()
    shutil.copy(image, tmp_path / "sample:tiles" / "t.png")
    run = ["-s", "2", "--model", str(tiny_ckpt), "-o", "out.png", "-q"]
    assert main(["upscale", "sample:x.png", *run]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("unknown sample 'x.png'; known: cmu-svs, wsidicom-tile, slideflow-tile;"
                        " the file sample:x.png here is read as ./sample:x.png"), err
    assert main(["upscale", "./sample:x.png", *run]) == 0 and (tmp_path / "out.png").is_file()
    assert main(["eval", "--data", "sample:tiles", "--methods", "bicubic", "--out", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown sample test set 'tiles'" in err, err
    assert err.endswith("; the folder sample:tiles here is read as ./sample:tiles"), err
