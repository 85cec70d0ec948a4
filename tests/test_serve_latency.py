"""The viewer latency study (iste.serve.latency, `iste bench --sections viewer`): what it
times is the server's path, its kinds and figures are all there, the pixels of the shared
path equal the tile alone, and the table shows them. Nothing is timed against a bound."""

import json

import pytest
import torch

from iste.bench import report
from iste.models.registry import build_model
from iste.serve.latency import KINDS, SCALES, summary_ms, viewer_study
from model_zoo import tiny_config
from slide_data import pyramid_tiff


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_config("iste")).eval()
    lines = []
    got = viewer_study(model, pyramid_tiff(tmp_path_factory), views=1, view_size=2,
                       log=lines.append)
    return got, lines


def test_every_scale_has_cold_warm_and_alone_figures_and_x4_the_deeper_tiles(study):
    got, lines = study
    assert set(got["ms"]) == {f"x{s:g}" for s in SCALES}
    for scale, row in got["ms"].items():
        assert row["cold"]["n"] == 1 and row["warm"]["n"] == 3  # a 2 x 2 view
        assert row["alone"]["n"] == row["cold"]["n"] + row["warm"]["n"] + (
            row["deeper"]["n"] if "deeper" in row else 0)
        for kind in KINDS:
            if kind in row:  # a few tiles each: no p95, their largest
                assert 0 < row[kind]["p50"] <= row[kind]["max"] and row[kind]["p95"] is None
    assert got["ms"]["x4"]["deeper"]["n"] == 4
    assert list(got["ms"]) == ["x2", "x3.3", "x4"]
    for row in got["ms"].values():  # a view's seconds: its tiles one after another
        assert row["view s (median)"] > 0 and row["view alone s (median)"] > 0
    assert "alone, chunks in turn" not in got["ms"]["x2"]  # only with in_turn
    assert got["max_abs_diff_8bit"] <= 1  # the shared path renders the tile alone's pixels
    assert got["ahead"] is True and got["store_mb"] > 0
    assert sum(line.startswith("warm ") for line in lines) == 9
    json.dumps(got)  # the bench writes it as JSON


def test_the_study_renders_in_the_precision_asked_for(study, tmp_path_factory, monkeypatch):
    """``precision`` as ``iste serve --precision``: auto resolves per model (fp32 for this
    narrow one), and bf16 reaches the server's renders."""
    import iste.serve.pixels

    assert study[0]["precision"] == "fp32"
    seen = []
    real = iste.serve.pixels.Upscaler.for_model

    def for_model(model, **kwargs):
        upscaler = real(model, **kwargs)
        seen.append(upscaler.options.precision)
        return upscaler

    monkeypatch.setattr(iste.serve.pixels.Upscaler, "for_model", for_model)
    got = viewer_study(build_model(tiny_config("iste")).eval(), pyramid_tiff(tmp_path_factory),
                       views=1, view_size=2, alone=False, precision="bf16")
    assert got["precision"] == "bf16" and seen == ["bf16"]


def test_the_bench_table_shows_each_scale(study):
    got, _ = study
    text = report.viewer_table(got)
    for scale, row in got["ms"].items():
        line = next(li for li in text.splitlines() if li.startswith(f"| {scale} "))
        assert f"{row['cold']['p50']} / – (n=1, max {row['cold']['max']})" in line
        assert f"{row['warm']['p50']} / – (n=3, max {row['warm']['max']})" in line
        assert f"{row['view s (median)']:.1f} / {row['view alone s (median)']:.1f}" in line
        ratios = row["alone/shared (median of pairs)"]  # one per kind rendered alone too
        assert set(ratios) == {"cold", "warm"} | ({"deeper"} if "deeper" in row else set())
        assert f"warm {ratios['warm']:.2f}" in line and all(v > 0 for v in ratios.values())
    assert "Largest 8-bit difference between the paths: " in text


def test_a_p95_needs_twenty_samples_and_the_table_names_the_count():
    # one cold tile was shown as "p50 / p95" = "812 / 812": a distribution of one sample
    one = summary_ms([0.812])
    assert one == {"n": 1, "p50": 812, "p95": None, "max": 812}
    few = summary_ms([0.1, 0.2, 0.3, 0.9])  # nearest rank 95 % of 4 is the largest
    assert few["p95"] is None and few["p50"] == 250 and few["max"] == 900
    many = summary_ms([k / 1000 for k in range(1, 21)])  # 1 .. 20 ms
    assert many == {"n": 20, "p50": 10, "p95": 19, "max": 20}  # rank round(0.95 * 19) = 18
    row = {"cold": one, "warm": many, "view s (median)": 1.0}
    line = report.viewer_table({"ms": {"x2": row}}).splitlines()[2]
    assert "812 / – (n=1, max 812)" in line and "10 / 19 (n=20)" in line


def test_a_view_size_without_an_order_is_refused(tmp_path):
    with pytest.raises(ValueError, match="view size"):
        viewer_study(build_model(tiny_config("iste")).eval(), tmp_path / "none.tiff",
                     view_size=5)
