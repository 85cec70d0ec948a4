"""The hostile-input corpus (issue 16, items 1-8): every case through the real command line.

Each refusal must be one line ``iste: error: ...`` with exit code 2, quickly, with no
traceback and no output (or temporary file) left behind; inputs are never overwritten; a work
folder that was tampered with is refused or its damaged tiles recomputed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hostile_cases import ALIAS_BOMB, corrupt_jpeg, png, png_header_only, run_cli
from iste import files
from iste.data.images import read_image
from iste.engine.tiles import default_tile
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.slides.reader import InMemorySlide
from iste.slides.workdir import work_dir_for
from model_zoo import tiny_config
from slide_data import he_image, write_tiff_pyramid
from train_helpers import synthetic_folder, tiny_train_dict

SLIDE_ARGS = ["--tile", "64", "--codec", "deflate", "--no-tissue"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(build_model(tiny_config("liif")), path)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A small pyramidal TIFF of real H&E (96 x 80 px, two levels)."""
    src = InMemorySlide(he_image(96, 80), mpp=0.5, min_level_size=40)
    return write_tiff_pyramid(tmp_path_factory.mktemp("slide") / "slide.tiff", src)


def _refused(outcome, *words):
    assert outcome.one_line_error, (outcome.code, outcome.err[-600:])
    for w in words:
        assert w in outcome.err, outcome.err


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- data loss: output == input

