"""iste.upscale / iste.upscale_to take numpy, PIL and torch images and return the same kind."""

import numpy as np
import pytest
import torch
from PIL import Image

import iste
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config("liif")).eval()


@pytest.fixture(scope="module")
def rgb():
    return (np.random.default_rng(0).random((12, 15, 3)) * 255).astype(np.uint8)


def test_numpy_uint8_float_gray_and_alpha(model, rgb):
    ref = iste.upscale(rgb, 2, model)
    assert ref.shape == (24, 30, 3) and ref.dtype == np.uint8
    as_float = iste.upscale(rgb.astype(np.float64) / 255, 2, model)
    assert as_float.dtype == np.float64 and as_float.shape == (24, 30, 3)
    assert 0 <= as_float.min() and as_float.max() <= 1
    assert np.abs(as_float * 255 - ref).max() <= 0.5 + 1e-6  # same pixels before rounding
    gray = rgb[..., 0]
    g = iste.upscale(gray, 2, model)
    assert g.shape == (24, 30) and g.dtype == np.uint8
    three = iste.upscale(np.repeat(gray[..., None], 3, -1), 2, model).astype(float)
    assert np.abs(g - three.mean(-1)).max() <= 1  # gray = mean of the RGB result
    alpha = np.full((12, 15, 1), 77, np.uint8)
    rgba = iste.upscale(np.concatenate([rgb, alpha], -1), 2, model)
    assert rgba.shape == (24, 30, 4)
    assert np.array_equal(rgba[..., :3], ref)  # RGB through the model as before
    assert (rgba[..., 3] == 77).all()  # alpha resized (bicubic), not invented


def test_pil_images_keep_their_mode(model, rgb):
    for mode in ("RGB", "L", "RGBA"):
        img = Image.fromarray(rgb).convert(mode)
        out = iste.upscale(img, 2.5, model)
        assert isinstance(out, Image.Image) and out.mode == mode
        assert out.size == (round(15 * 2.5), round(12 * 2.5))
    assert np.array_equal(np.asarray(iste.upscale(Image.fromarray(rgb), 2, model)),
                          iste.upscale(rgb, 2, model))


def test_tensors_chw_and_batches(model, rgb):
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    one = iste.upscale(x, 2, model)
    assert one.shape == (3, 24, 30) and one.dtype == torch.float32
    batch = iste.upscale(torch.stack([x, x.flip(-1)]), 2, model)
    assert batch.shape == (2, 3, 24, 30)
    assert torch.allclose(batch[0], one, atol=1e-5)
    u8 = iste.upscale(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), 2, model)
    assert u8.dtype == torch.uint8
    assert np.array_equal(u8.permute(1, 2, 0).numpy(), iste.upscale(rgb, 2, model))


def test_upscale_to_exact_size_and_bad_inputs(model, rgb):
    out = iste.upscale_to(rgb, (20, 41), model)
    assert out.shape == (20, 41, 3)
    for bad, msg in [(rgb[..., :2], "h, w"), (rgb.astype(np.int32), "uint8 or float"),
                     (np.full((4, 4, 3), np.nan, np.float32), "NaN"), ([1, 2], "numpy")]:
        with pytest.raises(ValueError, match=msg):
            iste.upscale(bad, 2, model)
    with pytest.raises(ValueError, match="positive"):
        iste.upscale_to(rgb, (0, 4), model)


def test_dtype_float32_gives_the_unrounded_prediction_for_every_input_kind(model, rgb):
    ref = iste.upscale(rgb, 2, model)
    pred = iste.upscale(rgb, 2, model, dtype="float32")
    assert pred.dtype == np.float32 and pred.shape == (24, 30, 3)
    assert np.array_equal(np.round(pred * 255).astype(np.uint8), ref)
    from_pil = iste.upscale(Image.fromarray(rgb), 2, model, dtype="float32")
    assert isinstance(from_pil, np.ndarray) and np.array_equal(from_pil, pred)
    t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    from_tensor = iste.upscale(t, 2, model, dtype="float32")
    assert from_tensor.dtype == torch.float32
    assert np.allclose(from_tensor.permute(1, 2, 0).numpy(), pred, atol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        iste.upscale(rgb, 2, model, dtype="float16")
