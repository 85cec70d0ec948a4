"""The shipped default model: present, trained, and better than bicubic on held-out H&E."""

import warnings

import numpy as np
import pytest

import iste
from iste.data.degrade import bicubic_upscale, crop_to_scale, degrade
from iste.data.metrics import psnr
from iste.default_model import UntrainedModelWarning, compact_config, default_weights_path
from iste.slides.samples import cmu_test_images


def test_default_weights_are_shipped_and_match_the_bundled_config():
    assert default_weights_path() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        model = iste.load(device="cpu")
    assert model.model_config == compact_config()


def test_the_shipped_weights_are_the_release_the_model_card_names():
    from pathlib import Path

    from iste.default_model import DEFAULT_SHA256
    from iste.digest import sha256_file

    assert sha256_file(default_weights_path()) == DEFAULT_SHA256
    card = (Path(__file__).parents[1] / "docs" / "model-card.md").read_text()
    assert f"| sha256 | `{DEFAULT_SHA256}`" in card


def test_damaged_shipped_weights_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    # one flipped byte in a tensor still loads (safetensors checks the layout only): iste
    # upscale used the damaged weights without a word
    from iste import default_model
    from iste.cli.main import main
    from iste.data.imagewrite import write_image
    from iste.models.checkpoint import load_model

    data = bytearray(default_weights_path().read_bytes())
    data[-100] ^= 0x40
    damaged = tmp_path / "default.safetensors"
    damaged.write_bytes(bytes(data))
    load_model(damaged)  # loads: only the digest tells
    monkeypatch.setattr(default_model, "_installed_weights", lambda: damaged)
    write_image(tmp_path / "in.png", np.full((24, 24, 3), 128, np.uint8))
    assert main(["upscale", str(tmp_path / "in.png"), "-s", "2", "-o",
                 str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"iste: error: the shipped default weights {damaged} are not "
                              "the release's (sha256 ")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("damage", ["missing", "a folder", "a link to nothing",
                                    "unreadable"])
def test_missing_or_unreadable_shipped_weights_are_an_error_not_a_random_model(
        tmp_path, monkeypatch, capsys, damage):
    # a folder in place of the weights (or none at all) upscaled with a RANDOM-INITIALISED
    # model, exit 0, one warning line: a folder run's outputs were all garbage
    from iste import default_model, digest
    from iste.cli.main import main
    from iste.data.imagewrite import write_image

    weights = tmp_path / "weights" / "default.safetensors"
    weights.parent.mkdir()
    if damage == "a folder":
        weights.mkdir()
    elif damage == "a link to nothing":
        weights.symlink_to(tmp_path / "gone.safetensors")
    elif damage == "unreadable":  # permission denied (the tests may run as root)
        weights.write_bytes(default_weights_path().read_bytes())

        def refused(path):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(digest, "sha256_file", refused)
        monkeypatch.setattr(default_model, "sha256_file", refused)
    monkeypatch.setattr(default_model, "_installed_weights", lambda: weights)
    monkeypatch.delenv("ISTE_UNTRAINED_DEFAULT", raising=False)
    write_image(tmp_path / "in.png", np.full((24, 24, 3), 128, np.uint8))
    args = ["upscale", str(tmp_path / "in.png"), "-s", "2", "-o", str(tmp_path / "out.png")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    says = {"missing": "no trained default weights are installed",
            "a folder": "are a folder, not the release's weights file",
            "a link to nothing": "are a link to nothing",
            "unreadable": "cannot read the shipped default weights"}[damage]
    assert len(err) == 1 and says in err[0] and "--model" in err[0], err
    assert not (tmp_path / "out.png").exists()
    monkeypatch.setenv("ISTE_UNTRAINED_DEFAULT", "1")  # asked for: only where none is there
    if damage == "missing":
        with pytest.warns(UntrainedModelWarning):
            assert main([*args, "-q"]) == 0
    else:
        assert main(args) == 2


def test_default_model_beats_bicubic_on_a_held_out_tile():
    name, tile = cmu_test_images()[0]
    hr = crop_to_scale(tile[:128, :128], 2.0)
    lr = degrade(hr, 2.0)
    sr = iste.upscale(lr, 2.0, iste.load(device="cpu"))
    base = bicubic_upscale(lr, hr.shape[:2])
    assert sr.shape == hr.shape and sr.dtype == np.uint8
    assert psnr(sr, hr, scale=2.0) > psnr(base, hr, scale=2.0) + 1.0, name


def test_default_model_beats_bicubic_on_a_jpeg_compressed_held_out_tile():
    # The held-out wsidicom tile (never trained on), paper degradation then JPEG q75 4:2:0:
    # the shipped scanner-iste v3 gains 1.65 dB here (v2: 1.55, v1: 1.38, compact-iste: 0.85 dB).
    from iste.data.degradations import degradation_pair, parse_degradation
    from iste.data.samples import extra_test_images

    name, tile = extra_test_images()[0]
    lr, hr = degradation_pair(tile[:160, :160], 2.0, parse_degradation("jpeg75"))
    sr = iste.upscale(lr, 2.0, iste.load(device="cpu"))
    base = bicubic_upscale(lr, hr.shape[:2])
    assert psnr(sr, hr, scale=2.0) > psnr(base, hr, scale=2.0) + 1.0, name


def test_the_api_returns_the_clamped_float_prediction_that_rounds_to_the_uint8_output():
    name, tile = cmu_test_images()[0]
    lr = tile[:37, :41]
    model = iste.load(device="cpu")
    sr8 = iste.upscale(lr, 2.5, model)
    srf = iste.upscale(lr, 2.5, model, dtype="float32")
    assert srf.shape == sr8.shape == (round(37 * 2.5), round(41 * 2.5), 3)
    assert srf.dtype == np.float32 and 0 <= srf.min() and srf.max() <= 1
    assert np.array_equal(np.round(srf * 255).astype(np.uint8), sr8)
    assert np.abs(srf * 255 - sr8).max() > 0.01  # not already quantised
