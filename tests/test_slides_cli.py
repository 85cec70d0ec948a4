"""``iste upscale`` on slides: the real SVS sample, resume after SIGKILL, bad input, cohorts."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from iste.cli.main import main
from iste.data.samples import sample_path
from iste.engine.render import QueryOptions, super_resolve
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.slides.reader import InMemorySlide
from iste.slides.formats import open_slide
from iste.slides.deblocked import deblocked
from iste.slides.workdir import work_dir_for
from model_zoo import tiny_config
from ranks import two_ranks, worker
from slide_data import he_image, killed_at_tile, pyramid_tiff, write_tiff_pyramid

KEYS = "16"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(build_model(tiny_config("iste")), path)
    return path


def _sr(model_path, rgb, out_hw):
    from iste.models.checkpoint import load_model

    model = load_model(model_path, device="cpu")
    lr = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    sr = super_resolve(model, lr, out_hw, options=QueryOptions(stf_keys=int(KEYS)))
    return (sr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("scale,size,mpp", [("2", (360, 320), 0.2495),
                                            ("2.5", (450, 400), 0.1996)])
def test_sample_svs_region_matches_the_model_output(tmp_path, tiny_model, capsys, scale,
                                                    size, mpp):
    out = tmp_path / "sr.tiff"
    region = (1000, 1500, 180, 160)  # level-0 x, y, width, height: tissue
    assert main(["upscale", "sample:cmu-svs", "-s", scale, "-o", str(out), "--region",
                 ",".join(map(str, region)), "--model", str(tiny_model), "--tile", "128",
                 "--codec", "deflate", "--stf-keys", KEYS]) == 0
    assert "tiles: 0 model" not in capsys.readouterr().out
    with open_slide(sample_path("cmu-svs")) as src:  # a JPEG SVS: deblocked by default
        lr = deblocked(src).read_region(region[:2], 0, region[2:])
    ref = _sr(tiny_model, lr, (size[1], size[0]))
    for backend in ("tiffslide", "openslide"):
        with open_slide(out, backend=backend) as s:
            assert s.dimensions == size
            assert s.level_dimensions == [size, (-(-size[0] // 2), size[1] // 2),
                                          (-(-size[0] // 4), size[1] // 4)]
            assert s.mpp == pytest.approx((mpp, mpp), rel=1e-3)
            got = s.read_region((40, 30), 0, (200, 150))
            assert np.abs(got.astype(int) - ref[30:180, 40:240]).max() <= 1


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, tiny_model,
                                                          tmp_path_factory, capsys):
    slide = pyramid_tiff(tmp_path_factory)
    args = ["upscale", str(slide), "-s", "2", "--region", "0,0,192,128", "--tile", "32",
            "--codec", "deflate", "--no-tissue", "--model", str(tiny_model),
            "--stf-keys", KEYS]
    out = tmp_path / "killed.tiff"
    proc = subprocess.Popen([sys.executable, "-m", "iste", *args, "-o", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tiles = work_dir_for(out) / "tiles"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # finished tiles only: a tile being written is a temporary (.COL.….tmp) beside them,
        # and killed then, it is not resumed (6 names counted, 5 tiles resumed)
        done = sum(n.isdigit() for d in tiles.iterdir() for n in os.listdir(d)) \
            if tiles.is_dir() else 0
        if done >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert not out.exists() and work_dir_for(out).is_dir()
    assert main([*args, "-o", str(out)]) == 0
    report = capsys.readouterr().out
    resumed = int(report.split(" resumed")[0].rsplit(" ", 1)[1])
    assert 6 <= resumed < 96  # 384 x 256 output in 32-px tiles
    assert main([*args, "-o", str(tmp_path / "clean.tiff")]) == 0
    with open_slide(out) as a, open_slide(tmp_path / "clean.tiff") as b:
        assert a.dimensions == (384, 256)
        assert np.array_equal(a.read_region((0, 0), 0, (384, 256)),
                              b.read_region((0, 0), 0, (384, 256)))
    assert not work_dir_for(out).exists()


def test_a_sigterm_whose_exception_is_dropped_stops_the_slide_at_the_next_tile(
        tmp_path, tiny_model, tmp_path_factory, capsys, monkeypatch):
    # a SIGTERM whose exception was raised where it is dropped (a weakref callback, the import
    # lock's: "Exception ignored in ...") let the job run on to the end and exit code 0
    import iste.slides.pipeline as pipeline

    real, calls = pipeline.render_tile, []

    def lost_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            try:
                signal.raise_signal(signal.SIGTERM)
            except KeyboardInterrupt:  # as Python drops it in a callback
                pass
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "render_tile", lost_sigterm)
    args = ["upscale", str(pyramid_tiff(tmp_path_factory)), "-s", "2", "--region",
            "0,0,192,128", "--tile", "32", "--codec", "deflate", "--no-tissue", "--model",
            str(tiny_model), "--stf-keys", KEYS, "-q"]
    out = tmp_path / "stopped.tiff"
    assert main([*args, "-o", str(out)]) == 143
    assert "iste: stopped by SIGTERM" in capsys.readouterr().err
    assert not out.exists() and len(calls) < 96 and work_dir_for(out).is_dir()
    monkeypatch.setattr(pipeline, "render_tile", real)
    assert main([*args, "-o", str(out)]) == 0
    assert main([*args, "-o", str(tmp_path / "clean.tiff")]) == 0
    with open_slide(out) as a, open_slide(tmp_path / "clean.tiff") as b:
        assert np.array_equal(a.read_region((0, 0), 0, (384, 256)),
                              b.read_region((0, 0), 0, (384, 256)))


def _killed_then_rerun(first: list[str], second: list[str], out: Path) -> list[str]:
    """Run ``first`` into ``out``, killed at its 5th tile (exit 130), then ``second`` into
    ``out`` (exit 0); the warnings the second said."""
    with killed_at_tile(5):
        assert main([*first, "-o", str(out)]) == 130
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert main([*second, "-o", str(out)]) == 0
    return [str(w.message) for w in said]


def test_a_rerun_with_other_options_says_it_discards_the_finished_tiles(
        tmp_path, tiny_model, tmp_path_factory, capsys):
    # a killed job rerun with another --stf-keys threw its finished tiles away without a
    # word ("0 resumed"), where the same command would have resumed them
    args = ["upscale", str(pyramid_tiff(tmp_path_factory)), "-s", "2", "--region",
            "0,0,192,128", "--tile", "32", "--codec", "deflate", "--no-tissue", "--model",
            str(tiny_model), "-q"]
    out = tmp_path / "o.tiff"
    said = _killed_then_rerun([*args, "--stf-keys", KEYS], [*args, "--stf-keys", "8"], out)
    assert said == [
        f"4 finished tile(s) in {work_dir_for(out)} were made by a job with other query "
        "options: discarded (the command that made them resumes them)"]
    assert main([*args, "--stf-keys", "8", "-o", str(tmp_path / "clean.tiff")]) == 0
    with open_slide(out) as a, open_slide(tmp_path / "clean.tiff") as b:
        assert np.array_equal(a.read_region((0, 0), 0, (384, 256)),
                              b.read_region((0, 0), 0, (384, 256)))


def test_a_rerun_with_another_decoder_discards_the_finished_tiles(tmp_path, tiny_model,
                                                                  tmp_path_factory):
    # a job stopped under --backend openslide resumed under tiffslide (or after a decoder's
    # upgrade) with the other decoder's tiles: two decoders can put a tile a level or more
    # apart, which the viewer's disk cache already kept apart (SlideReader.decoder)
    args = ["upscale", str(pyramid_tiff(tmp_path_factory)), "-s", "2", "--region",
            "0,0,192,128", "--tile", "32", "--codec", "deflate", "--no-tissue", "--model",
            str(tiny_model), "--stf-keys", KEYS, "-q"]
    out = tmp_path / "o.tiff"
    said = _killed_then_rerun([*args, "--backend", "openslide"],
                              [*args, "--backend", "tiffslide"], out)
    assert said == [
        f"4 finished tile(s) in {work_dir_for(out)} were made by a job with other decoder "
        "(--backend, or its library's version): discarded"]


def test_a_stop_while_the_work_folder_is_removed_leaves_the_output_and_no_tiles(
        tmp_path, tiny_model, tmp_path_factory, capsys, monkeypatch):
    # SIGTERM while the finished job deleted its tiles (seconds on a whole slide) said
    # "finished tiles are kept in OUT.iste-work: rerun the same command to resume", and the
    # rerun refused the output that was there: the half-deleted work folder stayed for good
    import iste.slides.workdir as workdir

    real, out, calls = workdir._remove_at, tmp_path / "o.tiff", []

    def stopped_once(*args):
        if out.exists() and not calls:  # the first deletion once the output is in place
            calls.append(1)
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(workdir, "_remove_at", stopped_once)
    assert main(["upscale", str(pyramid_tiff(tmp_path_factory)), "-s", "2", "--region",
                 "0,0,96,64", "--tile", "32", "--codec", "deflate", "--no-tissue", "--model",
                 str(tiny_model), "--stf-keys", KEYS, "-q", "-o", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "iste: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tiff"]
    with open_slide(out) as s:
        assert s.dimensions == (192, 128)


_KILLED_IN_REMOVAL = """
import os, signal, sys
from pathlib import Path
import iste.slides.workdir as workdir
from iste.cli.main import main
out, real, calls = Path(sys.argv.pop(1)), workdir._remove_at, []
def killed(*args):  # SIGKILL at the 2nd deletion once the output OUT is in place
    calls.append(out.exists())
    if calls.count(True) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(*args)
