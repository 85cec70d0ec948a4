"""The paper's degradation: sizes, invariants, and parity with the published pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from iste.data.degrade import (bicubic_upscale, blur_radius, crop_to_scale, degrade,
                               evaluation_pair, lr_size_for)

SCALES = [1.0, 1.5, 2.0, 2.4, 3.0, 3.3, 4.0, 4.2, 5.1, 6.0, 8.0]


def published_resize_fn(img: torch.Tensor, size_hw: tuple[int, int], scale: float) -> torch.Tensor:
    """The published pipeline, step by step, with torch + PIL in place of torchvision.

    ToPILImage on a float tensor: ``mul(255).byte()`` then HWC -> PIL; GaussianBlur with
    radius (scale - 1) / 2; Resize((h, w), BICUBIC), which calls PIL with (w, h); ToTensor:
    uint8 -> float32 / 255, CHW.
    """
    pic = img.mul(255).byte()
    pil = Image.fromarray(pic.permute(1, 2, 0).numpy())
    pil = pil.filter(ImageFilter.GaussianBlur(radius=(scale - 1) / 2))
    pil = pil.resize((size_hw[1], size_hw[0]), Image.BICUBIC)
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255)


def random_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("scale", SCALES)
def test_default_lr_size_and_crop(scale):
    hr = random_uint8((97, 83, 3))
    h_lr, w_lr = math.floor(97 / scale + 1e-9), math.floor(83 / scale + 1e-9)
    assert lr_size_for((97, 83), scale) == (h_lr, w_lr)
    assert degrade(hr, scale).shape == (h_lr, w_lr, 3)
    assert crop_to_scale(hr, scale).shape == (round(h_lr * scale), round(w_lr * scale), 3)
    chw = torch.from_numpy(hr).permute(2, 0, 1)
    assert crop_to_scale(chw, scale).shape == (3, round(h_lr * scale), round(w_lr * scale))


def test_explicit_lr_size_is_height_width():
    hr = random_uint8((60, 90, 3))
    assert degrade(hr, 2.0, lr_size=(20, 35)).shape == (20, 35, 3)
    assert bicubic_upscale(hr, (70, 110)).shape == (70, 110, 3)


@pytest.mark.parametrize(("size", "scale", "expected"), [
    ((100, 100), 3.0, (99, 99)),
    ((100, 101), 2.4, (98, 101)),   # 41 -> round(98.4) = 98; 42 -> round(100.8) = 101
    ((100, 100), 1.5, (99, 99)),
    ((33, 33), 1.1, (33, 33)),      # 33 / 1.1 = 29.999999999999996 in floats: the 1e-9 guard
])
def test_crop_to_scale_protocol(size, scale, expected):
    hr = np.zeros((*size, 3), np.uint8)
    assert crop_to_scale(hr, scale).shape[:2] == expected


@pytest.mark.parametrize("size,scale", [((256, 256), 3.3), ((256, 299), 2.4), ((240, 299), 4.2),
                                        ((299, 300), 1.5), ((64, 64), 2.0)])
def test_evaluation_pair_takes_the_lr_size_of_the_uncropped_image(size, scale):
    # The LIIF family's test wrapper: h_lr = floor(H / s + 1e-9), HR = img[:round(h_lr * s)],
    # LR = resize(HR, h_lr). From the cropped HR, floor(254 / 3.3) would give 76, not 77.
    image = random_uint8((*size, 3))
    h_lr, w_lr = (math.floor(n / scale + 1e-9) for n in size)
    lr, hr = evaluation_pair(image, scale)
    assert hr.shape[:2] == (round(h_lr * scale), round(w_lr * scale))
    assert lr.shape[:2] == (h_lr, w_lr)
    np.testing.assert_array_equal(lr, degrade(hr, scale, lr_size=(h_lr, w_lr)))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("value", [0, 137, 255])
def test_constant_image_stays_constant(scale, value):
    hr = np.full((64, 72, 3), value, np.uint8)
    lr = degrade(hr, scale)
    assert (lr == value).all()
    assert (bicubic_upscale(lr, (64, 72)) == value).all()


def test_scale_one_is_identity():
    hr = random_uint8((40, 50, 3))
    assert blur_radius(1.0) == 0
    np.testing.assert_array_equal(degrade(hr, 1.0), hr)


def test_blur_grows_with_scale():
    hr = random_uint8((96, 96, 3))
    stds = [degrade(hr, s, lr_size=(32, 32)).astype(float).std() for s in (1.0, 2.0, 4.0)]
    assert stds[0] > stds[1] > stds[2]


@pytest.mark.parametrize("scale", SCALES)
def test_matches_published_pipeline_on_random_float_image(scale):
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(3, 77, 91, generator=gen)  # off the 1/255 grid: truncation matters
    size = lr_size_for((77, 91), scale)
    expected = published_resize_fn(hr, size, scale)
    out = degrade(hr, scale)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert torch.equal(out, expected)


@pytest.mark.parametrize("scale", [1.7, 3.0, 4.0])
def test_numpy_and_torch_paths_agree_with_published_on_8bit_image(scale):
    hr = random_uint8((66, 54, 3), seed=2)
    size = (48, 48)  # the training call: square LR of 48 from a round(48 * s) crop
    chw = torch.from_numpy(hr).permute(2, 0, 1)
    expected = published_resize_fn(chw.float().div(255), size, scale)
    np.testing.assert_array_equal(degrade(hr, scale, lr_size=size),
                                  (expected * 255).round().byte().permute(1, 2, 0).numpy())
    assert torch.equal(degrade(chw, scale, lr_size=size), (expected * 255).round().byte())
    assert torch.equal(degrade(chw.float().div(255), scale, lr_size=size), expected)


def test_float_input_is_truncated_like_to_pil_image():
    # 100.9 / 255 becomes 100, not 101 (torchvision's ToPILImage does mul(255).byte()).
    hr = torch.full((3, 8, 8), 100.9 / 255)
    out = degrade(hr, 1.0)
    assert torch.equal(out, torch.full((3, 8, 8), 100.0).div(255))


def test_8bit_float_round_trip_is_lossless():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    out = degrade(values.float().div(255), 1.0)
    assert torch.equal(out, values.float().div(255))


def test_returns_input_kind_and_leaves_input_untouched():
    hr = random_uint8((30, 30, 3))
    before = hr.copy()
    lr = degrade(hr, 2.0)
    assert isinstance(lr, np.ndarray) and lr.dtype == np.uint8 and lr.flags.writeable
    np.testing.assert_array_equal(hr, before)
    chw = torch.from_numpy(hr).permute(2, 0, 1)
    assert degrade(chw, 2.0).dtype == torch.uint8
    assert bicubic_upscale(chw.float() / 255, (40, 40)).dtype == torch.float32


@pytest.mark.parametrize("scale", [0.5, 0.999, float("nan"), float("inf")])
def test_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        degrade(random_uint8((16, 16, 3)), scale)


@pytest.mark.parametrize("bad", [
    np.zeros((16, 16), np.uint8),
    np.zeros((16, 16, 4), np.uint8),
    np.zeros((16, 16, 3), np.float32),
    torch.zeros(16, 16, 3),
    torch.zeros(3, 16, 16, dtype=torch.int32),
])
def test_rejects_bad_images(bad):
    with pytest.raises(ValueError):
        degrade(bad, 2.0)


def test_rejects_empty_lr_size():
    with pytest.raises(ValueError, match="positive"):
        degrade(random_uint8((3, 3, 3)), 4.0)  # floor(3 / 4) = 0
