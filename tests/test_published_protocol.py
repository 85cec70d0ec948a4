"""``iste eval --protocol published`` scores what the published test.py prints (golden numbers).

tests/fixtures/published_protocol/test_py_psnr.json holds the PSNRs that the published
``test.py`` (``eval_psnr``, eval type ``histo-2``, window 8) computed on the three images of
``images/`` with the ISTE of tests/fixtures/official (random weights), for two query chunk
sizes; README.md there says how they were made. Here the same weights go through
``iste convert-official`` and our evaluation loop.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import iste
from iste.api import upscale_to
from iste.cli.main import main
from iste.data import metrics
from iste.data.coords import make_coord
from iste.data.degrade import evaluation_pair
from iste.data.images import read_image
from iste.eval.datasets import open_test_set
from iste.eval.methods import load_methods
from iste.engine.render import QueryOptions
from iste.eval.published import flip_pad, padded_axis, published_upscale
from iste.eval.protocol import Protocol
from iste.eval.runner import evaluate
from iste.models.registry import build_model
from model_zoo import tiny_config

ROOT = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((ROOT / "published_protocol" / "test_py_psnr.json").read_text())
IMAGES = ROOT / "published_protocol" / "images"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("published")
    data = load_file(str(ROOT / "official" / "iste.safetensors"))
    spec = json.loads((ROOT / "official" / "iste.json").read_text())["model"]
    sd = {k[3:]: v.float() for k, v in data.items() if k.startswith("sd.")}
    torch.save({"model": {**spec, "sd": sd}}, tmp / "iste.pth")
    out = tmp / "iste.safetensors"
    assert main(["convert-official", str(tmp / "iste.pth"), "-o", str(out)]) == 0
    return out


def test_the_published_protocol_scores_what_the_published_test_prints(converted, tmp_path):
    golden = GOLDEN["results"]["30000"]
    outcome = evaluate(open_test_set(str(IMAGES)), load_methods([str(converted)]), (2.0,),
                       tmp_path, protocol=Protocol(geometry="published"), progress=False)
    ours = {r["image"]: r["psnr"] for r in outcome.records}
    assert set(ours) == set(golden["per_image_psnr"])
    for name, expected in golden["per_image_psnr"].items():
        assert ours[name] == pytest.approx(expected, abs=1e-3), name
    assert np.mean(list(ours.values())) == pytest.approx(golden["mean_psnr"], abs=0.01)


def test_the_query_chunk_is_the_key_set_as_in_the_published_test(converted):
    # 1000-query chunks: a different STF key set, a different score (by up to ~3e-3 dB here)
    model = iste.load(converted, device="cpu")
    small, large = GOLDEN["results"]["1000"], GOLDEN["results"]["30000"]
    for name, expected in small["per_image_psnr"].items():
        lr, hr = evaluation_pair(read_image(IMAGES / name), 2.0)
        sr = published_upscale(model, lr, hr.shape[:2], 2.0, chunk=1000)
        got = metrics.psnr(sr, hr, scale=2.0, border=metrics.PUBLISHED_BORDER)
        assert got == pytest.approx(expected, abs=1e-3), name
    diffs = [abs(small["per_image_psnr"][n] - large["per_image_psnr"][n])
             for n in small["per_image_psnr"]]
    assert max(diffs) > 1e-3  # the golden numbers themselves tell the chunk sizes apart


def test_flip_pad_mirrors_to_the_next_multiple_of_8_always_adding_at_least_one():
    lr = torch.arange(2 * 3 * 5 * 16, dtype=torch.float32).view(2, 3, 5, 16)
    out = flip_pad(lr)
    assert out.shape == (2, 3, 8, 24)  # 5 -> 8; 16 (already a multiple) -> 24
    assert torch.equal(out[..., :5, :16], lr)
    assert torch.equal(out[..., 5:8, :16], lr.flip(-2)[..., :3, :])
    assert torch.equal(out[..., :5, 16:], lr.flip(-1)[..., :8])
    with pytest.raises(ValueError, match="too small"):
        flip_pad(torch.zeros(1, 3, 3, 20))


@pytest.mark.parametrize("scale", [2.4, 3.3])
def test_at_non_integer_scales_the_padded_grid_lies_on_the_hr_pixels(scale):
    # the published grid cannot be built there (scale * (h + pad) is no integer); it was
    # round(scale * h_pad) centres spread over the padded LR, so the first H of them drifted up
    # to ~0.4 HR px off the HR pixels scored against (-1.2 dB on a 95 x 133 tile at x2.4).
    # Away from the padded edge, a model without key sets must give our engine's SR there.
    torch.manual_seed(0)
    model = build_model(tiny_config("liif")).eval()
    lr = np.random.default_rng(0).integers(0, 256, (30, 37, 3), dtype=np.uint8)
    hr_hw = (round(30 * scale), round(37 * scale))
    published = published_upscale(model, lr, hr_hw, scale)
    ours = upscale_to(lr, hr_hw, model, options=QueryOptions(precision="fp32"), dtype="float32")
    inner = int(8 * scale)  # the padding and the encoder's reach stay below and right of this
    assert published.shape == ours.shape == (*hr_hw, 3)
    np.testing.assert_allclose(published[:-inner, :-inner], ours[:-inner, :-inner], atol=1e-5)


def test_the_padded_grid_is_the_published_make_coord_at_integer_scales():
    for lr, padded in [(37, 40), (32, 40), (25, 32)]:
        for scale in (2, 3, 4, 6, 8):
            centres, cell = padded_axis(lr, padded, scale * lr)
            assert torch.equal(centres, make_coord((scale * padded, 1))[:, 0])
            assert cell == 2 / padded / float(scale)


def test_published_results_are_not_taken_from_a_cache_of_the_old_grid():
    assert "published_grid" in Protocol(geometry="published").fingerprint()
    assert "published_grid" not in Protocol().fingerprint()  # our geometry keeps its keys


def test_a_published_report_says_where_the_grid_is_not_the_published_codes():
    from types import SimpleNamespace

    from iste.eval.report_text import _models_line

    def line(scales):
        request = SimpleNamespace(geometry="published", scales=scales, options=QueryOptions())
        return _models_line(request, "", "precision=fp32", [])

    assert "non-integer" in line((2.0, 2.4)) and "non-integer" not in line((2.0, 3.0))
