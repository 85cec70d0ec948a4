"""Slide readers: one shared test class for the in-memory double and both file backends."""

import numpy as np
import pytest

from iste.data.samples import sample_path
from iste.slides.reader import InMemorySlide, SlideError
from iste.slides.formats import open_slide
from slide_data import MPP, he_image, memory_slide, pyramid_tiff

WHITE = np.array([255, 255, 255], np.uint8)


@pytest.fixture(params=["memory", "tiffslide", "openslide"])
def slide(request, tmp_path_factory):
    if request.param == "memory":
        s = memory_slide()
    else:
        s = open_slide(pyramid_tiff(tmp_path_factory), backend=request.param)
    yield s
    s.close()


class TestSlideReader:
    """Every reader must pass these, with the same pixels (the file is lossless)."""

    def test_levels_and_mpp(self, slide):
        h, w = he_image().shape[:2]
        assert slide.dimensions == (w, h)
        assert slide.level_count == 3
        assert slide.level_dimensions == [(600, 440), (300, 220), (150, 110)]
        assert slide.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert slide.mpp == pytest.approx((MPP, MPP))

    def test_level0_region_equals_the_image(self, slide):
        ref = he_image()
        out = slide.read_region((37, 51), 0, (200, 90))
        assert out.dtype == np.uint8 and out.shape == (90, 200, 3)
        assert np.array_equal(out, ref[51:141, 37:237])

    def test_lower_level_region_is_in_the_level0_frame(self, slide):
        level2 = memory_slide().read_level(2, (0, 0), (150, 110))
        # level-0 (x, y) = (41, 22) starts at level-2 pixel (floor(41/4), floor(22/4)) = (10, 5)
        out = slide.read_region((41, 22), 2, (30, 20))
        assert np.array_equal(out, level2[5:25, 10:40])
        assert np.array_equal(slide.read_level(2, (10, 5), (30, 20)), out)

    def test_outside_the_slide_is_white(self, slide):
        ref = he_image()
        out = slide.read_region((-10, -5), 0, (30, 20))
        assert (out[:5] == WHITE).all() and (out[:, :10] == WHITE).all()
        assert np.array_equal(out[5:, 10:], ref[:15, :20])
        w, h = slide.dimensions
        far = slide.read_region((w + 100, h + 100), 1, (16, 8))
        assert far.shape == (8, 16, 3) and (far == WHITE).all()
        edge = slide.read_region((w - 4, 0), 0, (10, 3))
        assert np.array_equal(edge[:, :4], ref[:3, -4:]) and (edge[:, 4:] == WHITE).all()

    def test_thumbnail_fits_and_keeps_the_aspect(self, slide):
        thumb = slide.get_thumbnail((64, 64))
        assert thumb.dtype == np.uint8 and thumb.shape == (47, 64, 3)
        small = memory_slide().read_level(2, (0, 0), (150, 110)).astype(float)
        # a thumbnail of H&E has the slide's mean colour
        assert np.abs(thumb.reshape(-1, 3).mean(0) - small.reshape(-1, 3).mean(0)).max() < 3

    def test_bad_requests_raise_slide_error(self, slide):
        with pytest.raises(SlideError, match="level 3 out of range"):
            slide.read_region((0, 0), 3, (4, 4))
        with pytest.raises(SlideError, match="negative"):
            slide.read_region((0, 0), 0, (-1, 4))

    def test_closed_slide_refuses_reads(self, slide):
        with slide:
            pass
        with pytest.raises(SlideError, match="closed"):
            slide.read_region((0, 0), 0, (4, 4))


def test_both_backends_read_the_sample_svs_alike():
    path = sample_path("cmu-svs")
    with open_slide(path) as a, open_slide(path, backend="openslide") as b:
        assert a.dimensions == b.dimensions == (2220, 2967)
        assert a.mpp == pytest.approx((0.499, 0.499)) and b.mpp == pytest.approx(a.mpp)
        ra, rb = a.read_region((2100, 2900), 0, (200, 100)), b.read_region((2100, 2900), 0,
                                                                           (200, 100))
        assert np.array_equal(ra, rb)
        assert (ra[67:, :] == WHITE).all() and (ra[:, 120:] == WHITE).all()  # past the edge


def test_in_memory_slide_builds_halved_levels():
    rgb = np.zeros((7, 9, 3), np.uint8)
    rgb[:, :, 0] = 200
    s = InMemorySlide(rgb, mpp=(0.25, 0.3), min_level_size=3)
    assert s.level_dimensions == [(9, 7), (5, 4), (3, 2)]
    assert (s.read_level(2, (0, 0), (3, 2))[..., 0] == 200).all()
    assert s.mpp == (0.25, 0.3)
    with pytest.raises(SlideError, match="uint8"):
        InMemorySlide(rgb.astype(np.float32))


def test_open_slide_errors_are_clear(tmp_path, tmp_path_factory):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    junk = tmp_path / "notes.svs"
    junk.write_text("not a slide")
    for backend in ("tiffslide", "openslide"):
        with pytest.raises(SlideError, match="unsupported or corrupt"):
            open_slide(junk, backend=backend)
    with pytest.raises(SlideError, match="unknown slide backend"):
        open_slide(junk, backend="bioformats")
    data = pyramid_tiff(tmp_path_factory).read_bytes()
    cut = tmp_path / "truncated.tiff"
    cut.write_bytes(data[: len(data) * 2 // 3])
    for backend in ("tiffslide", "openslide"):
        with pytest.raises(SlideError, match="truncated"):
            open_slide(cut, backend=backend)


_STOPPED_WHILE_ZARR_DECODES = """
import os, signal, sys, time
import numpy as np, tifffile
from tifffile import zarr as tz
from iste.cli.main import main
slide, out = sys.argv[1:]
rng = np.random.default_rng(0)
tifffile.imwrite(slide, rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8), tile=(64, 64),
                 compression="zlib", photometric="rgb", resolution=(2e4, 2e4),
                 resolutionunit="CENTIMETER")
get, calls = tz.ZarrTiffStore.get, []
async def slow_get(self, *args, **kwargs):  # each tile's read, in zarr's event-loop thread
    calls.append(1)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop while the main thread waits
        time.sleep(0.3)
    time.sleep(0.005)
    return await get(self, *args, **kwargs)
tz.ZarrTiffStore.get = slow_get
sys.exit(main(["upscale", slide, "-s", "2", "-o", out, "--backend", "tiffslide", "--device",
               "cpu", "-q"]))
"""


def test_a_stop_while_tiffslide_decodes_is_one_line(tmp_path):
    """SIGTERM while the main thread waited for tiffslide's tiles (zarr decodes them in a
    thread of its own): after 'iste: stopped by SIGTERM' zarr's exit hook, finding its loop
    still decoding, printed "Thread did not finish cleanly" and a RuntimeError traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _STOPPED_WHILE_ZARR_DECODES,
                           str(tmp_path / "slide.tiff"), str(tmp_path / "out.tiff")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (143, "iste: stopped by SIGTERM\n")
