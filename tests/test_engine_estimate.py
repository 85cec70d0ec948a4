"""``iste.engine.estimate``: a plain image's job projected from a few crops."""

import numpy as np
import pytest
import torch

from iste.engine.budget import available_memory, plan_image
from iste.engine.estimate import CROP_OUTPUT_SIDE, SAMPLE_CROPS, _crops, estimate_image
from iste.models.registry import build_model
from model_zoo import tiny_config
from slide_data import he_image


@pytest.mark.parametrize("lr_hw,scale", [((200, 300), 2.0), ((40, 30), 3.0), ((97, 513), 2.5)])
def test_the_crops_lie_inside_the_image_and_spread_over_it(lr_hw, scale):
    out_hw = (round(lr_hw[0] * scale), round(lr_hw[1] * scale))
    crops = _crops(lr_hw, out_hw, SAMPLE_CROPS + 1)
    assert len(crops) == SAMPLE_CROPS + 1
    for (y0, y1, x0, x1), (h, w) in crops:
        assert 0 <= y0 < y1 <= lr_hw[0] and 0 <= x0 < x1 <= lr_hw[1]
        assert h <= max(CROP_OUTPUT_SIDE, 1) + 2 and w <= max(CROP_OUTPUT_SIDE, 1) + 2
    timed = crops[1:]
    if lr_hw[1] * scale > CROP_OUTPUT_SIDE:  # larger than a crop: first to last corner
        assert timed[0][0][2] == 0 and timed[-1][0][3] == lr_hw[1]


def test_the_projection_scales_the_crops_to_the_whole_output():
    torch.manual_seed(0)
    model = build_model(tiny_config("liif")).eval()
    image = np.ascontiguousarray(np.tile(he_image()[:96, :96], (2, 3, 1)))  # (192, 288)
    out_hw = (384, 576)
    est = estimate_image(image, out_hw, model, suffix=".png")
    assert est.size == (576, 384) and est.lr_size == (288, 192) and est.scale == 2.0
    assert est.crops == SAMPLE_CROPS
    assert est.mpx_timed == pytest.approx(SAMPLE_CROPS * CROP_OUTPUT_SIDE ** 2 / 1e6)
    assert est.seconds_model > 0 and est.seconds_encode > 0 and est.bytes_output > 0
    budget = available_memory(torch.device("cpu"))
    plan = plan_image(model, (192, 288), out_hw, uint8_out=True, budget=budget)
    assert (est.memory, est.tiled) == (plan.estimate, plan.tiled) and est.memory > 0
