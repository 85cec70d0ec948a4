"""Tiled inference equals whole-image inference (engine/tiles.py)."""

import math

import pytest
import torch

from iste.engine.frame import Frame, axis_window
from iste.engine.render import QueryOptions, Renderer, super_resolve
from iste.engine.tiles import (Tile, TileGeometry, bicubic_tile, encode_radius, plan_tiles,
                               render_tile, tile_for, tile_geometry, tiled_super_resolve)
from iste.data.coords import denormalize, normalize
from iste.models.registry import build_model
from model_zoo import tiny_config

MICRO_ISTE = {"head": "iste", "encoder": "edsr-baseline",
              "encoder_args": {"n_resblocks": 1, "n_feats": 8},
              "head_args": {"hidden_dim": 8, "decoder_hidden": [8], "lfi_heads": 2}}


def psnr(a, b):
    return 10 * math.log10(1 / float(((a - b) ** 2).mean().clamp_min(1e-20)))


def test_tiled_equals_whole_on_an_output_crop():
    # x2 of a 128 x 128 LR image (8 x 8 key windows of 16 LR px = 32 output px); the output
    # crop rows 40..256 x cols 60..236 (it reaches the bottom border) is rendered (a) from the
    # whole image's features and (b) tile by tile with 45 x 51 tiles: odd sizes that are not
    # multiples of 32, so tile borders split LR pixels and cut the key windows at many
    # different offsets.
    model = build_model(MICRO_ISTE).eval()
    opts = QueryOptions(stf_window=16, stf_keys=16)
    lr = torch.rand(1, 3, 128, 128)
    frame = Frame((128, 128), (256, 256))
    (top, bottom), (left, right) = (40, 256), (60, 236)
    with torch.no_grad():
        feats = model.encode(normalize(lr))
    whole = denormalize(Renderer(model, feats, frame, options=opts).render(
        range(top, bottom), range(left, right)))
    geom = tile_geometry(model, opts)
    tiled = torch.full_like(whole, float("nan"))
    offsets = set()
    for tile in plan_tiles(frame, (45, 51), geom):
        r0, r1 = max(tile.out_rows.start, top), min(tile.out_rows.stop, bottom)
        c0, c1 = max(tile.out_cols.start, left), min(tile.out_cols.stop, right)
        if r0 >= r1 or c0 >= c1:
            continue
        offsets |= {r0 % 32, c0 % 32}
        sub = Tile(range(r0, r1), range(c0, c1), tile.lr_rows, tile.lr_cols)
        crop = lr[..., tile.lr_rows.start:tile.lr_rows.stop, tile.lr_cols.start:tile.lr_cols.stop]
        tiled[..., r0 - top:r1 - top, c0 - left:c1 - left] = render_tile(model, crop, frame, sub,
                                                                          options=opts)
    assert len(offsets) >= 6  # tile borders at many offsets inside the key windows
    assert not tiled.isnan().any()  # the plan covered the crop
    whole = whole.clamp(0, 1)
    assert psnr(tiled, whole) >= 50
    # finite receptive field: equal to float rounding, except where STF's argmax meets a
    # near-tie of two keys (top-2 cosines ~6e-8 apart occur here) and float rounding flips it:
    # one flipped LR pixel moves at most its 4 x 4 output pixels at x2 (here: 4 pixels move)
    same = ((tiled - whole).abs() < 1e-5).all(dim=1).float().mean()
    assert same > 0.999


@pytest.mark.parametrize("head,encoder", [("iste", "swinir"), ("liif", "edsr-baseline"),
                                          ("lte", "edsr-baseline")])
def test_tiled_equals_whole_for_other_heads_and_encoders(head, encoder):
    cfg = tiny_config(head, encoder)
    if encoder == "swinir":  # two layers per block: shifted windows
        cfg["encoder_args"] = {**cfg["encoder_args"], "depths": [2, 2], "num_heads": [2, 2]}
    model = build_model(cfg).eval()
    opts = QueryOptions(stf_window=16, stf_keys=32)
    lr = torch.rand(1, 3, 45, 53)
    whole = super_resolve(model, lr, (113, 133), options=opts)
    tiled = tiled_super_resolve(model, lr, (113, 133), tile_hw=(32, 48), options=opts)
    assert psnr(tiled, whole) >= 50


