"""``iste eval`` as a user meets it: the report it writes, and one-line errors (exit code 2)."""

import json

import numpy as np
import pytest
from PIL import Image

from eval_helpers import run_error, smooth_tile_folder, tiny_fid_extractor
from iste.cli.main import main
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.fixture()
def data_dir(tmp_path):
    return smooth_tile_folder(tmp_path / "data", n=3, base=6, size=44)


@pytest.fixture()
def ckpt(tmp_path):
    return save_model(build_model(tiny_config("iste")), tmp_path / "tiny-iste.safetensors")


def test_results_say_how_they_were_scored(tmp_path, data_dir, ckpt):
    """results.json did not say which protocol, metric precision or SSIM ran: the published
    protocol's scores (8 px shaved, flip-padded) read as ours without report.md."""
    out = tmp_path / "report"
    assert main(["eval", "--data", str(data_dir), "--methods", f"ours={ckpt}", "--scales", "2",
                 "--out", str(out), "--protocol", "published", "--metric-precision", "uint8",
                 "--ssim", "gaussian-y", "--no-cost", "--no-figures", "--no-progress"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert records and all((r["protocol"], r["metric_precision"], r["ssim_variant"])
                           == ("published", "uint8", "gaussian-y") for r in records)


def test_a_killed_cost_measurement_is_one_line(tmp_path, data_dir, ckpt, capsys,
                                               monkeypatch):
    # the cost table's child process, killed (the kernel's out-of-memory killer): a
    # RuntimeError traceback ending "failed: no output", exit code 1
    import sys

    killed = tmp_path / "python-killed"
    killed.write_text("#!/bin/sh\nkill -KILL $$\n")
    killed.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(killed))  # the interpreter of the cost's child
    code = main(["eval", "--data", str(data_dir), "--methods", f"ours={ckpt}", "--scales", "2",
                 "--out", str(tmp_path / "report"), "--no-figures", "--no-progress",
                 "--cost-repeats", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith(f"iste: error: cost measurement of ours={ckpt} at "), err
    assert "its process was killed by SIGKILL" in err[-1] and "--no-cost" in err[-1]
    # the scores, measured before the cost table, are kept (results.json was written last,
    # with report.md: none was left); report.md, which holds the cost table, is not
    assert "the scores are in results.json" in err[-1]
    records = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {(r["method"], r["scale"]) for r in records} == {("ours", 2.0)}
    assert all(r["psnr"] > 0 for r in records)
    assert not (tmp_path / "report" / "report.md").exists()


def test_eval_writes_results_tables_figures_and_report(tmp_path, data_dir, ckpt, capsys):
    out = tmp_path / "report"
    code = main(["eval", "--data", str(data_dir), "--methods", f"bicubic,ours={ckpt}",
                 "--scales", "2,3,2.4", "--out", str(out), "--stf-keys", "16", "--no-cost",
                 "--no-progress"])
    assert code == 0
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 3 * 3 * 2 and {r["method"] for r in records} == {"bicubic", "ours"}
    assert {(r["protocol"], r["metric_precision"], r["ssim_variant"], r["degradation"])
            for r in records} == {("iste", "float", "uniform-rgb", "paper")}
    report = (out / "report.md").read_text()
    assert "PIL's bicubic resize of the LR image to the HR size" in report
    assert "computed on the float SR, clamped to [0, 1]" in report and "ceil(s)+6" in report
    # a message, so on stderr
    assert "FID not computed" in report and "FID not computed" in capsys.readouterr().err
    for key in ("table1_integer", "table2_noninteger", "table3_fid"):
        for ext in ("md", "csv", "json"):
            assert (out / "tables" / f"{key}.{ext}").is_file()
        assert (out / "tables" / f"{key}.md").read_text() in report
    assert not (out / "tables" / "table4_ablation.md").exists()  # one ISTE: no ablation table
    for fig in ("fig6_comparison.png", "fig7_scales.png"):
        path = out / "figures" / fig
        assert 0 < path.stat().st_size < 1_000_000
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 200
    assert (out / "cache" / ".gitignore").read_text().strip().endswith("*")
    assert not list(out.rglob("*.tmp"))


def test_a_rerun_removes_the_temporaries_of_a_killed_runs_writes(tmp_path, data_dir, ckpt):
    # `iste eval` killed (kill -9, an OOM kill) while it wrote a figure, a table or a cache
    # record left its temporary ('.fig7_scales.png.k3j2.<pid>-<start>-<host>.tmp'), and every
    # rerun kept it: eval's writes never looked for a killed writer's leftovers
    import subprocess

    from iste import temps

    out = tmp_path / "report"
    argv = ["eval", "--data", str(data_dir), "--methods", f"bicubic,ours={ckpt}", "--scales",
            "2", "--out", str(out), "--no-cost", "--no-progress"]
    assert main(argv) == 0
    finished = sorted(p.relative_to(out) for p in out.rglob("*"))
    dead = subprocess.Popen(["true"])
    dead.wait()  # its id is free: a killed writer's
    tag = f"{dead.pid}-1-{temps._host_id()}"
    record = next((out / "cache" / "ours").glob("*.json"))
    left = [path.parent / f".{path.name}.k3j2.{tag}.tmp" for path in (
        out / "figures" / "fig7_scales.png", out / "tables" / "table1_integer.csv",
        out / "results.json", record)]
    for path in left:
        path.write_bytes(b"half")
    record.unlink()  # the record being written when the run was killed
    assert main(argv) == 0
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == finished


@pytest.mark.parametrize("scales,message", [("1", "scale"), ("0.5", "scale"), ("2,abc", "scale"),
                                            ("2,2", "twice"), ("", "scales")])
def test_bad_scales_are_one_line_errors(tmp_path, data_dir, scales, message, capsys):
    err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", scales,
                     "--out", str(tmp_path / "r")], capsys)
    assert message in err
    assert not (tmp_path / "r").exists()


def test_an_empty_test_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run_error(["eval", "--data", str(tmp_path / "empty"), "--methods", "bicubic",
                     "--out", str(tmp_path / "r")], capsys)
    assert "no test images" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("content,message", [(None, "not found"),
                                             (b"garbage", "not a safetensors checkpoint")])
def test_a_checkpoint_that_does_not_load_is_a_one_line_error(tmp_path, data_dir, content,
                                                            message, capsys):
    bad = tmp_path / "bad.safetensors"
    if content is not None:
        bad.write_bytes(content)
    err = run_error(["eval", "--data", str(data_dir), "--methods", f"bicubic,{bad}",
                     "--out", str(tmp_path / "r")], capsys)
    assert message in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra,message", [
    (["--data", "sample:nope"], "unknown sample test set"),
    (["--data", "missing-folder"], "test data not found"),
    (["--methods", "bicubic,bicubic"], "given twice"),
    (["--reference", "liif"], "--reference"),
    (["--fid", "missing.pth"], "FID network not found"),
    (["--fid", "{tmp}"], "is a folder; give the network's file"),  # it said 'not found'
    (["--figure-image", "nope.png"], "--figure-image"),
    (["--methods", "A="], "method A= names nothing"),
    (["--methods", "X={tmp}"], "is a folder, not a checkpoint"),
    (["--stf-keys", "64"], "--stf-keys applies to models with STF (ISTE); none of the methods "
                           "(bicubic) has it"),  # it ran as if not given
    (["--stf-keys", "64", "--protocol", "published"], "--stf-keys does not apply to "
                                                      "--protocol published"),  # so did it
    # and these (--tile, taken for upscale's memory knob, among them)
    (["--tile", "128"], "--tile applies to the tiles of --data wsi:SLIDE; "),
    (["--tile", "128", "--min-tissue", "0.2"], "--tile and --min-tissue apply to the tiles"),
    (["--figure-image", "tile0.png", "--no-figures"], "--no-figures draws none"),
    (["--cost-repeats", "5", "--no-cost"], "--no-cost measures none"),
])
def test_other_bad_arguments_are_one_line_errors(tmp_path, data_dir, extra, message, capsys):
    args = {"--data": str(data_dir), "--methods": "bicubic", "--out": str(tmp_path / "r")}
    argv = ["eval", "--scales", "2"]
    for key, value in args.items():
        if key not in extra:
            argv += [key, value]
    err = run_error(argv + [x.format(tmp=tmp_path) for x in extra], capsys)
    assert message in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_stf_keys_are_recorded_and_keyed_for_the_methods_with_stf_only(tmp_path, data_dir,
                                                                      ckpt, capsys):
    # the report said "stf_keys=N" of every run (LIIF, bicubic, no STF model at all), and
    # another --stf-keys recomputed the results of bicubic and LIIF, which it does not change
    liif = save_model(build_model(tiny_config("liif")), tmp_path / "liif.safetensors")
    common = ["eval", "--data", str(data_dir), "--scales", "2", "--out", str(tmp_path / "r"),
              "--no-cost", "--no-progress", "--no-figures"]

    def run(methods, *extra):
        capsys.readouterr()
        assert main([*common, "--methods", methods, *extra]) == 0
        report = (tmp_path / "r" / "report.md").read_text()
        return next(ln for ln in report.splitlines() if ln.startswith("- Models:")), \
            capsys.readouterr().err

    line, _ = run(f"bicubic,{liif},ours={ckpt}")
    assert "STF key windows of ours: stf_window=48, stf_keys=2304;" in line
    line, err = run(f"bicubic,{liif},ours={ckpt}", "--stf-keys", "16")
    assert "STF key windows of ours: stf_window=48, stf_keys=16;" in line
    assert "(3 computed, 6 from the cache" in err  # ours only
    line, err = run(f"bicubic,{liif}")
    assert "stf" not in line and "(0 computed, 6 from the cache" in err