workdir._remove_at = killed
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("folder_run", [False, True])
def test_a_kill_while_the_work_folder_is_removed_leaves_nothing_a_rerun_mistakes(
        tmp_path, tiny_model, tmp_path_factory, capsys, folder_run):
    # kill -9 as a finished job deleted its work folder left it half-removed beside the
    # output (its manifest gone first): the rerun refused the output as another job's, and
    # the folder stayed for good (a folder run skipped the slide, the folder stayed too)
    slide = pyramid_tiff(tmp_path_factory)
    args = ["upscale", "-s", "2", "--region", "0,0,96,64", "--tile", "32", "--codec",
            "deflate", "--no-tissue", "--model", str(tiny_model), "--stf-keys", KEYS, "-q"]
    if folder_run:
        (tmp_path / "in").mkdir()
        os.link(slide, tmp_path / "in" / "s.tiff")
        src, dst = tmp_path / "in", tmp_path / "out"
        out = dst / "s.tiff"
    else:
        src, dst = slide, tmp_path / "out" / "o.tiff"
        out = dst
    proc = subprocess.run([sys.executable, "-c", _KILLED_IN_REMOVAL, str(out), *args[:1],
                           str(src), *args[1:], "-o", str(dst)], env=ENV, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not work_dir_for(out).exists()  # renamed aside in one step before the deletion
    assert len(list(out.parent.iterdir())) == 2  # the output, and what the kill left aside
    made = out.stat()
    rerun = main([*args[:1], str(src), *args[1:], "-o", str(dst)])
    if folder_run:  # skipped: verified as this run's
        assert rerun == 0 and out.stat().st_mtime_ns == made.st_mtime_ns
    else:
        assert rerun == 2 and f"output {out} exists" in capsys.readouterr().err
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the leftover removed
    with open_slide(out) as s:
        assert s.dimensions == (192, 128)


def test_bad_slide_input_gives_one_line_errors_and_no_output(tmp_path, tiny_model, capsys,
                                                             tmp_path_factory):
    data = pyramid_tiff(tmp_path_factory).read_bytes()
    (tmp_path / "cut.tiff").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.svs").write_text("not a slide")
    out = tmp_path / "out" / "sr.tiff"
    common = ["-o", str(out), "--model", str(tiny_model)]
    cases = [
        (["upscale", str(tmp_path / "cut.tiff"), "-s", "2"], "truncated"),
        (["upscale", str(tmp_path / "notes.svs"), "-s", "2"], "unsupported or corrupt"),
        (["upscale", "sample:cmu-svs", "-s", "2", "--region", "2000,2900,400,400"],
         "outside the slide"),
        (["upscale", "sample:cmu-svs", "--target-mpp", "0.05"], "finer than the model"),
        (["upscale", "sample:cmu-svs", "-s", "2", "--target-mpp", "0.2"], "exactly one"),
        (["upscale", "sample:cmu-svs", "-s", "2", "--region", "1,2,3"], "x,y,width,height"),
    ]
    for argv, message in cases:
        assert main([*argv, *common]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("iste: error:") and message in err[-1], err
    assert not out.exists() and not work_dir_for(out).exists()


def test_a_slide_cut_before_its_directories_is_one_line_naming_what_tifffile_found(
        tmp_path, tiny_model):
    """An SVS keeps its image directories at the end: a copy cut short has none. tifffile
    says why through its logger; that belongs in iste's one error line, not on a line of
    its own before it."""
    cut = tmp_path / "cut.svs"
    cut.write_bytes(sample_path("cmu-svs").read_bytes()[:100_000])
    out = tmp_path / "sr.tiff"
    run = subprocess.run([sys.executable, "-m", "iste", "upscale", str(cut), "-s", "2", "-o",
                          str(out), "--model", str(tiny_model)], env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    err = run.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("iste: error: cannot open slide") and "invalid offset" in err[0]
    assert "100000 bytes" in err[0] and not out.exists()


def test_plain_images_keep_working(tmp_path, tiny_model, capsys):
    from iste.data.images import read_image
    from iste.data.imagewrite import write_image

    write_image(tmp_path / "in.png", he_image()[:20, :30])
    write_image(tmp_path / "in.tif", he_image()[:20, :30])  # an untiled TIFF: plain image
    for name in ("in.png", "in.tif"):
        assert main(["upscale", str(tmp_path / name), "-s", "2", "-o",
                     str(tmp_path / f"out-{name}.png"), "--model", str(tiny_model)]) == 0
        assert read_image(tmp_path / f"out-{name}.png").shape == (40, 60, 3)
    assert main(["upscale", str(tmp_path / "in.png"), "-s", "2", "--level", "1", "-o",
                 str(tmp_path / "x.png"), "--model", str(tiny_model)]) == 2
    assert "whole-slide" in capsys.readouterr().err


def test_an_image_another_process_writes_meanwhile_is_named_as_the_one_kept(
        tmp_path, tiny_model, capsys, monkeypatch):
    # two runs of iste upscale IMAGE -o out.png at once: the one that lost said 'out.png.json
    # exists (written by another process meanwhile)', naming the sidecar, not the image it
    # was asked for
    from iste.cli import upscale_image
    from iste.data.imagewrite import write_image

    write_image(tmp_path / "in.png", he_image()[:20, :30])
    out = tmp_path / "out.png"
    real = upscale_image._upscale_with_progress

    def other_writes_meanwhile(*args, **kwargs):  # after this run's check of -o
        out.write_bytes(b"the other run's image")
        (tmp_path / "out.png.json").write_bytes(b"the other run's provenance")
        return real(*args, **kwargs)

    monkeypatch.setattr(upscale_image, "_upscale_with_progress", other_writes_meanwhile)
    assert main(["upscale", str(tmp_path / "in.png"), "-s", "2", "-o", str(out), "-q",
                 "--model", str(tiny_model), "--stf-keys", KEYS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"iste: error: output {out} exists (written by another process meanwhile); "
                   "pass --overwrite to replace it"]
    assert out.read_bytes() == b"the other run's image"
    assert (tmp_path / "out.png.json").read_bytes() == b"the other run's provenance"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png", "out.png.json"]


def test_a_plain_image_is_written_into_a_drop_folder(tmp_path, tiny_model, capsys,
                                                     monkeypatch):
    """A drop folder on a shared server (mode -wx: files may be made there, not listed): the
    image and its sidecar were computed, then the run ended in '[Errno 13] Permission
    denied' with nothing written, as the folder could not be opened to lock it while the
    pair is written (iste.locks.writing_together). Nothing is held there now."""
    from iste.data.imagewrite import write_image

    write_image(tmp_path / "in.png", he_image()[:20, :30])
    drop = tmp_path / "drop"
    drop.mkdir()
    real_open = os.open

    def as_for_another_user(path, flags, *args, **kwargs):  # root reads any folder
        if Path(os.fsdecode(path)) == drop and flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", as_for_another_user)
    for name in ("listdir", "scandir"):
        def refused(path=".", real=getattr(os, name)):
            if Path(os.fsdecode(path)) == drop:
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real(path)

        monkeypatch.setattr(os, name, refused)
    assert main(["upscale", str(tmp_path / "in.png"), "-s", "2", "-o", str(drop / "out.png"),
                 "--model", str(tiny_model), "--stf-keys", KEYS]) == 0, capsys.readouterr().err
    monkeypatch.undo()
    assert sorted(p.name for p in drop.iterdir()) == ["out.png", "out.png.json"]


def _cohort(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        y, x = rng.integers(0, 300, 2)
        write_tiff_pyramid(folder / f"{name}.tiff", InMemorySlide(he_image()[y:y + 64,
                                                                             x:x + 96], 0.5))
    return folder


def test_cohort_in_one_process_writes_each_slide_and_skips_done_ones(tmp_path, tiny_model,
                                                                     capsys):
    folder = _cohort(tmp_path)
    args = ["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tiff", "b.tiff",
                                                                      "c.tiff"]
    assert "3 written" in capsys.readouterr().out
    (folder / "list.txt").write_text("# two of them\nb.tiff\n\nc.tiff\n")
    assert main([*args[:1], str(folder / "list.txt"), *args[2:]]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out


def test_cohort_under_torchrun_shards_slides_across_ranks(tmp_path, tiny_model):
    folder = _cohort(tmp_path)
    summary = tmp_path / "summary.json"
    run = two_ranks("-m", "iste", "upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"),
                    "--model", str(tiny_model), "--stf-keys", KEYS, "--tile", "64",
                    "--json-summary", str(summary), env=ENV)
    wrote = [line for line in run.stdout.splitlines() if " wrote " in line]
    ranks = sorted(line.split("]")[0] for line in wrote)
    assert ranks == ["[rank 0", "[rank 0", "[rank 1"]  # slides 0, 2 -> rank 0; 1 -> rank 1
    assert "3 written" in run.stdout
    for name in ("a", "b", "c"):
        with open_slide(tmp_path / "out" / f"{name}.tiff") as s:
            assert s.dimensions == (192, 128)
    # each rank writes the summary: every rank's outputs in it (it held the last one's only)
    recorded = json.loads(summary.read_text())
    assert recorded["counts"] == {"written": 3, "skipped": 0, "failed": 0}
    assert sorted(Path(o["output"]).name for o in recorded["outputs"]) == ["a.tiff", "b.tiff",
                                                                         "c.tiff"]


def test_a_cohort_under_torchrun_is_listed_by_rank_0_for_all_ranks(tmp_path, tiny_model):
    """A slide added to the folder between the ranks' listings (rank 1 sees one more, sorted
    first): each rank sharded its own list, so a and c were written by both ranks and b by
    none; rank 0 now lists the cohort and the others take its list."""
    folder = _cohort(tmp_path)
    extra = tmp_path / "late" / "0.tiff"
    extra.parent.mkdir()
    extra.write_bytes((folder / "a.tiff").read_bytes())
    run = two_ranks(worker("ddp_listing_worker.py"), "upscale", str(folder), "-s", "2", "-o",
                    str(tmp_path / "out"), "--model", str(tiny_model), "--stf-keys", KEYS, "--tile",
                    "64", env={**ENV, "ISTE_TEST_EXTRA": str(extra)})
    items = sorted(line for line in run.stdout.splitlines() if " item " in line)
    assert items == ["rank 0 item a.tiff", "rank 0 item c.tiff", "rank 1 item b.tiff"]
    assert "3 written, 0 skipped (exist), 0 failed" in run.stdout


def test_a_rank_that_finishes_its_share_first_waits_for_the_others(tmp_path, tiny_model):
    """Rank 1 done with its slide while rank 0 is still at its first: it waited past torch's
    collective timeout (cut to 2 s here once the group is made; 30 min on gloo, 10 on NCCL),
    stopped, and torchrun ended rank 0 in the middle of its slide."""
    folder = _cohort(tmp_path)
    (folder / "c.tiff").unlink()
    run = two_ranks(worker("ddp_slow_rank_worker.py"), "upscale", str(folder), "-s", "2", "-o",
                    str(tmp_path / "out"), "--model", str(tiny_model), "--stf-keys", KEYS, "--tile",
                    "64", env=ENV)
    assert {"rank 0 exit 0", "rank 1 exit 0"} <= set(run.stdout.splitlines())
    assert "2 written, 0 skipped (exist), 0 failed" in run.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tiff", "b.tiff"]


def test_level_and_target_mpp_and_ome_format(tmp_path, tiny_model, tmp_path_factory, capsys):
    # the fixture is 0.5 mpp at level 0, so level 1 is 1.0 mpp: 0.4 mpp needs x2.5
    out = tmp_path / "sr.ome.tiff"
    assert main(["upscale", str(pyramid_tiff(tmp_path_factory)), "--level", "1",
                 "--target-mpp", "0.4", "--region", "0,0,200,120", "--format", "ome",
                 "--tile", "64", "-o", str(out), "--model", str(tiny_model),
                 "--stf-keys", KEYS]) == 0
    assert "x2.5 from pyramid.tiff" in capsys.readouterr().out
    import tifffile

    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and len(tif.pages[0].subifds) == 2
    with open_slide(out) as s:
        assert s.dimensions == (250, 150) and s.level_count == 3
        assert s.mpp == pytest.approx((0.4, 0.4))


def test_the_recorded_region_is_the_one_covered_and_odd_pixels_are_named(
        tmp_path, tiny_model, tmp_path_factory):
    import openslide
    import tifffile

    out = tmp_path / "lv1.tiff"  # level 1 of the pyramid: the request snaps to its pixels
    assert main(["upscale", str(pyramid_tiff(tmp_path_factory)), "--level", "1", "--region",
                 "101,51,201,151", "-s", "2", "--tile", "64", "-o", str(out), "--model",
                 str(tiny_model), "--stf-keys", KEYS, "-q"]) == 0
    props = openslide.OpenSlide(str(out)).properties
    assert props["aperio.iste.region"] == "[100, 50, 202, 152]"  # what the 202 x 152 px cover
    assert props["aperio.iste.region_requested"] == "[101, 51, 201, 151]"
    assert openslide.OpenSlide(str(out)).dimensions == (202, 152)
    rgb = he_image()[:128, :128]
    aniso = tmp_path / "aniso.tiff"  # 0.5 x 0.25 um pixels
    tifffile.imwrite(aniso, rgb, tile=(64, 64), photometric="rgb", metadata=None,
                     resolution=(1e4 / 0.5, 1e4 / 0.25), resolutionunit="CENTIMETER")
    common = ["-s", "2", "--tile", "64", "--model", str(tiny_model), "--stf-keys", KEYS, "-q"]
    with pytest.warns(UserWarning, match=r"pixels are not square \(0.25 x 0.125 um\)"):
        assert main(["upscale", str(aniso), "-o", str(tmp_path / "a.tiff"), *common]) == 0
    with warnings.catch_warnings(record=True) as seen:
        assert main(["upscale", str(aniso), "-o", str(tmp_path / "a.ome.tiff"), "--format",
                     "ome", *common]) == 0
    assert not [w for w in seen if "not square" in str(w.message)]
    with open_slide(tmp_path / "a.ome.tiff") as s:
        assert s.mpp == pytest.approx((0.25, 0.125))


def test_the_text_provenance_of_a_region_names_its_level_and_region(tmp_path, tiny_model,
                                                                     tmp_path_factory):
    """The generic layout's ImageDescription (the provenance as text, also DICOM's) said
    "x2 of pyramid.tiff" and nothing of the level and region the pixels came from."""
    import tifffile

    out = tmp_path / "region.tiff"
    assert main(["upscale", str(pyramid_tiff(tmp_path_factory)), "--level", "1", "--region",
                 "101,51,201,151", "-s", "2", "--tile", "64", "-o", str(out), "--format",
                 "generic", "--model", str(tiny_model), "--stf-keys", KEYS, "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        text = tif.pages[0].description
    assert text.startswith("iste ") and "x2 of pyramid.tiff" in text
    assert "| level 1 | region 100,50,202,152 | region_requested 101,51,201,151 |" in text


def test_cohort_slide_options_apply_to_its_slides_and_leave_its_images_as_images(
        tmp_path, tiny_model, capsys):
    from iste.data.images import read_image
    from iste.data.imagewrite import write_image

    folder = _cohort(tmp_path)
    write_image(folder / "d.png", he_image()[:20, :30])
    write_image(folder / "e.tif", he_image()[:20, :30])  # untiled: a plain image, options or not
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--codec",
                 "deflate"]) == 0
    assert "5 written" in capsys.readouterr().out
    assert read_image(tmp_path / "out" / "d.png").shape == (40, 60, 3)
    assert read_image(tmp_path / "out" / "e.tif").shape == (40, 60, 3)
    assert not (tmp_path / "out" / "e.tiff").exists()
    with open_slide(tmp_path / "out" / "a.tiff") as s:
        assert s.dimensions == (192, 128)


@pytest.mark.parametrize("bad,says", [
    ([], "give exactly one of -s/--scale and --target-mpp"),
    (["-s", "2", "--tile", "100"], "--tile must be a positive multiple of 16"),
    (["-s", "2", "--quality", "500"], "--quality must be in 1..100"),
    (["-s", "2", "--model", "nothere.safetensors"], "nothere"),
])
def test_a_cohort_mistake_is_one_error_before_anything_is_written(tmp_path, capsys, bad, says):
    from iste.data.imagewrite import write_image

    folder = _cohort(tmp_path)
    write_image(folder / "d.png", he_image()[:20, :30])
    for extra in ([], ["--estimate"]):
        assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), *bad, *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


def test_errors_reach_the_log_file_and_a_cohorts_failures_its_summary(tmp_path, tiny_model,
                                                                       capsys):
    import json

    folder = _cohort(tmp_path)
    (folder / "broken.svs").write_text("not a slide")
    log, summary = tmp_path / "run.log", tmp_path / "run.json"
    args = ["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--log-file", str(log),
            "--json-summary", str(summary)]
    for extra in ([], ["--estimate"]):
        assert main([*args, *extra]) == 1
        assert "broken.svs" in capsys.readouterr().err
        logged = [line for line in log.read_text().splitlines() if "broken.svs" in line]
        assert logged and all("ERROR" in line for line in logged)
        (failure,) = json.loads(summary.read_text())["failures"]
        assert failure["input"].endswith("broken.svs") and failure["error"]
        log.unlink()
    assert main(["upscale", str(tmp_path / "none.tiff"), "-s", "2", "-o",
                 str(tmp_path / "x.tiff"), "--log-file", str(log)]) == 2
    assert "error" in capsys.readouterr().err and "ERROR" in log.read_text()


def test_a_folders_links_to_nothing_fail_by_name_and_the_others_are_written(tmp_path,
                                                                           tiny_model, capsys):
    # a link to a slide that is gone or a link loop was left out of the listing without a
    # word: the run said all was written (exit code 0) and the slide was never made
    folder = _cohort(tmp_path)
    (folder / "gone.svs").symlink_to("moved-away.svs")
    (folder / "loop.tiff").symlink_to("loop.tiff")
    (folder / "gone.png").symlink_to("moved-away.png")
    summary = tmp_path / "run.json"
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "-q",
                 "--json-summary", str(summary)]) == 1
    err = capsys.readouterr().err.splitlines()
    for name in ("gone.svs", "loop.tiff", "gone.png"):
        assert sum(f"{name}: cannot " in line and "no such file" in line for line in err) == 1
    failed = sorted(Path(f["input"]).name for f in json.loads(summary.read_text())["failures"])
    assert failed == ["gone.png", "gone.svs", "loop.tiff"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tiff", "b.tiff",
                                                                      "c.tiff"]
    assert main(["upscale", str(folder / "loop.tiff"), "-s", "2", "-o",
                 str(tmp_path / "x.tiff"), "--model", str(tiny_model)]) == 2


def test_an_interrupted_folder_run_records_what_it_wrote_before(tmp_path, tiny_model,
                                                                capsys):
    # the run record of a folder run stopped by Ctrl-C or SIGTERM said 'interrupted' and
    # nothing of the slides written before it: a script could not tell what was done
    folder = _cohort(tmp_path)
    (folder / "broken.svs").write_text("not a slide")
    summary = tmp_path / "run.json"
    args = ["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--no-tissue", "-q",
            "--json-summary", str(summary)]
    with killed_at_tile(15):  # a.tiff and b.tiff: 6 model tiles each; c.tiff's 3rd stops
        assert main(args) == 128 + signal.SIGINT
    record = json.loads(summary.read_text())
    assert record["error"] == "interrupted" and record["exit_code"] == 130
    assert [Path(o["output"]).name for o in record["outputs"]] == ["a.tiff", "b.tiff"]
    assert [Path(f["input"]).name for f in record["failures"]] == ["broken.svs"]
    assert record["counts"] == {"written": 2, "skipped": 0, "failed": 1}


def test_a_list_names_a_slide_whose_name_holds_a_hash(tmp_path):
    # 'case#12.svs' was read as 'case' and a comment: the list was refused ('case: no such
    # file') and such a slide could not be listed at all
    from iste.slides.cohort import list_slides

    folder = _cohort(tmp_path)
    (folder / "a.tiff").rename(folder / "case#12.tiff")
    (folder / "list.txt").write_text("# slides\ncase#12.tiff  \nb.tiff # the second\n#c.tiff\n")
    assert list_slides(folder / "list.txt") == [folder / "b.tiff", folder / "case#12.tiff"]
    (folder / "list.txt").write_text("case#13.tiff\n")
    with pytest.raises(ValueError, match=r"list.txt:1: case: no such file"):
        list_slides(folder / "list.txt")



def test_a_list_names_a_slide_whose_name_begins_with_a_space(tmp_path):
    # each line was stripped: ' a.tiff' listed a.tiff, another slide, and the one it named
    # was left out without a word (or, with no a.tiff, 'a.tiff: no such file')
    from iste.slides.cohort import list_slides

    folder = _cohort(tmp_path)
    (folder / "a.tiff").rename(folder / " a.tiff")
    (folder / "b.tiff").rename(folder / " b.tiff")
    (folder / "a.tiff").write_bytes((folder / "c.tiff").read_bytes())
    (folder / "list.txt").write_text(" a.tiff\n b.tiff\n c.tiff \n")
    assert list_slides(folder / "list.txt") == [folder / " a.tiff", folder / " b.tiff",
                                                folder / "c.tiff"]


def test_a_list_names_slides_by_the_bytes_of_their_names(tmp_path):
    """The list was read as text in the locale's encoding: a name that is not UTF-8 (a Latin-1
    name from a Windows share), or under an ASCII locale (PYTHONUTF8=0 LC_ALL=C) any name
    beyond ASCII, failed the whole list: "'utf-8' codec can't decode byte 0xe9"."""
    from iste.slides.cohort import list_slides

    folder = _cohort(tmp_path)
    latin1 = folder / os.fsdecode(b"caf\xe9.tiff")
    (folder / "a.tiff").rename(latin1)
    (folder / "b.tiff").rename(folder / "Schnitt_ä.tiff")
    (folder / "list.txt").write_bytes(b"caf\xe9.tiff\nSchnitt_\xc3\xa4.tiff\n")
    assert list_slides(folder / "list.txt") == sorted([latin1, folder / "Schnitt_ä.tiff"])
    code = ("import sys; from iste.slides.cohort import list_slides; "
            "print(len(list_slides(sys.argv[1])))")
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", code, str(folder / "list.txt")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "2"), done.stderr


def test_a_folder_listing_passes_over_a_sub_folder_it_cannot_read(tmp_path, monkeypatch):
    """Another user's folder beside the slides (their tile cache, lost+found) stopped the
    listing, and so iste serve and iste upscale on the folder: '[Errno 13] Permission
    denied: <sub-folder>'. It is passed over with a warning naming it."""
    from iste.slides.cohort import list_slides

    folder = _cohort(tmp_path)
    (folder / "locked").mkdir()
    listing = Path.iterdir

    def iterdir(path):
        if path.name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.warns(UserWarning, match=r"skipping folder .*locked: cannot read it "
                                         r"\(Permission denied\)"):
        assert list_slides(folder) == sorted(p for p in folder.iterdir() if p.is_file())


def test_a_folder_listing_passes_over_a_dicom_series_still_being_written(tmp_path, tiny_model):
    """A folder another run writes DICOM outputs into, read as input meanwhile (iste upscale
    or iste serve on it): the series being written, its instances so far in a temporary
    folder beside the finished outputs (.b.<random>.<writer>.tmpdir), was listed as a slide
    and read half-written; so was one a killed run left. Only finished outputs are listed."""
    from iste.slides import dicom
    from iste.slides.cohort import list_slides

    folder, out = _cohort(tmp_path), tmp_path / "out"
    real_write, seen = dicom.write_dir_atomic, {}

    def listed_while_written(path, write):
        def write_then_list(tmp):
            write(tmp)  # the series complete in its temporary folder, not yet in place
            seen[path.name] = [p.name for p in list_slides(out)] if path.name != "a" else None
        return real_write(path, write_then_list)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dicom, "write_dir_atomic", listed_while_written)
        assert main(["upscale", str(folder), "-s", "2", "-o", str(out), "--format", "dicom",
                     "--model", str(tiny_model), "--stf-keys", KEYS, "--tile", "64",
                     "-q"]) == 0
    assert seen == {"a": None, "b": ["a"], "c": ["a", "b"]}
    (out / "b").rename(out / ".b.k3j4abcd.999999-1-0123abcd.tmpdir")  # as a killed run left it
    assert [p.name for p in list_slides(out)] == ["a", "c"]


@pytest.mark.parametrize("oom", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore text"),
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                 "memory: you tried to allocate 21474836480 bytes.")])
def test_memory_running_out_fails_the_item_in_one_line_and_the_rerun_resumes_it(
        tmp_path, tiny_model, capsys, monkeypatch, oom):
    # memory running out in a slide ended the run in a traceback, the slides after it undone
    import iste.slides.pipeline as pipeline

    folder = _cohort(tmp_path)
    summary = tmp_path / "run.json"
    args = ["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--no-tissue"]
    real, calls, fail_at = pipeline.render_tile, [], [9]  # b.tiff's third tile

    def short_of_memory(*a, **k):
        calls.append(1)
        if len(calls) == fail_at[0]:
            raise oom
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "render_tile", short_of_memory)
    assert main([*args, "-q", "--json-summary", str(summary)]) == 1  # b fails, c is written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.tiff: out of memory (" in err[0], err
    assert "a smaller --tile" in err[0]
    record = json.loads(summary.read_text())
    assert [Path(o["output"]).name for o in record["outputs"]] == ["a.tiff", "c.tiff"]
    assert [Path(f["input"]).name for f in record["failures"]] == ["b.tiff"]
    calls.clear()
    fail_at[0] = 1
    slide = ["upscale", str(folder / "b.tiff"), *args[2:4], "-o", str(tmp_path / "b.tiff"),
             *args[6:]]
    assert main(slide) == 2  # one slide: one line, as any error
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("iste: error: out of memory (") and "Traceback" not in err
    monkeypatch.undo()
    assert main(args) == 0
    assert "from b.tiff; tiles: 4 model, 0 background, 2 resumed" in capsys.readouterr().out