def test_capped_halo_of_an_attention_encoder_stays_above_50_db():
    # Four shifted-window Swin layers: the receptive field outgrows a 4-px halo; the result
    # then differs from the whole image, but far below 8-bit precision.
    cfg = tiny_config("iste", "swinir")
    cfg["encoder_args"] = {**cfg["encoder_args"], "depths": [4, 4], "num_heads": [2, 2]}
    model = build_model(cfg).eval()
    opts = QueryOptions(stf_window=16, stf_keys=32)
    assert encode_radius(model, max_halo=4) == 4  # capped
    lr = torch.rand(1, 3, 48, 48)
    whole = super_resolve(model, lr, (96, 96), options=opts)
    tiled = tiled_super_resolve(model, lr, (96, 96), tile_hw=(32, 32), options=opts,
                                geom=tile_geometry(model, opts, max_halo=4))
    assert (tiled - whole).abs().max() > 0  # not exact: the cap is real
    assert psnr(tiled, whole) >= 50


@pytest.mark.parametrize("blocks", [0, 1, 2])
def test_encode_radius_is_the_receptive_field(blocks):
    # EDSR: head conv + 2 convs per block + body conv; ISTE adds LFI (3x3) then a 3x3 conv
    cfg = tiny_config("iste")
    cfg["encoder_args"] = {"n_resblocks": blocks, "n_feats": 8}
    assert encode_radius(build_model(cfg)) == 2 * blocks + 2 + 2


def test_crops_hold_whole_key_windows_and_align_to_attention_windows():
    frame = Frame((300, 410), (737, 1009))  # x2.457, x2.461
    geom = TileGeometry(halo=5, key_window=48, align=8)
    tiles = plan_tiles(frame, (128, 160), geom)
    covered = torch.zeros(737, 1009, dtype=torch.int)
    for t in tiles:
        covered[t.out_rows.start:t.out_rows.stop, t.out_cols.start:t.out_cols.stop] += 1
        assert t.lr_rows.start % 8 == 0 and t.lr_cols.start % 8 == 0
        for out, lr, n_out, n_lr in ((t.out_rows, t.lr_rows, 737, 300),
                                     (t.out_cols, t.lr_cols, 1009, 410)):
            wins = axis_window(torch.tensor([out.start, out.stop - 1]), n_out, n_lr, 48)
            lo, hi = int(wins[0]) * 48 - 7, min(n_lr, (int(wins[1]) + 1) * 48 + 7)
            assert lr.start <= max(0, lo) and lr.stop >= hi
    assert (covered == 1).all()  # the plan covers the output exactly once


def test_a_window_with_lr_context_renders_as_the_whole_image_there():
    # A slide --region is a frame of its own over a window of its level: given the LR
    # context around it, its tiles read across its border and render the window's output
    # pixels as the whole image's output has them. The window (rows 32..80, columns 16..80
    # of 96 x 112 LR, x2) starts on key windows (16 LR px) and key rows (stride 4 at 64 keys
    # a window), so its key sets are the whole image's too; tiles of 40 x 56 output px.
    model = build_model(MICRO_ISTE).eval()
    opts = QueryOptions(stf_window=16, stf_keys=64)
    lr = torch.rand(1, 3, 96, 112)
    whole = super_resolve(model, lr, (192, 224), options=opts)[..., 64:160, 32:160]
    frame = Frame((48, 64), (96, 128))
    geom = tile_geometry(model, opts)

    def render(context):
        out = torch.full_like(whole, float("nan"))
        for t in plan_tiles(frame, (40, 56), geom, context=context):
            crop = lr[..., 32 + t.lr_rows.start:32 + t.lr_rows.stop,
                      16 + t.lr_cols.start:16 + t.lr_cols.stop]
            out[..., t.out_rows.start:t.out_rows.stop, t.out_cols.start:t.out_cols.stop] = \
                render_tile(model, crop, frame, t, options=opts)
        return out

    with_context = render((range(-32, 64), range(-16, 96)))
    same = ((with_context - whole).abs() < 1e-5).all(dim=1).float().mean()
    assert same > 0.999  # float rounding (and STF's near-ties, as above)
    alone = render(None)  # the window as an image of its own: its border differs
    assert (alone - whole).abs().amax(dim=(0, 1))[0].mean() > 1e-2
    with pytest.raises(ValueError, match="does not hold"):
        plan_tiles(frame, (40, 56), geom, context=(range(0, 40), range(-16, 96)))


