"""Slides laid out as scanners write them (tests/scanner_files.py): Aperio SVS with JPEG 2000
tiles, Hamamatsu NDPI, Philips TIFF (sparse too), Ventana BIF, and generic TIFFs tiffslide
would pass on raw. Each opens with the right colours, pixel size and magnification, or is
one clear error; never wrong colours."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import torch

import scanner_files as scanners
from iste.cli.main import main
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.slides.formats import open_slide
from iste.slides.reader import SlideError
from model_zoo import tiny_config

IMG = scanners.tissue()


def _off(slide, img=IMG) -> np.ndarray:
    """Mean absolute difference per channel between level 0 and ``img``: (3,) float."""
    rgb = slide.read_level(0, (0, 0), slide.dimensions)[:img.shape[0], :img.shape[1]]
    return np.abs(rgb.astype(int) - img).mean(axis=(0, 1))


def test_aperio_jpeg2000_tiles_read_in_their_colours(tmp_path):
    # 33003 holds YCbCr components, which tiffslide (imagecodecs) passed on as RGB: grey-green
    # tissue, 60 levels off in red and green, without a word
    for compression in (33003, 33005):
        path = scanners.svs_jpeg2000(tmp_path / f"{compression}.svs", IMG, compression)
        with open_slide(path) as slide:
            assert _off(slide).max() < 1.5
            assert slide.mpp == pytest.approx((0.499, 0.499))
            assert slide.objective_power == 20
            assert slide.level_dimensions == [(320, 256), (160, 128)]
    with pytest.raises(SlideError, match=r"YCbCr components \(compression 33003\).*"
                                         "--backend openslide may read it$"):
        open_slide(tmp_path / "33003.svs", backend="tiffslide")


def test_ycbcr_samples_outside_jpeg_read_in_their_colours(tmp_path):
    # tifffile converts YCbCr in its JPEG decoder only: deflated YCbCr read as RGB before
    path = tmp_path / "ycbcr.tif"
    tifffile.imwrite(path, scanners._ycbcr(IMG), tile=(128, 128), photometric="ycbcr",
                     subsampling=(1, 1), compression="zlib", metadata=None)
    with open_slide(path) as slide:
        assert _off(slide).max() < 1.5
    with pytest.raises(SlideError, match="YCbCr with ADOBE_DEFLATE compression"):
        open_slide(path, backend="tiffslide")


def test_a_ventana_bif_carries_its_pixel_size_and_magnification(tmp_path):
    # tiffslide reads neither from the iScan XMP: the output had no pixel size
    path = scanners.bif(tmp_path / "slide.bif", IMG)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx((0.2325, 0.2325))
        assert slide.objective_power == 40
        assert _off(slide).max() < 1.5
    named_tif = path.rename(tmp_path / "slide.tif")  # a BIF by its tags, not its name
    with open_slide(named_tif) as slide:
        assert slide.mpp == pytest.approx((0.2325, 0.2325))
    with pytest.raises(SlideError, match="a Ventana BIF"):
        open_slide(named_tif, backend="tiffslide")


def test_a_sparse_philips_tiff_reads_glass_where_it_stored_no_tile(tmp_path):
    # Philips leaves tiles outside its scanned areas empty; OpenSlide reads them as missing
    # (glass), tiffslide as black: such files were refused as damaged ("empty tiles")
    path = scanners.philips(tmp_path / "sparse.tiff", IMG, empty=(1, 0))
    with open_slide(path) as slide:
        rgb = slide.read_level(0, (0, 0), (256, 128))
        assert (rgb[:, 128:] == 255).all()  # the empty tile: white
        assert np.abs(rgb[:, :128].astype(int) - IMG[:128, :128]).mean() < 1.5
        assert slide.mpp == pytest.approx((0.499, 0.499))
    with pytest.raises(SlideError, match="sparse Philips TIFF .*reads as black"):
        open_slide(path, backend="tiffslide")
    with open_slide(scanners.philips(tmp_path / "full.tiff", IMG)) as slide:  # tiffslide's
        assert _off(slide).max() < 1.5


def test_an_ndpi_reads_without_tiffslides_partial_parsing_warning(tmp_path):
    # "hamamatsu-format metadata parsing only partially implemented!" reached every user as a
    # warning, though the pixel size and objective iste reads are read
    path = scanners.ndpi(tmp_path / "slide.ndpi", IMG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slide = open_slide(path)
    with slide:
        assert slide.mpp == pytest.approx((0.4545, 0.4545))
        assert slide.objective_power == 20
        assert slide.level_dimensions == [(320, 256), (160, 128), (80, 64)]  # no macro
        assert _off(slide).max() < 1.5


def test_a_tiff_neither_library_reads_names_both(tmp_path, capsys):
    # planar RGB in strips, named as a slide: tiffslide cannot read it, OpenSlide reads only
    # tiled TIFFs (a .tif in strips would be a plain image)
    path = tmp_path / "planar-strips.svs"
    tifffile.imwrite(path, IMG.transpose(2, 0, 1).copy(), photometric="rgb",
                     planarconfig="separate", metadata=None)
    with pytest.raises(SlideError, match="tiffslide cannot read its layout .*, and OpenSlide "
                                         "cannot read it either"):
        open_slide(path)
    out = tmp_path / "out.tiff"
    assert main(["upscale", str(path), "-s", "2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "OpenSlide cannot read it either" in err
    assert not out.exists()


def test_upscale_carries_a_bif_s_pixel_size_and_magnification(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "tiny.safetensors"
    save_model(build_model(tiny_config("iste")), model)
    path = scanners.bif(tmp_path / "slide.bif", IMG)
    out = tmp_path / "sr.tiff"
    assert main(["upscale", str(path), "-s", "2", "-o", str(out), "--model", str(model),
                 "--tile", "128", "--stf-keys", "16", "--region", "64,32,96,64", "-q"]) == 0
    with open_slide(out) as sr:
        assert sr.dimensions == (192, 128)
        assert sr.mpp == pytest.approx((0.2325 / 2, 0.2325 / 2))
        assert sr.objective_power == 80


def test_a_tiff_of_several_planes_is_not_read_as_its_first_plane(tmp_path):
    # OpenSlide would read a Z-stack (OME or a plain stack of pages) as a generic TIFF: its
    # first plane, without the OME pixel size
    stack = np.stack([IMG, IMG[::-1]])
    ome, pages = tmp_path / "stack.ome.tif", tmp_path / "stack.tif"
    tifffile.imwrite(ome, stack, tile=(128, 128), photometric="rgb",
                     metadata={"axes": "ZYXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    tifffile.imwrite(pages, stack, tile=(128, 128), photometric="rgb", metadata=None)
    for path, axes in ((ome, "ZYXS"), (pages, "IYXS")):
        with pytest.raises(SlideError, match=rf"2 planes \(axes {axes}\); --backend openslide "
                                             "reads its first plane only"):
            open_slide(path)