def test_the_installed_torchs_own_allocation_failure_is_called_out_of_memory():
    # torch 2.13 says "DefaultCPUAllocator: can't allocate memory" where older ones said "not
    # enough memory": a plain image too large under `ulimit -v` ended in a traceback
    from iste.runtime import out_of_memory_message

    with pytest.raises(RuntimeError) as failed:
        torch.empty(1 << 60, dtype=torch.uint8)  # more than any address space holds
    message = out_of_memory_message(failed.value)
    assert message is not None and message.startswith("out of memory (DefaultCPUAllocator")
    assert "\n" not in message and "--chunk" in message


def test_an_error_that_is_not_memory_is_not_called_so():
    from iste.runtime import out_of_memory_message

    assert out_of_memory_message(RuntimeError("shape mismatch")) is None
    assert out_of_memory_message(ValueError("not enough memory")) is None


def test_a_list_naming_something_else_names_the_line(tmp_path, tiny_model, capsys):
    folder = _cohort(tmp_path)
    (folder / "sub").mkdir()
    (folder / "run.sh").write_text("echo")
    for name, line in (("sub", 2), ("run.sh", 2)):
        (folder / "list.txt").write_text(f"a.tiff\n{name}\n")
        assert main(["upscale", str(folder / "list.txt"), "-s", "2", "-o",
                     str(tmp_path / "out"), "--model", str(tiny_model)]) == 2
        err = capsys.readouterr().err
        assert f"list.txt:{line}: {name} is not a slide, an image or a DICOM folder" in err
    assert not (tmp_path / "out").exists()