def test_plain_image_output_equal_to_input_is_refused(tmp_path, tiny, capsys):
    img = png(tmp_path / "in.png")
    before = img.read_bytes()
    (tmp_path / "link.png").symlink_to(img)
    for out in (img, tmp_path / "." / "sub" / ".." / "in.png", tmp_path / "link.png"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        _refused(run_cli(["upscale", img, "-s", "2", "-o", out, "--model", tiny,
                          "--overwrite"], capsys), "is the input")
    assert img.read_bytes() == before


def test_slide_output_equal_to_input_is_refused(tmp_path, tiny, slide, capsys):
    copy = shutil.copy(slide, tmp_path / "s.tiff")
    before = Path(copy).read_bytes()
    _refused(run_cli(["upscale", copy, "-s", "2", "-o", copy, "--model", tiny, "--overwrite",
                      *SLIDE_ARGS], capsys), "is the input")
    assert Path(copy).read_bytes() == before
    assert not work_dir_for(Path(copy)).exists()


def test_cohort_writing_into_its_input_folder_is_refused(tmp_path, tiny, slide, capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    shutil.copy(slide, folder / "a.tiff")
    (tmp_path / "alias").symlink_to(folder)
    before = (folder / "a.tiff").read_bytes()
    # cohort/new/.. is the input folder once new is made (the run makes -o's folders)
    for out in (folder, tmp_path / "alias", tmp_path / "cohort" / ".",
                tmp_path / "alias" / "new" / ".."):
        _refused(run_cli(["upscale", folder, "-s", "2", "-o", out, "--overwrite", "--model",
                          tiny, *SLIDE_ARGS], capsys), "holds the input a.tiff")
    # a DICOM output is a folder named after the slide, not the slide's name: still refused
    _refused(run_cli(["upscale", folder, "-s", "2", "-o", folder, "--format", "dicom",
                      "--model", tiny, "--tile", "64"], capsys),
             "holds the input a.tiff")
    assert (folder / "a.tiff").read_bytes() == before
    assert _listing(folder) == ["a.tiff"]


@pytest.mark.parametrize("kind", ["image", "slide"])
def test_an_output_named_by_a_link_to_nothing_exists(tmp_path, tiny, slide, capsys, kind):
    """A dangling link at -o is something there: refused without --overwrite, before any
    work (an image's was refused by its last rename, 'written by another process meanwhile';
    a slide's link was replaced), and replaced by the output with it, its target not made."""
    src = png(tmp_path / "in.png") if kind == "image" else slide
    out = tmp_path / ("out.png" if kind == "image" else "out.tiff")
    out.symlink_to(tmp_path / "gone")
    argv = ["upscale", src, "-s", "2", "-o", out, "--model", tiny,
            *(SLIDE_ARGS if kind == "slide" else [])]
    _refused(run_cli(argv, capsys), f"output {out} exists; pass --overwrite")
    assert out.is_symlink()
    assert run_cli([*argv, "--overwrite"], capsys).code == 0
    assert out.is_file() and not out.is_symlink() and not (tmp_path / "gone").exists()


def test_a_slide_of_a_folder_run_on_a_read_only_output_is_a_one_line_error(
        tmp_path, tiny, slide, capsys, monkeypatch):
    """A folder run's slide found the file system read-only at its work folder, and said the
    raw '[Errno 30] Read-only file system: 'out/a.tiff.iste-work''. The file system is made
    to refuse that folder as a read-only mount does (root writes anywhere else)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(slide, folder / "a.tiff")
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".iste-work"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    outcome = run_cli(["upscale", folder, "-s", "2", "-o", tmp_path / "out", "--model", tiny,
                       *SLIDE_ARGS], capsys)
    assert outcome.code == 1 and "Traceback" not in outcome.err
    assert f"iste: error: {folder / 'a.tiff'}: cannot create the work folder " \
           f"{tmp_path / 'out' / 'a.tiff.iste-work'}: read-only file system" in outcome.err, \
        outcome.err


def test_an_input_that_is_a_link_to_nothing_is_named_as_one(tmp_path, tiny, capsys):
    """An input or model whose link leads nowhere (its storage no longer mounted, the file
    moved) was 'no such file' while ls lists the name; the error now says where it leads."""
    img = png(tmp_path / "in.png")
    gone, loop = tmp_path / "gone.png", tmp_path / "loop.png"
    gone.symlink_to(tmp_path / "archive" / "in.png")
    loop.symlink_to(loop)
    for src, words in ((gone, f"a link to {tmp_path / 'archive' / 'in.png'}, which does not "
                               "exist"), (loop, "a link in a loop")):
        _refused(run_cli(["upscale", src, "-s", "2", "-o", tmp_path / "o.png", "--model",
                          tiny], capsys), f"cannot read {src}: no such file (it is {words}")
    model = tmp_path / "m.safetensors"
    model.symlink_to(tmp_path / "runs" / "model.safetensors")
    _refused(run_cli(["upscale", img, "-s", "2", "-o", tmp_path / "o.png", "--model", model],
                     capsys), "not found", "it is a link to")
    assert _listing(tmp_path) == ["gone.png", "in.png", "loop.png", "m.safetensors"]


# ------------------------------------------------------- security: the work folder is ours

def _foreign_work_folder(out: Path, kind: str, victim: Path) -> Path:
    wd = work_dir_for(out)
    if kind == "symlink":
        wd.symlink_to(victim)
    else:
        wd.mkdir()
        (wd / "manifest.json").write_text(json.dumps({"version": 2, "params": {}}))
        if kind == "world-writable":
            wd.chmod(0o777)
        else:  # owned by someone else (we run as root in CI; otherwise it is not ours anyway)
            os.chown(wd, 65534, 65534) if os.geteuid() == 0 else None
    return wd


@pytest.mark.parametrize("kind", ["symlink", "world-writable", "other-owner"])
def test_a_work_folder_made_by_someone_else_is_refused(tmp_path, tiny, slide, capsys, kind):
    if kind == "other-owner" and os.geteuid() != 0:
        kind = "world-writable"  # cannot make a folder owned by another user without root
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    out = tmp_path / "o.tiff"
    _foreign_work_folder(out, kind, victim)
    outcome = run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny, *SLIDE_ARGS],
                      capsys)
    _refused(outcome, "work folder", str(work_dir_for(out)))
    assert not out.exists()
    assert _listing(victim) == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"


# --------------------------------------------- integrity: kill, tamper, resume, leftovers

def _interrupted_before_assembly(tmp_path, tiny, slide, capsys, monkeypatch, out):
    """Run a slide job that is 'killed' (Ctrl-C) once every tile is in its work folder."""
    import iste.slides.pipeline as pipeline

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_assemble", interrupt)
        assert run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny,
                        *SLIDE_ARGS], capsys).code == 130
    tiles = sorted(p for p in (work_dir_for(out) / "tiles").rglob("*") if p.is_file())
    assert len(tiles) >= 4 and not out.exists()
    return tiles


def test_truncated_garbage_and_symlinked_tiles_are_recomputed_on_resume(
        tmp_path, tiny, slide, capsys, monkeypatch):
    ref = tmp_path / "ref.tiff"
    assert run_cli(["upscale", slide, "-s", "2", "-o", ref, "--model", tiny, *SLIDE_ARGS],
                   capsys).code == 0
    out = tmp_path / "o.tiff"
    tiles = _interrupted_before_assembly(tmp_path, tiny, slide, capsys, monkeypatch, out)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"not a tile")
    data = tiles[0].read_bytes()
    tiles[0].write_bytes(data[: len(data) // 2])  # truncated
    tiles[1].write_bytes(os.urandom(len(data)))  # garbage
    tiles[2].unlink()
    tiles[2].symlink_to(victim)  # a link out of the folder
    black = tiles[3].read_bytes()[:49] + bytes(len(data) - 49)  # valid header, black body
    tiles[3].write_bytes(black)
    outcome = run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny, *SLIDE_ARGS],
                      capsys)
    assert outcome.code == 0, outcome.err
    assert "4 finished tile(s)" in outcome.err and "recomputing" in outcome.err
    np.testing.assert_array_equal(read_image(out), read_image(ref))
    assert victim.read_bytes() == b"not a tile"
    assert _listing(tmp_path) == sorted(["ref.tiff", "o.tiff", "victim.bin"])


def test_a_kill_during_pyramid_assembly_leaves_nothing_after_the_next_run(
        tmp_path, tiny, slide, capsys):
    out = tmp_path / "o.tiff"
    stale = tmp_path / ".o.tiff.abc123.partial"  # what an older run left beside the output
    stale.write_bytes(b"x" * 1000)
    script = textwrap.dedent(f"""
        import os, signal
        import iste.slides.writer as writer
        real = writer._write_levels
        def killed(tw, spec, codec, level0, scratch, done):
            (scratch / "level1.bin").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        writer._write_levels = killed
        from iste.cli.main import main
        main({[str(a) for a in ["upscale", slide, "-s", "2", "-o", out, "--model", tiny,
                                 *SLIDE_ARGS]]!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()
    outcome = run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny, *SLIDE_ARGS],
                      capsys)
    assert outcome.code == 0, outcome.err
    assert _listing(tmp_path) == ["o.tiff"]


def test_late_options_are_validated_before_any_work(tmp_path, tiny, slide, capsys):
    out = tmp_path / "o.tiff"
    for bad in (["--quality", "500"], ["--quality", "0"], ["--tile", "0"]):
        _refused(run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny,
                          "--codec", "jpeg", *bad], capsys))
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("bad", [["--tile", "1000000"], ["--halo", "1000000"],
                                 ["--chunk", str(10**12)], ["--stf-keys", str(10**9)],
                                 ["--threads", "0"], ["--level", "-1"],
                                 ["--region", "0,0,-5,10"], ["--target-mpp", "nan"]])