def test_tile_and_min_tissue_cut_a_slide_into_test_tiles(tmp_path, capsys):
    import tifffile

    from eval_helpers import texture

    tifffile.imwrite(tmp_path / "s.tif", texture(5, 128), tile=(64, 64), photometric="rgb")
    assert main(["eval", "--data", f"wsi:{tmp_path / 's.tif'}", "--tile", "64", "--min-tissue",
                 "0", "--methods", "bicubic", "--scales", "2", "--out", str(tmp_path / "r"),
                 "--no-cost", "--no-progress", "--no-figures", "-q"]) == 0
    records = json.loads((tmp_path / "r" / "results.json").read_text())
    assert sorted(r["image"] for r in records) == [f"s-x{x}-y{y}-s64" for x in (0, 64)
                                                   for y in (0, 64)]


def test_a_report_inside_its_test_folder_is_refused(tmp_path, data_dir, capsys):
    for out in (data_dir, data_dir / "report"):
        err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales",
                         "2", "--out", str(out), "--no-cost", "--no-progress"], capsys)
        assert "is inside --data" in err
    assert not (data_dir / "report").exists() and not (data_dir / "results.json").exists()


def test_the_cache_follows_the_model_not_its_label_and_distrusts_edits(tmp_path, data_dir,
                                                                       ckpt, capsys):
    out = tmp_path / "out"
    common = ["eval", "--data", str(data_dir), "--scales", "2", "--out", str(out), "--no-cost",
              "--no-progress", "--no-figures", "-q"]
    assert main([*common, "--methods", f"ISTE.v1={ckpt}"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert main([*common, "--methods", f"ISTE_v1={ckpt}"]) == 0  # same cache folder, renamed
    renamed = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in renamed} == {"ISTE_v1"}
    assert [r["psnr"] for r in renamed] == [r["psnr"] for r in first]  # taken from the cache
    assert main([*common, "--methods", f"A.b={ckpt},A_b={ckpt}"]) == 0  # one folder, two labels
    both = json.loads((out / "results.json").read_text())
    assert sorted({r["method"] for r in both}) == ["A.b", "A_b"] and len(both) == 6
    entry = next((out / "cache").glob("*/*.json"))
    stored = json.loads(entry.read_text())
    for edited in (json.dumps({**stored, "psnr": 99.0}), "{}", "[]"):
        entry.write_text(edited)  # edited, or another shape: recomputed, not trusted or a crash
        assert main([*common, "--methods", f"ISTE.v1={ckpt}"]) == 0
        records = json.loads((out / "results.json").read_text())
        assert 99.0 not in [r["psnr"] for r in records] and "sha256" not in records[0]
        assert sorted(r["psnr"] for r in records) == sorted(r["psnr"] for r in first)


def test_an_image_too_small_for_a_scale_is_refused_before_any_result(tmp_path, data_dir,
                                                                     capsys):
    from iste.data.imagewrite import write_image
    import numpy as np

    write_image(data_dir / "zz-small.png", np.full((20, 20, 3), 90, np.uint8))  # sorted last
    out = tmp_path / "r"
    err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                     "--out", str(out), "--no-cost", "--no-progress"], capsys)
    assert "zz-small.png is too small to evaluate at x2" in err
    assert not list(out.rglob("*.json"))  # the images before it were not computed first


