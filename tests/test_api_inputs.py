"""iste.upscale / iste.upscale_to take numpy, PIL and torch images and return the same kind."""

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import iste
from iste.models.registry import build_model
from icc_profiles import gray_profile
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
    for bad, msg in [(np.dstack([rgb, rgb[..., :2]]), "h, w"),
                     (rgb.astype(np.int32), "uint8 or float"),
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


def test_pil_gray_alpha_float_and_palette_modes_come_back_as_they_are(model, rgb):
    gray = Image.fromarray(rgb[..., 0])
    ref = np.asarray(iste.upscale(gray, 2, model))
    for mode, back in [("LA", "LA"), ("1", "L"), ("F", "F")]:
        img = gray.convert(mode)
        if mode == "F":
            img = Image.fromarray(np.asarray(gray, np.float32) / 255)  # float gray in [0, 1]
        out = iste.upscale(img, 2, model)
        assert out.mode == back and out.size == (30, 24), mode
    la = np.asarray(iste.upscale(gray.convert("LA"), 2, model))
    assert np.array_equal(la[..., 0], ref) and (la[..., 1] == 255).all()  # gray, alpha kept
    f = np.asarray(iste.upscale(Image.fromarray(np.asarray(gray, np.float32) / 255), 2, model))
    assert np.abs(f * 255 - ref).max() <= 0.5 + 1e-4  # the same gray, not rounded
    with pytest.raises(ValueError, match=r"^float PIL image \(mode F\) must hold values in"):
        iste.upscale(Image.fromarray(np.asarray(gray, np.float32)), 2, model)  # "numpy image"
    palette = Image.fromarray(rgb).convert("P")
    assert iste.upscale(palette, 2, model).mode == "RGB"
    palette.info["transparency"] = 0
    assert iste.upscale(palette, 2, model).mode == "RGBA"
    # an RGBA palette says nothing in info: its alpha was dropped (RGB out)
    alpha = np.repeat(np.arange(12, dtype=np.uint8)[:, None] * 20, 15, axis=1)
    quantized = Image.fromarray(np.dstack([rgb, alpha])).quantize()
    assert "transparency" not in quantized.info
    out = iste.upscale(quantized, 2, model)
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(iste.upscale(quantized.convert("RGBA"), 2, model)))
    for deep in (Image.fromarray(np.zeros((8, 8), np.uint16)), gray.convert("I")):
        with pytest.raises(ValueError, match="not supported: convert it to 8 bits"):
            iste.upscale(deep, 2, model)


def test_numpy_gray_alpha_byte_order_and_dtypes(model, rgb):
    gray = rgb[..., 0]
    ref = iste.upscale(gray, 2, model)
    ga = iste.upscale(np.dstack([gray, np.full_like(gray, 9)]), 2, model)
    assert ga.shape == (24, 30, 2) and np.array_equal(ga[..., 0], ref) and (ga[..., 1] == 9).all()
    big_endian = (rgb / 255).astype(">f4")
    assert np.allclose(iste.upscale(big_endian, 2, model), iste.upscale(rgb / 255, 2, model),
                       atol=1e-6)
    for bad in (rgb.astype(np.uint16), rgb.astype(object), rgb.astype(np.int64)):
        with pytest.raises(ValueError, match=f"uint8 or float in \\[0, 1\\], got {bad.dtype}"):
            iste.upscale(bad, 2, model)
    with pytest.raises(ValueError, match="image is empty"):
        iste.upscale(np.zeros((0, 5, 3), np.uint8), 2, model)
    for empty in ((0, 3, 5, 5), (2, 3, 0, 5)):  # a batch of none was "must be (B, C, h, w)"
        said = re.escape(f"image is empty: Tensor {empty}")
        with pytest.raises(ValueError, match=said):
            iste.upscale(torch.zeros(empty), 2, model)
        with pytest.raises(ValueError, match=said):
            iste.upscale_to(torch.zeros(empty), (9, 9), model)


def test_the_model_argument_is_checked_or_loaded(model, rgb, tmp_path):
    from iste.models.checkpoint import save_model

    for bad in (torch.nn.Identity(), model.state_dict(), 3):
        with pytest.raises(TypeError, match="model must be a model from iste.load"):
            iste.upscale(rgb, 2, bad)
    path = tmp_path / "tiny.safetensors"
    save_model(model, path)
    assert np.array_equal(iste.upscale(rgb, 2, str(path)), iste.upscale(rgb, 2, model))
    half = build_model(tiny_config("liif")).eval().half()
    with pytest.raises(ValueError, match="weights must be float32"):
        iste.upscale(rgb, 2, half)


