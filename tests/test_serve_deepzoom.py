"""DeepZoom geometry of the viewer and the pixels of its tiles."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, super_resolve
from iste.engine.tiles import TileGeometry, bicubic_tile, tile_for
from iste.models.registry import build_model
from iste.serve.deepzoom import DeepZoom, TileAddressError
from iste.serve.pixels import ServedSlide, Upscaler
from iste.slides.reader import InMemorySlide
from model_zoo import tiny_config
from slide_data import he_image, tissue_disc_on_glass


def test_levels_halve_from_x8_down_to_one_pixel_with_the_slide_as_native_level():
    z = DeepZoom(300, 200)
    assert z.full_size == (2400, 1600) and z.level_size(z.level_count - 1) == (2400, 1600)
    assert z.level_size(0) == (1, 1)
    for lv in range(1, z.level_count):
        w, h = z.level_size(lv)
        assert z.level_size(lv - 1) == (-(-w // 2), -(-h // 2))
    assert z.native_level == z.level_count - 4 and z.level_size(z.native_level) == (300, 200)
    assert z.first_sr_level == z.native_level + 1
    assert [z.level_scale(lv) for lv in range(z.native_level + 1, z.level_count)] == [
        (2.0, 2.0), (4.0, 4.0), (8.0, 8.0)]


def test_a_max_scale_that_is_not_a_power_of_two_gives_non_integer_sr_levels():
    z = DeepZoom(300, 200, max_scale=6)
    scales = [z.level_scale(lv)[0] for lv in range(z.level_count)]
    assert scales[-3:] == [1.5, 3.0, 6.0] and z.native_level is None
    assert z.is_super_resolved(z.level_count - 3) and not z.is_super_resolved(z.level_count - 4)


def test_tiles_cover_each_level_exactly_with_deepzoom_overlap():
    z = DeepZoom(300, 200, tile=64, overlap=1)
    for lv in range(z.level_count):
        w, h = z.level_size(lv)
        cols, rows = z.tile_count(lv)
        covered = np.zeros((h, w), int)
        for c in range(cols):
            for r in range(rows):
                x, y, tw, th = z.tile_box(lv, c, r)
                core_x, core_y = c * 64, r * 64
                assert x == max(0, core_x - 1) and y == max(0, core_y - 1)
                covered[core_y:core_y + 64, core_x:core_x + 64] += 1
                assert x + tw <= w and y + th <= h
        assert (covered == 1).all()
    with pytest.raises(TileAddressError):
        z.tile_box(z.level_count, 0, 0)
    with pytest.raises(TileAddressError):
        z.tile_box(3, *z.tile_count(3))


def test_dzi_descriptor_states_the_top_level_size_and_tiling():
    root = ET.fromstring(DeepZoom(300, 200, tile=254, overlap=1).dzi("jpeg"))
    assert root.attrib == {"Format": "jpeg", "Overlap": "1", "TileSize": "254"}
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size").attrib
    assert size == {"Width": "2400", "Height": "1600"}


@pytest.mark.parametrize("bad", [dict(max_scale=1.0), dict(max_scale=9), dict(tile=8),
                                 dict(max_scale=float("nan"))])
def test_invalid_geometry_is_refused(bad):
    with pytest.raises(ValueError):
        DeepZoom(300, 200, **bad)


# --- pixels ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served():
    rgb = he_image(60, 40)
    slide = InMemorySlide(rgb, mpp=0.5, min_level_size=8)
    return ServedSlide(slide, DeepZoom(60, 40, tile=32, overlap=1), name="he"), rgb


def _lr(rgb):
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def _tiles(served_slide, kind, level, upscaler=None):
    z = served_slide.zoom
    cols, rows = z.tile_count(level)
    for c in range(cols):
        for r in range(rows):
            x, y, w, h = z.tile_box(level, c, r)
            yield (x, y, w, h), served_slide.render(kind, level, c, r, upscaler)


def test_sr_tiles_of_a_level_equal_the_whole_level_rendered_at_once(served):
    slide, rgb = served
    cfg = tiny_config("iste")
    cfg["encoder_args"] = {"n_resblocks": 0, "n_feats": 16}  # a finite receptive field
    model = build_model(cfg).eval()
    options = QueryOptions(stf_window=8)
    upscaler = Upscaler.for_model(model, name="tiny", options=options, tissue=False)
    z = slide.zoom
    for level in (z.first_sr_level,):  # x2: 4 x 3 tiles across 8-pixel key windows
        lw, lh = z.level_size(level)
        whole = super_resolve(model, _lr(rgb), (lh, lw), options=options)
        whole = (whole[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().astype(int)
        for (x, y, w, h), tile in _tiles(slide, "sr", level, upscaler):
            assert tile.shape == (h, w, 3)
            assert np.abs(tile.astype(int) - whole[y:y + h, x:x + w]).max() <= 1
    # the tiles shared encoded blocks and key textures (iste.engine.shared)
    assert upscaler.store.hits > 0 and len(upscaler.store) > 0


def test_sr_tiles_on_glass_are_bicubic_and_tiles_on_tissue_are_the_models():
    rgb = np.full((40, 96, 3), 242, np.uint8)  # glass on the left ...
    rgb[:, 64:] = he_image(32, 40)  # ... tissue on the right
    slide = ServedSlide(InMemorySlide(rgb, mpp=0.5, min_level_size=8),
                        DeepZoom(96, 40, tile=32, overlap=1), name="half")
    model = build_model(tiny_config("iste")).eval()
    options = QueryOptions(stf_window=8)
    level = slide.zoom.first_sr_level  # x2: 6 x 3 tiles
    by_tissue = Upscaler.for_model(model, name="tiny", options=options)
    everywhere = Upscaler.for_model(model, name="tiny", options=options, tissue=False)
    glass, tissue = (0, 0), (5, 1)  # level-0 columns ~0-16 and ~80-96
    assert slide.kind_of(level, "sr", *glass, by_tissue) == "glass"  # bicubic of the stored pixels
    assert slide.kind_of(level, "sr", *glass, everywhere) == "sr"
    assert slide.kind_of(level, "sr", *tissue, by_tissue) == "sr"
    assert slide.kind_of(level, "bicubic", *tissue, by_tissue) == "bicubic"
    bicubic = slide.render("bicubic", level, *glass).astype(int)
    served = slide.render(slide.kind_of(level, "sr", *glass, by_tissue), level, *glass, by_tissue)
    assert np.abs(served.astype(int) - bicubic).max() <= 1
    assert np.abs(slide.render("sr", level, *glass, everywhere).astype(int) - bicubic).max() > 1


def test_the_viewer_and_the_slide_output_agree_beside_tissue(tmp_path):
    # With tissue detection on, a pixel on glass within a tile's reach of tissue was the
    # model's or bicubic by where each path's tile grid fell (62-px DeepZoom tiles against
    # 96-px slide tiles here: 159 levels apart with the untrained model); now both weigh the
    # model by the pixel's distance to tissue, the same rule in either.
    from iste.data.images import read_image
    from iste.slides.job import SlideJob
    from iste.slides.pipeline import upscale_slide

    rgb, _ = tissue_disc_on_glass()
    torch.manual_seed(0)
    model = build_model(tiny_config("iste")).eval()
    options = QueryOptions(stf_window=16, stf_keys=32)
    upscale_slide(InMemorySlide(rgb, mpp=0.5), tmp_path / "out.png", model,
                  SlideJob(2.0, tile=96, codec="deflate"), options=options, progress=False)
    output = read_image(tmp_path / "out.png").astype(int)
    slide = ServedSlide(InMemorySlide(rgb, mpp=0.5), DeepZoom(224, 224, max_scale=2, tile=62),
                        name="disc")
    upscaler = Upscaler.for_model(model, name="tiny", options=options)
    level = slide.zoom.level_count - 1
    assert slide.zoom.level_size(level) == (448, 448)
    cols, rows = slide.zoom.tile_count(level)
    kinds = set()
    for row in range(rows):
        for col in range(cols):
            kind = slide.kind_of(level, "sr", col, row, upscaler)
            kinds.add(kind)
            x, y, w, h = slide.zoom.tile_box(level, col, row)
            served = slide.render(kind, level, col, row, upscaler).astype(int)
            assert np.abs(served - output[y:y + h, x:x + w]).max() <= 1, (col, row)
    assert kinds == {"sr", "glass"}


def test_a_thumbnail_that_cannot_be_read_leaves_every_sr_tile_to_the_model(caplog):
    """A damaged tile of the level the tissue mask is made from: the mask failed again at
    every SR tile (each answered 500); now every SR tile is the model's, said once."""
    from iste.slides.reader import UnreadableRegionError

    class DamagedThumbnail(InMemorySlide):  # the read of the thumbnail's level fails
        def get_thumbnail(self, size):
            raise UnreadableRegionError("cannot read (damaged)", level=1, box=(0, 0, 48, 20))

    rgb = np.full((40, 96, 3), 242, np.uint8)
    rgb[:, 64:] = he_image(32, 40)
    slide = ServedSlide(DamagedThumbnail(rgb, mpp=0.5, min_level_size=8),
                        DeepZoom(96, 40, tile=32, overlap=1), name="half")
    upscaler = Upscaler.for_model(build_model(tiny_config("iste")).eval(), name="tiny",
                                  options=QueryOptions(stf_window=8))
    level = slide.zoom.first_sr_level
    with caplog.at_level("WARNING", logger="iste.serve"):
        kinds = {slide.kind_of(level, "sr", c, 0, upscaler) for c in range(6)}
    assert kinds == {"sr"}  # the glass too: nothing says it is glass
    said = [r.getMessage() for r in caplog.records if "tissue detection" in r.getMessage()]
    assert len(said) == 1 and "the model renders every SR tile" in said[0]