def _cache_run(tmp_path, data_dir, *extra):
    """Results of an eval into tmp_path/out, without their timing."""
    out = tmp_path / "out"
    code = main(["eval", "--data", str(data_dir), "--scales", "2", "--out", str(out),
                 "--no-cost", "--no-progress", "-q", *extra])
    assert code == 0
    records = json.loads((out / "results.json").read_text())
    return out, [{k: v for k, v in r.items() if k != "sr_seconds"} for r in records]


def test_a_cache_record_moved_to_another_images_or_protocols_name_is_recomputed(
        tmp_path, data_dir, capsys):
    out, first = _cache_run(tmp_path, data_dir, "--methods", "bicubic", "--no-figures")
    entries = sorted((out / "cache" / "bicubic").glob("*.json"))
    assert len(entries) == 3
    entries[1].write_text(entries[2].read_text())  # image 2's result under image 1's key
    other = tmp_path / "other"
    assert main(["eval", "--data", str(data_dir), "--scales", "2", "--out", str(other),
                 "--no-cost", "--no-progress", "-q", "--methods", "bicubic", "--no-figures",
                 "--ssim", "gaussian-y"]) == 0
    gaussian = sorted((other / "cache" / "bicubic").glob("*.json"))[0]
    entries[0].write_text(gaussian.read_text())  # another protocol's result under this key
    _, again = _cache_run(tmp_path, data_dir, "--methods", "bicubic", "--no-figures")
    assert again == first
    assert sorted(r["image"] for r in again) == sorted(r["image"] for r in first)


def test_replaced_fid_features_and_kept_figure_images_are_recomputed(tmp_path, data_dir,
                                                                     capsys):
    import numpy as np

    fid = tiny_fid_extractor(tmp_path / "fid.pt")
    args = ["--methods", "bicubic", "--fid", str(fid), "--scales", "2,3"]
    out, first = _cache_run(tmp_path, data_dir, *args)
    fid_table = (out / "tables" / "table3_fid.md").read_text()
    kept = next((out / "cache" / "bicubic").glob("*.png"))
    features = list((out / "cache").glob("*/*.npy"))
    assert any(p.parent.name == "_hr" for p in features) and len(features) > 3
    Image.new("RGB", (10, 10)).save(kept)  # a figure image of another size
    for path in features:
        np.save(path, np.load(path) + 5.0)  # every feature file edited
    _, again = _cache_run(tmp_path, data_dir, *args)
    assert again == first
    assert (out / "tables" / "table3_fid.md").read_text() == fid_table
    truncated = next((out / "cache" / "_hr").glob("*.npy"))
    truncated.write_bytes(truncated.read_bytes()[:20])
    _, again = _cache_run(tmp_path, data_dir, *args)
    assert again == first


