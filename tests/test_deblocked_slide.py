"""Slides read through deblocking: the levels' JPEG tables, tiles that fit, the CLI and viewer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from iste.cli.main import main
from iste.data.deblock import DEBLOCKED, deblock, grid_origin
from iste.data.jpeg import block_quantisation_of, parse_jpeg_settings
from iste.data.samples import sample_path
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.slides.deblocked import DeblockedSlide, deblocked
from iste.slides.formats import open_slide
from model_zoo import tiny_config
from slide_data import pyramid_tiff, smooth_tissue


@pytest.fixture(scope="module")
def jpeg_tiff(tmp_path_factory):
    """A 232 x 200 tiled TIFF, JPEG quality 30 (YCbCr 4:2:0, as tifffile writes it), 64-px
    tiles: uint8 (H, W, 3) source kept beside it."""
    rgb = smooth_tissue(200, 232, seed=7)
    path = tmp_path_factory.mktemp("jpeg") / "q30.tif"
    tifffile.imwrite(path, rgb, tile=(64, 64), compression="jpeg",
                     compressionargs={"level": 30}, photometric="rgb")
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_model(build_model(tiny_config("liif")),
                      tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_levels_report_their_jpeg_tables(jpeg_tiff, tmp_path_factory):
    with open_slide(jpeg_tiff) as slide:
        quant = slide.jpeg_quantisation(0)
        assert quant is not None and quant.colour == "YCbCr" and quant.subsampled
        assert quant.tables[0][0, 0] == 27  # the IJG luminance table at quality 30
    with open_slide(pyramid_tiff(tmp_path_factory)) as slide:  # deflate tiles: nothing to deblock
        assert slide.jpeg_quantisation(0) is None
        assert deblocked(slide) is slide


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_the_aperio_sample_is_rgb_jpeg_at_quality_30(backend):
    with open_slide(sample_path("cmu-svs"), backend=backend) as slide:
        quant = slide.jpeg_quantisation(0)
        assert quant.colour == "RGB" and not quant.subsampled
        assert all(t[0, 0] == 27 for t in quant.tables)


def test_regions_read_apart_fit_together(jpeg_tiff):
    with open_slide(jpeg_tiff) as raw:
        whole = deblock(raw.read_region((0, 0), 0, (232, 200)), raw.jpeg_quantisation(0))
        assert not np.array_equal(whole, raw.read_region((0, 0), 0, (232, 200)))
        slide = deblocked(raw)
        assert isinstance(slide, DeblockedSlide) and slide.processing == DEBLOCKED
        for x, y, w, h in [(37, 21, 64, 50), (100, 90, 80, 70), (0, 0, 40, 40)]:
            got = slide.read_region((x, y), 0, (w, h))
            # away from the level's border (where the whole read saw no margin)
            inner = (slice(16 - min(y, 16), None), slice(16 - min(x, 16), None))
            diff = np.abs(got.astype(int) - whole[y:y + h, x:x + w])[inner]
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        # thumbnails are the stored pixels, undeblocked
        np.testing.assert_array_equal(slide.get_thumbnail((58, 50)), raw.get_thumbnail((58, 50)))


def test_only_the_level_read_decides_whether_the_output_says_deblocked(tmp_path):
    """A slide whose level 0 is deflate and level 1 JPEG: a job on level 0 recorded
    'deblocked' in its provenance and work folder though its pixels were read as decoded."""
    from iste.slides.job import SlideJob
    from iste.slides.pipeline import input_pixels

    rgb, path = smooth_tissue(128, 128, seed=3), tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, subifds=1, tile=(64, 64), compression="deflate", photometric="rgb")
        tif.write(rgb[::2, ::2].copy(), subfiletype=1, tile=(64, 64), compression="jpeg",
                  photometric="rgb", compressionargs={"level": 30})
    with open_slide(path) as raw:
        slide = deblocked(raw)
        assert isinstance(slide, DeblockedSlide)
        assert input_pixels(slide, SlideJob(scale=2.0, level=0)) == "as decoded"
        assert input_pixels(slide, SlideJob(scale=2.0, level=1)).startswith(DEBLOCKED)
        assert input_pixels(raw, SlideJob(scale=2.0, level=1)) == "as decoded"


def test_deblock_off_and_bad_modes(jpeg_tiff):
    with open_slide(jpeg_tiff) as raw:
        assert deblocked(raw, "off") is raw and raw.processing == ""
        with pytest.raises(ValueError, match="auto, off"):
            deblocked(raw, "always")


def test_dicom_frames_report_their_tables(tmp_path):
    from iste.slides.dicom import write_dicom
    from iste.slides.writer import PyramidSpec, TileCodec

    rgb, tile = smooth_tissue(128, 128, seed=9), 64
    codec = TileCodec("jpeg", tile, 40)
    spec = PyramidSpec(128, 128, tile=tile, mpp=(0.5, 0.5), codec="jpeg", quality=40,
                       layout="dicom")
    write_dicom(tmp_path / "dcm", spec, lambda r, c: codec.encode(
        rgb[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]))
    with open_slide(tmp_path / "dcm") as slide:
        quant = slide.jpeg_quantisation(0)
        assert quant is not None and quant.colour in ("RGB", "YCbCr")
        np.testing.assert_array_equal(quant.tables[0], block_quantisation_of(40).tables[0])
        assert isinstance(deblocked(slide), DeblockedSlide)


def test_a_first_tile_cut_inside_its_headers_is_a_clear_error(tmp_path, jpeg_tiff, tiny_ckpt):
    """A level's tables were read from its first stored tile: one cut short inside a marker
    segment (here its frame header) was an IndexError traceback from every read, then a
    level left undeblocked without a word; they come from the next tile now, and the job
    stops at the tile it cannot read, naming it."""
    with tifffile.TiffFile(jpeg_tiff) as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.dataoffsets[0])
        stream = tif.filehandle.read(page.databytecounts[0])
    sof = stream.index(b"\xff\xc0")
    for cut in range(4, sof + 19):  # every cut inside the headers: a ValueError, or settings
        try:
            parse_jpeg_settings(stream[:cut])
        except ValueError:
            pass
    cut_tiff = tmp_path / "cut.tif"
    cut_tiff.write_bytes(jpeg_tiff.read_bytes())
    with tifffile.TiffFile(cut_tiff, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        tif.pages[0].tags["TileByteCounts"].overwrite([sof + 8] + counts[1:])
    with open_slide(cut_tiff) as slide:
        assert slide.jpeg_quantisation(0) is not None
    code = main(["upscale", str(cut_tiff), "-o", str(tmp_path / "out.tif"), "-s", "2", "-q",
                 "--model", str(tiny_ckpt)])
    assert code != 0 and not (tmp_path / "out.tif").exists()


def _zeroed(src, dst, tiles):
    """A copy of ``src`` whose level-0 tiles ``tiles`` (indices) hold zeros: headers gone."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        for i in tiles:
            offset, count = tif.pages[0].dataoffsets[i], tif.pages[0].databytecounts[i]
            data[offset:offset + count] = bytes(count)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_a_damaged_first_tile_leaves_its_level_deblocked(tmp_path, jpeg_tiff, backend):
    """The tables were read from the first stored tile alone: its headers gone (zeroed), the
    level was read as decoded, not deblocked, without a word. The next tile's serve."""
    path = _zeroed(jpeg_tiff, tmp_path / "first.tif", [0])
    with open_slide(jpeg_tiff) as whole:
        want = whole.jpeg_quantisation(0)
    with open_slide(path, backend=backend) as slide:
        got = slide.jpeg_quantisation(0)
    assert got is not None and got.colour == want.colour
    assert all(np.array_equal(a, b) for a, b in zip(got.tables, want.tables))