def test_an_empty_checkpoint_path_is_refused_as_empty(rgb):
    """``iste.load("")`` said ". is a folder, not a checkpoint": Path("") is the current
    folder. An empty path (or one of spaces) is named as such, in one line."""
    for empty in ("", "  "):
        for call in (lambda: iste.load(empty), lambda: iste.upscale(rgb, 2, empty)):
            with pytest.raises(ValueError) as err:
                call()
            assert str(err.value).startswith(f"the checkpoint path is empty ({empty!r}): ")
            assert "\n" not in str(err.value) and "folder" not in str(err.value)


def test_output_sizes_are_whole_pixels_within_the_scale_limit(model, rgb):
    assert iste.upscale_to(rgb, (np.int64(20), 30.0), model).shape == (20, 30, 3)
    # a set or dict has no order: {20, 30} could come out 30 x 20
    for bad in [(30.9, 30), (True, 30), (float("inf"), 30), (30,), "30x30", (20, None),
                {20, 30}, {20: 1, 30: 2}]:
        with pytest.raises(ValueError, match="whole pixels"):
            iste.upscale_to(rgb, bad, model)
    with pytest.raises(ValueError, match=r"x8.333 the input's 15 x 12, beyond"):
        iste.upscale_to(rgb, (100, 100), model)
    assert iste.upscale_to(rgb, (96, 120), model).shape == (96, 120, 3)  # x8 exactly


def test_tensors_that_hold_no_data_are_refused(model):
    with pytest.raises(ValueError, match="dense tensor holding data, got a meta tensor"):
        iste.upscale(torch.empty(3, 8, 8, device="meta"), 2, model)
    with pytest.raises(ValueError, match="got a sparse_coo tensor"):
        iste.upscale(torch.rand(3, 8, 8).to_sparse(), 2, model)
    with warnings.catch_warnings():  # torch: "nested tensors is in prototype stage"
        warnings.simplefilter("ignore", UserWarning)
        nested = torch.nested.nested_tensor([torch.rand(3, 8, 8), torch.rand(3, 9, 9)])
    for call in (iste.upscale, iste.upscale_to):  # torch: "Internal error ... file an issue"
        with pytest.raises(ValueError, match="got a nested tensor: pass the images one by one"):
            call(nested, 2 if call is iste.upscale else (16, 16), model)


def test_a_caller_autocast_does_not_lower_fp32(model, rgb):
    from iste.engine.render import QueryOptions

    fp32 = QueryOptions(precision="fp32")
    ref = iste.upscale(rgb, 2, model, dtype="float32", options=fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = iste.upscale(rgb, 2, model, dtype="float32", options=fp32)
    assert np.array_equal(inside, ref)


def test_a_batch_that_does_not_fit_at_once_runs_image_by_image(model, rgb, monkeypatch):
    from iste.engine import budget

    batch = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None].repeat(3, 1, 1, 1)
    batch[1] = batch[1].flip(-1)
    whole = iste.upscale(batch, 2, model)
    calls = []
    real = budget.plan_image

    def tight(model, lr_hw, out_hw, *, options=None, batch=1, budget=None):
        calls.append(batch)  # the batch "does not fit"; one image does
        return budget_plan(batch > 1, real(model, lr_hw, out_hw, options=options, batch=batch))

    def budget_plan(too_big, plan):
        return budget.ImagePlan(True, plan.estimate, 64) if too_big else plan

    monkeypatch.setattr(budget, "plan_image", tight)
    one_by_one = iste.upscale(batch, 2, model)
    assert calls == [3, 1, 1, 1]
    assert torch.allclose(one_by_one, whole, atol=1e-5)
    with pytest.raises(ValueError, match="3 images of"):
        budget.check_output_pixels((1 << 15, 1 << 14), 3)


def test_a_model_in_training_mode_is_refused_and_left_as_it_was(rgb):
    from model_zoo import tiny_fixed

    for cfg in (tiny_config("liif", "swinir"), tiny_fixed("srmfenet", 2)):
        # stochastic depth (SwinIR) gave other pixels on every call; batch norm (SRMFENet)
        # refused one image, or updated the model's running statistics with the caller's
        model = build_model(cfg).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=r"training mode: call model.eval\(\) first"):
            iste.upscale(torch.rand(2, 3, 8, 8), 2, model)
        with pytest.raises(ValueError, match="training mode"):
            iste.upscale_to(rgb, (24, 30), model)
        assert model.training
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        out = iste.upscale(rgb, 2, model.eval())
        assert np.array_equal(out, iste.upscale(rgb, 2, model))