def test_an_infinite_psnr_is_cached_and_read_back_as_a_float(tmp_path, capsys):
    import numpy as np

    from iste.data.imagewrite import write_image

    data = tmp_path / "flat"
    data.mkdir()
    for i in range(2):  # flat images: bicubic gives them back exactly, PSNR inf
        write_image(data / f"f{i}.png", np.full((40, 40, 3), 100 + 20 * i, np.uint8))
    common = ["eval", "--data", str(data), "--scales", "2", "--methods", "bicubic", "--out",
              str(tmp_path / "o"), "--no-cost", "--no-progress", "--no-figures"]
    assert main(common) == 0
    capsys.readouterr()
    assert main(common) == 0
    said = capsys.readouterr()
    assert "0 computed, 2 from the cache" in said.out + said.err
    records = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["psnr"] for r in records] == ["inf", "inf"]


def _overflowing_liif():
    import torch

    model = build_model(tiny_config("liif"))
    with torch.no_grad():  # finite weights whose products overflow: inf - inf = nan
        for name, p in model.named_parameters():
            if name.startswith("imnet"):
                p.mul_(1e30)
    return model.eval()


def test_a_model_giving_non_finite_pixels_is_named_at_once(tmp_path, data_dir, capsys):
    # its checkpoint is refused as it loads (iste.models.probe), before any image
    broken = save_model(_overflowing_liif(), tmp_path / "broken.safetensors")
    err = run_error(["eval", "--data", str(data_dir), "--methods", f"N={broken}", "--scales",
                     "2", "--out", str(tmp_path / "o"), "--no-cost", "--no-progress", "-q"],
                    capsys)
    assert str(broken) in err and "predicts Inf or NaN" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_method_giving_non_finite_pixels_on_an_image_is_named(tmp_path, data_dir):
    # a model whose pixels overflow only on some inputs (or at a narrow precision) passes the
    # load-time probe: the evaluation names it, and scores nothing
    from iste.eval.datasets import open_test_set
    from iste.eval.methods import Method
    from iste.eval.runner import evaluate

    method = Method("N", "in memory", "f" * 16, model=_overflowing_liif())
    with pytest.raises(ValueError, match=r"method N gave non-finite pixels .* at x2"):
        evaluate(open_test_set(str(data_dir)), [method], (2.0,), tmp_path / "o",
                 progress=False)


@pytest.mark.parametrize("blocker", ["results.json/", "report.md/", "tables", "figures",
                                     "cache"])
def test_a_report_folder_that_cannot_take_the_report_is_refused_before_any_work(
        tmp_path, data_dir, capsys, blocker):
    out = tmp_path / "out"
    out.mkdir()
    if blocker.endswith("/"):
        (out / blocker.rstrip("/")).mkdir()  # a folder where a file goes
    else:
        (out / blocker).write_text("mine")  # a file where a folder goes
    err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                     "--out", str(out), "--no-cost", "--no-progress", "-q"], capsys)
    assert blocker.rstrip("/") in err
    assert sorted(p.name for p in out.iterdir()) == [blocker.rstrip("/")]  # nothing written


def test_a_run_refused_by_a_full_disk_before_any_result_leaves_no_folder_it_made(
        tmp_path, data_dir, capsys):
    # on a disk with no space at all --out was left holding only .lock and an empty cache/:
    # the report check made --out before the lock, whose "undo the folders I made" rule then
    # had none to undo. The file size limit stands for the full disk (EFBIG)
    import resource
    import signal

    out = tmp_path / "new" / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    action = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
        err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales",
                         "2", "--out", str(out), "--no-cost", "--no-progress", "-q"], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, action)
    assert "file too large" in err
    assert not (tmp_path / "new").exists()


def test_an_empty_out_is_refused(data_dir, capsys):
    err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                     "--out", "", "--no-cost", "--no-progress", "-q"], capsys)
    assert "argument --out: must not be empty" in err


def test_tables_of_an_earlier_run_are_removed_and_fid_with_one_image_says_why(tmp_path,
                                                                             data_dir):
    import os
    import shutil

    tiny_fid_extractor(tmp_path / "fid.pt")  # before main(), which resets warning filters
    out, _ = _cache_run(tmp_path, data_dir, "--methods", "bicubic", "--scales", "2",
                        "--no-figures")
    assert (out / "tables" / "table1_integer.md").is_file()
    (out / "tables" / "notes.txt").write_text("mine")
    one = tmp_path / "one"
    one.mkdir()
    odd = one / os.fsdecode(b"bad\xffname.png")  # a name that is not UTF-8
    shutil.copy(next(data_dir.glob("*.png")), odd)
    assert main(["eval", "--data", str(one), "--methods", "bicubic", "--scales", "2.5",
                 "--out", str(out), "--fid", str(tmp_path / "fid.pt"), "--no-cost",
                 "--no-progress", "-q", "--no-figures"]) == 0
    tables = sorted(p.name for p in (out / "tables").iterdir())
    assert "table1_integer.md" not in tables and "table2_noninteger.md" in tables
    assert "notes.txt" in tables  # not a table of ours
    fid = (out / "tables" / "table3_fid.md").read_text()
    assert "needs at least 2 test images" in fid and "no Inception network" not in fid
    assert "bad\\xffname.png" in (out / "report.md").read_text()


