"""The query engine: chunk invariance, key windows, crops, output geometry."""

import numpy as np
import pytest
import torch

from iste.api import upscale
from iste.data.coords import make_cell, normalize
from iste.engine.frame import Frame, axis_window, check_scale, key_stride
from iste.engine.render import QueryOptions, Renderer, default_chunk, super_resolve
from iste.models.registry import build_model
from model_zoo import tiny_config


@pytest.mark.parametrize("head", ["iste", "liif", "lte"])
def test_output_does_not_depend_on_chunk_size(head):
    model = build_model(tiny_config(head)).eval()
    lr = torch.rand(1, 3, 30, 26)
    out_hw = (99, 86)  # x3.3
    small = super_resolve(model, lr, out_hw, options=QueryOptions(chunk=1000, stf_window=12))
    large = super_resolve(model, lr, out_hw, options=QueryOptions(chunk=50000, stf_window=12))
    default = super_resolve(model, lr, out_hw, options=QueryOptions(stf_window=12))
    odd = super_resolve(model, lr, out_hw, options=QueryOptions(chunk=97, stf_window=12))
    assert small.shape == (1, 3, 99, 86)
    for other in (large, default, odd):
        assert (small - other).abs().max() <= 1e-5


def test_default_chunk_follows_the_device_and_the_model_width():
    from torch import nn

    from iste.engine.render import NARROW_WIDTH

    assert QueryOptions().chunk is None
    assert default_chunk("cpu") == 1024 and default_chunk(torch.device("cuda", 0)) == 65536
    narrow = nn.Sequential(nn.Linear(8, NARROW_WIDTH - 1), nn.Linear(NARROW_WIDTH - 1, 3))
    wide = nn.Sequential(nn.Linear(8, NARROW_WIDTH), nn.Linear(NARROW_WIDTH, 3))
    assert default_chunk("cpu", narrow) == 2048 and default_chunk("cpu", wide) == 1024
    assert default_chunk("cuda", narrow) == 65536
    # resolving options fills the chunk in for the model, and keeps one that was given
    assert QueryOptions().resolved(narrow).chunk == 2048
    assert QueryOptions().resolved(wide).chunk == 1024
    assert QueryOptions(chunk=300).resolved(narrow).chunk == 300
    with pytest.raises(ValueError, match="positive"):
        QueryOptions(chunk=0)