def test_bicubic_tiles_are_seamless():
    lr = torch.rand(1, 3, 40, 50)
    frame = Frame((40, 50), (100, 125))
    geom = TileGeometry(halo=2, key_window=None)
    whole_tile = plan_tiles(frame, (100, 125), geom)[0]
    whole = bicubic_tile(lr, frame, whole_tile)
    parts = torch.empty_like(whole)
    for t in plan_tiles(frame, (32, 32), geom):
        crop = lr[..., t.lr_rows.start:t.lr_rows.stop, t.lr_cols.start:t.lr_cols.stop]
        parts[..., t.out_rows.start:t.out_rows.stop,
              t.out_cols.start:t.out_cols.stop] = bicubic_tile(crop, frame, t)
    assert (parts - whole).abs().max() < 1e-5
    const = torch.full((1, 3, 40, 50), 0.7)
    assert torch.allclose(bicubic_tile(const, frame, whole_tile), torch.tensor(0.7))


def _needed_lr(out: range, n_out: int, n_lr: int, geom: TileGeometry) -> tuple[int, int]:
    """LR indices [lo, hi) a tile rendering ``out`` must read, by exact integer arithmetic: the
    LR pixels under its output pixels and, for a key set, the whole key windows holding their
    centres, widened by the halo, the query reach and one pixel of rounding."""
    lo, hi = out.start * n_lr // n_out, -(-out.stop * n_lr // n_out)
    if geom.key_window is not None:
        w = geom.key_window
        wins = axis_window(torch.tensor([out.start, out.stop - 1]), n_out, n_lr, w)
        lo, hi = min(lo, int(wins[0]) * w), max(hi, min(n_lr, (int(wins[1]) + 1) * w))
    margin = geom.halo + geom.reach + 1
    return lo - margin, hi + margin


@pytest.mark.parametrize("key_window", [None, 16])
def test_every_tile_offset_reads_its_pixels_key_windows_and_margin_and_no_more(key_window):
    # A tile may start or end on any output pixel (slide tiles follow the TIFF grid, not the
    # LR pixels or key windows): every start and end, at a scale that is no ratio of small
    # integers, must give a crop holding its LR pixels plus the margin on both sides and, with
    # a key set, whole key windows (a crop one LR pixel short on a side renders that side's
    # pixels from a zero-padded border: a seam). The existing plan test's few tile borders
    # never fell on a window's last output pixel or showed that the margin follows the exact
    # LR edges; this one walks them all, with and without an LR context and attention windows.
    n_lr, n_out = 61, 151  # x2.475
    for align, context in ((1, None), (8, range(-13, 75))):
        geom = TileGeometry(halo=2, key_window=key_window, align=align, reach=1)
        frame = Frame((n_lr, 7), (n_out, 17))
        bounds = context if context is not None else range(n_lr)
        for start in range(n_out):
            for stop in range(start + 1, min(start + 9, n_out) + 1):
                tile = tile_for(frame, range(start, stop), range(0, 17), geom,
                                context=None if context is None else (context, range(7)))
                lo, hi = _needed_lr(range(start, stop), n_out, n_lr, geom)
                crop = tile.lr_rows
                where = (align, start, stop, crop)
                assert bounds.start <= crop.start <= max(bounds.start, lo), where
                assert crop.stop == min(bounds.stop, hi), where
                assert (crop.start - bounds.start) % align == 0, where  # the level's windows
                assert crop.start > max(bounds.start, lo) - align, where  # the nearest one


def test_a_uint8_image_is_tiled_as_its_unit_range_float():
    # render_tiles takes uint8 LR images (a slide's pixels) and scales them to [0, 1] itself
    model = build_model(tiny_config("liif")).eval()
    lr8 = torch.randint(0, 256, (1, 3, 19, 23), dtype=torch.uint8)
    as_uint8 = tiled_super_resolve(model, lr8, (41, 50), tile_hw=(16, 24))
    as_float = tiled_super_resolve(model, lr8.float() / 255, (41, 50), tile_hw=(16, 24))
    assert (as_uint8 - as_float).abs().max() < 1e-6


def test_a_tile_geometry_without_a_positive_alignment_is_refused():
    for bad in ({"align": 0}, {"halo": -1}, {"reach": -1}, {"key_window": 0}):
        with pytest.raises(ValueError, match="invalid tile geometry"):
            TileGeometry(**{"halo": 1, "key_window": None, **bad})