def test_figures_of_an_earlier_run_are_removed_when_this_run_draws_none(tmp_path, data_dir):
    out, _ = _cache_run(tmp_path, data_dir, "--methods", "bicubic")
    assert (out / "figures" / "fig6_comparison.png").is_file()
    (out / "figures" / "my_notes.png").write_bytes(b"mine")
    # `iste figures --out OUT/figures` draws paper Figs. 8-10: a report's run removed them
    (out / "figures" / "fig8_texture_learner.png").write_bytes(b"iste figures")
    out, _ = _cache_run(tmp_path, data_dir, "--methods", "bicubic", "--no-figures")
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "fig8_texture_learner.png", "my_notes.png"]
    assert "fig6_comparison" not in (out / "report.md").read_text()


def test_a_report_stopped_on_the_way_leaves_no_earlier_report_beside_its_tables(
        tmp_path, data_dir, monkeypatch, capsys):
    """results.json was written first and report.md last: a full disk (or Ctrl-C in the cost
    table) between them left this run's results and tables beside an earlier run's report.
    The earlier report is removed first; this run's scores are kept (they were lost with it
    until session 37)."""
    import iste.eval.report
    from iste.refusals import DiskFullError

    out, _ = _cache_run(tmp_path, data_dir, "--methods", "bicubic")
    assert "2.5" not in (out / "report.md").read_text()

    def disk_full(*args, **kwargs):
        raise DiskFullError("cannot write fig6_comparison.png: no space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(iste.eval.report, "_figures", disk_full)
        assert main(["eval", "--data", str(data_dir), "--scales", "2.5", "--out", str(out),
                     "--no-cost", "--no-progress", "-q", "--methods", "bicubic"]) == 2
    assert "no space left" in capsys.readouterr().err
    assert not (out / "report.md").exists()
    assert {r["scale"] for r in json.loads((out / "results.json").read_text())} == {2.5}
    out, records = _cache_run(tmp_path, data_dir, "--methods", "bicubic", "--scales", "2.5")
    assert {r["scale"] for r in records} == {2.5} and "2.5" in (out / "report.md").read_text()


def test_a_second_eval_into_a_report_folder_in_use_is_refused(tmp_path, data_dir, capsys):
    # two evals into one --out mixed their results, tables and figures (both exit 0)
    from iste.locks import folder_lock

    out = tmp_path / "out"
    with folder_lock(out, "held"):  # as another process's run holds it
        err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales",
                         "2", "--out", str(out), "--no-cost", "--no-progress", "-q"], capsys)
    assert f"another iste eval is writing {out}" in err
    assert not (out / "results.json").exists()
    _cache_run(tmp_path, data_dir, "--methods", "bicubic", "--no-figures")  # free again


def test_a_folder_where_a_cache_record_belongs_is_one_line(tmp_path, data_dir, capsys):
    import shutil

    out = tmp_path / "r"
    argv = ["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2", "--out",
            str(out), "--no-cost", "--no-figures", "--no-progress"]
    assert main(argv) == 0
    record = sorted((out / "cache" / "bicubic").glob("*.json"))[0]
    record.unlink()
    record.mkdir()  # then os.replace's raw "[Errno 21] Is a directory: TMP -> RECORD"
    capsys.readouterr()
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"iste: error: cannot write {record}: a folder is in its place; move it "
                    "away (nothing was written)")
    record.rmdir()
    folder = out / "cache" / "bicubic"
    shutil.rmtree(folder)
    folder.write_text("mine")  # a file where a method's folder goes: "[Errno 17] File exists"
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"iste: error: evaluation cache folder {folder}: {folder} is a file, not a "
                    "folder")
    assert folder.read_text() == "mine"


def test_a_test_image_whose_name_is_not_utf8_is_drawn_in_the_figures(tmp_path, data_dir):
    # matplotlib refused the name's lone surrogate ("Invoked with: <FT2Font ...>") and the
    # report stopped with its message; the name is drawn with its bytes escaped
    import os
    import shutil

    first = sorted(data_dir.iterdir())[0]
    shutil.move(first, data_dir / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / "r"
    assert main(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                 "--out", str(out), "--no-cost", "--no-progress",
                 "--figure-image", os.fsdecode(b"caf\xe9.png")]) == 0
    assert (out / "figures" / "fig6_comparison.png").stat().st_size > 0