def _failing_tiff_writer(monkeypatch, err: int, *, at: int | None = None) -> list:
    """tifffile.TiffWriter, as the slide writer opens it, raising OSError ``err`` at its
    ``at``-th call (every call where None; the others open the file as before). Returns the
    list that gets an entry per call (clear it to count again)."""
    import iste.slides.writer as writer

    real, calls = writer.tifffile.TiffWriter, []

    def failing(*args, **kwargs):
        calls.append(1)
        if at is None or len(calls) == at:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    monkeypatch.setattr(writer.tifffile, "TiffWriter", failing)
    return calls


def test_a_disk_that_fills_while_the_pyramid_is_written_keeps_the_tiles(
        tmp_path, tiny_model, tmp_path_factory, capsys, monkeypatch):
    import errno

    slide = pyramid_tiff(tmp_path_factory)
    args = ["upscale", str(slide), "-s", "2", "--region", "0,0,64,64", "--tile", "32",
            "--codec", "deflate", "--no-tissue", "--model", str(tiny_model),
            "--stf-keys", KEYS, "-o", str(tmp_path / "out.tiff")]
    _failing_tiff_writer(monkeypatch, errno.ENOSPC)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err.startswith("iste: error: cannot write")
    assert "no space left on device" in err and "rerun the same command to resume" in err
    assert not (tmp_path / "out.tiff").exists()
    monkeypatch.undo()
    assert main(args) == 0
    assert "0 model, 0 background, 16 resumed" in capsys.readouterr().out


