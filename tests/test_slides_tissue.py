"""Tissue detection and the tissue blend's weights (slides/tissue.py), against formulas."""

import numpy as np
import pytest

from iste.engine.frame import Frame
from iste.slides.reader import InMemorySlide
from iste.slides.tissue import TissueBlend, TissueMask, detect_tissue, tissue_mask_from_rgb

DS = (4.0, 3.0)  # mask pixels of 4 x 3 level-0 pixels (x, y): every axis told apart
FRAME = Frame((60, 70), (150, 168))  # x2.5 down, x2.4 across
ORIGIN, LEVEL_DS = (5, 7), 2.0  # the frame's LR pixel 0 at (5, 7) of a level of 2 x 2 px


def _smoothstep_weight(distance, blend):
    t = np.clip(1 - distance / blend.ramp, 0, 1)
    return t * t * (3 - 2 * t)


@pytest.mark.parametrize("axis", [0, 1])
def test_the_model_weight_is_the_smoothstep_of_the_distance_along_each_axis(axis):
    # tissue in the first 10 mask rows (or columns): the distance is linear across the glass,
    # so bilinear interpolation gives it exactly at every output pixel's centre; the ramp is
    # 64 output px in level-0 px (x2 level, mean scale 2.45)
    mask = np.zeros((40, 50), bool)
    mask[(slice(0, 10), slice(None)) if axis == 0 else (slice(None), slice(0, 10))] = True
    blend = TissueBlend(TissueMask(mask, DS), FRAME, origin=ORIGIN, downsample=LEVEL_DS)
    assert blend.ramp == pytest.approx(64 * 2 * 2 / (2.5 + 2.4))
    weights = blend.weights(range(150), range(168))
    n_out, n_lr = FRAME.out_hw[axis], FRAME.lr_hw[axis]
    level0 = (ORIGIN[1 - axis] + (np.arange(n_out) + 0.5) * n_lr / n_out) * LEVEL_DS
    distance = np.maximum(0, level0 - 9.5 * DS[1 - axis])  # from the last tissue centre
    expected = _smoothstep_weight(distance, blend)
    got = weights[:, 0] if axis == 0 else weights[0]
    assert np.abs(got - expected).max() < 1e-5
    assert expected.max() == 1 and ((expected > 0) & (expected < 1)).sum() > 20  # the ramp
    assert np.ptp(weights, axis=1 - axis).max() < 1e-6  # the other axis plays no part


def test_coverage_agrees_with_the_weights_of_every_rectangle():
    # "glass" and "tissue" tiles skip the blend: each must be what its weights say
    mask = np.zeros((40, 50), bool)
    mask[12:20, 15:27] = True
    blend = TissueBlend(TissueMask(mask, DS), FRAME, origin=ORIGIN, downsample=LEVEL_DS)
    whole = blend.weights(range(150), range(168))
    seen = set()
    for r0 in range(0, 150, 7):
        for c0 in range(0, 168, 9):
            rows, cols = range(r0, min(r0 + 11, 150)), range(c0, min(c0 + 13, 168))
            kind = blend.coverage(rows, cols)
            seen.add(kind)
            part = whole[rows.start:rows.stop, cols.start:cols.stop]
            if kind == "glass":
                assert (part == 0).all(), (rows, cols)
            elif kind == "tissue":
                assert (part == 1).all(), (rows, cols)
    assert seen == {"glass", "tissue", "edge"}