def test_a_model_trained_on_the_test_data_is_named(tmp_path, data_dir):
    """A checkpoint records where it was trained and picked (train_sources, val_sources: a
    training run's data.train and data.val, resolved); an evaluation on those images, or on a
    folder holding them, gave its scores without a word. It is now named on stderr and atop
    the report; other data is not."""
    import os
    import warnings

    from iste.data.places import place

    image = sorted(data_dir.iterdir())[0]
    seen = save_model(build_model(tiny_config("liif")), tmp_path / "seen.safetensors",
                      meta={"train_sources": [place(image), 7]})  # 7: not a place, ignored
    picked = save_model(build_model(tiny_config("liif")), tmp_path / "picked.safetensors",
                        meta={"train_sources": [place(tmp_path / "elsewhere")],
                              "val_sources": [place(data_dir)]})
    argv = ["eval", "--data", os.path.relpath(data_dir), "--methods",
            f"bicubic,seen={seen},picked={picked}", "--scales", "2", "--no-cost",
            "--no-figures", "--no-progress"]
    said = [f"seen has seen the test data in training (test data {data_dir.resolve()} shares "
            f"images with its training source {image.resolve()}): its scores say nothing of "
            "unseen images",
            f"picked has seen the test data in training (test data {data_dir.resolve()} is its "
            f"validation source {data_dir.resolve()}): its scores say nothing of unseen images"]
    with pytest.warns(UserWarning) as warned:
        assert main([*argv, "--out", str(tmp_path / "r1")]) == 0
    assert [f"method {s}" for s in said] == [str(w.message) for w in warned
                                             if "has seen the test data" in str(w.message)]
    report = (tmp_path / "r1" / "report.md").read_text()
    assert all(f"> **Warning:** {s}." in report for s in said)
    other = smooth_tile_folder(tmp_path / "other", n=2, base=9, size=44)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "method .* has seen the test data")
        assert main([*argv[:2], str(other), *argv[3:], "--out", str(tmp_path / "r2")]) == 0
    assert "has seen the test data" not in (tmp_path / "r2" / "report.md").read_text()


def test_a_test_folder_of_links_to_training_images_is_named(tmp_path, data_dir):
    """A test folder holding links to training images (or to a folder of them) is data the
    model was trained on; its place was the folder alone, so the evaluation said nothing.
    The places of its images that lie out of it are compared too; links that stay inside
    it, and a folder without links, add nothing."""
    from iste.data.places import place
    from iste.eval.datasets import open_test_set
    from iste.eval.methods import Method

    image = sorted(data_dir.iterdir())[0]
    method = Method("m", "m.safetensors", "0" * 64, meta={"train_sources": [place(data_dir)]})
    test = smooth_tile_folder(tmp_path / "test", n=2, base=9, size=44)
    places = open_test_set(str(test)).places
    assert places == (str(test.resolve()),) and method.trained_on(places) is None
    (test / "inside.png").symlink_to(sorted(test.iterdir())[0])
    assert open_test_set(str(test)).places == places  # a link inside the folder: its own
    (test / "linked.png").symlink_to(image)
    places = open_test_set(str(test)).places
    assert places == (str(test.resolve()), str(image.resolve()))
    assert method.trained_on(places) == (f"test data {image.resolve()} shares images with "
                                         f"its training source {data_dir.resolve()}")
    # a training folder that is a link to the test folder: both resolve to one place
    link = tmp_path / "train-link"
    link.symlink_to(test, target_is_directory=True)
    trained = Method("t", "t.safetensors", "0" * 64, meta={"train_sources": [place(link)]})
    assert trained.trained_on(places) == f"test data {test.resolve()} is its training " \
                                         f"source {test.resolve()}"


def test_a_slide_test_set_on_the_cmu_sample_is_named_for_its_sample_sets(monkeypatch,
                                                                         tmp_path):
    """sample:cmu-train is cut from the cached CMU slide; an evaluation of wsi: on that file
    (or a regions file on it) was not named, nor sample:cmu-test for a model trained on the
    slide file itself, since a sample set was compared with paths by its name alone. A
    sample set now lies in the cached files it reads; its bands share no image."""
    from iste.data.places import place, shared
    from iste.data.samples import CMU_SPLITS, SAMPLES, sample_path
    from iste.eval.datasets import SAMPLE_SETS, open_test_set
    from iste.eval.methods import Method

    svs = sample_path("cmu-svs")
    test = open_test_set(f"wsi:{svs}", tile=512, max_images=1)
    method = Method("m", "m.safetensors", "0" * 64,
                    meta={"train_sources": ["sample:cmu-train"]})
    assert method.trained_on(test.places) == (f"test data {svs.resolve()} shares images with "
                                              "its training source sample:cmu-train")
    assert shared("sample:cmu-test", place(svs)) == "shares images with"
    assert shared("sample:other-sources", place(svs)) is None
    assert shared("sample:cmu-test", "sample:other-sources") == "shares images with"
    for a, b in (("cmu-train", "cmu-val"), ("cmu-train", "cmu-test"), ("cmu-val", "cmu-test")):
        assert shared(f"sample:{a}", f"sample:{b}") is None
    assert shared("sample:unknown", place(svs)) is None
    assert shared(place(tmp_path / svs.name), "sample:cmu-train") is None  # another file
    cache = tmp_path / "cache"
    monkeypatch.setenv("ISTE_CACHE_DIR", str(cache))  # the samples lie where the cache is
    assert shared(place(cache), "sample:cmu-val") == "shares images with"
    assert shared(place(svs), "sample:cmu-val") is None
    cache.write_text("")  # a cache root that is a file: no sample lies in it, no error
    assert shared(place(cache), "sample:cmu-val") is None
    # every sample set read (train sources sample:cmu-SPLIT, test sets) has its parts
    from iste.data.places import SAMPLE_PARTS

    assert {f"cmu-{split}" for split in CMU_SPLITS} | set(SAMPLE_SETS) <= set(SAMPLE_PARTS)
    assert all(name in SAMPLES and (band is None or band in CMU_SPLITS)
               for parts in SAMPLE_PARTS.values() for name, band in parts)