def test_a_file_too_large_for_its_file_system_is_not_called_a_full_disk(
        tmp_path, tiny_model, capsys, monkeypatch):
    # EFBIG (a BigTIFF past FAT32's 4 GB, or ulimit -f) said 'file too large' and then 'free
    # space and rerun', which cannot help; a folder run stopped at it as at a full disk,
    # leaving the items that would fit not started
    import errno

    folder = _cohort(tmp_path)
    common = ["-s", "2", "--model", str(tiny_model), "--stf-keys", KEYS, "--tile", "64",
              "--codec", "deflate"]
    calls = _failing_tiff_writer(monkeypatch, errno.EFBIG, at=1)
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), *common]) == 1
    err = capsys.readouterr().err
    assert "file too large for this file system" in err and "ulimit -f" in err
    assert "free space" not in err and "the disk is full" not in err
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".tiff")
    assert len(written) == len(calls) - 1 >= 2  # every other item was made
    calls.clear()
    one = tmp_path / "one.tiff"
    assert main(["upscale", str(folder / "a.tiff"), "-o", str(one), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "file too large" in err and "tiles are kept" in err and "free space" not in err
    monkeypatch.undo()
    assert main(["upscale", str(folder / "a.tiff"), "-o", str(one), *common]) == 0
    assert " resumed" in capsys.readouterr().out and one.exists()


def _without_locks(monkeypatch):
    """flock fails with ENOLCK, as on NFS mounted nolock (iste.locks warns once anew)."""
    import errno

    from iste import locks

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    monkeypatch.setattr(locks, "_warned_no_locks", set())


def test_a_slide_job_on_a_file_system_without_locks_runs_and_says_so(
        tmp_path, tiny_model, tmp_path_factory, monkeypatch):
    # NFS mounted nolock: the job ended in 'work folder ... cannot be used: no locks
    # available; remove it and rerun', and every rerun the same
    _without_locks(monkeypatch)
    out = tmp_path / "out.tiff"
    with pytest.warns(UserWarning, match=r"keeps no file locks \(no locks available\)") as said:
        assert main(["upscale", str(pyramid_tiff(tmp_path_factory)), "-s", "2", "--region",
                     "0,0,64,64", "--model", str(tiny_model), "--stf-keys", KEYS, "-o",
                     str(out)]) == 0
    assert sum("file locks" in str(w.message) for w in said) == 1
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.tiff"]


def test_a_slide_another_folder_run_finishes_where_no_locks_are_kept_is_skipped(
        tmp_path, tiny_model, capsys, monkeypatch):
    # two folder runs on a file system without locks (NFS mounted nolock) share a slide's
    # work folder unnoticed; the one that finished it removed the folder under the other,
    # whose item failed ('work folder ... was removed while the job ran; rerun'), exit 1,
    # though its output was there, complete and the same. It is skipped once verified
    import iste.slides.pipeline as pipeline

    _without_locks(monkeypatch)
    folder, out = _cohort(tmp_path), tmp_path / "out"
    (folder / "list.txt").write_text("a.tiff\n")
    args = ["upscale", str(folder / "list.txt"), "-s", "2", "-o", str(out), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--codec", "deflate"]
    real, calls, other = pipeline.render_tile, [], []

    def other_run_finishes(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # this job has a tile: the other run does the whole slide now
            other.append(main(args))
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "render_tile", other_run_finishes)
    summary = tmp_path / "run.json"
    with pytest.warns(UserWarning, match=r"keeps no file locks \(no locks available\)"):
        assert main([*args, "--json-summary", str(summary)]) == 0
    assert other == [0]
    assert json.loads(summary.read_text())["counts"] == {"written": 0, "skipped": 1,
                                                         "failed": 0}
    assert "a.tiff exists (another process finished it)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a.tiff"]


def test_a_full_disk_names_only_what_there_is(tmp_path, tiny_model, capsys, monkeypatch):
    # the last item's full disk said 'stopping with 0 item(s) not started', a job stopped
    # before its first tile said its finished tiles were kept, and a run of one process
    # began its lines with '[rank 0]'
    import errno

    import iste.slides.workdir as workdir
    from iste.refusals import DiskFullError

    folder = _cohort(tmp_path)
    args = ["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--codec", "deflate"]
    _failing_tiff_writer(monkeypatch, errno.ENOSPC, at=3)
    assert main(args) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[-1] == ("iste: error: the disk is full: free space and rerun the same command "
                       "(written outputs are skipped)")
    assert "[rank" not in captured.out + captured.err
    monkeypatch.undo()

    def full(dir_fd, name, data, **kwargs):
        raise DiskFullError(f"cannot write tile {name}: no space left on device")

    monkeypatch.setattr(workdir, "write_bytes_at", full)
    slide = folder / "a.tiff"
    assert main(["upscale", str(slide), "-s", "2", "-o", str(tmp_path / "one.tiff"),
                 "--model", str(tiny_model), "--stf-keys", KEYS, "--tile", "64"]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "tiles are kept" not in err


@pytest.mark.parametrize("at", ["manifest", "first tile"])
def test_a_disk_full_before_the_first_tile_leaves_no_work_folder(tmp_path, tiny_model, capsys,
                                                                 monkeypatch, at):
    # the work folder stayed for good (its manifest and empty rows, or its lock file alone),
    # though it held nothing a rerun would resume and no message named it
    import errno

    import iste.slides.workdir as workdir
    from iste.refusals import refusal

    real, calls = workdir.write_bytes_at, []

    def full_at(dir_fd, name, data, **kwargs):  # the disk fills at the manifest or tile 0
        calls.append(name)
        if len(calls) == (1 if at == "manifest" else 2):
            raise refusal(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), f"cannot write {name}")
        return real(dir_fd, name, data, **kwargs)

    monkeypatch.setattr(workdir, "write_bytes_at", full_at)
    out = tmp_path / "out" / "a.tiff"
    argv = ["upscale", str(_cohort(tmp_path) / "a.tiff"), "-s", "2", "-o", str(out),
            "--model", str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "tiles are kept" not in err, err
    assert calls[0] == "manifest.json" and not work_dir_for(out).exists()
    assert not out.parent.exists()  # the output folder it made is undone, as on any failure
    monkeypatch.undo()
    assert main(argv) == 0 and not work_dir_for(out).exists()


def test_a_full_disk_stops_a_cohort_and_the_rerun_resumes_it(tmp_path, tiny_model, capsys,
                                                             monkeypatch):
    # every slide after the disk filled was opened, computed and failed in turn (a plain
    # image in full before its write failed), one error each, for the rest of the cohort
    import errno

    folder = _cohort(tmp_path)
    args = ["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--model",
            str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "--codec", "deflate"]
    tried = _failing_tiff_writer(monkeypatch, errno.ENOSPC)
    summary = tmp_path / "run.json"
    assert main([*args, "--json-summary", str(summary)]) == 1
    err = capsys.readouterr().err
    assert len(tried) == 1 and "no space left on device" in err
    assert "the disk is full: stopping with 2 item(s) not started" in err
    record = json.loads(summary.read_text())  # every failure counted is named (one was)
    assert record["counts"]["failed"] == 3
    assert [(Path(f["input"]).name, f["error"]) for f in record["failures"][1:]] == [
        ("b.tiff", "not started: the disk is full"), ("c.tiff", "not started: the disk is full")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tiff.iste-work"]
    monkeypatch.undo()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 written" in out and "from a.tiff; tiles: 0 model" in out  # a's tiles resumed


def _read_only(monkeypatch, folder: Path) -> None:
    """Nothing can be made inside ``folder`` from now on, as on a read-only file system (what
    exists there is still EEXIST, as Linux says it first)."""
    import errno

    real_open, real_mkdir = os.open, os.mkdir

    def refused(path, exists: bool):
        if exists:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.isabs(path) \
            and Path(path).parent == folder

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            refused(path, os.path.lexists(path) and flags & os.O_EXCL)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            refused(path, os.path.lexists(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_folder_run_onto_a_read_only_folder_is_one_error_before_any_item(
        tmp_path, tiny_model, capsys, monkeypatch):
    # each slide failed in turn ('cannot create the work folder out/a.tiff.iste-work:
    # read-only file system', three errors, exit 1), each after its slide was opened
    folder, out = _cohort(tmp_path), tmp_path / "out"
    out.mkdir()
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS, "--tile", "64", "--codec", "deflate", "-q"]
    with monkeypatch.context() as patched:
        _read_only(patched, out)
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"iste: error: cannot write {out / 'a.tiff'}: read-only file system; ")
    assert err.endswith(f"the output folder {out} takes none of the 3 output(s) still to "
                        "write (nothing was done)") and "\n" not in err
    assert list(out.iterdir()) == []
    assert main(args) == 0  # written; a read-only folder of finished outputs is skipped
    with monkeypatch.context() as patched:
        _read_only(patched, out)
        assert main(args) == 0
    assert capsys.readouterr().err == ""


def test_a_slide_another_folder_run_finishes_after_the_check_is_skipped(tmp_path, tiny_model,
                                                                       capsys, monkeypatch):
    # two runs into one folder: the other finished the slide between this run's check (no
    # output yet) and its job's lock; the job refused the output it found ('exists (another
    # job finished it while this one started)'), a failure of the run (exit 1)
    from iste.cli import upscale_slides

    folder = _cohort(tmp_path)
    args = ["upscale", str(folder / "list.txt"), "-s", "2", "--model", str(tiny_model),
            "--stf-keys", KEYS, "--tile", "64", "--codec", "deflate", "-q"]
    (folder / "list.txt").write_text("a.tiff\n")
    assert main([*args, "-o", str(tmp_path / "other")]) == 0  # the other run's output
    real, out = upscale_slides.skipped_because, tmp_path / "out"

    def finished_meanwhile(args, item, model, marks):
        why = real(args, item, model, marks)
        if why is None and not (out / "a.tiff").exists():  # checked: not there yet ...
            (tmp_path / "other" / "a.tiff").rename(out / "a.tiff")  # ... now it is
        return why

    monkeypatch.setattr(upscale_slides, "skipped_because", finished_meanwhile)
    summary = tmp_path / "run.json"
    assert main([*args, "-o", str(out), "--json-summary", str(summary)]) == 0
    assert json.loads(summary.read_text())["counts"] == {"written": 0, "skipped": 1,
                                                         "failed": 0}
    assert sorted(p.name for p in out.iterdir()) == ["a.tiff"]


@pytest.mark.parametrize("other_scale,code,says", [
    ("3", 1, "a.png exists, but it was made with scale 3 (this run: 2): --overwrite replaces "
             "it"),
    ("2", 0, "skip a.png: {out}/a.png exists (another process finished it)")])
def test_an_image_another_folder_run_writes_after_the_check_is_kept(
        tmp_path, tiny_model, capsys, monkeypatch, other_scale, code, says):
    # two folder runs into one folder, here with -s 2 and -s 3: each found a.png missing,
    # both wrote it, and the later one silently replaced the other's (both said 'written',
    # exit 0; the folder held the x3 images of a run that reported x2). The other run's
    # output is kept now: skipped once verified as this run's, else the item fails
    from iste.cli import upscale_slides
    from iste.data.imagewrite import write_image

    folder, out, other = tmp_path / "in", tmp_path / "out", tmp_path / "other"
    folder.mkdir()
    write_image(folder / "a.png", he_image()[:40, :48])
    args = ["upscale", str(folder), "--model", str(tiny_model), "--stf-keys", KEYS]
    assert main([*args, "-s", other_scale, "-o", str(other)]) == 0  # the other run's output
    made = {name: (other / name).read_bytes() for name in ("a.png", "a.png.json")}
    real = upscale_slides.skipped_because

    def written_meanwhile(args, item, model, marks):
        why = real(args, item, model, marks)
        if why is None and not (out / "a.png").exists():  # checked: not there yet ...
            for name in made:  # ... now it is, as the other run writes it: the pair at once
                (other / name).rename(out / name)
        return why

    monkeypatch.setattr(upscale_slides, "skipped_because", written_meanwhile)
    capsys.readouterr()
    assert main([*args, "-s", "2", "-o", str(out)]) == code
    assert says.format(out=out) in capsys.readouterr()[code]
    assert {name: (out / name).read_bytes() for name in made} == made
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a.png.json"]


def test_outputs_whose_names_differ_only_by_case_are_refused(tmp_path):
    # a.svs and A.svs gave a.tiff and A.tiff: one file on a disk that ignores case (exFAT, SMB,
    # macOS), where the second slide's output was "skipped: exists", the first's kept (exit 0)
    from iste.slides.cohort import output_paths

    slides = [tmp_path / "in" / "a.svs", tmp_path / "in" / "A.svs", tmp_path / "in" / "b.svs"]
    with pytest.raises(ValueError, match=r"a\.svs and .*A\.svs would both be written to "
                                         r".*a\.tiff and .*A\.tiff, one file where case is "
                                         "ignored"):
        output_paths(slides, tmp_path / "out", ".tiff")
    with pytest.raises(ValueError, match=r"would both be written to \S*a\.tiff$"):
        output_paths(slides[:1] * 2, tmp_path / "out", ".tiff")
    assert [p.name for p in output_paths([slides[0], slides[2]], tmp_path / "out",
                                         ".tiff")] == ["a.tiff", "b.tiff"]


def test_outputs_whose_names_differ_only_by_the_spelling_of_accents_are_refused(tmp_path):
    # Präparat.svs copied from Windows (ä one character) and from a Mac (a and a combining
    # accent) are two files on Linux, one name on macOS: the second output was 'skipped:
    # exists' there; with the case too (PRÄPARAT.svs)
    from iste.slides.cohort import output_paths

    composed, decomposed = "Pr\u00e4parat", "Pra\u0308parat"
    for other in (decomposed, decomposed.upper()):
        slides = [tmp_path / "in" / f"{composed}.svs", tmp_path / "in" / f"{other}.svs"]
        with pytest.raises(ValueError, match="one file where case and the spelling of "
                                             r"accents are \(macOS: .*\) ignored"):
            output_paths(slides, tmp_path / "out", ".tiff")


def test_a_rerun_skips_only_the_outputs_it_would_have_written(tmp_path, tiny_model, capsys):
    """An output already there was skipped for being there: a rerun with another -s, another
    model or a damaged copy in its place reported it 'skipped (exist)', exit 0. It is now
    skipped when it opens whole and records this run's source, scale, model, level and
    region; otherwise that item fails, naming why (--overwrite replaces it)."""
    folder = _cohort(tmp_path)
    out = tmp_path / "out"
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS, "--tile", "64"]
    assert main(args) == 0
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0  # the same request: every output is its own
    assert "0 written, 3 skipped (exist), 0 failed" in capsys.readouterr().out
    assert main([*args[:3], "3", *args[4:]]) == 1
    err = capsys.readouterr().err
    assert err.count("exists, but it was made with scale 2 (this run: 3): --overwrite "
                     "replaces it") == 3
    assert main([*args[:3], "3", *args[4:], "--estimate"]) == 1  # as the run would fail them
    assert capsys.readouterr().err.count("made with scale 2 (this run: 3)") == 3
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_model(build_model(tiny_config("iste")), other)
    assert main([*args[:7], str(other), *args[8:]]) == 1
    assert "it was made with model_sha " in capsys.readouterr().err
    assert main([*args, "--region", "0,0,32,32"]) == 1
    assert "region none (this run: 0,0,32,32)" in capsys.readouterr().err
    assert main([*args, "--no-tissue"]) == 1  # glass the model's too: other pixels
    assert capsys.readouterr().err.count("made with tissue smoothstep 64 output px from the "
                                         "mask (this run: none)") == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    data = (out / "b.tiff").read_bytes()
    (out / "b.tiff").write_bytes(data[:len(data) // 2])  # a copy cut short
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "b.tiff exists, but it is not a complete iste output (" in err
    assert "a.tiff" not in err and "c.tiff" not in err
    assert main([*args[:3], "3", *args[4:], "--overwrite"]) == 0


def test_a_rerun_fails_the_outputs_of_inputs_replaced_under_their_names(tmp_path, tiny_model,
                                                                        capsys, monkeypatch):
    """An input replaced by another file under the same name (another scan copied over it,
    here with its old modification time restored, as ``cp -p`` or a restore from a backup
    leaves it) kept its old output: a folder rerun skipped it as its own ('skipped (exist)',
    exit 0), the output showing the pixels of a file no longer there. The source's sha256
    is now compared where the input changed after the output was written; a rerun over
    unchanged inputs hashes none of them."""
    import iste.digest
    from iste.data.imagewrite import write_image

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_image(folder / "a.png", he_image()[:40, :48])
    write_tiff_pyramid(folder / "b.tiff", InMemorySlide(he_image()[:64, :96], 0.5))
    write_tiff_pyramid(folder / "c.tiff", InMemorySlide(he_image()[64:128, :96], 0.5))
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS, "--tile", "64"]
    assert main(args) == 0
    hashed, real = [], iste.digest.sha256_file
    monkeypatch.setattr(iste.digest, "sha256_file", lambda p: hashed.append(Path(p).parent)
                        or real(p))
    capsys.readouterr()
    assert main(args) == 0
    assert "0 written, 3 skipped (exist), 0 failed" in capsys.readouterr().out
    assert folder not in hashed  # (the plain image's output is: its sidecar's image_sha256)
    os.utime(out / "c.tiff", ns=(0, 0))  # c.tiff's output older than its input: hashed, kept
    old = (folder / "b.tiff").stat()
    write_image(folder / "a.png", he_image()[40:80, 48:96])
    write_tiff_pyramid(folder / "b.tiff", InMemorySlide(he_image()[64:128, 96:192], 0.5))
    os.utime(folder / "b.tiff", ns=(old.st_atime_ns, old.st_mtime_ns))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 1
    err = capsys.readouterr().err
    for name in ("a.png", "b.tiff"):
        assert f"{name} exists, but it was made with source_sha256 " in err
        assert f": {name} changed after the output was written): --overwrite replaces it" in err
    assert "c.tiff" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert main([*args, "--estimate"]) == 1  # as the run would fail them
    assert capsys.readouterr().err.count("changed after the output was written") == 2
    assert main([*args, "--overwrite"]) == 0
    assert main(args) == 0
    assert "0 written, 3 skipped (exist), 0 failed" in capsys.readouterr().out


def test_a_rerun_fails_a_dicom_output_that_lost_a_level(tmp_path, tiny_model, capsys):
    """A DICOM output is a folder of files, one per level: one of them lost (a copy cut
    short, a file removed) left a folder that still opened, with fewer levels, and a folder
    rerun skipped it as its own. Its levels must now be a whole pyramid of the output's size
    (as any --tile lays it out: the tile is not compared)."""
    import pydicom

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_tiff_pyramid(folder / "b.tiff", InMemorySlide(he_image()[:400, :500], 0.5))
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS, "--no-tissue", "--format", "dicom", "-q"]
    assert main(args) == 0
    assert main([*args, "--tile", "256"]) == 0  # whole: skipped, whatever the tile
    capsys.readouterr()
    files = sorted((out / "b").glob("*.dcm"))
    widths = {f: pydicom.dcmread(f, stop_before_pixels=True).TotalPixelMatrixColumns
              for f in files}
    assert sorted(widths.values()) == [500, 1000]
    min(files, key=widths.get).unlink()  # level 1
    assert main(args) == 1
    assert (f"{out / 'b'} exists, but it is not a complete iste output (its levels are "
            "1000 x 800, not a pyramid of 1000 x 800 as iste writes it): --overwrite replaces "
            "it") in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(args) == 0


def test_a_rerun_over_plain_images_checks_their_provenance(tmp_path, tiny_model, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    from iste.data.images import read_image
    from iste.data.imagewrite import write_image

    write_image(folder / "a.png", he_image()[:40, :48])
    out = tmp_path / "out"
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS]
    assert main(args) == 0 and main(args) == 0
    assert "skip a.png" in capsys.readouterr().out
    assert main([*args[:3], "2.5", *args[4:]]) == 1
    assert "made with scale 2 (this run: 2.5)" in capsys.readouterr().err
    data = (out / "a.png").read_bytes()  # an image cut short under an intact sidecar: skipped
    pixels = read_image(out / "a.png")
    (out / "a.png").write_bytes(data[:len(data) // 2])
    assert main(args) == 1
    assert ("a.png exists, but its image is not the one its provenance sidecar was written "
            "with: --overwrite replaces it") in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0  # the same pixels (the run time may differ)
    np.testing.assert_array_equal(read_image(out / "a.png"), pixels)
    sidecar = json.loads((out / "a.png.json").read_text())
    del sidecar["image_sha256"]  # an older iste's sidecar: its image is taken as it is
    (out / "a.png.json").write_text(json.dumps(sidecar))
    assert main(args) == 0
    assert "skip a.png" in capsys.readouterr().out
    (out / "a.png.json").unlink()  # an image whose provenance is gone is not trusted
    assert main(args) == 1
    assert "not a complete iste output (no provenance sidecar a.png.json)" in \
        capsys.readouterr().err


def test_a_rerun_over_plain_tiff_images_reads_their_sidecars(tmp_path, tiny_model, capsys):
    # a plain image written as .tif records its provenance in a sidecar, as a PNG does; read
    # as a slide's TIFF (XMP), the rerun failed each such item and iste info refused it
    folder = tmp_path / "in"
    folder.mkdir()
    from iste.data.imagewrite import write_image

    write_image(folder / "b.tif", he_image()[:40, :48])
    out = tmp_path / "out"
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS]
    assert main(args) == 0 and (out / "b.tif.json").is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert "skip b.tif" in capsys.readouterr().out
    assert main(["info", str(out / "b.tif")]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"]["scale"] == 2
    (out / "b.tif.json").unlink()
    assert main(args) == 1
    assert "not a complete iste output (no XMP provenance (TIFF tag 700) nor provenance " \
        "sidecar b.tif.json)" in capsys.readouterr().err


def test_a_folder_run_whose_reader_leaves_does_the_whole_folder(tmp_path, tiny_model):
    """`iste upscale DIR 2>&1 | head -1`: the first line written after the reader left raised
    BrokenPipeError, which failed the slide just written and ended the run with exit code 0,
    the rest of the folder not done. The lines are dropped now and the run goes on."""
    folder = _cohort(tmp_path)
    out, summary = tmp_path / "out", tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, "-m", "iste", "upscale", str(folder), "-s", "2",
                             "-o", str(out), "--model", str(tiny_model), "--stf-keys", KEYS,
                             "--tile", "64", "--json-summary", str(summary)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.readline()  # the first progress line; then the reader leaves
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.tiff", "b.tiff", "c.tiff"]
    assert json.loads(summary.read_text())["counts"] == {"written": 3, "skipped": 0,
                                                         "failed": 0}


def test_a_slide_another_process_is_writing_is_done_after_the_others(tmp_path, tiny_model):
    """Two runs into one folder: a slide whose work folder another process held failed
    ('another process is working on ...'), so both runs ended with exit code 1 for each
    other's slides. It is now taken up again once the rest is done, after the other job
    ends: skipped if that job wrote it (verified), resumed if it stopped."""
    from iste.slides.workdir import WorkDir

    folder = _cohort(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with WorkDir(work_dir_for(out / "b.tiff"), {"another": "job"}):
        proc = subprocess.Popen([sys.executable, "-m", "iste", "upscale", str(folder), "-s",
                                 "2", "-o", str(out), "--model", str(tiny_model), "--stf-keys",
                                 KEYS, "--tile", "64"], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        said = []
        for line in proc.stdout:
            said.append(line.strip())
            if "waiting for the other process writing b.tiff" in line:
                break
        assert [s.split(" (")[0] for s in said[:3]] == [
            f"wrote {out / 'a.tiff'}",
            "b.tiff: another process is writing b.tiff; checked again once the "
            "others are done", f"wrote {out / 'c.tiff'}"]
        assert not (out / "b.tiff").exists()
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert f"wrote {out / 'b.tiff'}" in rest and "3 written, 0 skipped (exist), 0 failed" in rest


def test_an_interrupted_overwrite_run_resumes_without_redoing_its_outputs(tmp_path, tiny_model,
                                                                          capsys, monkeypatch):
    """'Rerun the same command to resume': an --overwrite run stopped halfway made its
    finished slides again on the rerun. What it wrote is kept in the output folder
    (.iste-overwrite/) until a run finishes: the rerun keeps those outputs (verified) and
    redoes the older ones; once finished, --overwrite redoes every slide again."""
    from iste.cli import upscale_slides

    folder = _cohort(tmp_path)
    out = tmp_path / "out"
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS, "--tile", "64", "--overwrite"]
    assert main(args[:-1]) == 0  # the outputs an --overwrite run replaces
    real, calls = upscale_slides._upscale_one, []

    def stopped_at_the_second(*a, **k):
        calls.append(a[1].name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(upscale_slides, "_upscale_one", stopped_at_the_second)
    assert main(args) == 130
    assert [json.loads(p.read_text()) for p in (out / ".iste-overwrite").iterdir()] == [
        {"done": ["a.tiff"]}]
    monkeypatch.setattr(upscale_slides, "_upscale_one", real)
    capsys.readouterr()
    assert main([*args, "--estimate"]) == 0  # plans what the rerun will do
    said = capsys.readouterr().out
    assert "skip a.tiff: " in said and "2 slide(s) estimated, 1 skipped (exist)" in said
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "skip a.tiff: " in said and "(written by an --overwrite run of it that stopped)" \
        in said and "1 skipped (exist)" in said and "2 written" in said
    assert not (out / ".iste-overwrite").exists()
    assert main(args) == 0
    assert "3 written, 0 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["tiff", "dicom", "png"])
def test_info_shows_what_made_an_output(tmp_path, tiny_model, capsys, fmt):
    """`iste info OUTPUT` reads back what an output records (the TIFF's XMP, the DICOM
    Image Comments, the image's sidecar), numbers as numbers; it only described
    checkpoints, and any other file failed as 'not a safetensors checkpoint'."""
    slide = tmp_path / "s.tiff"
    write_tiff_pyramid(slide, InMemorySlide(he_image()[:64, :96], 0.5))
    out = tmp_path / ("out" if fmt == "dicom" else f"out.{fmt}")
    assert main(["upscale", str(slide), "-s", "2.5", "--region", "8,4,40,32", "-o", str(out),
                 "--model", str(tiny_model), "--stf-keys", KEYS, "--tile", "64", "-q",
                 *(["--format", "dicom"] if fmt == "dicom" else [])]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    made = shown["provenance"]
    assert shown["output"] == str(out) and made["source"] == "s.tiff"
    assert (made["scale"], made["level"], made["region"], made["stf_keys"]) == (
        2.5, 0, [8, 4, 40, 32], int(KEYS))
    assert len(made["source_sha256"]) == 64 and isinstance(made["level"], int)
    assert made["model"] == "tiny.safetensors" and len(made["model_sha"]) == 16
    if fmt == "dicom":  # one file of it says the same
        assert main(["info", str(next(out.glob("*.dcm")))]) == 0
        assert json.loads(capsys.readouterr().out)["provenance"] == made
    assert main(["info", str(slide)]) == 2
    assert "s.tiff is neither a checkpoint (.safetensors) nor an output of iste (no XMP " \
        "provenance" in capsys.readouterr().err


def _folder_of_one(tmp_path, name: str, model, layout: str) -> tuple[Path, list[str]]:
    """A folder holding one small slide named ``name``: (the output folder, the arguments of
    a folder run of it x2 into that folder in ``layout``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_tiff_pyramid(folder / name, InMemorySlide(he_image()[:64, :96], 0.5))
    out = tmp_path / "out"
    return out, ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(model),
                 "--stf-keys", KEYS, "--tile", "64", "--format", layout, "-q"]


def test_a_name_with_control_characters_leaves_every_metadata_form_readable(tmp_path,
                                                                           tiny_model):
    """A source named with control characters ('a\\x01\\nb.tiff') put them raw into the
    provenance: the OME-XML and XMP were no XML any reader could parse (XML 1.0 cannot hold
    \\x01), so Bio-Formats lost the metadata, a rerun found no provenance to verify, and the
    text line broke in two. Now they are escaped in every form, read back alike."""
    import xml.etree.ElementTree as ET

    import tifffile

    from iste.provenance import recorded

    out, args = _folder_of_one(tmp_path, "a\x01\nb.tiff", tiny_model, "ome")
    assert main(args) == 0
    made = out / "a\x01\nb.tiff"
    with tifffile.TiffFile(made) as tif:
        ome = ET.fromstring(tif.pages.first.description)  # parses
        text = ome.find("{*}Image/{*}Description").text
    assert "of a\\x01\\nb.tiff (sha256" in text and "\n" not in text
    assert recorded(made)["source"] == "a\\x01\\nb.tiff"  # the XMP parses
    assert main(args) == 0  # the rerun verifies and skips it


def test_a_rerun_with_other_deblocking_makes_its_outputs_anew(tmp_path, tiny_model, capsys):
    """A JPEG image deblocked or not gives other pixels: an output of the other kind is not
    this run's (input_pixels is compared; a slide's is compared the same way)."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(he_image()[:40, :48]).save(folder / "a.jpg", quality=70)
    out = tmp_path / "out"
    args = ["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_model),
            "--stf-keys", KEYS]
    assert main(args) == 0 and main(args) == 0
    assert main([*args, "--deblock", "off"]) == 1
    assert "it was made with input_pixels deblocked" in capsys.readouterr().err


def test_a_folder_rerun_skips_the_dicom_output_of_a_source_named_in_other_than_ascii(
        tmp_path, tiny_model):
    """A DICOM output records its provenance as text in ASCII, the source Präparat.tiff as
    'Pr\\xe4parat.tiff': a folder rerun compared that with the name and failed the item
    ('it was made with source Pr\\xe4parat.tiff (this run: Präparat.tiff)')."""
    out, args = _folder_of_one(tmp_path, "Pr\u00e4parat.tiff", tiny_model, "dicom")
    assert main(args) == 0
    made = {p: p.stat().st_mtime_ns for p in (out / "Pr\u00e4parat").glob("*.dcm")}
    assert made and main(args) == 0  # the rerun verifies and skips it
    assert made == {p: p.stat().st_mtime_ns for p in (out / "Pr\u00e4parat").glob("*.dcm")}


def test_a_dicom_outputs_text_reads_back_as_the_sidecar_holds_it(tmp_path, tiny_model):
    """The DICOM text line writes x2 and an unknown source digest as '2' and 'unknown':
    read back as 2.0 and None, as the sidecar and XMP give them (iste info showed 2 and
    'unknown' for a DICOM output, 2.0 and null for a TIFF one)."""
    import pydicom

    from iste.engine.render import QueryOptions
    from iste.models.checkpoint import load_model
    from iste.provenance import Provenance, recorded

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    made = Provenance.for_run(load_model(tiny_model), model_name="m.safetensors", scale=2,
                              options=QueryOptions(), source=tmp_path / "gone.tiff")
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.77.1.6", generate_uid()
    ds.ImageComments = made.to_text()
    pydicom.dcmwrite(tmp_path / "x.dcm", ds, enforce_file_format=True)
    found = recorded(tmp_path / "x.dcm")
    assert repr(found["scale"]) == "2.0" and found["source_sha256"] is None
    assert found["model_sha"] == made.model_sha


def test_a_tiff_outputs_xmp_leaves_out_fields_that_hold_none(tmp_path, tiny_model):
    """A field with no value (no tissue rule, an unknown source digest) is left out of the
    XMP, as of the text line: XML text has no null, and iste info showed the string "None"
    for a TIFF output where a PNG's sidecar holds null."""
    import tifffile

    from iste.models.checkpoint import load_model
    from iste.provenance import Provenance, recorded

    made = Provenance.for_run(load_model(tiny_model), model_name="m.safetensors", scale=2,
                              options=QueryOptions(), source=tmp_path / "gone.tiff",
                              tissue=None, level=0)
    out = tmp_path / "o.tiff"
    tifffile.imwrite(out, np.zeros((8, 8, 3), np.uint8),
                     extratags=[(700, 1, None, made.to_xmp(), True)])
    found = recorded(out)
    assert "None" not in found.values()
    assert "tissue" not in found and "source_sha256" not in found
    assert found["level"] == 0 and found["model_sha"] == made.model_sha


def test_the_none_an_older_outputs_xmp_holds_reads_back_as_no_value(tmp_path, capsys):
    """Outputs written before session 37 hold the text "None" in their XMP where a field had
    no value (no tissue rule, an unknown source digest, no region): iste info, a rerun's
    check and anything else reading our provenance back took it for a string."""
    import tifffile

    from iste.provenance import Provenance, recorded

    made = Provenance(model="m", model_sha="0" * 16, architecture="a", scale=2.0,
                      precision="fp32", stf_keys=None, source="s.svs", source_sha256=None,
                      extra={"level": 0})
    old = {"tissue": "None", "source_sha256": "None", "region": "None"}
    fields = "".join(f"<iste:{k}>{v}</iste:{k}>" for k, v in old.items())
    xmp = made.to_xmp().replace(b"</rdf:Description>", fields.encode() + b"</rdf:Description>")
    out = tmp_path / "old.tiff"
    tifffile.imwrite(out, np.zeros((8, 8, 3), np.uint8), extratags=[(700, 1, None, xmp, True)])
    found = recorded(out)
    assert {k: found[k] for k in old} == dict.fromkeys(old)
    assert found["level"] == 0 and found["source"] == "s.svs"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)["provenance"]
    assert {k: shown[k] for k in old} == dict.fromkeys(old)
