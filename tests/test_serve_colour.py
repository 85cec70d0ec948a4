"""The viewer shows a slide's colours as its ICC profile says (converted to sRGB, the space a
browser takes an untagged tile to be in), every kind of tile alike, and tiles cached before
under another conversion are never served."""

import io

import numpy as np
import pytest
from PIL import Image

from iste.serve.catalog import SlideCatalog, serve_slide
from iste.serve.runner import ServerThread
from iste.slides.reader import InMemorySlide
from icc_profiles import edited
from serve_helpers import get_json, raw_request, small_app, swapped_profile, tiny_upscaler
from slide_data import he_image

PROFILED, PLAIN = "00000000000000aa", "00000000000000bb"


def tile(url: str, slide: str, kind: str, level: int) -> np.ndarray:
    status, _, body = raw_request(url, f"/slides/{slide}/{kind}_files/{level}/0_0.jpeg")
    assert status == 200, body
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)


def blocks(rgb: np.ndarray) -> np.ndarray:
    """8 x 8 block means (JPEG's errors, which differ for swapped colours, average out)."""
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    return rgb[:h, :w].reshape(h // 8, 8, w // 8, 8, 3).mean(axis=(1, 3))


def catalog(*profiles, colour="srgb") -> SlideCatalog:
    rgb = he_image(96, 64)
    return SlideCatalog([(slide_id, serve_slide(InMemorySlide(rgb, mpp=0.5, icc_profile=icc),
                                                f"Slide {i + 1}", colour=colour))
                         for i, (slide_id, icc) in enumerate(profiles)])


@pytest.fixture(scope="module")
def upscaler():
    return tiny_upscaler()


def test_every_kind_of_tile_is_converted_from_the_slides_profile(upscaler):
    # a profile that swaps red and blue: the profiled slide's tiles are the plain one's with
    # red and blue swapped (before: the same pixels, the profile ignored)
    with ServerThread(small_app(catalog((PROFILED, swapped_profile()), (PLAIN, None)),
                                upscaler)) as url:
        info = {s["id"]: s for s in get_json(url, "/api/slides")["slides"]}[PLAIN]
        levels = [("bicubic", info["native_level"]), ("bicubic", info["first_sr_level"]),
                  ("sr", info["first_sr_level"]), ("sr", info["level_count"] - 1)]
        for kind, level in levels:
            plain = blocks(tile(url, PLAIN, kind, level))
            profiled = blocks(tile(url, PROFILED, kind, level))
            assert np.abs(plain[..., 0] - plain[..., 2]).mean() > 20  # H&E: red over blue
            assert np.abs(profiled - plain[..., ::-1]).max() < 3, (kind, level)


def test_tiles_cached_under_another_conversion_are_not_served(tmp_path, upscaler):
    # one slide id, its profile gone (as a server before the conversion saw every slide):
    # the disk tiles of that server are not the profiled slide's
    level = catalog((PLAIN, None)).get(PLAIN).zoom.level_count - 1
    with ServerThread(small_app(catalog((PLAIN, None)), upscaler, disk_dir=tmp_path)) as url:
        plain = tile(url, PLAIN, "sr", level)
    with ServerThread(small_app(catalog((PLAIN, swapped_profile())), upscaler,
                                disk_dir=tmp_path)) as url:
        profiled = tile(url, PLAIN, "sr", level)
        assert get_json(url, "/api/status")["disk_hits"] == 0
    assert np.abs(blocks(profiled) - blocks(plain)[..., ::-1]).max() < 3


def test_colour_stored_shows_a_profiled_slides_pixels_as_stored(upscaler):
    # iste serve --colour stored: the values of the file, as QuPath shows them by default
    with ServerThread(small_app(catalog((PROFILED, swapped_profile()), (PLAIN, None),
                                        colour="stored"), upscaler)) as url:
        info = {s["id"]: s for s in get_json(url, "/api/slides")["slides"]}[PLAIN]
        for kind, level in [("bicubic", info["native_level"]),
                            ("sr", info["level_count"] - 1)]:
            plain = tile(url, PLAIN, kind, level)
            assert np.array_equal(tile(url, PROFILED, kind, level), plain), (kind, level)


def test_a_profile_littlecms_cannot_open_is_said_under_openslide_too(tmp_path):
    # OpenSlide parses the profile (color_profile) and raised PyCMSError: the catalog (and
    # iste upscale) stopped with a traceback where the tiffslide backend went on
    import tifffile

    from iste.slides.formats import open_slide

    icc = bytearray(swapped_profile())
    icc[36:40] = b"xxxx"  # not the 'acsp' signature: LittleCMS refuses the profile
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, he_image(96, 64), tile=(16, 16), photometric="rgb",
                     iccprofile=bytes(icc))
    with open_slide(path, backend="openslide") as reader:
        assert reader.icc_profile == bytes(icc)  # as stored, as tiffslide gives it
    for backend in ("openslide", "tiffslide"):
        served = SlideCatalog.open([path], backend=backend)
        (slide_id,) = served.ids()
        colour = served.get(slide_id).colour
        rgb = he_image(8, 8)
        assert colour(rgb) is rgb  # found on the first tile: shown as stored
        assert "LittleCMS can apply" in colour.problem
        served.close()


