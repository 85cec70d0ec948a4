"""An ICC profile is one of the pixels beside it only where its header's colour space is theirs
(an RGB profile of RGB or palette pixels, a gray one of gray pixels): slides and plain images,
`iste upscale` and `iste serve` follow that one rule (iste.data.imagemeta.profile_problem).
A profile of another space is neither applied by the viewer nor carried into an output."""

import io
import logging

import numpy as np
import openslide
import pytest
import tifffile
import torch
from PIL import Image

from iste.data.imagemeta import read_image_meta
from iste.engine.render import QueryOptions
from iste.models.registry import build_model
from iste.serve.catalog import SlideCatalog
from iste.slides.formats import open_slide
from iste.slides.job import SlideJob
from iste.slides.pipeline import upscale_slide
from icc_profiles import cmyk_profile, gray_profile, srgb_profile
from model_zoo import tiny_config
from serve_helpers import swapped_profile
from slide_data import he_image

OPTS = QueryOptions(stf_window=16, stf_keys=32)
SRGB = srgb_profile()  # once: LittleCMS dates a profile it makes (bytes 24-35)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config("iste")).eval()


def gray_slide(path, icc, alpha=False):
    """A tiled gray TIFF (min-is-black, one sample; with ``alpha`` two) carrying ``icc``."""
    gray = he_image(128, 96)[..., 1]
    pixels = np.stack([gray, np.full_like(gray, 255)], -1) if alpha else gray
    tifffile.imwrite(path, pixels, tile=(64, 64), photometric="minisblack",
                     compression="deflate", extrasamples=[2] if alpha else None,
                     iccprofile=icc)
    return path


def test_an_rgb_profile_of_a_gray_slide_is_not_carried_into_an_output(tmp_path, model):
    # the slide writer carried it (an RGB profile of pixels that were gray), while a plain
    # image of the same pixels dropped it
    src = gray_slide(tmp_path / "gray.tif", swapped_profile())
    assert read_image_meta(src).icc_profile is None  # the plain image's rule
    for backend in ("tiffslide", "openslide"):
        out = tmp_path / f"{backend}.tiff"
        with open_slide(src, backend=backend) as slide:
            assert slide.icc_profile[16:20] == b"RGB "  # the file has it
            with pytest.warns(UserWarning, match="its ICC profile .* is an RGB profile of gray "
                                                 "pixels; the output carries none"):
                upscale_slide(slide, out, model, SlideJob(2.0, tile=64, tissue=False),
                              options=OPTS, progress=False)
        assert tifffile.TiffFile(out).pages.first.iccprofile is None, backend
        assert openslide.OpenSlide(str(out)).color_profile is None, backend


def test_an_rgb_profile_of_a_gray_slide_is_not_applied_by_the_viewer(tmp_path, caplog):
    src = gray_slide(tmp_path / "gray.tif", swapped_profile())
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red, which the profile would show as blue
    for backend in ("tiffslide", "openslide"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="iste.serve"):
            served = SlideCatalog.open([src], backend=backend)
        (slide_id,) = served.ids()
        colour = served.get(slide_id).colour
        np.testing.assert_array_equal(colour(rgb), rgb)
        assert not colour.converts and colour.key == "as-stored"
        said = [r.getMessage() for r in caplog.records if "ICC profile" in r.getMessage()]
        assert len(said) == 1 and "an RGB profile of gray pixels" in said[0], said
        served.close()


def test_a_profile_of_the_slides_own_space_is_still_applied_and_carried(tmp_path, model):
    # the rule drops mismatches only: an RGB slide's RGB profile converts and is carried
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, he_image(128, 96), tile=(64, 64), photometric="rgb",
                     compression="deflate", iccprofile=swapped_profile())
    served = SlideCatalog.open([path], backend="tiffslide")
    (slide_id,) = served.ids()
    assert served.get(slide_id).colour.converts
    served.close()
    with open_slide(path) as slide:
        upscale_slide(slide, tmp_path / "out.tiff", model, SlideJob(2.0, tile=64, tissue=False),
                      options=OPTS, progress=False)
    assert openslide.OpenSlide(str(tmp_path / "out.tiff")).color_profile is not None


def test_a_gray_profile_of_a_gray_slide_is_not_carried_into_its_rgb_output(tmp_path, model):
    # a gray slide's output is RGB: its gray profile describes no pixel of it
    src = gray_slide(tmp_path / "gray.tif", gray_profile())
    with open_slide(src) as slide:
        with pytest.warns(UserWarning, match="a gray profile, of pixels written as RGB"):
            upscale_slide(slide, tmp_path / "out.tiff", model,
                          SlideJob(2.0, tile=64, tissue=False), options=OPTS, progress=False)
    assert tifffile.TiffFile(tmp_path / "out.tiff").pages.first.iccprofile is None