def test_query_options_are_whole_numbers_and_a_scale_or_refused():
    # numbers of another kind ran: stf_window=2.5 gave other pixels, chunk=2.5 and workers="2"
    # failed deep in the engine, cell_clip=0 divided by zero, -1 and NaN clipped nothing
    for field, bad in [("chunk", 2.5), ("chunk", "64"), ("chunk", True), ("workers", 2.5),
                       ("workers", "2"), ("stf_window", 2.5), ("stf_keys", 3.3)]:
        with pytest.raises(ValueError, match=f"^{field} must be a whole number, got "):
            QueryOptions(**{field: bad})
    for bad in (0, -1, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^cell_clip must be None or a scale >= 1, got "):
            QueryOptions(cell_clip=bad)
    with pytest.raises(ValueError, match="^cell_clip must be a number, got '4'"):
        QueryOptions(cell_clip="4")
    ok = QueryOptions(chunk=np.int64(64), stf_keys=torch.tensor(16), cell_clip=np.float32(3))
    assert (ok.chunk, ok.stf_keys, ok.cell_clip) == (64, 16, 3.0)
    assert type(ok.chunk) is int and type(ok.cell_clip) is float  # JSON in run records


def test_key_windows_partition_the_output_in_lr_blocks():
    idx = torch.arange(250)
    win = axis_window(idx, 250, 100, 48)  # x2.5
    assert win.tolist() == sorted(win.tolist())
    assert set(win.tolist()) == {0, 1, 2}
    # output pixel 119 has its centre at LR 47.8, pixel 120 at LR 48.2
    assert win[119] == 0 and win[120] == 1
    assert key_stride(4.0, 48, 2304) == 4 and key_stride(2.0, 48, 2304) == 2
    assert key_stride(1.5, 48, 100) == 8


def test_a_pixel_belongs_to_the_key_window_holding_its_centre_not_its_top_edge():
    # x2.4: output pixel 115 spans LR 47.92..48.33; its centre, 48.125, is in the second
    # window of 48 LR px, its top edge in the first. The key set and the tile plan (which
    # repeats the rule for its crops) must both go by the centre; at x2.5 (the test above)
    # every output pixel's edge and centre share a window, so it could not tell.
    win = axis_window(torch.arange(240), 240, 100, 48)
    assert win[114] == 0 and win[115] == 1


def test_the_cell_of_a_non_square_output_is_its_pixel_height_and_width():
    # (2 / H, 2 / W) per query: rows first, as the coordinates (iste.data.coords)
    assert torch.equal(make_cell((10, 40), 3), torch.tensor([[0.2, 0.05]] * 3))


def test_iste_key_set_changes_with_stf_keys_but_stays_finite():
    model = build_model(tiny_config("iste")).eval()
    lr = torch.rand(1, 3, 20, 20)
    a = super_resolve(model, lr, (50, 50), options=QueryOptions(stf_keys=2304))
    b = super_resolve(model, lr, (50, 50), options=QueryOptions(stf_keys=16))
    assert torch.isfinite(b).all() and (a - b).abs().max() > 0


@pytest.mark.parametrize("head", ["iste", "liif"])
def test_rendering_from_a_crop_equals_the_whole_image_away_from_the_crop_border(head):
    # With a per-pixel encoder stand-in (1x1 receptive field beyond the head's own 3x3), a crop
    # with a halo of 4 LR pixels must reproduce the whole image's output inside it.
    cfg = tiny_config(head)
    cfg["encoder_args"] = {"n_resblocks": 0, "n_feats": 16}
    model = build_model(cfg).eval()
    lr = torch.rand(1, 3, 40, 40)
    frame = Frame((40, 40), (100, 100))
    opts = QueryOptions(stf_window=8)
    whole = super_resolve(model, lr, (100, 100), options=opts)
    origin, size = (8, 4), (32, 34)
    crop = lr[:, :, 8:40, 4:38]
    with torch.no_grad():
        feats = model.encode(normalize(crop))
    r = Renderer(model, feats, frame, crop_origin=origin, crop_hw=size, options=opts)
    # output rows/cols whose key windows (8 LR px), their neighbours and the receptive field
    # (conv 3x3 x2, LFI 3x3, conv 3x3: radius 4) lie inside the crop
    rows, cols = range(40, 90), range(40, 70)
    part = (r.render(rows, cols) * 0.5 + 0.5).clamp(0, 1)
    ref = whole[:, :, 40:90, 40:70]
    assert (part - ref).abs().max() < 1e-5


def test_upscale_api_output_size_and_dtype():
    model = build_model(tiny_config("liif")).eval()
    img = (np.random.default_rng(0).random((17, 23, 3)) * 255).astype(np.uint8)
    out = upscale(img, 2.5, model)
    assert out.shape == (round(17 * 2.5), round(23 * 2.5), 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="scale"):
        upscale(img, 1.0, model)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # float data must be in [0, 1]
        upscale(img.astype(np.float32), 2, model)


def test_a_scale_just_past_the_maximum_is_named_with_its_digits():
    assert check_scale(8.0) == 8.0
    with pytest.raises(ValueError, match=r"scale x8\.0000001 is beyond .* \(max x8;"):
        check_scale(8.0000001)  # not "x8 is beyond ... (max x8)"
    with pytest.raises(ValueError, match=r"scale x9 is beyond"):
        check_scale(9)


def test_a_scale_written_with_a_decimal_comma_is_answered_with_a_point():
    # -s 2,5 (a German or French keyboard's decimal): "must be a number" left the user guessing
    with pytest.raises(ValueError, match=r"got '2,5' \(write the decimal with a point: 2\.5\)"):
        check_scale("2,5")
    with pytest.raises(ValueError, match=r"got 'abc'$"):
        check_scale("abc")