def test_a_slide_where_no_tissue_is_found_is_said_once_to_be_bicubic(caplog):
    gray = he_image(96, 40).mean(axis=-1, keepdims=True).astype(np.uint8).repeat(3, axis=-1)
    slide = ServedSlide(InMemorySlide(gray, mpp=0.5, min_level_size=8),
                        DeepZoom(96, 40, tile=32, overlap=1), name="gray")
    upscaler = Upscaler.for_model(build_model(tiny_config("iste")).eval(), name="tiny",
                                  options=QueryOptions(stf_window=8))
    level = slide.zoom.first_sr_level
    with caplog.at_level("WARNING", logger="iste.serve"):
        kinds = {slide.kind_of(level, "sr", c, 0, upscaler) for c in range(6)}
    assert kinds == {"glass"}
    said = [r.getMessage() for r in caplog.records if "found no tissue" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("gray: ") and "every SR tile is bicubic" in said[0]


def test_bicubic_tiles_equal_a_whole_level_bicubic_in_the_same_frame(served):
    slide, rgb = served
    level = slide.zoom.first_sr_level + 1
    lw, lh = slide.zoom.level_size(level)
    frame = Frame((40, 60), (lh, lw))
    full = tile_for(frame, range(lh), range(lw), TileGeometry(halo=2, key_window=None))
    whole = bicubic_tile(_lr(rgb), frame, full)
    whole = (whole[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().astype(int)
    for (x, y, w, h), tile in _tiles(slide, "bicubic", level):
        assert np.abs(tile.astype(int) - whole[y:y + h, x:x + w]).max() <= 1


def test_scan_tiles_read_the_slide_natively_and_resize_below_it(served):
    slide, rgb = served
    z = slide.zoom
    for (x, y, w, h), tile in _tiles(slide, "scan", z.native_level):
        assert np.array_equal(tile, rgb[y:y + h, x:x + w])
    level = z.native_level - 1  # 30 x 20, from the slide's own half-size level
    lw, lh = z.level_size(level)
    ref = np.asarray(Image.fromarray(rgb).resize((lw, lh), Image.Resampling.LANCZOS)).astype(int)
    for (x, y, w, h), tile in _tiles(slide, "scan", level):
        assert np.abs(tile.astype(int) - ref[y:y + h, x:x + w]).mean() < 6
    assert slide.render("scan", 0, 0, 0).shape == (1, 1, 3)
    assert slide.kind_of(z.native_level, "sr") == "scan"
    assert slide.kind_of(z.first_sr_level, "sr") == "sr"


def test_tiles_in_a_box_of_the_top_level():
    z = DeepZoom(300, 200)  # top level 2400 x 1600; level 10 is 600 x 400 (3 x 2 tiles)
    t = 4 * z.tile  # a tile of level 10 in top-level pixels (its own area, no overlap)
    assert z.tiles_in(10, (0, 0, 2400, 1600)) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert z.tiles_in(10, (t, 0, 4, 4)) == [(1, 0)]  # the first pixel of tile 1
    assert z.tiles_in(10, (t - 8, t - 8, 8, 8)) == [(0, 0)]  # ends where tile (1, 1) starts
    assert z.tiles_in(10, (-1e9, -1e9, 1, 1)) == []
    cols, rows = z.tile_count(12)
    assert z.tiles_in(12, (0, 0, 2400, 1600)) == [(c, r) for r in range(rows) for c in range(cols)]
    with pytest.raises(ValueError, match=f"more than {cols * rows - 1} tiles"):
        z.tiles_in(12, (0, 0, 2400, 1600), limit=cols * rows - 1)
    with pytest.raises(TileAddressError):
        z.tiles_in(99, (0, 0, 1, 1))
