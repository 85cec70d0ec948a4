"""``iste eval --degradation``: compressed LR in the evaluation, its cache keys and report."""

import json

import pytest

from eval_helpers import run_error, smooth_tile_folder
from iste.cli.main import main
from iste.eval.protocol import Protocol


@pytest.fixture()
def data_dir(tmp_path):
    return smooth_tile_folder(tmp_path / "data", n=2, base=8, size=64)


def _psnr(out):
    return {(r["image"], r["scale"]): r["psnr"]
            for r in json.loads((out / "results.json").read_text())}


def test_jpeg_degradation_lowers_bicubic_and_is_reported(tmp_path, data_dir):
    args = ["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
            "--no-cost", "--no-figures", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "paper")]) == 0
    assert main([*args, "--out", str(tmp_path / "q30"), "--degradation", "jpeg30"]) == 0
    paper, q30 = _psnr(tmp_path / "paper"), _psnr(tmp_path / "q30")
    assert paper.keys() == q30.keys() and all(q30[k] < paper[k] for k in paper)
    report = (tmp_path / "q30" / "report.md").read_text()
    assert "JPEG-compressed at quality 30" in report
    assert "JPEG-compressed" not in (tmp_path / "paper" / "report.md").read_text()


def test_degradation_is_part_of_the_cache_key_but_paper_keeps_its_keys():
    paper = Protocol().fingerprint()
    assert Protocol(degradation="paper").fingerprint() == paper and "degradation" not in paper
    assert Protocol(degradation="jpeg75").fingerprint() \
        != Protocol(degradation="jpeg90").fingerprint()


@pytest.mark.parametrize("name,message", [("scanner", "random"), ("jpeg200", "quality"),
                                          ("gauss", "unknown degradation")])
def test_bad_degradations_are_one_line_errors(tmp_path, data_dir, name, message, capsys):
    err = run_error(["eval", "--data", str(data_dir), "--methods", "bicubic", "--scales", "2",
                     "--out", str(tmp_path / "o"), "--degradation", name, "--no-progress"], capsys)
    assert message in err
    assert not (tmp_path / "o").exists()
