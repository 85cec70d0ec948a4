"""Named degradations (paper, scanner, mixed, jpeg<Q>) and reading scanners' JPEG settings."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from iste.data.degrade import degrade, evaluation_pair
from iste.data.degradations import degradation_pair, parse_degradation
from iste.data.jpeg import (estimate_quality, jpeg_encode, jpeg_roundtrip, jpeg_settings_of_file,
                            parse_jpeg_settings)


def _tissue_like(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([150 + 60 * np.sin(0.3 * xx + c) * np.cos(0.21 * yy) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name,kind,quality,mode", [
    ("paper", "paper", 0, "ycbcr420"), ("scanner", "scanner", 0, "ycbcr420"),
    ("mixed", "mixed", 0, "ycbcr420"), ("jpeg75", "jpeg", 75, "ycbcr420"),
    ("JPEG90-rgb", "jpeg", 90, "rgb"),
])
def test_names_parse(name, kind, quality, mode):
    d = parse_degradation(name)
    assert (d.kind, d.quality, d.mode) == (kind, quality, mode)


@pytest.mark.parametrize("name,kind,quality_low,fraction", [
    ("scanner", "scanner", 40, 1.0), ("mixed", "mixed", 40, 0.5),
    ("scanner-q30", "scanner", 30, 1.0), ("mixed-j70", "mixed", 40, 0.7),
    ("mixed-q30-j70", "mixed", 30, 0.7), ("Mixed-q1-j0", "mixed", 1, 0.0),
])
def test_random_names_carry_their_quality_range_and_fraction(name, kind, quality_low, fraction):
    d = parse_degradation(name)
    assert (d.kind, d.quality_low, d.jpeg_fraction, d.is_random) == \
        (kind, quality_low, fraction, True)


@pytest.mark.parametrize("name", ["jpeg", "jpeg0", "jpeg101", "jpeg75-ycc", "blur", "",
                                  "scanner-j50", "mixed-q0", "mixed-q96", "mixed-j101",
                                  "mixed-j70-q30", "paper-q30"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="degradation"):
        parse_degradation(name)


@pytest.mark.parametrize("name", ["scanner", "mixed", "mixed-q30-j70"])
def test_evaluation_refuses_random_degradations(name):
    with pytest.raises(ValueError, match="random") as refused:
        parse_degradation(name, allow_random=False)
    for offered in ("paper", "jpeg<Q>-rgb", "-deblock"):  # every fixed name it takes
        assert offered in str(refused.value)
    with pytest.raises(ValueError, match="random"):
        degradation_pair(_tissue_like(), 2.0, parse_degradation(name))


def test_paper_pair_is_the_published_protocol():
    img = _tissue_like(97)
    for scale in (2.0, 3.3):
        lr, hr = degradation_pair(img, scale, parse_degradation("paper"))
        ref_lr, ref_hr = evaluation_pair(img, scale)
        assert np.array_equal(lr, ref_lr) and np.array_equal(hr, ref_hr)


def test_fixed_jpeg_is_paper_then_jpeg():
    img = _tissue_like()
    lr, hr = degradation_pair(img, 2.0, parse_degradation("jpeg60"))
    paper = degrade(hr, 2.0, lr.shape[:2])
    assert np.array_equal(lr, jpeg_roundtrip(paper, 60))
    assert not np.array_equal(lr, paper)
    rgb, _ = degradation_pair(img, 2.0, parse_degradation("jpeg60-rgb"))
    assert np.array_equal(rgb, jpeg_roundtrip(paper, 60, "rgb")) and not np.array_equal(rgb, lr)


def test_lower_quality_loses_more():
    img = _tissue_like(128)
    paper, _ = degradation_pair(img, 2.0, parse_degradation("paper"))
    errors = [np.abs(degradation_pair(img, 2.0, parse_degradation(f"jpeg{q}"))[0].astype(float)
                     - paper).mean() for q in (95, 75, 40)]
    assert errors[0] < errors[1] < errors[2]


def test_scanner_is_a_pure_function_of_the_generator():
    hr = _tissue_like()
    scanner = parse_degradation("scanner")
    a = scanner.apply(hr, 2.0, (48, 48), np.random.default_rng([3, 7]))
    b = scanner.apply(hr, 2.0, (48, 48), np.random.default_rng([3, 7]))
    c = scanner.apply(hr, 2.0, (48, 48), np.random.default_rng([3, 8]))
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    paper = degrade(hr, 2.0, (48, 48))
    assert 0 < np.abs(a.astype(float) - paper).mean() < 12  # degraded, but mildly
    with pytest.raises(ValueError, match="generator"):
        scanner.apply(hr, 2.0, (48, 48))


def test_mixed_fraction_sets_how_often_crops_are_compressed():
    hr = _tissue_like()
    paper = degrade(hr, 2.0, (48, 48))

    def paper_count(name):
        d = parse_degradation(name)
        return sum(np.array_equal(d.apply(hr, 2.0, (48, 48), np.random.default_rng(i)), paper)
                   for i in range(40))

    assert paper_count("mixed-j0") == 40 and paper_count("mixed-j100") == 0
    assert paper_count("mixed-j80") < paper_count("mixed")
    # the plain name keeps its draws: the same crops as an explicit 50 %
    a, b = parse_degradation("mixed"), parse_degradation("mixed-j50")
    assert all(np.array_equal(a.apply(hr, 2.0, (48, 48), np.random.default_rng(i)),
                              b.apply(hr, 2.0, (48, 48), np.random.default_rng(i)))
               for i in range(10))


def test_lower_quality_floor_compresses_harder_on_average():
    hr = _tissue_like()
    paper = degrade(hr, 2.0, (48, 48)).astype(float)

    def mean_error(name):
        d = parse_degradation(name)
        return np.mean([np.abs(d.apply(hr, 2.0, (48, 48), np.random.default_rng(i)) - paper).mean()
                        for i in range(20)])

    assert mean_error("scanner-q5") > 1.2 * mean_error("scanner")


def test_mixed_is_paper_about_half_the_time():
    hr = _tissue_like()
    paper = degrade(hr, 2.0, (48, 48))
    mixed = parse_degradation("mixed")
    same = [np.array_equal(mixed.apply(hr, 2.0, (48, 48), np.random.default_rng(i)), paper)
            for i in range(40)]
    assert 8 <= sum(same) <= 32


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 100])
def test_quality_is_read_back_from_pil_and_libjpeg_streams(quality):
    img = _tissue_like(64)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    pil = parse_jpeg_settings(buf.getvalue())
    assert (pil.quality, pil.table_error, pil.subsampling, pil.colour) == \
        (quality, 0.0, "4:2:0", "YCbCr")
    rgb = parse_jpeg_settings(jpeg_encode(img, quality, "rgb"))
    assert (rgb.quality, rgb.subsampling, rgb.colour, rgb.tables) == (quality, "4:4:4", "RGB", 1)


def test_estimate_quality_of_a_scaled_table_is_nearest():
    from iste.data.jpeg import _ijg_table

    assert estimate_quality(_ijg_table(62))[0] == 62
    assert estimate_quality(_ijg_table(62) + 0.4)[0] == 62


def test_settings_of_a_tiled_jpeg_tiff_and_of_a_png(tmp_path):
    img = _tissue_like(64)
    tiff = tmp_path / "scan.tif"
    tifffile.imwrite(tiff, img, tile=(32, 32), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 65})
    settings = jpeg_settings_of_file(tiff)
    assert settings is not None and settings.quality == 65 and settings.colour in ("RGB", "YCbCr")
    png = tmp_path / "tile.png"
    Image.fromarray(img).save(png)
    assert jpeg_settings_of_file(png) is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, img)
    assert jpeg_settings_of_file(plain) is None



def test_a_jfif_marker_decides_the_colour_over_an_adobe_one_as_in_libjpeg():
    img = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=80)
    jfif = buf.getvalue()
    assert jfif[2:4] == b"\xff\xe0"  # SOI then the JFIF APP0
    app0_end = 4 + int.from_bytes(jfif[4:6], "big")
    adobe_rgb = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # transform 0
    both = jfif[:app0_end] + adobe_rgb + jfif[app0_end:]
    assert parse_jpeg_settings(both).colour == "YCbCr"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(both))), np.asarray(Image.open(buf)))
    adobe_only = jfif[:2] + adobe_rgb + jfif[app0_end:]
    assert parse_jpeg_settings(adobe_only).colour == "RGB"


@pytest.mark.parametrize("name", ["jpeg\uff17\uff15", "scanner-q\uff13\uff10"])
def test_a_degradation_takes_its_numbers_in_the_digits_0_to_9(name):
    # a regular expression's \d took other scripts' digits: full-width jpeg75 ran as jpeg75
    with pytest.raises(ValueError, match="degradation"):
        parse_degradation(name)