def test_progress_counts_the_output_pixels_of_every_image_of_a_batch(model, monkeypatch):
    from model_zoo import tiny_fixed
    from iste.engine import budget as budget_module

    x = torch.rand(3, 3, 10, 12)
    real = budget_module.plan_image

    def one_by_one(model, lr_hw, out_hw, *, options=None, batch=1, budget=None):
        plan = real(model, lr_hw, out_hw, options=options, batch=batch)
        return budget_module.ImagePlan(True, plan.estimate, 64) if batch > 1 else plan

    for net in (model, build_model(tiny_fixed("edsr", 2)).eval()):
        for plan in (real, one_by_one):  # the batch in one pass (it reported 480) or not
            monkeypatch.setattr(budget_module, "plan_image", plan)
            done = []
            iste.upscale(x, 2, net, progress=done.append)
            assert sum(done) == 3 * 20 * 24


def test_arguments_of_the_wrong_type_are_named_before_any_work(model, rgb):
    from iste.engine.render import QueryOptions

    calls = []
    with pytest.raises(TypeError, match="options must be iste.engine.render.QueryOptions"):
        iste.upscale(rgb, 2, model, options={"precision": "bf16"})  # was an AttributeError
    with pytest.raises(TypeError, match="progress must be a function"):
        iste.upscale_to(rgb, (24, 30), model, progress=5)  # was "'int' ... not callable"
    assert iste.upscale(rgb, 2, model, options=None, progress=calls.append).shape[:2] == (24, 30)
    assert sum(calls) == 24 * 30
    assert np.array_equal(iste.upscale(rgb, 2, model, options=QueryOptions()),
                          iste.upscale(rgb, 2, model))
    with pytest.raises(TypeError, match="^device must be a name .* got float$"):
        iste.load(device=2.5)  # was torch's dozen lines of overloads
    with pytest.raises(TypeError, match="^path must be a checkpoint's path .* got int$"):
        iste.load(5)


def test_an_image_too_small_for_iste_says_so_in_pixels():
    iste_model = build_model(tiny_config("iste")).eval()
    for hw in ((1, 40), (5, 1)):
        with pytest.raises(ValueError, match=f"^ISTE's local feature interaction .* at least "
                                             f"2 x 2 pixels, got {hw[1]} x {hw[0]} px$"):
            iste.upscale(np.zeros((*hw, 3), np.uint8), 3, iste_model)  # was "feature map"
    assert iste.upscale(np.zeros((2, 40, 3), np.uint8), 3, iste_model).shape == (6, 120, 3)


def test_a_pil_image_keeps_its_colour_profile_where_it_describes_the_pixels(model, rgb, tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray = gray_profile()  # a real one: LittleCMS reads it
    cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]
    cases = [("RGB", srgb, srgb), ("RGBA", srgb, srgb), ("P", srgb, srgb),
             ("L", gray, gray), ("L", srgb, None), ("CMYK", cmyk_profile, None)]
    for mode, profile, kept in cases:
        img = Image.fromarray(rgb).convert(mode)
        img.info["icc_profile"] = profile
        out = iste.upscale(img, 2, model)
        assert out.info.get("icc_profile") == kept, mode  # was dropped: saved as untagged
    img = Image.fromarray(rgb)
    img.info["icc_profile"] = srgb
    iste.upscale(img, 2, model).save(tmp_path / "out.png")
    assert Image.open(tmp_path / "out.png").info.get("icc_profile") == srgb


def test_a_masked_array_is_refused_in_one_line_before_a_model_loads(model, rgb, monkeypatch):
    # its pixels under the mask were upscaled as they are, silently
    masked = np.ma.array(rgb, mask=np.zeros_like(rgb, bool))
    masked[2:5, 3:7] = np.ma.masked
    for call in (lambda m: iste.upscale(masked, 2, m),
                 lambda m: iste.upscale_to(masked, (24, 30), m)):
        with pytest.raises(ValueError, match=r"^image is a masked numpy array.*filled\(value\)"):
            call(model)

    def no_load(*args, **kwargs):
        raise AssertionError("the default model was loaded for an image that is refused")

    monkeypatch.setattr(iste.api, "load", no_load)
    with pytest.raises(ValueError, match="masked"):
        iste.upscale(masked, 2)
    assert np.array_equal(iste.upscale(masked.filled(0), 2, model),
                          iste.upscale(np.where(masked.mask, 0, rgb).astype(np.uint8), 2, model))