def test_a_profile_of_srgb_itself_is_not_converted_per_tile():
    # a slide tagged sRGB (many TIFFs are) had every tile converted by an identity transform:
    # 1-2 ms a tile for the very pixels it was given
    from PIL import ImageCms

    from iste.serve.colour import DisplayColour

    srgb = DisplayColour(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert not srgb.converts and srgb.problem is None
    assert srgb.key == DisplayColour(None).key  # its tiles are the plain slide's
    assert DisplayColour(swapped_profile()).converts  # a profile of another space still is


def test_a_profile_whose_default_intent_is_out_of_range_is_still_converted():
    # the header's rendering intent (bytes 64-67) names none of the four the ICC defines:
    # LittleCMS refuses a transform at it, and the slide was shown unconverted ("cannot be
    # read") for a field colour-managed viewers pass over; perceptual stands in for it
    import struct

    from iste.serve.colour import DisplayColour

    swapped = DisplayColour(swapped_profile())
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    for intent in (4, 7, 2**32 - 1):
        colour = DisplayColour(edited(swapped_profile(), 64, struct.pack(">I", intent)))
        assert colour.converts and colour.problem is None, intent
        np.testing.assert_array_equal(colour(red), swapped(red))



def test_a_profile_tag_of_another_type_is_no_profile(tmp_path):
    # tag 34675 written as a number (SHORT, DOUBLE) or text: tifffile gives its value as it
    # is, and the catalog (and iste upscale) stopped with "TypeError: object of type 'int'
    # has no len()" where the tiffslide backend gave that value as the profile
    import tifffile

    from iste.data.imagemeta import read_image_meta

    for tag in [(34675, 3, 1, 7, False), (34675, 12, 1, 1.5, False),
                (34675, 2, None, "an RGB profile", False)]:
        path = tmp_path / f"type{tag[1]}.tif"
        tifffile.imwrite(path, he_image(96, 64), tile=(16, 16), photometric="rgb",
                         extratags=[tag])
        served = SlideCatalog.open([path], backend="tiffslide")
        (slide_id,) = served.ids()
        assert served.get(slide_id).slide.icc_profile is None
        served.close()
        assert read_image_meta(path).icc_profile is None


def test_colour_transforms_are_built_on_a_slides_first_tile_once(tmp_path, upscaler,
                                                                 monkeypatch):
    # every slide's transform was built as the server started, one slide after another (0.13
    # s for a 13 MB profile: 100 such slides added 13 s to the start); now on its first tile,
    # once however many threads ask at once, and no tile is served unconverted before it
    import threading

    import iste.serve.colour as colour_module

    built = []
    real = colour_module.littlecms_input

    def counted(icc, mode, flags=0):
        built.append(icc)
        return real(icc, mode, flags)

    monkeypatch.setattr(colour_module, "littlecms_input", counted)
    ids = [f"00000000000000a{i}" for i in range(3)]
    slides = catalog(*[(i, swapped_profile()) for i in ids], (PLAIN, None))
    app = small_app(slides, upscaler, disk_dir=tmp_path)  # names its disk tiles per slide
    assert built == []
    with ServerThread(app) as url:
        info = {s["id"]: s for s in get_json(url, "/api/slides")["slides"]}[PLAIN]
        level = info["level_count"] - 1
        plain = blocks(tile(url, PLAIN, "sr", level))
        assert built == []
        first = blocks(tile(url, ids[0], "sr", level))  # its name in the disk cache, then it
        assert len(built) == 1 and np.abs(first - plain[..., ::-1]).max() < 3
    rgb = he_image(16, 16)
    colour = slides.get(ids[1]).colour
    threads = [threading.Thread(target=colour, args=(rgb,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 2 and colour.converts