def test_a_checkpoint_from_before_train_sources_is_named_for_its_sample_sets():
    """The shipped default was written before checkpoints recorded train_sources: trained on
    sample:cmu-train and -val (its train_config says so), it was named on no test data. The
    sample sets of its config are read (a path there was relative to a folder no longer
    known, so none is); recorded places, where there are, are read alone."""
    from iste.data.places import place, recorded
    from iste.data.samples import cached_path
    from iste.eval.methods import Method, load_methods

    svs = (place(cached_path("cmu-svs")),)
    (default,) = load_methods(["default"])
    assert "train_sources" not in default.meta
    assert default.trained_on(svs) == (f"test data {svs[0]} shares images with its training "
                                       "source sample:cmu-train")
    assert default.trained_on(("sample:cmu-test",)) is None
    config = {"data": {"train": ["hr", "sample:cmu-test"], "val": ["sample:cmu-val"]}}
    old = Method("o", "o.safetensors", "0" * 64, meta={"train_config": config})
    assert recorded(old.meta) == ["sample:cmu-test"]
    assert old.trained_on(("sample:cmu-val",)) == ("test data sample:cmu-val is its "
                                                   "validation source sample:cmu-val")
    new = Method("n", "n.safetensors", "0" * 64, meta={"train_config": config,
                                                       "train_sources": [], "val_sources": []})
    assert new.trained_on(("sample:cmu-test",)) is None  # what it records is read alone
    for bad in ("x", {"data": "x"}, {"data": {"train": "sample:cmu-test"}}):
        assert recorded({"train_config": bad}) == []


@pytest.mark.parametrize("sources", [7, "/", {"/": 1}])
def test_a_checkpoint_whose_train_sources_is_not_a_list_says_nothing_of_its_data(tmp_path,
                                                                                sources):
    """train_sources of a foreign or damaged file: 7 stopped iste eval with a traceback
    ('int' object is not iterable), "/" was read as a list of characters, so every test
    folder 'shared images with its training source /'."""
    from iste.eval.methods import Method

    method = Method("m", "m.safetensors", "0" * 64, meta={"train_sources": sources})
    assert method.trained_on((str(tmp_path.resolve()),)) is None
    listed = Method("m", "m.safetensors", "0" * 64, meta={"train_sources": ["/"]})
    assert listed.trained_on((str(tmp_path.resolve()),)) == (
        f"test data {tmp_path.resolve()} shares images with its training source /")


