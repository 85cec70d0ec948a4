"""PSNR / SSIM of the paper's protocol against scikit-image, and the statistics against scipy."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from iste.data import metrics
from iste.eval.stats import exact_notes, paired_ttest, paired_values, summarize


def pair(seed: int, shape=(48, 56, 3), noise=20):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape, dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return sr, hr


@pytest.mark.parametrize("scale", [1.5, 2.0, 2.4, 4.0])
def test_psnr_and_ssim_agree_with_scikit_image_on_the_shaved_arrays(scale):
    sr, hr = pair(int(scale * 10))
    b = math.ceil(scale) + 6
    sr_s, hr_s = sr[b:-b, b:-b], hr[b:-b, b:-b]
    assert metrics.psnr(sr, hr, scale=scale) == pytest.approx(
        peak_signal_noise_ratio(hr_s, sr_s, data_range=255), abs=1e-9)
    assert metrics.ssim(sr, hr, scale=scale) == pytest.approx(
        structural_similarity(hr_s, sr_s, channel_axis=-1, data_range=255), abs=1e-12)
    assert metrics.ssim(sr, hr, scale=scale, variant="gaussian-rgb") == pytest.approx(
        structural_similarity(hr_s, sr_s, channel_axis=-1, data_range=255,
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
        abs=1e-12)


def test_the_border_is_ceil_scale_plus_six_and_is_ignored():
    assert [metrics.shave_width(s) for s in (1.5, 2, 2.4, 3.3, 8)] == [8, 8, 9, 10, 14]
    sr, hr = pair(1, noise=0)
    assert sr.tobytes() == hr.tobytes()
    sr[:9] = 0  # damage only the shaved border at x2.4 (9 px)
    sr[:, -9:] = 255
    assert metrics.psnr(sr, hr, scale=2.4) == math.inf
    assert metrics.ssim(sr, hr, scale=2.4) == pytest.approx(1.0)
    assert metrics.psnr(sr, hr, scale=1.5) < 40  # a narrower border sees the damage


def test_psnr_of_a_constant_error_follows_equation_10():
    hr = np.full((40, 40, 3), 100, np.uint8)
    sr = hr + np.uint8(5)
    assert metrics.psnr(sr, hr, scale=2) == pytest.approx(10 * math.log10(255 ** 2 / 25))


def test_bad_inputs_are_clear_errors():
    sr, hr = pair(2)
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(sr[:-1], hr, scale=2)
    with pytest.raises(ValueError, match="hr must be uint8"):
        metrics.ssim(sr, hr.astype(np.float32) / 255, scale=2)
    with pytest.raises(ValueError, match="sr must be uint8 or float"):
        metrics.psnr(sr.astype(np.int16), hr, scale=2)
    with pytest.raises(ValueError, match="too small to evaluate at x8"):
        metrics.psnr(sr[:30, :30], hr[:30, :30], scale=8)
    with pytest.raises(ValueError, match="variant"):
        metrics.ssim(sr, hr, scale=2, variant="box")


def test_the_float_score_equals_a_direct_computation_on_the_unquantised_prediction():
    rng = np.random.default_rng(7)
    hr = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
    sr = np.clip(hr / 255 + rng.normal(0, 0.004, hr.shape), 0, 1).astype(np.float32)
    b = 8  # ceil(2) + 6
    diff = sr[b:-b, b:-b].astype(np.float64) - hr[b:-b, b:-b] / 255
    direct = -10 * math.log10(np.mean(diff ** 2))  # the published calc_psnr, rgb_range 1
    assert metrics.psnr(sr, hr, scale=2) == pytest.approx(direct, abs=1e-9)
    rounded = np.round(sr * 255).astype(np.uint8)
    assert metrics.psnr(rounded, hr, scale=2) != pytest.approx(direct, abs=1e-3)
    assert metrics.psnr(sr, hr, scale=2, border=3) != metrics.psnr(sr, hr, scale=2)
    assert metrics.ssim(sr, hr, scale=2) == pytest.approx(structural_similarity(
        hr[b:-b, b:-b].astype(np.float64), sr[b:-b, b:-b].astype(np.float64) * 255,
        channel_axis=-1, data_range=255), abs=1e-12)


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
def test_y_channel_ssim_is_the_ssim_of_bt601_luma(window):
    sr, hr = pair(5)
    b = 8
    y = [16 + (x[b:-b, b:-b].astype(np.float64) @ [65.481, 128.553, 24.966]) / 255
         for x in (hr, sr)]
    extra = ({"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
             if window == "gaussian" else {})
    got = metrics.ssim(sr, hr, scale=2, variant=f"{window}-y")
    assert got == pytest.approx(structural_similarity(*y, data_range=255, **extra), abs=1e-12)
    assert got != pytest.approx(metrics.ssim(sr, hr, scale=2, variant=f"{window}-rgb"), abs=1e-4)


def test_paired_ttest_matches_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    a = rng.normal(30, 2, 17)
    b = a - rng.normal(0.3, 0.5, 17)
    ours = paired_ttest(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.n == 17 and ours.statistic > 0


def test_paired_ttest_is_undefined_for_identical_methods_and_single_images():
    assert math.isnan(paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).pvalue)
    assert math.isnan(paired_ttest([1.0], [2.0]).pvalue)
    with pytest.raises(ValueError, match="one length"):
        paired_ttest([1.0, 2.0], [1.0])


def test_values_are_paired_by_image_name():
    a = {"x.png": 1.0, "y.png": 2.0, "z.png": 5.0}
    b = {"z.png": 6.0, "x.png": 0.5}
    assert paired_values(a, b) == ([1.0, 5.0], [0.5, 6.0])


def test_summary_is_mean_and_sample_std():
    values = [30.0, 31.0, 35.0]
    s = summarize(values)
    assert (s.mean, s.n) == (pytest.approx(np.mean(values)), 3)
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert math.isnan(summarize([4.0]).std)
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_a_crop_that_keeps_exactly_the_smallest_scored_side_is_scored():
    # x2 shaves 8 px a side: 27 px leave 11, the smallest side SSIM's 11 x 11 window fits
    sr, hr = pair(4, shape=(27, 30, 3))
    assert math.isfinite(metrics.psnr(sr, hr, scale=2))
    assert 0 < metrics.ssim(sr, hr, scale=2, variant="gaussian-rgb") < 1
    with pytest.raises(ValueError, match="leaves 14 x 10 px"):
        metrics.psnr(sr[:26], hr[:26], scale=2)


def test_images_only_the_second_method_has_are_left_out_of_the_pairs():
    # the t-tests pair per image: a value of an image only B has must not shift B's list
    a = {"x.png": 1.0, "y.png": 2.0}
    b = {"w.png": 9.0, "x.png": 0.5, "y.png": 1.5}
    assert paired_values(a, b) == ([1.0, 2.0], [0.5, 1.5])


def test_the_note_on_exact_reproductions_names_three_images_and_counts_the_rest():
    records = [{"method": "bicubic", "image": f"{name}.png", "scale": 2.0, "psnr": math.inf}
               for name in "abcd"] + [{"method": "bicubic", "image": "e.png", "scale": 2.0,
                                        "psnr": 250.0}]  # very close is not exact
    (note,) = exact_notes(records)
    assert "reproduces 4 test image(s) exactly at x2 (a.png, b.png, c.png and 1 more:" in note
