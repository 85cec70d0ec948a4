"""Whole-slide pipeline: tiled slide output == whole-image SR, tissue path, plans, bad input."""

import os
import warnings

import numpy as np
import pytest
import tifffile
import torch

from iste.engine.frame import Frame
from iste.engine.render import QueryOptions, super_resolve
from iste.engine.tiles import TileGeometry, bicubic_tile, default_tile, plan_tiles
from iste.models.registry import build_model
from iste.slides.job import SlideJob, make_plan, scale_for_target_mpp
from iste.slides.pipeline import upscale_slide
from iste.slides.reader import InMemorySlide, SlideError
from iste.slides.formats import open_slide
from iste.slides.workdir import work_dir_for
from model_zoo import tiny_config
from slide_data import he_image, killed_at_tile, tissue_disc_on_glass, write_tiff_pyramid

OPTS = QueryOptions(stf_window=16, stf_keys=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config("iste")).eval()


def _sr_uint8(model, rgb, out_hw):
    lr = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    sr = super_resolve(model, lr, out_hw, options=OPTS)
    return (sr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def test_slide_output_of_a_region_equals_whole_image_sr_there(tmp_path, model):
    # The region (192, 144, 96, 64) at x2.5 starts on STF key windows (16 LR px) and key
    # rows (stride 8 output px), so its output pixels are those of the whole slide's output
    # there, its border too: its tiles read the slide around it. The reference is the SR of
    # the region with 48 px around it (three key windows, far beyond the model's reach).
    slide = InMemorySlide(he_image(), mpp=0.5)
    job = SlideJob(2.5, region=(192, 144, 96, 64), tile=64, codec="deflate", tissue=False)
    res = upscale_slide(slide, tmp_path / "out.tiff", model, job, options=OPTS, progress=False)
    assert res.size == (240, 160) and res.tiles == 12 and res.tiles_model == 12
    assert res.mpp == pytest.approx((0.2, 0.2))
    ref = _sr_uint8(model, he_image()[96:256, 144:336], (400, 480))[120:280, 120:360]
    with open_slide(tmp_path / "out.tiff", backend="openslide") as out:
        assert out.mpp == pytest.approx((0.2, 0.2))
        got = out.read_region((0, 0), 0, (240, 160))
    diff = np.abs(got.astype(int) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float rounding at .5 only
    assert not work_dir_for(tmp_path / "out.tiff").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tiff"]


def test_a_plain_jpeg_output_is_written_at_the_jobs_quality(tmp_path, model):
    from PIL import Image

    slide = InMemorySlide(he_image()[:96, :128], mpp=0.5)
    sizes, tables = {}, {}
    for quality in (20, 95):
        out = tmp_path / f"q{quality}.jpg"
        upscale_slide(slide, out, model, SlideJob(2.0, tile=128, quality=quality, tissue=False),
                      options=OPTS, progress=False)
        sizes[quality] = out.stat().st_size
        with Image.open(out) as im:
            tables[quality] = im.quantization[0]
    assert sizes[20] < 0.5 * sizes[95]  # --quality was ignored: both written at 95
    assert max(tables[20]) > 4 * max(tables[95])


def test_background_tiles_take_the_bicubic_path(tmp_path, model):
    rgb = np.full((160, 256, 3), 242, np.uint8)  # glass ...
    rgb[:, 160:] = he_image()[:160, :96]  # ... and tissue on the right
    slide = InMemorySlide(rgb, mpp=0.5)
    job = SlideJob(2.0, tile=128, codec="deflate")
    res = upscale_slide(slide, tmp_path / "out.png", model, job, options=OPTS, progress=False)
    assert res.tiles == 12 and res.tiles_background >= 3 and res.tiles_model >= 3
    from iste.data.images import read_image

    out = read_image(tmp_path / "out.png")
    assert out.shape == (320, 512, 3)
    assert (np.abs(out[:, :128].astype(int) - 242) <= 1).all()  # bicubic of flat glass


def test_a_slide_where_no_tissue_is_found_is_said_to_be_bicubic_throughout(tmp_path, model):
    # A gray scan of tissue has no colour for the saturation rule: every tile was bicubic and
    # only the tile counts hinted at it. A slide with tissue says nothing.
    gray = he_image()[:96, :128].mean(axis=-1, keepdims=True).astype(np.uint8)
    job = SlideJob(2.0, tile=128, codec="deflate")
    for name, rgb, warned in (("gray", np.repeat(gray, 3, axis=-1), True),
                              ("stained", he_image()[:96, :128], False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = upscale_slide(InMemorySlide(rgb, mpp=0.5), tmp_path / f"{name}.png", model,
                                job, options=OPTS, progress=False)
        said = [str(w.message) for w in caught if "found no tissue" in str(w.message)]
        assert (res.tiles_model == 0) == warned
        assert len(said) == int(warned)
        assert all("every output pixel is bicubic; --no-tissue" in s for s in said)


def test_background_tiles_read_the_stored_pixels_and_tissue_tiles_the_processed_ones(
        tmp_path, model):
    from iste.slides.deblocked import DeblockedSlide

    class Darkened(DeblockedSlide):  # a processing reader whose processing is unmistakable
        def _read_level(self, level, x, y, width, height):
            return self.as_stored.read_level(level, (x, y), (width, height)) // 4

    from iste.data.images import read_image

    rgb = np.full((160, 256, 3), 242, np.uint8)  # glass ...
    rgb[:, 160:] = he_image()[:160, :96]  # ... and tissue on the right
    job = SlideJob(2.0, tile=128, codec="deflate")
    out = {}
    for name, slide in (("stored", InMemorySlide(rgb, mpp=0.5)),
                        ("darkened", Darkened(InMemorySlide(rgb, mpp=0.5)))):
        res = upscale_slide(slide, tmp_path / f"{name}.png", model, job, options=OPTS,
                            progress=False)
        assert res.tiles_background >= 3 and res.tiles_model >= 3
        out[name] = read_image(tmp_path / f"{name}.png").astype(int)
    glass, tissue = np.s_[:, :128], np.s_[:, 384:]  # whole background / model tiles
    assert np.array_equal(out["darkened"][glass], out["stored"][glass])  # the stored pixels
    assert (np.abs(out["darkened"][glass] - 242) <= 1).all()
    assert np.abs(out["darkened"][tissue] - out["stored"][tissue]).mean() > 0.5  # processed


def test_glass_beside_tissue_does_not_depend_on_the_tile_grid_nor_step_at_its_borders(
        tmp_path, model):
    # Each tile was the model's or bicubic as a whole: glass within a tile's reach of tissue
    # took one or the other by where the grid fell (the untrained model is 159 levels off
    # bicubic on glass: a 159-level step at tile borders, and 64- and 96-px tiles disagreed
    # there by as much). Now each pixel's model weight follows its distance to the mask.
    from iste.data.images import read_image

    rgb, glass = tissue_disc_on_glass()
    slide = InMemorySlide(rgb, mpp=0.5)
    out, results = {}, []
    for tile in (64, 96):
        results.append(upscale_slide(slide, tmp_path / f"{tile}.png", model,
                                     SlideJob(2.0, tile=tile, codec="deflate"), options=OPTS,
                                     progress=False))
        out[tile] = read_image(tmp_path / f"{tile}.png").astype(int)
    assert np.abs(out[64] - out[96]).max() <= 1  # float rounding at .5 only
    o = out[64]
    step_x = np.abs(np.diff(o, axis=1)).max(-1)  # between columns k and k + 1
    on_glass = glass[:, 1:] & glass[:, :-1]
    border = np.zeros(step_x.shape[1], bool)
    border[63::64] = True
    assert step_x[on_glass & border].max() <= step_x[on_glass & ~border].max() + 1
    assert all(res.tiles_background and res.tiles_blended for res in results)


def test_a_resumed_job_at_tissues_edge_has_the_pixels_of_one_run(tmp_path, model):
    # the blend's weights come from the pixel's position alone, so the tiles a rerun makes
    # fit those the interrupted run left (at the ramp too); the manifest records the rule
    from iste.data.images import read_image
    from iste.slides.pipeline import job_manifest, prepare_job
    from iste.slides.tissue import BLEND_RULE

    slide = InMemorySlide(tissue_disc_on_glass()[0], mpp=0.5)
    job = SlideJob(2.0, tile=64, codec="deflate")
    with pytest.raises(KeyboardInterrupt), killed_at_tile(12):
        upscale_slide(slide, tmp_path / "resumed.png", model, job, options=OPTS,
                      progress=False)
    res = upscale_slide(slide, tmp_path / "resumed.png", model, job, options=OPTS,
                        progress=False)
    assert res.tiles_resumed >= 11
    upscale_slide(slide, tmp_path / "once.png", model, job, options=OPTS, progress=False)
    assert np.array_equal(read_image(tmp_path / "resumed.png"), read_image(tmp_path / "once.png"))
    setup = prepare_job(slide, tmp_path / "x.png", model, job, OPTS.resolved(model))
    assert job_manifest(slide, model, job, setup, OPTS.resolved(model))["tissue"] == BLEND_RULE


def test_a_model_weight_follows_the_distance_to_tissue_whatever_the_rectangle():
    from iste.slides.tissue import BLEND_PX, TissueBlend, TissueMask

    mask = np.zeros((50, 60), bool)
    mask[10:30, 20:40] = True
    blend = TissueBlend(TissueMask(mask, (4.0, 4.0)), Frame((200, 240), (400, 480)))
    whole = blend.weights(range(400), range(480))
    assert whole.dtype == np.float32 and whole.min() == 0 and whole.max() == 1
    assert (whole[100:200, 200:300] == 1).all()  # on the mask (level 0: 50-100, 100-150)
    row = whole[150, 300:]  # out into glass to the right, from the mask's last centre
    assert (np.diff(row) <= 0).all() and row[0] == 1 and row[2 * BLEND_PX + 1] == 0
    assert np.array_equal(blend.weights(range(137, 171), range(291, 333)),
                          whole[137:171, 291:333])
    assert blend.coverage(range(0, 40), range(0, 40)) == "glass"
    assert blend.coverage(range(100, 140), range(200, 240)) == "tissue"
    assert blend.coverage(range(130, 170), range(290, 330)) == "edge"


def test_a_target_mpp_for_pixels_that_are_not_square_says_what_each_axis_gets():
    # one scale from the mean of 0.5 x 0.25 um: 0.267 x 0.133 for --target-mpp 0.2, unsaid
    slide = InMemorySlide(he_image(), mpp=(0.5, 0.25))
    with pytest.warns(UserWarning, match=r"not square \(0\.5 x 0\.25 um.*x1\.875.*"
                                         r"0\.2667 x 0\.1333 um"):
        assert scale_for_target_mpp(slide, 0, 0.2) == pytest.approx(1.875)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # square pixels: nothing to say
        scale_for_target_mpp(InMemorySlide(he_image(), mpp=0.5), 0, 0.2)


def test_an_electron_microscopy_pixel_size_upscaled_x8_reads_back(tmp_path, model):
    # 1e-4 um (0.1 nm) x8 is 1.25e-5 um: written, then read back as unknown (with a warning
    # that no microscope gives it) by every reader of the output
    slide = InMemorySlide(he_image()[:32, :32], mpp=1e-4)
    job = SlideJob(8, tile=128, codec="deflate", tissue=False)
    res = upscale_slide(slide, tmp_path / "em.tiff", model, job, options=OPTS, progress=False)
    assert res.mpp == pytest.approx((1.25e-5, 1.25e-5))
    for backend in ("tiffslide", "openslide"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with open_slide(tmp_path / "em.tiff", backend=backend) as out:
                assert out.mpp == pytest.approx((1.25e-5, 1.25e-5), rel=1e-6)


@pytest.mark.parametrize("mpp, scale, fix", [(2e-5, 4, "smaller scale"),
                                             (5e-5, 8, "smaller scale")])
def test_an_output_pixel_size_iste_would_not_read_back_is_refused_before_any_work(
        tmp_path, mpp, scale, fix):
    slide = InMemorySlide(he_image()[:32, :32], mpp=mpp)
    with pytest.raises(SlideError, match=f"outside the 1e-05 to 100000 um .*{fix}"):
        make_plan(slide, SlideJob(scale))


def test_plan_follows_level_region_and_mpp():
    slide = InMemorySlide(he_image(), mpp=0.5, min_level_size=100)
    assert scale_for_target_mpp(slide, 1, 0.4) == pytest.approx(2.5)
    plan = make_plan(slide, SlideJob(2.5, level=1, region=(100, 40, 300, 200)))
    assert plan.lr_box == (50, 20, 150, 100) and plan.out_size == (375, 250)
    assert plan.mpp == pytest.approx((0.4, 0.4)) and plan.region0 == (100, 40, 300, 200)
    assert make_plan(slide, SlideJob(2, tile=1024)).tiff_tile == 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these warns
        for tile, tiff_tile in ((96, 96), (400, 400), (1536, 512), (640, 320), (1008, 336)):
            assert make_plan(slide, SlideJob(2, tile=tile)).tiff_tile == tiff_tile, tile
    with pytest.warns(UserWarning, match="--tile 592 makes 16-px TIFF tiles"):
        assert make_plan(slide, SlideJob(2, tile=592)).tiff_tile == 16  # 16 x 37


def test_the_tiff_tile_is_no_larger_than_a_small_output_needs():
    # libvips refused an 80 x 60 output's 512-px tiles ("tile size out of range")
    small = InMemorySlide(he_image(40, 30), mpp=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a small output is no reason to warn
        # 80 x 60: 128 divides 512, 80 divides 400; 160 x 120: 256; 48 x 36: 64
        for tile, scale, tiff_tile in ((512, 2, 128), (400, 2, 80), (96, 2, 96), (512, 4, 256),
                                       (512, 1.2, 64)):
            plan = make_plan(small, SlideJob(scale, tile=tile))
            assert plan.tiff_tile == tiff_tile, (tile, scale)
            assert plan.tiff_tile <= 2 * max(plan.out_size)


@pytest.mark.parametrize("scale", [1.1, 1.5, 2.0, 2.0 + 1e-6, 2.5, 3.3, 4.0, 4.2, 6.0, 8.0])
def test_the_default_tile_is_the_smallest_tiff_multiple_spanning_256_lr_pixels(scale):
    tile = default_tile(scale)
    assert tile % 512 == 0 and tile / scale >= 256 - 1e-6
    assert tile == 512 or (tile - 512) / scale < 256  # one step smaller would span too little
    job = SlideJob(scale)
    assert job.tile == tile and job.to_dict()["tile"] == tile  # resolved: a resume sees it
    assert SlideJob(scale, tile=96).tile == 96


def test_the_default_tile_grows_with_the_scale_as_documented():
    assert [default_tile(s) for s in (2.0, 2.5, 4.0, 8.0)] == [512, 1024, 1024, 2048]
    assert default_tile(0.499 / 0.2495) == 512  # a scale of 2 from microns per pixel


def test_bad_requests_fail_before_any_output(tmp_path, model):
    slide = InMemorySlide(he_image(), mpp=0.5)
    out = tmp_path / "out.tiff"
    with pytest.raises(SlideError, match="outside the slide"):
        upscale_slide(slide, out, model, SlideJob(2, region=(500, 0, 200, 10)), progress=False)
    with pytest.raises(SlideError, match="does not exist"):
        upscale_slide(slide, out, model, SlideJob(2, level=5), progress=False)
    with pytest.raises(SlideError, match="finer than the model can reach"):
        scale_for_target_mpp(slide, 0, 0.05)
    with pytest.raises(SlideError, match="not finer"):
        scale_for_target_mpp(slide, 0, 0.6)
    with pytest.raises(SlideError, match="no microns per pixel"):
        scale_for_target_mpp(InMemorySlide(he_image()), 0, 0.25)
    with pytest.raises(ValueError, match="beyond"):
        SlideJob(9)
    with pytest.raises(ValueError, match="too large"):
        upscale_slide(InMemorySlide(np.zeros((3000, 3000, 3), np.uint8)), tmp_path / "o.png",
                      model, SlideJob(3), progress=False)
    with pytest.raises(ValueError, match="must end in"):
        upscale_slide(slide, tmp_path / "o.svs", model, SlideJob(2), progress=False)
    strip = InMemorySlide(he_image()[:4, :64], mpp=0.5, min_level_size=1)  # level 2: 16 x 1
    with pytest.raises(ValueError, match="level 2 is 16 x 1 px, under the 2 x 2"):
        upscale_slide(strip, out, model, SlideJob(2, level=2), progress=False)
    assert list(tmp_path.iterdir()) == []  # no work folder either


def test_interrupted_job_resumes_from_finished_tiles(tmp_path, model):
    slide = InMemorySlide(he_image()[:96, :128], mpp=0.5)
    job = SlideJob(2, tile=64, codec="deflate", tissue=False)
    with killed_at_tile(5), pytest.raises(KeyboardInterrupt):
        upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    assert not (tmp_path / "a.tiff").exists()
    assert work_dir_for(tmp_path / "a.tiff").is_dir()  # four finished tiles kept
    res = upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    assert res.tiles == 12 and res.tiles_resumed == 4 and res.tiles_model == 8
    upscale_slide(slide, tmp_path / "b.tiff", model, job, options=OPTS, progress=False)
    with open_slide(tmp_path / "a.tiff") as a, open_slide(tmp_path / "b.tiff") as b:
        assert np.array_equal(a.read_region((0, 0), 0, (256, 192)),
                              b.read_region((0, 0), 0, (256, 192)))
    assert not work_dir_for(tmp_path / "a.tiff").exists()


@pytest.mark.parametrize("codec, resumed", [("deflate", 4), ("jpeg", 0)])
def test_another_quality_resumes_lossless_tiles_only(tmp_path, model, codec, resumed):
    """--quality changes JPEG tiles' bytes, not deflate's: a rerun with another quality
    resumes a deflate job's finished tiles and discards a JPEG job's."""
    slide = InMemorySlide(he_image()[:96, :128], mpp=0.5)
    job = SlideJob(2, tile=64, codec=codec, quality=90, tissue=False)
    with killed_at_tile(5), pytest.raises(KeyboardInterrupt):
        upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    again = SlideJob(2, tile=64, codec=codec, quality=60, tissue=False)
    res = upscale_slide(slide, tmp_path / "a.tiff", model, again, options=OPTS,
                        progress=False)
    assert res.tiles == 12 and res.tiles_resumed == resumed


def test_a_resumed_jobs_rate_counts_the_pixels_it_computed(tmp_path, model):
    """The rate the report prints (``mpx_per_s``) is of the pixels this run computed, as the
    progress lines count them: 3 full tiles of 64 x 64 resumed from a 192 x 200 output whose
    last column is 8 px wide leave 38 400 - 12 288 px; a share of tiles (9 of 12) said 28 800."""
    slide = InMemorySlide(he_image()[:96, :100], mpp=0.5)
    job = SlideJob(2, tile=64, codec="deflate", tissue=False)
    with killed_at_tile(4), pytest.raises(KeyboardInterrupt):
        upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    res = upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    assert res.size == (200, 192) and res.tiles == 12 and res.tiles_resumed == 3
    assert res.seconds_tiles > 0
    assert res.mpx_per_s * res.seconds_tiles * 1e6 == pytest.approx(200 * 192 - 3 * 64 * 64)


def test_an_input_replaced_in_place_with_its_size_and_mtime_discards_the_tiles(tmp_path,
                                                                                model):
    """Another slide of the same size copied over the input, its modification time set back
    (``cp``, ``touch -r``): the finished tiles are of the old pixels and are not resumed."""
    path, other = tmp_path / "in.tiff", tmp_path / "other.tiff"
    for p, rgb in ((path, he_image()[:64, :128]), (other, he_image(x=1300)[:64, :128])):
        tifffile.imwrite(p, rgb, tile=(64, 64), photometric="rgb", metadata=None)
    job = SlideJob(2, tile=64, codec="deflate", tissue=False)
    with open_slide(path) as slide, killed_at_tile(4), pytest.raises(KeyboardInterrupt):
        upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    st = path.stat()
    path.write_bytes(other.read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with open_slide(path) as slide:
        res = upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS,
                            progress=False)
    assert res.tiles_resumed == 0 and res.tiles_model == res.tiles == 8
    with open_slide(other) as slide:
        upscale_slide(slide, tmp_path / "b.tiff", model, job, options=OPTS, progress=False)
    with open_slide(tmp_path / "a.tiff") as a, open_slide(tmp_path / "b.tiff") as b:
        assert np.array_equal(a.read_region((0, 0), 0, (256, 128)),
                              b.read_region((0, 0), 0, (256, 128)))


@pytest.mark.parametrize("output", ["a.tiff", "a.png"])
def test_an_input_rewritten_while_the_job_runs_stops_it_before_assembly(tmp_path, model,
                                                                       monkeypatch, output):
    """The input rewritten after the job's key was taken (another slide of the same size, its
    modification time set back): some tiles are of the old pixels, some of the new; the job
    stops naming the file, writes nothing at the output and keeps no tiles to resume."""
    import iste.slides.pipeline as pipeline

    path, other = tmp_path / "in.tiff", tmp_path / "other.tiff"
    for p, rgb in ((path, he_image()[:64, :128]), (other, he_image(x=1300)[:64, :128])):
        tifffile.imwrite(p, rgb, tile=(64, 64), photometric="rgb", metadata=None)
    real, calls = pipeline.render_tile, []

    def rewriting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            st = path.stat()
            # over its bytes, not truncated first (write_bytes): a tile read in that moment
            # found the file short and stopped the job before its 8 tiles (seen under load)
            with open(path, "r+b") as f:
                f.write(other.read_bytes())
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "render_tile", rewriting)
    job = SlideJob(2, tile=64, codec="deflate", tissue=False)
    with open_slide(path) as slide, pytest.raises(SlideError) as err:
        upscale_slide(slide, tmp_path / output, model, job, options=OPTS, progress=False)
    assert len(calls) == 8 and "changed while the job ran" in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tiff", "other.tiff"]
    with open_slide(path) as slide:  # unchanged since: runs through, from scratch
        res = upscale_slide(slide, tmp_path / output, model, job, options=OPTS,
                            progress=False)
    assert res.tiles_resumed == 0 and (tmp_path / output).is_file()


def test_tiles_of_another_iste_version_are_not_resumed(tmp_path, model, monkeypatch):
    """Another version's engine may render other pixels: its finished tiles are discarded."""
    import iste

    slide = InMemorySlide(he_image()[:64, :128], mpp=0.5)
    job = SlideJob(2, tile=64, codec="deflate", tissue=False)
    with killed_at_tile(4), pytest.raises(KeyboardInterrupt):
        upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    monkeypatch.setattr(iste, "__version__", iste.__version__ + ".post1")
    res = upscale_slide(slide, tmp_path / "a.tiff", model, job, options=OPTS, progress=False)
    assert res.tiles_resumed == 0 and res.tiles_model == res.tiles == 8


def test_changed_parameters_discard_stale_tiles(tmp_path, model):
    slide = InMemorySlide(he_image()[:64, :64], mpp=0.5)
    wd = work_dir_for(tmp_path / "a.tiff") / "tiles" / "0"
    wd.mkdir(parents=True)
    (wd / "0").write_bytes(b"stale tile of another job")
    with pytest.warns(UserWarning, match=r"1 tile\(s\) in .* have no readable record of the "
                      r"job that made them \(manifest.json missing or damaged\): discarded"):
        res = upscale_slide(slide, tmp_path / "a.tiff", model,
                            SlideJob(2, tile=64, codec="deflate", tissue=False),
                            options=OPTS, progress=False)
    assert res.tiles_resumed == 0 and open_slide(tmp_path / "a.tiff").dimensions == (128, 128)


def test_bicubic_tile_matches_its_frame():
    # the background path samples the same output pixel centres as the model: at an integer
    # scale that is torch's own bicubic resize (align_corners=False)
    lr = torch.rand(1, 3, 8, 20)
    frame = Frame((8, 20), (24, 60))
    tile = plan_tiles(frame, (24, 60), TileGeometry(halo=0, key_window=None))[0]
    ref = torch.nn.functional.interpolate(lr, size=(24, 60), mode="bicubic",
                                          align_corners=False).clamp(0, 1)
    assert torch.allclose(bicubic_tile(lr, frame, tile), ref, atol=1e-5)


@pytest.mark.parametrize("layout,name", [("svs", "out.tiff"), ("dicom", "out.dcmdir")])
def test_an_output_another_job_finished_meanwhile_is_not_replaced(tmp_path, model, layout,
                                                                  name):
    # the caller refused an existing output before loading the model; another job can finish
    # the same output after that check and release its lock: checked again under the lock
    slide = InMemorySlide(he_image(), mpp=0.5)
    job = SlideJob(2.0, region=(0, 0, 64, 48), tile=64, tissue=False, layout=layout)
    out = tmp_path / name
    upscale_slide(slide, out, model, job, options=OPTS, progress=False)  # the other job
    before = sorted((p.name, p.stat().st_mtime_ns) for p in [out, *out.glob("*")])
    with pytest.raises(FileExistsError, match="--overwrite"):
        upscale_slide(slide, out, model, job, options=OPTS, progress=False, replace=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in [out, *out.glob("*")]) == before
    assert not work_dir_for(out).exists()
    upscale_slide(slide, out, model, job, options=OPTS, progress=False)  # replace=True: as asked


def test_a_target_mpp_half_the_slides_is_x2_exactly_despite_the_files_float_noise(tmp_path):
    """0.2527 um read back from a TIFF's resolution is 0.25270000000000004: --target-mpp
    0.12635 was x2.0000000000000004, refused by a fixed-scale x2 network ("cannot upscale by
    2") and recorded as that scale."""
    from iste.cli.main import main
    from iste.models.checkpoint import save_model
    from model_zoo import tiny_fixed

    slide = InMemorySlide(he_image(96, 80), mpp=0.25270000000000004)
    assert scale_for_target_mpp(slide, 0, 0.12635) == 2.0
    assert scale_for_target_mpp(slide, 0, 0.1) == 2.527
    model = save_model(build_model(tiny_fixed("edsr", 2)), tmp_path / "edsr.safetensors")
    path = write_tiff_pyramid(tmp_path / "s.tiff", InMemorySlide(he_image(96, 80)), mpp=0.2527)
    out = tmp_path / "o.tiff"
    assert main(["upscale", str(path), "--target-mpp", "0.12635", "-o", str(out), "--model",
                 str(model), "--codec", "deflate", "-q"]) == 0
    assert "iste.scale = 2.0|" in tifffile.TiffFile(out).pages[0].description