def test_a_jpeg_level_whose_tables_cannot_be_read_is_warned_about(tmp_path, jpeg_tiff):
    with tifffile.TiffFile(jpeg_tiff) as tif:
        n = len(tif.pages[0].databytecounts)
    path = _zeroed(jpeg_tiff, tmp_path / "all.tif", range(n))
    with open_slide(path) as slide:
        with pytest.warns(UserWarning, match=f"level 0 is stored as JPEG, but the headers of "
                                             f"its first {min(n, 16)} tile"):
            assert slide.jpeg_quantisation(0) is None


def test_upscale_deblocks_slides_and_says_so(tmp_path, jpeg_tiff, tiny_ckpt):
    outputs = {}
    for mode in ("auto", "off"):
        out = tmp_path / f"{mode}.tiff"
        assert main(["upscale", str(jpeg_tiff), "-s", "2", "-o", str(out), "--model",
                     str(tiny_ckpt), "--tile", "128", "--codec", "deflate", "--deblock", mode,
                     "-q"]) == 0
        with tifffile.TiffFile(out) as tif:
            outputs[mode] = tif.pages[0].asarray()
            text = tif.pages[0].description
        assert (DEBLOCKED if mode == "auto" else "as decoded") in text
        # glass is upsampled bicubically from the stored pixels: the record says so
        assert ("background (bicubic) tiles as decoded" in text) == (mode == "auto")
    assert not np.array_equal(outputs["auto"], outputs["off"])


def test_upscale_deblocks_jpeg_images_and_records_it(tmp_path, tiny_ckpt):
    from PIL import Image

    Image.fromarray(smooth_tissue(64, 72, seed=8)).save(tmp_path / "in.jpg", quality=30)
    Image.fromarray(smooth_tissue(64, 72, seed=8)).save(tmp_path / "in.png")
    results = {}
    for name, mode in [("in.jpg", "auto"), ("in.jpg", "off"), ("in.png", "auto")]:
        out = tmp_path / f"{name}-{mode}.png"
        assert main(["upscale", str(tmp_path / name), "-s", "2", "-o", str(out), "--model",
                     str(tiny_ckpt), "--deblock", mode, "-q"]) == 0
        results[name, mode] = np.asarray(Image.open(out))
        sidecar = json.loads((tmp_path / f"{out.name}.json").read_text())
        deblocked_input = name == "in.jpg" and mode == "auto"
        assert sidecar["input_pixels"] == (DEBLOCKED if deblocked_input else "as decoded")
    assert not np.array_equal(results["in.jpg", "auto"], results["in.jpg", "off"])