def _glass(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(242 + rng.integers(-3, 4, (*shape, 3)), 0, 255).astype(np.uint8)


def test_glass_alone_has_no_tissue_and_tissue_alone_is_all_tissue():
    # the Otsu threshold is clamped to [0.05, 0.25]: glass noise is not split into tissue, and
    # tissue of two stains (saturation 0.4 and 0.8) is not split into tissue and glass
    assert not tissue_mask_from_rgb(_glass((200, 200))).any()
    rgb = np.empty((200, 200, 3), np.uint8)
    rgb[:, :100] = (200, 120, 180)  # saturation 0.4
    rgb[:, 100:] = (200, 40, 120)  # 0.8
    assert tissue_mask_from_rgb(rgb).all()


def test_pale_and_dark_tissue_are_found_and_small_specks_dropped():
    rgb = _glass((400, 400))
    rgb[20:60, 20:60] = (250, 180, 240)  # pale pink: one channel above white
    rgb[100:140, 100:140] = (30, 20, 28)  # dark: saturation (30 - 20) / 30
    rgb[200:230, 200:230] = (180, 80, 160)  # 900 px: more than a speck (8 px here)
    mask = tissue_mask_from_rgb(rgb, margin_px=0)
    for block in (np.s_[20:60, 20:60], np.s_[100:140, 100:140], np.s_[200:230, 200:230]):
        assert mask[block].all()
    speck = _glass((400, 400))
    speck[300, 300:308] = (180, 80, 160)  # 8 px: a speck, removed
    speck[350 + np.arange(9), 300 + np.arange(9)] = (180, 80, 160)  # 9 px, touching corners
    speck[100:140, 100:140] = (180, 80, 160)  # tissue, so that the threshold is a real one
    mask = tissue_mask_from_rgb(speck, margin_px=0)
    assert not mask[300].any() and mask[350 + np.arange(9), 300 + np.arange(9)].all()


def test_the_mask_is_dilated_by_the_margin():
    rgb = _glass((100, 100))
    rgb[40:60, 40:60] = (180, 80, 160)
    mask = tissue_mask_from_rgb(rgb, margin_px=2)
    assert mask[38:62, 40:60].all() and mask[40:60, 38:62].all()
    assert not mask[37].any() and not mask[:, 62].any()


def test_faintly_tinted_glass_is_not_split_into_tissue():
    # glass that is a little green on one side (saturation 0 to 0.043, below the 0.05 floor of
    # the Otsu threshold): Otsu alone would split the tint at ~0.02 into one large region
    rgb = np.full((120, 200, 3), 230, np.uint8)
    rgb[..., 1] = 230 - np.round(np.linspace(0, 10, 200)).astype(np.uint8)
    assert not tissue_mask_from_rgb(rgb).any()


def test_a_slides_mask_spans_the_slide_on_each_axis():
    # a thumbnail's sides are rounded one by one (1200 x 155 -> 256 x 33): the mask's
    # level-0 pixels per mask pixel are those of each axis, (x, y), so that it covers the slide
    rgb = np.full((155, 1200, 3), 242, np.uint8)
    rgb[120:, 900:] = (180, 80, 160)  # tissue in the bottom right corner
    found = detect_tissue(InMemorySlide(rgb), size=256)
    (h, w), (dx, dy) = found.mask.shape, found.downsample
    assert (w, h) == (256, 33)
    assert w * dx == pytest.approx(1200) and h * dy == pytest.approx(155)
    assert found.mask[-1, -1] and not found.mask[0, 0]


@pytest.mark.parametrize("axis", [0, 1])
def test_coverage_of_each_line_of_pixels_agrees_with_its_weights(axis):
    # tissue at the far end of the axis: a line just short of the ramp's end interpolates from
    # the mask pixel after its own, which is nearer the tissue; coverage must look at it too
    mask = np.zeros((40, 50), bool)
    mask[(slice(30, None), slice(None)) if axis == 0 else (slice(None), slice(30, None))] = True
    blend = TissueBlend(TissueMask(mask, DS), FRAME, origin=ORIGIN, downsample=LEVEL_DS)
    whole = blend.weights(range(150), range(168))
    kinds = set()
    for i in range(FRAME.out_hw[axis]):
        lines = (range(i, i + 1), range(168)) if axis == 0 else (range(150), range(i, i + 1))
        kind = blend.coverage(*lines)
        kinds.add(kind)
        line = whole[i] if axis == 0 else whole[:, i]
        assert kind != "glass" or (line == 0).all(), (i, line.max())
        assert kind != "tissue" or (line == 1).all(), (i, line.min())
    assert kinds == {"glass", "tissue", "edge"}