def test_a_pil_image_of_a_16_bit_file_is_refused_not_cut_to_its_high_byte(model, rgb,
                                                                         tmp_path):
    # PIL opens 16-bit RGB PNGs and TIFFs as mode RGB holding each sample's high byte: 12-bit
    # data in 16 bits came back 16 times darker, where `iste upscale` refuses the same file
    import imagecodecs
    import tifffile

    twelve_bit = rgb.astype(np.uint16) * 16  # 0 .. 4080
    tifffile.imwrite(tmp_path / "deep.tif", twelve_bit, photometric="rgb")
    (tmp_path / "deep.png").write_bytes(imagecodecs.png_encode(twelve_bit))
    for name in ("deep.tif", "deep.png"):
        with Image.open(tmp_path / name) as img:
            assert img.mode == "RGB"  # what PIL makes of it
            with pytest.raises(ValueError, match=f"{name}.*16 bits per sample.*high byte"):
                iste.upscale(img, 2, model)
        with Image.open(tmp_path / name) as img:
            img.load()  # PIL forgets the raw mode once loaded: the file's header tells
            with pytest.raises(ValueError, match="16 bits per sample"):
                iste.upscale(img, 2, model)
    tifffile.imwrite(tmp_path / "eight.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "eight.png")
    for name in ("eight.tif", "eight.png"):  # 8-bit files still run
        with Image.open(tmp_path / name) as img:
            assert iste.upscale(img, 2, model).size == (30, 24)
    # and so does a 16-bit-a-pixel BMP (5-6-5 bits: PIL's raw mode BGR;16), narrower than 8
    import struct

    rows = b"".join(struct.pack("<4H", *(1000 * (4 * r + c) for c in range(4))) for r in range(2))
    info = struct.pack("<IiiHHIIiiII3I", 40, 4, 2, 1, 16, 3, len(rows), 2835, 2835, 0, 0,
                       0xF800, 0x07E0, 0x001F)
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(rows), 0, 0, 14 + len(info))
    (tmp_path / "565.bmp").write_bytes(head + info + rows)
    with Image.open(tmp_path / "565.bmp") as img:
        assert img.mode == "RGB" and iste.upscale(img, 2, model).size == (8, 4)


def test_a_pil_images_exif_orientation_is_carried_so_it_turns_upright_as_the_cli_writes_it(
        model, rgb, tmp_path):
    # the pixels come back in stored order, as PIL gives them; the orientation was dropped,
    # so ImageOps.exif_transpose left the output sideways where it turned the source upright
    from PIL import ImageOps

    from iste.data.imagemeta import upright

    exif = Image.Exif()
    exif[274] = 6  # stored rows shown as columns
    Image.fromarray(rgb).save(tmp_path / "phone.png", exif=exif)
    with Image.open(tmp_path / "phone.png") as img:
        out = iste.upscale(img, 2, model)
    assert out.size == (30, 24) and out.getexif().get(274) == 6
    shown = np.asarray(ImageOps.exif_transpose(out))
    np.testing.assert_array_equal(shown, upright(iste.upscale(rgb, 2, model), 6))
    with Image.open(tmp_path / "phone.png") as img:
        assert 274 not in iste.upscale(ImageOps.exif_transpose(img), 2, model).getexif()


def test_a_pil_images_transparent_colour_comes_back_as_an_alpha_whatever_its_mode(model, rgb):
    # a PNG's tRNS (info["transparency"]) made a palette image RGBA, but was dropped from an
    # RGB or gray one, which `iste upscale` writes with its alpha
    gray = rgb[..., 0]
    for img, mode in ((Image.fromarray(rgb), "RGBA"), (Image.fromarray(gray), "LA"),
                      (Image.fromarray(rgb).convert("P"), "RGBA")):
        img.info["transparency"] = (tuple(int(v) for v in rgb[0, 0]) if img.mode == "RGB"
                                    else int(np.asarray(img)[0, 0]))
        out = iste.upscale(img, 2, model)
        assert out.mode == mode
        np.testing.assert_array_equal(
            np.asarray(out), np.asarray(iste.upscale(img.convert(mode), 2, model)))
