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
from iste.cli.main import main
from iste.data import metrics
from iste.data.degrade import evaluation_pair
from iste.data.images import read_image
from iste.eval.datasets import open_test_set
from iste.eval.methods import load_methods
from iste.eval.published import flip_pad, published_upscale
from iste.eval.protocol import Protocol
from iste.eval.runner import evaluate

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