def test_a_cmyk_image_carries_no_rgb_profile(tmp_path):
    # an RGB profile on CMYK pixels (their space is CMYK) was carried into the RGB output of
    # the image, as if it described the colours PIL's naive conversion gives
    cmyk = Image.fromarray(he_image(32, 24)).convert("CMYK")
    for suffix in (".jpg", ".tif"):
        path = tmp_path / f"cmyk{suffix}"
        cmyk.save(path, icc_profile=SRGB)
        with Image.open(path) as img:
            assert img.mode == "CMYK" and img.info.get("icc_profile") == SRGB
        assert read_image_meta(path).icc_profile is None, suffix


def test_a_cmyk_image_is_converted_through_its_cmyk_profile_in_every_reader(tmp_path, model):
    # PIL's conversion ignores the profile (c, m, y, k -> 255 - c - k ...): the colours a CMYK
    # file's own profile gives were lost. Its profile here prints every ink gray (paper white,
    # any ink L 60, a = b = 0): sRGB gray; PIL's conversion gave the source's hues
    import iste
    from iste.data.images import read_image

    icc = cmyk_profile(lambda c, m, y, k: (60, 0, 0) if c + m + y + k else (100, 0, 0))
    cmyk = Image.fromarray(he_image(32, 24)).convert("CMYK")
    tifffile.imwrite(tmp_path / "cmyk.tif", np.asarray(cmyk), photometric="separated",
                     iccprofile=icc)
    cmyk.save(tmp_path / "cmyk.jpg", icc_profile=icc, quality=95)
    assert np.ptp(np.asarray(cmyk.convert("RGB")).astype(int), axis=-1).max() > 50
    for name in ("cmyk.tif", "cmyk.jpg"):
        rgb = read_image(tmp_path / name).astype(int)
        assert np.ptp(rgb, axis=-1).max() <= 2 and rgb.min() < 200, name
        assert read_image_meta(tmp_path / name).icc_profile is None  # the output is sRGB
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK" and img.info["icc_profile"] == icc
        np.testing.assert_array_equal(iste.upscale(img, 2.0, model=model),
                                      iste.upscale(read_image(tmp_path / "cmyk.jpg"), 2.0,
                                                   model=model))
    cmyk.save(tmp_path / "plain.jpg", quality=95)  # no profile: as PIL converts it
    with Image.open(tmp_path / "plain.jpg") as img:
        np.testing.assert_array_equal(read_image(tmp_path / "plain.jpg"),
                                      np.asarray(img.convert("RGB")))


def test_the_api_returns_no_rgb_profile_of_a_cmyk_or_gray_image(model):
    import iste

    for mode, icc in (("CMYK", SRGB), ("L", SRGB), ("RGB", gray_profile())):
        img = Image.fromarray(he_image(32, 24)).convert(mode)
        img.info["icc_profile"] = icc
        out = iste.upscale(img, 2.0, model=model)
        assert "icc_profile" not in out.info, mode
    img = Image.fromarray(he_image(32, 24))
    img.info["icc_profile"] = SRGB
    assert iste.upscale(img, 2.0, model=model).info["icc_profile"] == SRGB
    buf = io.BytesIO()  # written, it reads back with the profile
    iste.upscale(img, 2.0, model=model).save(buf, "PNG")
    assert Image.open(buf).info["icc_profile"] == SRGB


def test_openslide_gives_and_an_output_carries_the_files_profile_bytes(tmp_path, model):
    # the OpenSlide backend gave LittleCMS's rewrite of the profile (color_profile.tobytes()),
    # whose tag table is in LittleCMS's order: other bytes than the file's, carried into the
    # output, and the viewer's cache key of the slide differed from tiffslide's
    icc = swapped_profile()  # its rXYZ and bXYZ entries point at each other's data
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, he_image(128, 96), tile=(64, 64), photometric="rgb",
                     compression="deflate", iccprofile=icc)
    keys = {}
    for backend in ("openslide", "tiffslide"):
        with open_slide(path, backend=backend) as slide:
            assert slide.icc_profile == icc, backend
        served = SlideCatalog.open([path], backend=backend)
        keys[backend] = served.get(served.ids()[0]).colour.key
        served.close()
    assert keys["openslide"] == keys["tiffslide"] != "as-stored"
    out = tmp_path / "out.tiff"
    with open_slide(path, backend="openslide") as slide:
        upscale_slide(slide, out, model, SlideJob(2.0, tile=64, tissue=False), options=OPTS,
                      progress=False)
    assert tifffile.TiffFile(out).pages.first.iccprofile == icc