def test_the_viewer_serves_deblocked_pixels_and_caches_them_apart(jpeg_tiff, tiny_ckpt,
                                                                   tmp_path):
    from iste.models.checkpoint import load_model
    from iste.serve.app import CacheSettings, ViewBook, _make_producer
    from iste.serve.catalog import SlideCatalog
    from iste.serve.pixels import Upscaler
    from iste.serve.tiles import TileKey

    upscaler = Upscaler.for_model(load_model(tiny_ckpt), name="tiny")
    names = {}
    for mode, processing in (("auto", DEBLOCKED), ("off", "")):
        catalog = SlideCatalog.open([jpeg_tiff], deblock=mode)
        try:
            slide_id = catalog.ids()[0]
            assert catalog.get(slide_id).slide.processing == processing
            producer = _make_producer(catalog, upscaler,
                                      CacheSettings(disk_dir=tmp_path / "cache", disk_mb=1),
                                      ViewBook())
            names[mode] = producer._disk_name(TileKey(slide_id, "sr", 9, 0, 0))
        finally:
            catalog.close()
    assert names["auto"] != names["off"]  # a cached tile of one is never served for the other


def test_grid_origin_of_reads_matches_the_level_grid():
    # a read at level x = 13 starts 3 px before the block edge at 16: origin col 3
    assert grid_origin(13, 40) == (0, 3)


def test_a_resume_never_mixes_deblocked_and_stored_tiles(tmp_path, jpeg_tiff, monkeypatch):
    import torch

    import iste.slides.pipeline as pipeline
    from iste.engine.render import QueryOptions
    from iste.slides.job import SlideJob
    from iste.slides.workdir import work_dir_for

    torch.manual_seed(0)
    model = build_model(tiny_config("liif")).eval()
    job = SlideJob(2, tile=64, codec="deflate", tissue=False)
    options = QueryOptions()
    out = tmp_path / "a.tiff"
    real, calls = pipeline.render_tile, []

    def interrupted_after_four(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with open_slide(jpeg_tiff) as raw:
        monkeypatch.setattr(pipeline, "render_tile", interrupted_after_four)
        with pytest.raises(KeyboardInterrupt):
            pipeline.upscale_slide(deblocked(raw), out, model, job, options=options,
                                   progress=False)
        assert work_dir_for(out).is_dir()
        monkeypatch.setattr(pipeline, "render_tile", real)
        res = pipeline.upscale_slide(raw, out, model, job, options=options, progress=False)
    assert res.tiles_resumed == 0  # the deblocked tiles were not reused for stored pixels


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_reads_from_several_threads_never_overlap_in_the_file_and_agree(jpeg_tiff, backend):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    boxes = [((x, y), (48, 40)) for x in (0, 37, 90, 150) for y in (0, 21, 100)]
    with open_slide(jpeg_tiff, backend=backend) as raw:
        slide = deblocked(raw)
        alone = [slide.read_region(at, 0, size) for at, size in boxes]
        library = raw._slide  # the library's handle: count the calls inside it at once
        inside, most, count = 0, 0, threading.Lock()
        read = library.read_region

        def counted(*args, **kwargs):
            nonlocal inside, most
            with count:
                inside += 1
                most = max(most, inside)
            try:
                threading.Event().wait(0.002)  # give another thread the chance to enter
                return read(*args, **kwargs)
            finally:
                with count:
                    inside -= 1

        library.read_region = counted
        try:
            with ThreadPoolExecutor(4) as pool:
                together = list(pool.map(lambda box: slide.read_region(box[0], 0, box[1]),
                                         boxes * 2))
        finally:
            library.read_region = read
    assert most == 1
    for got, want in zip(together, alone * 2):
        np.testing.assert_array_equal(got, want)


def test_the_viewer_reads_scan_tiles_reduced_2x_or_more_as_stored(jpeg_tiff):
    from iste.serve.catalog import SlideCatalog

    tiles = {}
    for mode in ("auto", "off"):
        catalog = SlideCatalog.open([jpeg_tiff], deblock=mode)
        try:
            served = catalog.get(catalog.ids()[0])
            zoom = served.zoom
            native = next(lv for lv in range(zoom.level_count)
                          if zoom.level_size(lv) == (zoom.width, zoom.height))
            tiles[mode] = {lv: served.render("scan", lv, 0, 0) for lv in (native, native - 1)}
        finally:
            catalog.close()
    # at the scan's resolution the viewer shows what the model sees (deblocked) ...
    assert not np.array_equal(tiles["auto"][native], tiles["off"][native])
    # ... reduced 2x (a 116 x 100 level: 200 / 100 = 2, 232 / 116 = 2) the stored pixels
    np.testing.assert_array_equal(tiles["auto"][native - 1], tiles["off"][native - 1])