def test_a_test_image_reproduced_exactly_is_named_in_the_warning_and_the_report(
        tmp_path, data_dir, capsys):
    """A flat tile (glass) is reproduced exactly by bicubic: PSNR inf made that column's mean
    inf, bolded as the best and its t-tests n/a, with no word of why."""
    import numpy as np

    from iste.data.imagewrite import write_image

    data_dir = smooth_tile_folder(tmp_path / "d*a*ta", n=3, base=6, size=44)
    write_image(data_dir / "glass.png", np.full((44, 44, 3), 180, np.uint8))
    out = tmp_path / "r"
    with pytest.warns(UserWarning, match=r"bicubic reproduces 1 test image\(s\) exactly at x2 "
                                         r"\(glass.png: PSNR inf\)"):
        assert main(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                     "--out", str(out), "--no-cost", "--no-progress", "-q",
                     "--no-figures"]) == 0
    report = (out / "report.md").read_text()
    assert "> **Note:** bicubic reproduces 1 test image(s) exactly at x2 (glass.png" in report
    assert "a flat image (no texture: glass, a blank tile)" in report


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every table row of Markdown ``text`` as GitHub reads them: split at each
    '|' not escaped, then backslash escapes undone."""
    import re

    return [[re.sub(r"\\(.)", r"\1", cell.strip())
             for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in text.splitlines() if line.startswith("|")]


def test_method_names_with_markdown_marks_show_as_themselves(tmp_path, data_dir):
    """A checkpoint named 'a|b*c*.safetensors' split every table row of its method at the '|'
    (a column too many, every number under the wrong heading) and lost its asterisks to
    emphasis, in the tables, the methods and runtimes lists and 'against **a|b*c***'."""
    import shutil

    from iste.downstream.tables import table6

    marked = tmp_path / "a|b*c*.safetensors"
    shutil.copy(save_model(build_model(tiny_config("liif")), tmp_path / "l.safetensors"), marked)
    out = tmp_path / "r"
    assert main(["eval", "--data", str(data_dir), "--methods", f"bicubic,{marked}",
                 "--scales", "2", "--out", str(out), "--no-cost", "--no-figures",
                 "--fid", str(tiny_fid_extractor(tmp_path / "fid.pt")), "--no-progress",
                 "-q"]) == 0
    report = (out / "report.md").read_text()
    # Methods, Tables 1 and 3, Runtimes (the method is the reference: no p-value row)
    assert len([r for r in markdown_rows(report) if r[0] == "a|b*c*"]) == 4
    for table in (t for t in report.split("\n\n") if t.startswith("|")):
        assert len({len(r) for r in markdown_rows(table)}) == 1, table
    assert "against **a|b\\*c\\***" in report
    table = (out / "tables" / "table1_integer.md").read_text()
    assert [r[0] for r in markdown_rows(table)] == ["Method", "---", "bicubic", "a|b*c*",
                                                   "Method", "---", "bicubic"]
    pcam = table6({"SISR: a|b*c*": {"accuracy": 0.9, "f1": 0.8, "auc": 0.95}}, 4).markdown
    assert markdown_rows(pcam)[2] == ["SISR: a|b*c*", "**0.9000**", "**0.8000**", "**0.9500**"]



def code_spans(line: str) -> list[str]:
    """The contents of the code spans of one Markdown line as CommonMark reads them: a run of
    backticks up to the next run of the same length, one space stripped each side where the
    content starts and ends with one (and is not all spaces)."""
    import re

    spans = [m.group(2) for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", line)]
    return [t[1:-1] if t[:1] == t[-1:] == " " and t.strip(" ") else t for t in spans]


def test_file_names_with_backticks_or_line_breaks_show_as_themselves(tmp_path):
    """File names stood in one-backtick code spans: a test image 'q`x.png' closed its span
    early (the list of test images showed 'q' as code and 'x.png' as Markdown), a checkpoint
    named with a line break split its row of the methods table in two, and an FID network
    or the figures' image named so did the same to their lines, and a test folder named
    'd*a*ta' showed as 'data' with 'a' in italics."""
    import shutil

    from iste.data.imagewrite import write_image

    data_dir = smooth_tile_folder(tmp_path / "d*a*ta", n=3, base=6, size=44)
    write_image(data_dir / "q`x.png", np.asarray(Image.open(next(data_dir.iterdir()))))
    shutil.copy(next(p for p in data_dir.iterdir() if p.name != "q`x.png"),
                data_dir / "new\nline.png")
    weights = tmp_path / "m`b\nc.safetensors"
    shutil.copy(save_model(build_model(tiny_config("liif")), tmp_path / "l.safetensors"), weights)
    out = tmp_path / "r"
    assert main(["eval", "--data", str(data_dir), "--methods", f"bicubic,L={weights}",
                 "--scales", "2", "--out", str(out), "--no-cost", "--figure-image", "q`x.png",
                 "--fid", str(tiny_fid_extractor(tmp_path / "f``id.pt")), "--no-progress",
                 "-q"]) == 0
    report = (out / "report.md").read_text()
    (images,) = [line for line in report.splitlines() if line.startswith("5 HR images")]
    assert images.startswith("5 HR images from folder d\\*a\\*ta. 5 images: ")
    assert sorted(code_spans(images)) == sorted(
        ["new\\nline.png", "q`x.png", *(p.name for p in data_dir.iterdir() if "`" not in
                                          p.name and "\n" not in p.name)])
    row = next(line for line in report.splitlines() if line.startswith("| L |"))  # Methods
    assert code_spans(row.split(" | ")[2]) == ["m`b\\nc.safetensors"]  # the Weights cell
    for table in (t for t in report.split("\n\n") if t.startswith("|")):
        assert len({len(r) for r in markdown_rows(table)}) == 1, table
    assert [code_spans(line) for line in report.splitlines()
            if line.startswith(("Image ", "- FID: "))] == [["f``id.pt"], ["q`x.png"]]


def test_a_test_image_named_with_four_byte_letters_is_evaluated(tmp_path, data_dir):
    """The cache named a result by the first 60 characters of the image's name: 60 letters of
    4 bytes (CJK Extension B) made a file name of 265 bytes, 'File name too long', and the
    evaluation stopped."""
    import shutil

    name = chr(0x20000) * 62 + ".png"  # 252 bytes: a name the file system takes
    shutil.copy(next(data_dir.iterdir()), data_dir / name)
    out = tmp_path / "r"
    assert main(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                 "--out", str(out), "--no-cost", "--no-figures", "--no-progress", "-q"]) == 0
    images = {r["image"] for r in json.loads((out / "results.json").read_text())}
    assert name in images and len(images) == 4


def test_the_report_says_how_its_figure_image_was_chosen(tmp_path):
    """The report called the figure image 'the test image with the most texture' when only
    the first 32 were scored: of 33 images, the most textured (the last) was never shown."""
    import numpy as np

    from eval_helpers import texture
    from iste.data.imagewrite import write_image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(33):  # sorted by name; the last one is the only textured image
        write_image(data / f"t{i:02d}.png", texture(i, 28) if i == 32 else
                    np.full((28, 28, 3), 100 + i, np.uint8))
    out = tmp_path / "r"
    assert main(["eval", "--data", str(data), "--methods", "bicubic", "--scales", "2",
                 "--out", str(out), "--no-cost", "--no-progress", "-q"]) == 0
    report = (out / "report.md").read_text()
    assert "Image `t00.png` (the most textured of the first 32 of the 33 test images" in report
    assert main(["eval", "--data", str(data), "--methods", "bicubic", "--scales", "2",
                 "--out", str(out), "--no-cost", "--no-progress", "-q",
                 "--figure-image", "t32.png"]) == 0
    assert "Image `t32.png` (chosen with --figure-image)" in (out / "report.md").read_text()
