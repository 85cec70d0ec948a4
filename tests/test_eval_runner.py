"""The evaluation loop: records, resumable cache, FID path, tables, test sets, cost."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from eval_helpers import TORCHSCRIPT_NOTICE, texture, texture_folder
from iste.data import metrics
from iste.data.degrade import (bicubic_upscale, crop_to_scale, degrade, evaluation_pair,
                               lr_size_for)
from iste.data.imagewrite import write_image
from iste.engine.render import QueryOptions
from iste.eval import tables
from iste.eval.datasets import open_test_set
from iste.eval.methods import Method, load_methods
from iste.eval.report import EvalRequest, run_evaluation
from iste.eval.protocol import Protocol
from iste.eval.runner import evaluate
from iste.models.checkpoint import save_model
from iste.models.heads.iste import ABLATIONS
from iste.models.registry import build_model
from model_zoo import tiny_config

FAST = QueryOptions(stf_keys=16)
SCALES = (2.0, 2.5)


@pytest.fixture()
def data_dir(tmp_path):
    return texture_folder(tmp_path / "data")


@pytest.fixture()
def ckpts(tmp_path):
    return {name: save_model(build_model(tiny_config(head, **args)),
                             tmp_path / f"{name}.safetensors")
            for name, head, args in [("iste", "iste", {}), ("liif", "liif", {}),
                                     ("noltd", "iste", {"ltd": False})]}


class Interrupted(Exception):
    """Stands for Ctrl-C (pytest itself reacts to a real KeyboardInterrupt)."""


def count_calls(monkeypatch, fail_at: int | None = None) -> list:
    calls = []
    original = Method.upscale

    def upscale(self, lr, hr_hw, **kw):
        calls.append((self.name, lr.shape))
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupted
        return original(self, lr, hr_hw, **kw)

    monkeypatch.setattr(Method, "upscale", upscale)
    return calls


def test_results_hold_one_record_per_method_image_and_scale(tmp_path, data_dir, ckpts):
    out = tmp_path / "report"
    req = EvalRequest(str(data_dir), ("bicubic", str(ckpts["iste"])), out, scales=SCALES,
                      options=FAST, figures=False, cost=False, progress=False)
    run_evaluation(req, log=lambda m: None)
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 3 * 2 * 2
    assert {(r["method"], r["image"], r["scale"]) for r in records} == {
        (m, f"img{i}.png", s) for m in ("bicubic", "iste") for i in range(3) for s in SCALES}
    assert all({"psnr", "ssim"} <= set(r) for r in records)
    assert FAST.precision == "auto"
    assert {r["precision"] for r in records} == {"fp32"}  # resolved (a narrow model: fp32)
    rec = next(r for r in records if r == {**r, "method": "bicubic", "image": "img1.png",
                                             "scale": 2.5})
    hr = crop_to_scale(texture(1), 2.5)
    lr = degrade(hr, 2.5, lr_size_for(texture(1).shape[:2], 2.5))  # the published protocol
    sr = bicubic_upscale(lr, hr.shape[:2])
    assert rec["psnr"] == pytest.approx(metrics.psnr(sr, hr, scale=2.5))
    assert rec["ssim"] == pytest.approx(metrics.ssim(sr, hr, scale=2.5))


def test_a_test_image_turned_on_its_side_is_not_taken_from_the_cache(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    flat = np.full((48, 96, 3), 120, np.uint8)  # the same bytes either way round
    write_image(data / "img.png", flat)
    methods = load_methods(["bicubic"])
    first = evaluate(open_test_set(str(data)), methods, (2.0,), tmp_path, progress=False)
    write_image(data / "img.png", flat.reshape(96, 48, 3))
    again = evaluate(open_test_set(str(data)), methods, (2.0,), tmp_path, progress=False)
    assert (first.computed, again.computed) == (1, 1)


def test_an_interrupted_run_resumes_without_recomputing(tmp_path, data_dir, ckpts, monkeypatch):
    test_set = open_test_set(str(data_dir))
    methods = load_methods(["bicubic", str(ckpts["iste"]), str(ckpts["liif"])])
    total = 3 * 2 * 3
    calls = count_calls(monkeypatch, fail_at=7)
    with pytest.raises(Interrupted):
        evaluate(test_set, methods, SCALES, tmp_path, protocol=Protocol(options=FAST),
                 progress=False)
    assert len(calls) == 7  # 6 results done and cached, the 7th interrupted
    calls = count_calls(monkeypatch)  # no more interruptions
    outcome = evaluate(test_set, methods, SCALES, tmp_path, protocol=Protocol(options=FAST),
                       progress=False)
    assert len(calls) == total - 6 and outcome.computed == total - 6
    assert len(outcome.records) == total
    calls.clear()
    again = evaluate(test_set, methods, SCALES, tmp_path, protocol=Protocol(options=FAST),
                     progress=False)
    assert calls == [] and again.records == outcome.records


def test_a_relabelled_method_takes_its_results_from_the_cache(tmp_path, data_dir, ckpts,
                                                              monkeypatch):
    """The cache folder is named by the label, the result by what it depends on: the same
    checkpoint under another label (another folder) is not run again."""
    test_set = open_test_set(str(data_dir))
    protocol, name = Protocol(options=FAST), test_set.images[0].name
    first = evaluate(test_set, load_methods([str(ckpts["iste"])]), SCALES, tmp_path,
                     protocol=protocol, keep_sr_for=[name], progress=False)
    calls = count_calls(monkeypatch)
    again = evaluate(test_set, load_methods([f"ISTE-v2={ckpts['iste']}"]), SCALES, tmp_path,
                     protocol=protocol, keep_sr_for=[name], progress=False)
    assert calls == [] and again.computed == 0
    assert {r["method"] for r in again.records} == {"ISTE-v2"}
    assert [r["psnr"] for r in again.records] == [r["psnr"] for r in first.records]
    assert [again.kept_sr[("ISTE-v2", name, s)] for s in SCALES] == \
        [first.kept_sr[("iste", name, s)] for s in SCALES]


def test_changed_weights_or_protocol_are_never_taken_from_the_cache(tmp_path, data_dir, ckpts,
                                                                    monkeypatch):
    test_set = open_test_set(str(data_dir))
    protocol = Protocol(options=FAST)
    evaluate(test_set, load_methods(["bicubic", str(ckpts["iste"])]), SCALES, tmp_path,
             protocol=protocol, progress=False)
    torch.manual_seed(123)
    save_model(build_model(tiny_config("iste")), ckpts["iste"])  # retrained, same file
    calls = count_calls(monkeypatch)
    evaluate(test_set, load_methods(["bicubic", str(ckpts["iste"])]), SCALES, tmp_path,
             protocol=protocol, progress=False)
    assert {name for name, _ in calls} == {"iste"} and len(calls) == 6
    calls.clear()
    evaluate(test_set, load_methods(["bicubic"]), SCALES, tmp_path,
             protocol=Protocol("gaussian-rgb", FAST), progress=False)
    assert len(calls) == 6
    calls.clear()
    evaluate(test_set, load_methods(["bicubic"]), SCALES, tmp_path,
             protocol=Protocol(options=FAST, metric_precision="uint8"), progress=False)
    assert len(calls) == 6


def test_float_and_uint8_scores_differ_only_by_the_rounding(tmp_path, data_dir, ckpts):
    test_set = open_test_set(str(data_dir))
    methods = load_methods([str(ckpts["iste"])])
    runs = {p: evaluate(test_set, methods, (2.0,), tmp_path / p, progress=False,
                        protocol=Protocol(options=FAST, metric_precision=p)).records
            for p in ("float", "uint8")}
    image = test_set.images[0].load()
    lr, hr = evaluation_pair(image, 2.0)
    sr = methods[0].upscale(lr, hr.shape[:2], options=FAST, dtype="float32")
    first = next(r for r in runs["float"] if r["image"] == test_set.images[0].name)
    assert first["psnr"] == pytest.approx(metrics.psnr(sr, hr, scale=2.0), abs=1e-9)
    rounded = next(r for r in runs["uint8"] if r["image"] == test_set.images[0].name)
    assert rounded["psnr"] == pytest.approx(metrics.psnr(
        np.round(sr * 255).astype(np.uint8), hr, scale=2.0), abs=1e-9)
    assert rounded["psnr"] != first["psnr"]


@pytest.mark.filterwarnings(f"ignore:{TORCHSCRIPT_NOTICE}")
def test_fid_runs_through_the_loop_with_a_torchscript_extractor(tmp_path, data_dir, ckpts):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

        def forward(self, x):
            return torch.relu(self.conv(x))  # (B, 8, h, w): averaged over h, w

    extractor = tmp_path / "tiny_extractor.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(extractor))
    out = tmp_path / "report"
    req = EvalRequest(str(data_dir), ("bicubic", str(ckpts["liif"])), out, scales=SCALES,
                      fid=extractor, options=FAST, figures=False, cost=False, progress=False)
    run_evaluation(req, log=lambda m: None)
    fid_rows = json.loads((out / "tables" / "table3_fid.json").read_text())["rows"]
    assert {(r["method"], r["scale"]) for r in fid_rows} == {
        (m, s) for m in ("bicubic", "liif") for s in SCALES}
    assert all(r["mean"] >= 0 for r in fid_rows)
    assert "**" in (out / "tables" / "table3_fid.md").read_text()


# --- tables ---------------------------------------------------------------------------------

def fake_records():
    rng = np.random.default_rng(0)
    recs = []
    for i in range(6):
        for scale in (2.0, 6.0, 2.4):
            base = rng.normal(25, 1)
            for name, dp, ds in (("bicubic", 0, 0), ("A", 2.0, -0.01), ("B", 1.0, 0.05)):
                recs.append({"method": name, "image": f"im{i}", "scale": scale,
                             "psnr": base + dp + rng.normal(0, 0.1),
                             "ssim": 0.7 + ds + rng.normal(0, 0.001)})
    return recs


def test_tables_bold_the_best_value_of_each_column_and_give_p_values(tmp_path):
    recs = fake_records()
    t1 = tables.integer_table(recs, ["bicubic", "A", "B"], [2.0, 6.0, 2.4], "A")
    t2 = tables.noninteger_table(recs, ["bicubic", "A", "B"], [2.0, 6.0, 2.4], "A")
    lines = t1.markdown.splitlines()
    row = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lines
           if line.startswith("| ") and " ± " in line}
    # columns: x2 PSNR, x2 SSIM, x6 PSNR, x6 SSIM: A has the best PSNR, B the best SSIM
    assert row["A"][0].startswith("**") and not row["B"][0].startswith("**")
    assert row["B"][1].startswith("**") and not row["A"][1].startswith("**")
    assert "×6† PSNR↑" in t1.markdown and "×2.4" not in t1.markdown and "×2.4" in t2.markdown
    assert "p-values" in t1.markdown and "against **A**" in t1.markdown
    best = {(r["method"], r["scale"], r["metric"]) for r in t1.rows if r["best"]}
    assert best == {("A", 2.0, "psnr"), ("B", 2.0, "ssim"), ("A", 6.0, "psnr"), ("B", 6.0, "ssim")}
    p = next(r["p_value"] for r in t1.rows if (r["method"], r["scale"], r["metric"])
             == ("bicubic", 2.0, "psnr"))
    assert p < 1e-3
    paths = tables.write_table(t1, tmp_path)
    with open(paths[1]) as f:
        assert len(list(csv.DictReader(f))) == len(t1.rows) == 3 * 2 * 2



def test_scales_that_six_digits_show_alike_keep_their_own_labels():
    """``:g`` showed x2.0000001 as "×2" in the non-integer table, and x2.4 and x2.40000001
    as two columns "×2.4" of different numbers."""
    recs = [{**r, "scale": {2.0: 2.0000001, 6.0: 2.40000001}.get(r["scale"], r["scale"])}
            for r in fake_records()]
    t2 = tables.noninteger_table(recs, ["bicubic", "A", "B"], [2.0000001, 2.4, 2.40000001], "A")
    header = t2.markdown.splitlines()[2].split(" | ")
    assert header[1:6:2] == ["×2.0000001 PSNR↑", "×2.4 PSNR↑", "×2.40000001 PSNR↑"]
    assert [tables.scale_label(s) for s in (2.0, 2.4, 1.5, 8.0)] == ["×2", "×2.4", "×1.5", "×8"]

def test_ablation_table_only_for_iste_checkpoints_that_differ(ckpts):
    methods = load_methods(["bicubic", str(ckpts["iste"]), str(ckpts["noltd"]), str(ckpts["liif"])])
    recs = [{"method": m.name, "image": f"im{i}", "scale": 2.0, "psnr": 20.0 + i + j,
             "ssim": 0.5} for i in range(3) for j, m in enumerate(methods)]
    t4 = tables.ablation_table(recs, methods, [2.0], "iste")
    assert t4 is not None
    assert "| iste | full | dual | ✓ | ✓ | ✓ | ✓ | ✓ |" in t4.markdown
    assert "| noltd | no-ltd | dual | ✓ | ✓ | ✓ | × | ✓ | **" in t4.markdown
    assert "liif" not in t4.markdown.split("p-values")[0]
    assert tables.ablation_table(recs, methods[:2] + methods[3:], [2.0], "iste") is None


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_every_paper_ablation_is_recognised_from_its_config(variant):
    flags = tables.ablation_flags({"head_args": ABLATIONS[variant]})
    assert tables._variant_name(flags) == variant


def test_figure_regions_go_where_the_texture_is():
    from iste.eval.figures import pick_region

    hr = np.full((80, 80, 3), 200, np.uint8)
    hr[50:70, 12:32] = texture(9, 20)
    r, c, s = pick_region(hr, 24, margin=8)
    assert s == 24 and 8 <= r and r + s <= 72 and 8 <= c and c + s <= 72
    assert r <= 50 and r + s >= 70 and c <= 12 and c + s >= 32


# --- test sets ------------------------------------------------------------------------------

def test_folders_use_hr_subfolders_when_present(tmp_path):
    for sub in ("HR/a", "LR/x2"):
        (tmp_path / sub).mkdir(parents=True)
    write_image(tmp_path / "HR/a/p1.png", texture(0))
    write_image(tmp_path / "HR/p0.tif", texture(1))
    write_image(tmp_path / "LR/x2/p1.png", texture(2, 20))
    test_set = open_test_set(str(tmp_path))
    assert [t.name for t in test_set.images] == ["HR/a/p1.png", "HR/p0.tif"]
    assert np.array_equal(test_set.images[1].load(), texture(1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no test images in folder"):
        open_test_set(str(tmp_path / "empty"))


def test_regions_of_a_whole_slide_image(tmp_path):
    import tifffile

    slide = texture(5, 128)
    tifffile.imwrite(tmp_path / "slide.tif", slide, tile=(64, 64), photometric="rgb")
    (tmp_path / "regions.csv").write_text("slide,x,y,width,height\nslide.tif,10,20,48,40\n")
    test_set = open_test_set(str(tmp_path / "regions.csv"))
    assert [t.name for t in test_set.images] == ["slide-x10-y20-w48-h40"]
    assert np.array_equal(test_set.images[0].load(), slide[20:60, 10:58])
    (tmp_path / "bad.json").write_text(json.dumps([{"slide": "slide.tif", "x": 100, "y": 0,
                                                    "width": 48, "height": 48}]))
    with pytest.raises(ValueError, match="outside"):
        open_test_set(str(tmp_path / "bad.json")).images[0].load()
    tiles = open_test_set(f"wsi:{tmp_path / 'slide.tif'}", tile=64, min_tissue=0.0)
    assert [t.name for t in tiles.images] == [f"slide-x{x}-y{y}-s64" for y in (0, 64)
                                              for x in (0, 64)]
    assert np.array_equal(tiles.images[3].load(), slide[64:, 64:])




def test_a_folder_image_read_image_refuses_is_found_when_the_folder_is_opened(tmp_path):
    """A 16-bit PNG or a truncated file among the test images: an error when the test set is
    opened (from the headers), not after the SRs of the images before it."""
    from PIL import Image

    from iste.data.images import ImageReadError

    root = texture_folder(tmp_path / "hr", n=2)
    Image.fromarray(texture(3)[..., 0].astype(np.uint16) * 257).save(root / "z16.png")
    with pytest.raises(ImageReadError, match="16-bit PNG"):
        open_test_set(str(root))
    (root / "z16.png").write_bytes((root / "img1.png").read_bytes()[:300])
    with pytest.raises(ImageReadError, match="truncated"):
        open_test_set(str(root))

@pytest.mark.parametrize("row, says", [
    ({"x": 0.7}, "x must be an integer, got 0.7"),  # was truncated to a region at x=0
    ({"width": True}, "width must be an integer, got True"),  # was a region 1 px wide
    ({"x": float("inf")}, "x must be an integer, got inf"),  # was an OverflowError traceback
    ({"y": 90}, r"region 1 \(x=0, y=90, width=48, height=40\) is outside slide.tif"),
])
def test_a_bad_region_is_refused_when_the_file_is_opened(tmp_path, row, says):
    import tifffile

    tifffile.imwrite(tmp_path / "slide.tif", texture(5, 128), tile=(64, 64), photometric="rgb")
    region = {"slide": "slide.tif", "x": 0, "y": 0, "width": 48, "height": 40}
    (tmp_path / "r.json").write_text(json.dumps([{**region, "width": 64.0}, {**region, **row}]))
    with pytest.raises(ValueError, match=says):  # not only when that region's image is read
        open_test_set(str(tmp_path / "r.json"))
    (tmp_path / "r.json").write_text(json.dumps([{**region, "width": 64.0}, [1, 2]]))
    with pytest.raises(ValueError, match="region 1 must be an object"):
        open_test_set(str(tmp_path / "r.json"))


def test_region_columns_that_are_not_read_are_named(tmp_path):
    # a "level" column (or a typo of an optional one) was ignored without a word
    import tifffile
    import warnings

    tifffile.imwrite(tmp_path / "slide.tif", texture(5, 128), tile=(64, 64), photometric="rgb")
    (tmp_path / "r.csv").write_text("slide,x,y,width,height,level,note\n"
                                    "slide.tif,0,0,48,40,1,tumour\n")
    with pytest.warns(UserWarning, match=r"r\.csv: columns level, note not read: a region is "
                                         r"its slide's level-0 slide, x, y, width, height"):
        assert len(open_test_set(str(tmp_path / "r.csv")).images) == 1
    (tmp_path / "r.csv").write_text("slide,x,y,width,height\nslide.tif,0,0,48,40,9\n")
    with pytest.raises(ValueError, match=r"region 0 has more values than the header names "
                                         r"columns \(9 left over\)"):
        open_test_set(str(tmp_path / "r.csv"))
    (tmp_path / "r.csv").write_text("slide,x,y,width,height\nslide.tif,0,0,48,40\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_test_set(str(tmp_path / "r.csv"))


@pytest.mark.parametrize("name, text, says", [
    # the last x was read: a region at x=64, not the file's x=0
    ("r.csv", "slide,x,y,width,height,x\nslide.tif,0,0,48,40,64\n",
     r"r\.csv names 'x' twice"),
    ("r.json", '[{"slide": "slide.tif", "x": 0, "y": 0, "width": 48, "height": 40, "x": 64}]',
     r"r\.json names 'x' twice"),
    # a misspelt column said "needs slide, x, y, width, height as integers ('width')"
    ("r.csv", "slide,x,y,widht,height\nslide.tif,0,0,48,40\n",
     r"region 0 has no width \(it has 'slide', 'x', 'y', 'widht', 'height'\)"),
    ("r.csv", "slide, x, y, width, height\nslide.tif,0,0,48,40\n",
     r"region 0 has no x, y, width, height \(it has 'slide', ' x', "),
    # regions without the header line: the first was read as one, and the run said
    # "no test images in r.csv", or "r.csv names '48' twice"
    ("r.csv", "slide.tif,0,0,48,40\n",
     r"r\.csv must begin with the header line slide,x,y,width,height: its first line is "
     r"'slide\.tif,0,0,48,40'"),
    ("r.csv", "slide.tif,0,0,48,48\nslide.tif,8,8,48,48\n",
     r"must begin with the header line slide,x,y,width,height"),
    # a short row said "height must be an integer, got None"
    ("r.csv", "slide,x,y,width,height\nslide.tif,0,0,48\n",
     r"region 0 has fewer values than the header names columns \(none for height\)"),
])
def test_a_regions_file_whose_columns_are_not_the_regions_is_refused(tmp_path, name, text,
                                                                     says):
    import tifffile

    tifffile.imwrite(tmp_path / "slide.tif", texture(5, 128), tile=(64, 64), photometric="rgb")
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=says):
        open_test_set(str(tmp_path / name))


def test_a_regions_file_with_a_byte_order_mark_is_read(tmp_path):
    # a spreadsheet's "CSV UTF-8" begins with one: its first column was '\ufeffslide', and
    # the file refused for want of a slide column
    import tifffile

    tifffile.imwrite(tmp_path / "slide.tif", texture(5, 128), tile=(64, 64), photometric="rgb")
    for name, text in (("r.csv", "slide,x,y,width,height\nslide.tif,0,0,48,40\n"),
                       ("r.json", '[{"slide": "slide.tif", "x": 0, "y": 0, "width": 48, '
                                  '"height": 40}]')):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        images = open_test_set(str(tmp_path / name)).images
        assert [im.name for im in images] == ["slide-x0-y0-w48-h40"]


def test_a_regions_files_slide_beyond_ascii_is_found_under_an_ascii_locale(tmp_path):
    # under PYTHONUTF8=0 LC_ALL=C the slide of "Schnitt_ä.tif,0,0,48,40" could not be
    # encoded: "region 0 needs slide, x, y, width, height as integers ('ascii' codec ...)"
    import os
    import subprocess
    import sys

    import tifffile

    tifffile.imwrite(tmp_path / "Schnitt_ä.tif", texture(5, 128), tile=(64, 64),
                     photometric="rgb")
    (tmp_path / "r.csv").write_bytes("slide,x,y,width,height\nSchnitt_ä.tif,0,0,48,40\n"
                                     .encode())
    code = ("import sys; from iste.eval.datasets import open_test_set; "
            "print(len(open_test_set(sys.argv[1]).images))")
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.csv")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr


def test_regions_of_two_slides_of_one_name_are_both_evaluated(tmp_path):
    import tifffile

    for folder, seed in (("case", 5), ("control", 6)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "slide.tif", texture(seed, 128), tile=(64, 64),
                         photometric="rgb")
    region = {"x": 0, "y": 0, "width": 48, "height": 40}
    rows = [{"slide": f"{f}/slide.tif", **region} for f in ("case", "control")]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    images = open_test_set(str(tmp_path / "r.json")).images  # not "the same region twice"
    assert [im.name for im in images] == ["case_slide-x0-y0-w48-h40",
                                          "control_slide-x0-y0-w48-h40"]
    assert not np.array_equal(images[0].load(), images[1].load())
    (tmp_path / "r.json").write_text(json.dumps(rows + rows[:1]))
    with pytest.raises(ValueError, match="lists the same region twice"):
        open_test_set(str(tmp_path / "r.json"))


# --- cost -----------------------------------------------------------------------------------

def test_cost_is_measured_in_a_subprocess(ckpts):
    from iste.eval.cost import cost_table, measure_costs

    rows = measure_costs([str(ckpts["liif"])], device="cpu", repeats=1, sides=(24,),
                         workload="output")
    assert len(rows) == 1
    row = rows[0]
    assert row.method == "liif" and row.query == 24 and row.params > 0
    assert row.time_ms > 0 and row.peak_mb >= 0 and math.isfinite(row.peak_mb)
    assert "| 24 × 24 | liif |" in cost_table(rows).markdown


def test_table_8_measures_query_batches_as_the_paper(ckpts):
    from iste.eval.cost import cost_table, measure_costs, measure_one

    # a 12 x 12 input (x2 output 24 x 24) keeps the test quick; the report uses 96 x 96
    rows = measure_costs([str(ckpts["iste"])], device="cpu", repeats=1, sides=(24,),
                         lr_side=12)
    assert [(r.workload, r.query) for r in rows] == [("query-batch", 24)]
    assert rows[0].time_ms > 0 and rows[0].encode_ms > 0
    table = cost_table(rows)
    assert table.key == "table8_cost" and "| 24² = 576 | iste |" in table.markdown
    with pytest.raises(ValueError, match="exceeds the x2 output"):
        measure_one(str(ckpts["iste"]), side=25, device="cpu", repeats=1,
                    workload="query-batch", lr_side=12)


def test_the_builtin_sample_test_set():
    test_set = open_test_set("sample:cmu-test")
    names = [t.name for t in test_set.images]
    assert names[-2:] == ["wsidicom-tile", "slideflow-tile"]
    assert len(names) == len(set(names)) >= 3
    assert all(n.startswith("cmu-") for n in names[:-2])
    assert test_set.images[0].load().shape == (256, 256, 3)
    assert len(open_test_set("sample:cmu-test", max_images=2).images) == 2


def test_an_untrained_default_is_identified_by_its_architecture(monkeypatch):
    import iste.default_model as default_model

    def fake_default(head):
        def load(device="cpu"):
            model = build_model(tiny_config(head))
            model.checkpoint_meta = {"untrained": True}
            return model.to(device).eval()
        return load

    monkeypatch.setattr(default_model, "default_weights_path", lambda: None)
    prints = {}
    for head in ("iste", "liif", "iste"):
        monkeypatch.setattr(default_model, "load_default", fake_default(head))
        method = load_methods(["default"])[0]
        assert method.untrained and method.name == "default"
        prints.setdefault(head, set()).add(method.fingerprint)
    assert len(prints["iste"]) == 1 and prints["iste"] != prints["liif"]


def test_a_kept_sr_images_sha256_is_of_the_bytes_written_not_read_back(tmp_path, monkeypatch):
    # it was read back after the rename: a PNG another process put there in between was
    # recorded as this result's, and served as its SR image
    import hashlib

    from iste import files
    from iste.eval.runner import ResultCache

    cache = ResultCache(tmp_path / "cache", Protocol())
    stem = cache.stem("liif", "f" * 16, "img", "d" * 16, 2.0)
    sr = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    replace, landed = files.os.replace, []

    def others_land_after(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if str(dst).endswith(".png") and not landed:
            landed.append(dst)
            write_image(dst, 255 - sr)  # another process's result, written just after ours

    monkeypatch.setattr(files.os, "replace", others_land_after)
    record = ResultCache.write(stem, {"method": "liif", "image": "img", "scale": 2.0,
                                      "psnr": 30.0, "ssim": 0.9}, sr=sr)
    monkeypatch.undo()
    png = stem.parent / f"{stem.name}.png"
    theirs = png.read_bytes()
    write_image(png, sr)  # ours again: the record names these bytes
    assert record["files"][".png"] == hashlib.sha256(png.read_bytes()).hexdigest()
    assert ResultCache.side_file(stem, record, ".png") == png
    png.write_bytes(theirs)
    assert ResultCache.side_file(stem, record, ".png") is None


def test_the_model_column_names_variants_as_the_paper_does(tmp_path):
    # the report said "lit + edsr-baseline" for CLIT and "iste + ..." for every ablation
    configs = {"clit": tiny_config("lit", stages=2), "lit": tiny_config("lit"),
               "full": tiny_config("iste"), "no-lfi": tiny_config("iste", lfi=False),
               "odd": tiny_config("iste", lfi=False, ltd=False),
               "liif": tiny_config("liif", "swinir")}
    specs = [f"{name}={save_model(build_model(cfg), tmp_path / f'{name}.safetensors')}"
             for name, cfg in configs.items()]
    seen = {m.name: m.architecture for m in load_methods(specs)}
    assert seen == {"clit": "CLIT + edsr-baseline", "lit": "LIT + edsr-baseline",
                    "full": "ISTE + edsr-baseline", "no-lfi": "ISTE (no-lfi) + edsr-baseline",
                    "odd": "ISTE (lfi=False, ltd=False) + edsr-baseline",
                    "liif": "LIIF + swinir"}


def test_the_cache_gitignore_is_written_atomically_and_again_when_torn(tmp_path):
    # written in place, a full disk left it empty (kept so by every rerun: the cache was no
    # longer ignored) and the error said only '[Errno 28] No space left on device'. The file
    # size limit stands for the full disk (EFBIG)
    import resource
    import signal

    from iste.eval.runner import ResultCache
    from iste.refusals import FileTooLargeError

    root = tmp_path / "cache"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    action = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, hard))
    try:
        with pytest.raises(FileTooLargeError, match=r"cache/\.gitignore: file too large"):
            ResultCache(root, Protocol())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, action)
    assert not root.exists()  # no torn file, no temporary, no empty folder made for them
    root.mkdir()
    (root / ".gitignore").write_text("")  # as an older iste left it on a full disk
    ResultCache(root, Protocol())
    assert "*" in (root / ".gitignore").read_text().splitlines()



def test_cost_times_are_medians_of_an_even_number_of_runs_too(ckpts, monkeypatch):
    """Of 2 (or 4) timed runs Table 8 showed the slower (the upper middle one) as the
    "median"; the encoding time came from that same run."""
    from iste.eval import cost

    times = iter([(9.0, 9.0), (3.0, 0.1), (1.0, 0.3)])  # the warm-up, then 2 timed runs
    monkeypatch.setattr(cost, "_query_batch_call", lambda *a: lambda sync: next(times))
    row = cost.measure_one(str(ckpts["iste"]), side=24, device="cpu", repeats=2,
                           workload="query-batch", lr_side=12)
    assert (row["time_ms"], row["encode_ms"]) == pytest.approx((2000.0, 200.0))
    assert cost.median_times([(4.0, 0.4), (1.0, 0.1), (2.0, 0.2), (9.0, 0.0)]) == \
        pytest.approx((3.0, 0.15))


def test_the_default_reference_is_the_full_iste_even_after_an_ablation(tmp_path, ckpts):
    """An ablation listed before the full model was the reference of every table and t-test
    (the first ISTE head); the paper compares everything to the full ISTE."""
    from iste.eval.report import default_reference

    ablation, full, liif = (str(ckpts[k]) for k in ("noltd", "iste", "liif"))
    assert default_reference(load_methods(["bicubic", ablation, full, liif])) == "iste"
    assert default_reference(load_methods(["bicubic", ablation, liif])) == "noltd"
    assert default_reference(load_methods(["bicubic", liif])) == "liif"


@pytest.mark.parametrize("name, text, says", [
    # "" is the regions file's folder: "cannot open slide FOLDER: not a regular file"
    ("r.json", '[{"slide": "", "x": 0, "y": 0, "width": 8, "height": 8}]',
     r"r\.json: region 0: slide must be a path, got ''"),
    ("r.json", '[{"slide": null, "x": 0, "y": 0, "width": 8, "height": 8}]',
     r"region 0: slide must be a path, got None"),  # was "slide not found: .../None"
    ("r.csv", "slide,x,y,width,height\nslide.tif,0,0,8,8\nr.csv,0,0,8,8\n",
     r"r\.csv: region 1: cannot open slide"),  # the row was not named
    # a bare ValueError naming no file, and a RecursionError traceback
    ("r.json", '[{"slide": "slide.tif", "x": ' + "9" * 5000 + ', "y": 0, "width": 8, '
               '"height": 8}]', r"cannot read regions file .*r\.json: Exceeds the limit"),
    ("r.json", "[" * 100_000 + "]" * 100_000, r"cannot read regions file .*: nested too deeply"),
])
def test_a_regions_files_hostile_rows_name_the_file_and_row(tmp_path, name, text, says):
    import tifffile

    tifffile.imwrite(tmp_path / "slide.tif", texture(5, 128), tile=(64, 64), photometric="rgb")
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=says):
        open_test_set(str(tmp_path / name))
