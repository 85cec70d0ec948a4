"""``iste upscale ... --estimate``: a slide job planned and sampled, nothing written."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from iste.cli.main import main
from iste.engine.render import QueryOptions
from iste.engine.tiles import TileGeometry, TileGrid
from iste.engine.frame import Frame
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.slides import estimate as estimate_module
from iste.slides.estimate import SAMPLE_TILES, Calibrations, _sample, estimate_slide
from iste.slides.job import SlideJob
from iste.slides.pipeline import upscale_slide
from iste.slides.reader import InMemorySlide
from iste.slides.workdir import work_dir_for
from model_zoo import tiny_config
from slide_data import he_image, killed_at_tile, write_tiff_pyramid

OPTS = QueryOptions(stf_window=16, stf_keys=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config("iste")).eval()


def _half_glass(height=256, width=384):
    rgb = np.full((height, width, 3), 242, np.uint8)  # glass on the left ...
    rgb[:, width // 2:] = he_image()[:height, :width - width // 2]  # ... tissue on the right
    return InMemorySlide(rgb, mpp=0.5)


def _temp_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("iste-estimate-*")}


def test_the_estimate_counts_the_tiles_the_job_runs_and_writes_nothing(tmp_path, model):
    slide, job = _half_glass(), SlideJob(2.0, tile=128)
    out = tmp_path / "later" / "out.tiff"
    before = _temp_leftovers()
    est = estimate_slide(slide, out, model, job, options=OPTS)
    assert not (tmp_path / "later").exists() and _temp_leftovers() == before
    res = upscale_slide(slide, out, model, job, options=OPTS, progress=False)
    assert (est.tiles_model, est.tiles_background) == (res.tiles_model, res.tiles_background)
    assert est.tiles_model >= SAMPLE_TILES + 1 and est.tiles_background >= SAMPLE_TILES + 1
    assert est.size == res.size and est.levels == res.levels and est.mpp == res.mpp
    assert est.mpx_model + est.mpx_background == pytest.approx(res.size[0] * res.size[1] / 1e6)
    assert est.tissue_fraction == pytest.approx(res.tissue_fraction)
    cal = est.calibration
    assert {k: r.tiles for k, r in cal.kinds.items()} == {"model": SAMPLE_TILES,
                                                           "background": SAMPLE_TILES}
    assert est.seconds_tiles > 0 and est.seconds_assembly > 0 and cal.peak_rss > 0
    # the model's tiles cost more than the bicubic's, and the bytes are of the same order
    assert cal.kinds["model"].seconds_per_mpx > cal.kinds["background"].seconds_per_mpx
    assert 0.5 < est.bytes_output / out.stat().st_size < 2
    assert 1.5 < est.bytes_disk / est.bytes_output < 2.5  # work tiles + scratch + output


def test_without_tissue_detection_every_tile_is_a_model_tile(tmp_path, model):
    est = estimate_slide(_half_glass(), tmp_path / "out.tiff", model,
                         SlideJob(2.0, tile=128, tissue=False), options=OPTS)
    assert est.tiles_background == 0 and est.tiles_model == 24 and est.tissue_fraction is None
    assert set(est.calibration.kinds) == {"model"}


def test_a_folder_measures_its_rates_once_per_scale_and_tile(tmp_path, model, monkeypatch):
    runs = []
    real = estimate_module.run_tiles
    monkeypatch.setattr(estimate_module, "run_tiles",
                        lambda *a, **k: runs.append(len(a[5])) or real(*a, **k))
    cals = Calibrations()
    slide = _half_glass()
    first = estimate_slide(slide, tmp_path / "a.tiff", model, SlideJob(2.0, tile=128),
                           options=OPTS, calibrations=cals)
    assert runs == [1, SAMPLE_TILES, 1, SAMPLE_TILES]  # warm-up, then timed, per kind
    second = estimate_slide(_half_glass(192, 320), tmp_path / "b.tiff", model,
                            SlideJob(2.0, tile=128), options=OPTS, calibrations=cals)
    assert len(runs) == 4 and second.calibration is first.calibration
    assert second.tiles < first.tiles
    estimate_slide(slide, tmp_path / "c.tiff", model, SlideJob(3.0, tile=192), options=OPTS,
                   calibrations=cals)
    assert len(runs) == 8 and len(cals) == 2


def test_the_sample_prefers_full_tiles_spread_over_the_kind():
    grid = TileGrid(Frame.for_scale((100, 100), 2.0), (64, 64), TileGeometry(0, 16, 1))
    assert grid.shape == (4, 4)  # the last row and column are 8 px: edge tiles
    positions = [(i, j) for i in range(4) for j in range(4)]
    picks = _sample(positions, grid, 3)
    assert len(picks) == 4 and all(i < 3 and j < 3 for i, j in picks)
    assert picks[0] == (0, 0) and picks[-1] == (2, 2)
    assert _sample([(3, 3)], grid, 3) == [(3, 3)]  # only an edge tile: that one
    assert _sample(positions[:2], grid, 3) == positions[:2]


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(model, path)
    return path


def test_cli_estimate_prints_a_plan_records_it_and_writes_nothing(tmp_path, tiny_model_file,
                                                                  capsys):
    src = write_tiff_pyramid(tmp_path / "slide.tiff", _half_glass())
    out, summary = tmp_path / "out" / "sr.tiff", tmp_path / "summary.json"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--tile", "128", "--model",
                 str(tiny_model_file), "--stf-keys", "16", "--estimate",
                 "--json-summary", str(summary)]) == 0
    text = capsys.readouterr().out
    assert "estimate: x2 of slide.tiff" in text and "nothing written" in text
    assert "time on this machine" in text and "peak" in text
    assert not out.parent.exists()
    (est,) = json.loads(summary.read_text())["estimates"]
    assert est["size"] == [768, 512] and est["tiles_model"] + est["tiles_background"] == 24
    assert est["seconds"] > 0 and est["bytes_output"] > 0
    assert set(est["rates_mpx_per_s"]) == {"model", "background"}


def test_cli_estimate_refuses_what_the_run_refuses_up_front(tmp_path, tiny_model_file,
                                                            capsys):
    # a name too long for its work folder, a plain image under --target-mpp: the run refused
    # the folder (exit code 2, nothing done), its --estimate planned it (exit code 0)
    from iste.data.imagewrite import write_image

    long, mixed = tmp_path / "long", tmp_path / "mixed"
    long.mkdir()
    mixed.mkdir()
    slide = write_tiff_pyramid(long / ("L" * 246 + ".tiff"), _half_glass(64, 64))
    write_tiff_pyramid(mixed / "a.tiff", _half_glass(64, 64))
    write_image(mixed / "c.png", he_image()[:20, :30])
    out = tmp_path / "out"
    run = ["upscale", "--model", str(tiny_model_file), "--stf-keys", "16", "--tile", "64"]
    too_long = "longer than the 255 bytes"
    cases = [([str(long), "-s", "2", "-o", str(out)], too_long),
             ([str(slide), "-s", "2", "-o", str(out / slide.name)], too_long),
             ([str(mixed), "--target-mpp", "0.25", "-o", str(out)], "give the scale with -s")]
    for args, says in cases:
        for estimate in ([], ["--estimate"]):
            assert main([*run, *args, *estimate]) == 2, (args, estimate)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and says in err[0], err
            assert not out.exists()


def test_cli_estimate_of_a_folder_sums_its_slides_and_images(tmp_path, tiny_model_file, capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name, (h, w) in {"a": (256, 384), "b": (192, 320)}.items():
        write_tiff_pyramid(folder / f"{name}.tiff", _half_glass(h, w))
    from iste.data.imagewrite import write_image

    write_image(folder / "c.png", he_image()[:20, :30])
    summary = tmp_path / "summary.json"
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--tile",
                 "128", "--model", str(tiny_model_file), "--stf-keys", "16", "--estimate",
                 "--json-summary", str(summary)]) == 0
    text = capsys.readouterr().out
    assert "folder: 2 slide(s) and 1 plain image(s) estimated, 0 skipped (exist), 0 failed" \
        in text
    assert "such items a day" in text
    estimates = json.loads(summary.read_text())["estimates"]
    assert [Path(e["input"]).name for e in estimates] == ["a.tiff", "b.tiff", "c.png"]
    assert [e["kind"] for e in estimates] == ["pyramid", "pyramid", "image"]
    for est in estimates[:2]:  # measured once, on the first slide
        assert {k: Path(v).name for k, v in est["measured_on"].items()} == {
            "model": "a.tiff", "background": "a.tiff"}
    assert "measured on 3 model and 3 background tile(s) of a.tiff" in text
    assert not (tmp_path / "out").exists()


def test_cli_estimate_projects_a_plain_image_as_the_run_makes_it(tmp_path, tiny_model_file,
                                                                  capsys):
    # --estimate refused plain images ("plans whole-slide jobs"): a lab planning a folder of
    # PNG/JPEG tiles had no time, memory or size to plan with
    from iste.data.images import read_image
    from iste.data.imagewrite import write_image

    write_image(tmp_path / "in.png", he_image()[:20, :30])
    args = ["upscale", str(tmp_path / "in.png"), "-s", "2", "-o", str(tmp_path / "o.png"),
            "--model", str(tiny_model_file)]
    summary = tmp_path / "plan.json"
    assert main([*args, "--estimate", "--json-summary", str(summary)]) == 0
    text = capsys.readouterr().out
    assert "estimate: x2 of in.png" in text and "(60 x 40 px from 30 x 20" in text
    assert "nothing written" in text
    (est,) = json.loads(summary.read_text())["estimates"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "plan.json"]
    assert est["kind"] == "image" and est["size"] == [60, 40] and not est["tiled"]
    assert est["seconds"] > 0 and est["memory"] > 0
    assert main([*args, "-q"]) == 0
    assert read_image(tmp_path / "o.png").shape == (40, 60, 3)
    # its crops are the whole image here: the bytes are the run's pixels, without the
    # provenance text the run's file also holds
    written = (tmp_path / "o.png").stat().st_size
    assert 0.5 * written < est["bytes_output"] <= written
    assert main([*args, "--estimate"]) == 0
    assert "o.png (or its provenance) exists: the job needs --overwrite" in (
        capsys.readouterr().out)


def test_cli_estimate_refuses_what_the_run_refuses_of_an_image_and_a_bad_region(
        tmp_path, tiny_model_file, capsys):
    from iste.data.imagewrite import write_image

    rgba = np.concatenate([he_image()[:20, :30], np.full((20, 30, 1), 128, np.uint8)], -1)
    write_image(tmp_path / "in.png", rgba)
    for estimate in ([], ["--estimate"]):
        assert main(["upscale", str(tmp_path / "in.png"), "-s", "2", "-o",
                     str(tmp_path / "o.jpg"), "--model", str(tiny_model_file),
                     *estimate]) == 2
        err = capsys.readouterr().err
        assert "has transparency" in err and len(err.strip().splitlines()) == 1
    src = write_tiff_pyramid(tmp_path / "slide.tiff", _half_glass())
    assert main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.tiff"), "--region",
                 "0,0,9999,10", "--model", str(tiny_model_file), "--estimate"]) == 2
    assert "outside the slide" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "slide.tiff"]


def test_the_destination_is_the_nearest_existing_folder(tmp_path):
    from iste.slides.estimate import output_destination

    free, writable = output_destination(tmp_path / "new" / "deeper" / "out.tiff")
    assert writable and free is not None and free > 0
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert output_destination(tmp_path / "notes.txt" / "out.tiff")[1] is False  # cannot hold it


def test_a_folder_measures_each_kind_on_the_first_slide_that_has_it(tmp_path, tiny_model_file,
                                                                     capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    write_tiff_pyramid(folder / "a.tiff", InMemorySlide(np.full((192, 320, 3), 242, np.uint8),
                                                        mpp=0.5))  # glass only
    write_tiff_pyramid(folder / "b.tiff", _half_glass())
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--tile",
                 "128", "--model", str(tiny_model_file), "--stf-keys", "16",
                 "--estimate"]) == 0
    text = capsys.readouterr().out
    assert "tiles of 128 px: 0 model" in text  # a.tiff
    assert "measured on 3 background tile(s) of a.tiff; nothing written" in text
    assert "measured on 3 model tile(s) of b.tiff and 3 background tile(s) of a.tiff" in text


def test_cli_estimate_follows_the_runs_rules_for_existing_outputs_and_missing_input(
        tmp_path, tiny_model_file, capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("a", "b"):
        write_tiff_pyramid(folder / f"{name}.tiff", _half_glass(192, 320))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.tiff").write_bytes(b"done before")
    common = ["-s", "2", "--tile", "128", "--model", str(tiny_model_file), "--stf-keys", "16",
              "--estimate"]
    # the run fails a file there that is no output of its own (and skips its own outputs:
    # tests/test_slides_cli.py), so does the estimate
    assert main(["upscale", str(folder), "-o", str(out), *common]) == 1
    text, err = capsys.readouterr()
    assert "estimate: x2 of b.tiff" in text
    assert "a.tiff exists, but it is not a complete iste output" in err
    assert "folder: 1 slide(s) estimated, 0 skipped (exist), 1 failed" in text
    empty = tmp_path / "dicom_out"
    empty.mkdir()  # an empty folder is written into, not refused
    assert main(["upscale", str(folder / "a.tiff"), "-o", str(empty), "--format", "dicom",
                 *common]) == 0
    assert "needs --overwrite" not in capsys.readouterr().out
    assert main(["upscale", str(folder / "a.tiff"), "-o", str(out / "a.tiff"), *common]) == 0
    assert "exists: the job needs --overwrite" in capsys.readouterr().out
    assert main(["upscale", str(tmp_path / "missing.tiff"), "-o", str(tmp_path / "m.tiff"),
                 *common]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("name,layout", [("out", "dicom"), ("out.jpg", "svs"),
                                         ("out.png", "svs")])
def test_the_output_bytes_follow_how_the_output_stores_them(tmp_path, model, name, layout):
    slide, job = _half_glass(), SlideJob(2.0, tile=128, layout=layout)
    out = tmp_path / name
    est = estimate_slide(slide, out, model, job, options=OPTS)
    upscale_slide(slide, out, model, job, options=OPTS, progress=False)
    written = sum(p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*")))
    assert 0.5 < est.bytes_output / written < 2, (est.bytes_output, written)


@pytest.mark.parametrize("codec", ["jpeg", "deflate"])
@pytest.mark.parametrize("region", [(0, 0, 40, 40), (16, 8, 120, 90)])
def test_the_bytes_of_a_region_smaller_than_a_tile_are_those_written(tmp_path, model, codec,
                                                                     region):
    # the svs thumbnail was counted as a whole lower-level tile (a dense 2 x 2 mosaic, halved):
    # a region within one tile was estimated at up to 1.9 times the file written
    slide = InMemorySlide(he_image(), mpp=0.5)
    job = SlideJob(2.0, region=region, codec=codec)
    out = tmp_path / "out.tiff"
    est = estimate_slide(slide, out, model, job, options=OPTS)
    upscale_slide(slide, out, model, job, options=OPTS, progress=False)
    assert len(est.levels) == 1
    # the pages' tags (~1 kB, a third of the smallest file here) are not counted: the bytes
    # of the pages' pixels are
    with tifffile.TiffFile(out) as tif:
        stored = sum(sum(page.databytecounts) for page in tif.pages)
    assert est.bytes_output == pytest.approx(stored, rel=0.12)


def test_dicom_output_refuses_a_codec_it_cannot_store():
    with pytest.raises(ValueError, match="DICOM output is written as RGB JPEG"):
        SlideJob(2.0, layout="dicom", codec="deflate")


def test_an_interrupted_job_is_estimated_for_the_tiles_it_has_left(tmp_path, model):
    slide, job = _half_glass(), SlideJob(2.0, tile=128)
    out = tmp_path / "out.tiff"
    whole = estimate_slide(slide, out, model, job, options=OPTS)
    with killed_at_tile(6), pytest.raises(KeyboardInterrupt):  # 5 model tiles finished
        upscale_slide(slide, out, model, job, options=OPTS, progress=False)
    folder = work_dir_for(out)
    before = sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    rest = estimate_slide(slide, out, model, job, options=OPTS, calibrations=Calibrations(
        {Calibrations.key(job, "pyramid", out): whole.calibration}))
    assert sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*")) == before
    assert rest.resumed.bytes > 0 and not rest.resumed.busy and not rest.resumed.stale
    res = upscale_slide(slide, out, model, job, options=OPTS, progress=False)
    assert rest.tiles_resumed == res.tiles_resumed >= 5  # five model tiles (and glass) done
    rate = whole.calibration.kinds["model"].seconds_per_mpx
    assert whole.seconds_tiles - rest.seconds_tiles >= 5 * 0.128 * 0.128 * rate * 0.999
    assert rest.bytes_disk == pytest.approx(whole.bytes_disk - rest.resumed.bytes)
    assert (rest.size, rest.levels, rest.tiles) == (whole.size, whole.levels, whole.tiles)


def test_cli_estimate_says_what_the_work_folder_holds(tmp_path, tiny_model_file, capsys):
    src = write_tiff_pyramid(tmp_path / "slide.tiff", _half_glass())
    out = tmp_path / "sr.tiff"
    common = ["upscale", str(src), "-s", "2", "-o", str(out), "--tile", "128", "--model",
              str(tiny_model_file), "--stf-keys", "16"]
    with killed_at_tile(3):
        assert main(common) == 130
    capsys.readouterr()
    assert main([*common, "--estimate"]) == 0
    text = capsys.readouterr().out
    done = int(text.split("resumes: ")[1].split(" of 24 tiles are finished")[0])
    assert done >= 2 and "holds tiles of another job" not in text
    manifest = work_dir_for(out) / "manifest.json"  # now the folder is another job's
    manifest.write_text(manifest.read_text().replace('"scale": 2.0', '"scale": 2.5'))
    assert main([*common, "--estimate"]) == 0
    text = capsys.readouterr().out
    assert "holds tiles of another job" in text and "resumes:" not in text


def test_cli_the_estimate_counts_the_tiles_the_run_reports(tmp_path, tiny_model_file, capsys):
    # the tiles at tissue's edge run the model and bicubic and blend them: counted among the
    # model tiles by both, and named ("blended") by both, which neither said
    src = write_tiff_pyramid(tmp_path / "slide.tiff", _half_glass())
    args = ["upscale", str(src), "-s", "2", "-o", str(tmp_path / "sr.tiff"), "--tile", "128",
            "--model", str(tiny_model_file), "--stf-keys", "16", "--codec", "deflate"]
    summaries = {}
    for how in ("estimate", "run"):
        summary = tmp_path / f"{how}.json"
        assert main([*args, "--json-summary", str(summary),
                     *(["--estimate"] if how == "estimate" else [])]) == 0
        (summaries[how],) = json.loads(summary.read_text())["estimates" if how == "estimate"
                                                            else "outputs"]
    text = capsys.readouterr()
    counts = {how: {k: s[k] for k in ("tiles_model", "tiles_background", "tiles_blended")}
              for how, s in summaries.items()}
    assert counts["estimate"] == counts["run"]
    blended = counts["run"]["tiles_blended"]
    assert 0 < blended <= counts["run"]["tiles_model"] and counts["run"]["tiles_background"] > 0
    assert f"{blended} blended with bicubic" in text.out
    assert f"model ({blended} blended with bicubic)" in text.out + text.err


@pytest.mark.parametrize("kind", ["gray", "alpha", "exif-turned"])
def test_cli_estimate_of_an_image_sizes_the_output_the_run_writes(tmp_path, tiny_model_file,
                                                                  kind):
    # the crops were encoded as RGB (a gray output's bytes tripled, an alpha channel's left
    # out) and the size was the stored order's where the run turns the output upright
    # (EXIF orientation 6: '240 x 200 px' for a 200 x 240 output)
    from PIL import Image

    from iste.data.images import read_image

    rgb = he_image()[:100, :120]  # output 240 x 200: one crop, of far more bytes than text
    src = tmp_path / ("in.jpg" if kind == "exif-turned" else "in.png")
    if kind == "gray":
        Image.fromarray(rgb.mean(axis=-1).astype(np.uint8)).save(src)
    elif kind == "alpha":
        Image.fromarray(np.dstack([rgb, 255 - rgb[..., 1]])).save(src)  # alpha with detail
    else:
        exif = Image.new("RGB", (1, 1)).getexif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(src, exif=exif.tobytes(), quality=95)
    out = tmp_path / f"o{src.suffix}"
    args = ["upscale", str(src), "-s", "2", "-o", str(out), "--model", str(tiny_model_file)]
    summary = tmp_path / "plan.json"
    assert main([*args, "--estimate", "--json-summary", str(summary), "-q"]) == 0
    (est,) = json.loads(summary.read_text())["estimates"]
    assert main([*args, "-q"]) == 0
    h, w = read_image(out).shape[:2]
    assert est["size"] == [w, h] and est["lr_size"] == [w // 2, h // 2]
    # the crop is the whole image: its bytes are the run's pixels, less the provenance text
    written = out.stat().st_size
    assert 0.9 * written < est["bytes_output"] <= written, (est["bytes_output"], written)