def test_absurd_slide_options_end_quickly(tmp_path, tiny, slide, capsys, bad):
    out = tmp_path / "o.tiff"
    args = ["upscale", slide, "-o", out, "--model", tiny, *bad]
    if bad[0] != "--target-mpp":
        args += ["-s", "2"]
    _refused(run_cli(args, capsys, seconds=20))
    assert _listing(tmp_path) == []


def test_non_finite_weights_are_refused_at_load(tmp_path, tiny, capsys):
    from safetensors import safe_open

    with safe_open(str(tiny), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for bad in (float("nan"), float("inf")):
        name = sorted(tensors)[0]
        broken = {**tensors, name: torch.full_like(tensors[name], bad)}
        path = tmp_path / "bad.safetensors"
        save_file(broken, str(path), metadata=meta)
        out = tmp_path / "o.png"
        _refused(run_cli(["upscale", png(tmp_path / "in.png"), "-s", "2", "-o", out,
                          "--model", path], capsys), "NaN or Inf", "bad.safetensors")
        assert not out.exists()


def test_a_corrupt_jpeg_is_named_in_a_warning(tmp_path, tiny, capsys):
    src = corrupt_jpeg(tmp_path / "scan.jpg")
    outcome = run_cli(["upscale", src, "-s", "2", "-o", tmp_path / "o.png", "--model", tiny],
                      capsys)
    assert outcome.code == 0, outcome.err
    assert "WARNING" in outcome.err and "scan.jpg" in outcome.err
    assert "corrupt JPEG data" in outcome.err


@pytest.mark.parametrize("codec, name", [("jpeg", "JPEG"), ("jpeg2000", "JPEG 2000")])
def test_a_corrupt_jpeg_strip_of_a_tiff_image_is_named_in_a_warning(tmp_path, tiny, capsys,
                                                                      codec, name):
    # tifffile decoded the damaged strip as garbage blocks without a word (233 levels off in
    # the output); a .jpg file was already judged
    import tifffile

    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, he_image(128, 128), compression=codec, photometric="rgb",
                     rowsperstrip=64)
    with tifffile.TiffFile(src) as tif:
        offset, count = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
    data = bytearray(src.read_bytes())
    data[offset + count // 3:offset + count] = bytes(count - count // 3)  # strip 1 cut short
    src.write_bytes(bytes(data))
    outcome = run_cli(["upscale", src, "-s", "2", "-o", tmp_path / "o.png", "--model", tiny],
                      capsys)
    assert outcome.code == 0, outcome.err
    assert f"scan.tif: corrupt {name} data in strip 1" in outcome.err
    assert outcome.err.count(f"corrupt {name} data") == 1


@pytest.mark.parametrize("backend, codec, name", [
    ("tiffslide", "jpeg", "JPEG"),
    # OpenSlide decoded the damaged tile as tifffile does, without a word (up to 206 levels off)
    ("openslide", "jpeg", "JPEG"),
    # openjpeg decoded a tile whose second half was zeros (a copy with a hole) without a word,
    # 65 levels off; Aperio's older SVS files store their tiles as JPEG 2000
    ("tiffslide", "jpeg2000", "JPEG 2000"),
])
def test_a_corrupt_tile_of_a_slide_is_named_in_a_warning(tmp_path, tiny, capsys, backend, codec,
                                                         name):
    import tifffile

    src = tmp_path / "scan.tiff"
    tifffile.imwrite(src, he_image(128, 128), tile=(64, 64), compression=codec,
                     photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(src) as tif:
        offset, count = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
    data = bytearray(src.read_bytes())
    data[offset + count // 2:offset + count] = bytes(count - count // 2)  # tile (1, 0) cut short
    src.write_bytes(bytes(data))
    outcome = run_cli(["upscale", src, "-s", "2", "-o", tmp_path / "o.tiff", "--model", tiny,
                       "--backend", backend, *SLIDE_ARGS], capsys)
    assert outcome.code == 0, outcome.err
    assert f"scan.tiff: corrupt {name} data in level 0, tile column 1 row 0" in outcome.err
    assert outcome.err.count(f"corrupt {name} data") == 1


# ------------------------------------------------------------------ bounds: sizes, scales

@pytest.mark.parametrize("scale", ["100", "1e5", "1e9", "inf", "-inf", "nan", "1e400",
                                   "8.0001", "0", "x" * 100_000])
def test_absurd_scales_end_quickly(tmp_path, tiny, capsys, scale):
    out = tmp_path / "o.png"
    outcome = run_cli(["upscale", png(tmp_path / "in.png"), f"--scale={scale}", "-o", out,
                       "--model", tiny], capsys, seconds=20)
    _refused(outcome, "scale")
    assert not out.exists()


@pytest.mark.parametrize("size,scale,words", [
    ((9000, 9000), "4", ["Gpx"]),  # a 300-byte file claiming 1.3 Gpx of output
    ((100000, 100000), "2", ["cannot read"]),  # a decompression bomb
])
def test_huge_images_are_refused_before_decoding(tmp_path, tiny, capsys, size, scale, words):
    src = png_header_only(tmp_path / "big.png", *size)
    out = tmp_path / "o.png"
    _refused(run_cli(["upscale", src, "-s", scale, "-o", out, "--model", tiny], capsys,
                     seconds=20), *words)
    assert _listing(tmp_path) == ["big.png"]


@pytest.mark.parametrize("width", [9000, 8189])  # x8: 72000 px, and 65512 (libjpeg: 65500)
def test_a_jpeg_output_beyond_its_format_limit_is_refused_before_work(tmp_path, tiny, capsys,
                                                                      width):
    src = png(tmp_path / "wide.png", h=2, w=width)
    _refused(run_cli(["upscale", src, "-s", "8", "-o", tmp_path / "o.jpg", "--model", tiny],
                     capsys, seconds=20), "JPEG limit")
    assert _listing(tmp_path) == ["wide.png"]


def test_images_beyond_the_memory_bound_take_the_tiled_path_with_the_same_pixels(
        monkeypatch):
    import iste.api as api
    from iste.engine import budget

    model = build_model(tiny_config("liif")).eval()
    gib = 1 << 30
    assert not budget.plan_image(model, (300, 300), (600, 600), budget=64 * gib).tiled
    plan = budget.plan_image(model, (15000, 15000), (30000, 30000), budget=64 * gib)
    assert plan.tiled and plan.estimate < 64 * gib  # a 9000^2-class input: tiled, bounded
    assert plan.tile == default_tile(2.0)  # the slide pipeline's tile for the scale
    with pytest.raises(ValueError, match="GiB"):
        budget.plan_image(model, (15000, 15000), (30000, 30000), budget=gib)
    lr = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    whole = api.upscale_to(lr, (140, 180), model)
    monkeypatch.setattr(budget, "plan_image", lambda *a, **k: budget.ImagePlan(True, 0, tile=64))
    tiled = api.upscale_to(lr, (140, 180), model)
    assert np.abs(tiled.astype(int) - whole).max() <= 1


# ---------------------------------------------------------------- configs and checkpoints

def _train_config(tmp_path, text_or_dict) -> Path:
    path = tmp_path / "cfg.yaml"
    if isinstance(text_or_dict, str):
        path.write_text(text_or_dict)
    else:
        path.write_text(json.dumps(text_or_dict))  # JSON is YAML (and fast to write)
    return path


def _with(base: dict, section: str, key: str, value) -> dict:
    cfg = json.loads(json.dumps(base))
    target = cfg["model"][section] if section.endswith("_args") else cfg[section]
    target[key] = value
    return cfg


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    cfg = _train_config(tmp_path, ALIAS_BOMB)
    _refused(run_cli(["train", cfg, "--run-dir", tmp_path / "run"], capsys, seconds=20),
             "alias")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section,key,value", [
    ("head_args", "hidden_dim", 10**9),
    ("head_args", "lfi_heads", 0),
    ("head_args", "lfi_heads", -4),
    ("head_args", "decoder_hidden", [-16]),
    ("head_args", "decoder_hidden", [16] * 100_000),  # a 600 KB file: too large to parse
    ("head_args", "decoder_hidden", [16] * 5_000),
    ("head_args", "texture", "s" * 50_000),  # the message quotes an excerpt
    ("encoder_args", "n_resblocks", 10**6),
    ("encoder_args", "n_feats", -8),
    ("encoder_args", "n_feats", 4000),  # each size allowed, the whole model is not
    ("run", "batch_size", 10**9),
    ("run", "steps", 10**12),
    ("data", "patch", 10**6),
    ("data", "scale_max", 1e9),
])
def test_absurd_config_sizes_end_quickly_with_a_short_message(tmp_path, capsys, section, key,
                                                              value):
    base = tiny_train_dict(tmp_path / "hr")
    if key == "n_feats" and value == 4000:
        base["model"]["encoder_args"]["n_resblocks"] = 200
    cfg = _train_config(tmp_path, _with(base, section, key, value))
    outcome = run_cli(["train", cfg, "--run-dir", tmp_path / "run"], capsys, seconds=20)
    _refused(outcome)
    assert not (tmp_path / "run").exists()


def test_renamed_and_garbage_checkpoints_are_one_line_errors(tmp_path, tiny, capsys):
    fake = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, fake)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(5000))
    renamed = Path(shutil.copy(tiny, tmp_path / "ours.pth"))
    out = tmp_path / "o.png"
    _refused(run_cli(["upscale", png(tmp_path / "in.png"), "-s", "2", "-o", out, "--model",
                      fake], capsys), "model.safetensors")
    assert not out.exists()
    for ckpt in (fake, garbage, renamed):
        _refused(run_cli(["convert-official", ckpt, "-o", tmp_path / "c.safetensors"], capsys),
                 ckpt.name)
    _refused(run_cli(["info", fake], capsys), "model.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


class _WritesMarker:
    """Unpickled, opens (so creates) ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_that_runs_code_is_refused_by_every_command_that_reads_model_files(
        tmp_path, tiny, hr_folder, capsys):
    """A lab's .pth is a pickle: every place iste reads one (convert-official, --model of
    upscale / info / eval, run.init, a run folder's train_state.pt on --resume) must refuse it
    unread, not run it."""
    import pickle

    import iste

    marker = tmp_path / "MARKER"
    torch.save({"model": _WritesMarker(marker)}, tmp_path / "zip.pth")
    torch.save({"model": _WritesMarker(marker)}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False)
    (tmp_path / "pickle.pth").write_bytes(pickle.dumps({"model": _WritesMarker(marker)}))
    with (tmp_path / "check.bin").open("wb") as f:  # the payload works when unpickled
        f.write(pickle.dumps(_WritesMarker(tmp_path / "works")))
    pickle.loads((tmp_path / "check.bin").read_bytes())
    assert (tmp_path / "works").exists()
    img = png(tmp_path / "in.png")
    for name in ("zip.pth", "legacy.pth", "pickle.pth"):
        pth = tmp_path / name
        for argv in (["convert-official", pth, "-o", tmp_path / "c.safetensors"],
                     ["upscale", img, "-s", "2", "-o", tmp_path / "o.png", "--model", pth],
                     ["info", pth],
                     ["eval", "--data", hr_folder, "--methods", f"X={pth}", "--scales", "2",
                      "--out", tmp_path / "report", "--max-images", "1", "--no-figures"]):
            _refused(run_cli(argv, capsys), name)
        cfg = _train_config(tmp_path, tiny_train_dict(hr_folder, init=str(pth)))
        _refused(run_cli(["train", cfg, "--run-dir", tmp_path / "run"], capsys), name)
        with pytest.raises(ValueError, match=name):
            iste.load(pth)
        run = tmp_path / "resumed"
        run.mkdir(exist_ok=True)
        shutil.copy(pth, run / "train_state.pt")
        cfg = _train_config(tmp_path, tiny_train_dict(hr_folder))
        _refused(run_cli(["train", cfg, "--run-dir", run, "--resume"], capsys),
                 "train_state.pt")
    assert not marker.exists()


# ------------------------------------------------------------------- training leftovers

@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hr"), n=2, size=200)


def test_stop_after_zero_or_negative_is_refused(tmp_path, hr_folder, capsys):
    cfg = _train_config(tmp_path, tiny_train_dict(hr_folder))
    for n in ("0", "-1"):
        _refused(run_cli(["train", cfg, "--run-dir", tmp_path / "run", "--stop-after", n],
                         capsys), "--stop-after")
    assert not (tmp_path / "run").exists()


def test_torn_metrics_line_and_killed_first_checkpoint_resume(tmp_path, hr_folder, capsys):
    cfg = _train_config(tmp_path, tiny_train_dict(hr_folder, steps=4, checkpoint_every=2))
    run = tmp_path / "run"
    # a kill inside the first checkpoint: only a temp file of the state exists
    run.mkdir()
    (run / ".train_state.pt.k1ll3d.tmp").write_bytes(b"\x80half a pickle")
    outcome = run_cli(["train", cfg, "--run-dir", run, "--resume", "--stop-after", "2"], capsys)
    assert outcome.code == 0, outcome.err
    assert "nothing to resume" in outcome.err and "starting from step 0" in outcome.err
    assert not list(run.glob(".*.tmp"))
    # a torn last line in metrics.jsonl (a kill mid-write): resume drops it with a warning
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')
    outcome = run_cli(["train", cfg, "--run-dir", run, "--resume"], capsys)
    assert outcome.code == 0, outcome.err
    assert "torn last line" in outcome.err and "metrics.jsonl" in outcome.err
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # a damaged line in the middle is an error that names the file and the line
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    _refused(run_cli(["train", cfg, "--run-dir", run, "--resume", "--steps", "5"], capsys),
             "metrics.jsonl:2")


# ------------------------------------------------------------------------- the file system

def test_a_file_where_a_folder_is_expected(tmp_path, tiny, hr_folder, capsys, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cfg = _train_config(tmp_path, tiny_train_dict(hr_folder))
    _refused(run_cli(["train", cfg, "--run-dir", blocker], capsys), "blocker")
    _refused(run_cli(["train", cfg, "--run-dir", blocker / "sub"], capsys), "blocker")
    img = png(tmp_path / "in.png")
    _refused(run_cli(["upscale", img, "-s", "2", "-o", blocker / "o.png", "--model", tiny],
                     capsys), "blocker")
    # and the reverse: a folder given as an image's output ('out/'), named as one
    (tmp_path / "out").mkdir()
    _refused(run_cli(["upscale", img, "-s", "2", "-o", f"{tmp_path / 'out'}/", "--model", tiny],
                     capsys), f"-o {tmp_path / 'out'}/ ends in /: a folder's name")
    _refused(run_cli(["upscale", img, "-s", "2", "-o", tmp_path / "out", "--model", tiny],
                     capsys), f"output {tmp_path / 'out'} is a directory; give a file name")
    monkeypatch.setenv("ISTE_CACHE_DIR", str(blocker))
    _refused(run_cli(["upscale", "sample:wsidicom-tile", "-s", "2", "-o", tmp_path / "o.png",
                      "--model", tiny], capsys), "blocker")
    assert blocker.read_text() == "a file"


def test_an_output_name_ending_in_a_slash_is_refused_for_one_output(tmp_path, tiny, slide,
                                                                     capsys):
    # pathlib drops a trailing '/': '-o x.png/' (a folder meant) wrote a FILE named x.png
    img = png(tmp_path / "in.png")
    out = tmp_path / "outs"
    for source, name, extra in ((img, "x.png/", []), (slide, "x.tiff/", []),
                                (slide, "x.tiff/", ["--estimate"])):
        _refused(run_cli(["upscale", source, "-s", "2", "-o", f"{out}/{name}", "--model", tiny,
                          *extra], capsys), f"-o {out}/{name} ends in /")
        assert not out.exists()
    # and every option naming one file: --json-summary s.json/ wrote a file s.json
    _refused(run_cli(["upscale", img, "-s", "2", "-o", tmp_path / "o.png", "--model", tiny,
                      "--json-summary", f"{out}/s.json/"], capsys),
             f"argument --json-summary: {out}/s.json/ ends in /")
    assert not out.exists() and not (tmp_path / "o.png").exists()


def _disk_full(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_a_one_line_error_and_leaves_no_temp_file(tmp_path, tiny, slide,
                                                                  capsys, monkeypatch):
    from PIL import Image

    img = png(tmp_path / "in.png")
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", _disk_full)
        _refused(run_cli(["upscale", img, "-s", "2", "-o", tmp_path / "o.png", "--model",
                          tiny], capsys), "no space left")
    assert _listing(tmp_path) == ["in.png"]
    import tifffile

    out = tmp_path / "o.tiff"
    with monkeypatch.context() as m:
        m.setattr(tifffile.TiffWriter, "write", _disk_full)
        _refused(run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny,
                          *SLIDE_ARGS], capsys), "no space left")
    assert not out.exists() and not list(tmp_path.glob(".o.tiff*"))
    # the finished tiles are kept: the rerun (disk freed) resumes them
    outcome = run_cli(["upscale", slide, "-s", "2", "-o", out, "--model", tiny, *SLIDE_ARGS],
                      capsys)
    assert outcome.code == 0 and "0 model" in outcome.out and "resumed" in outcome.out
    assert _listing(tmp_path) == ["in.png", "o.tiff"]
    cfg = _train_config(tmp_path, tiny_train_dict(synthetic_folder(tmp_path / "hr", 2, 200)))
    with monkeypatch.context() as m:  # the state is made in memory, then written atomically
        m.setattr(files.tempfile, "mkstemp", _disk_full)
        _refused(run_cli(["train", cfg, "--run-dir", tmp_path / "run", "--stop-after", "1"],
                         capsys), "no space left")
    assert not list((tmp_path / "run").glob(".*.tmp"))
