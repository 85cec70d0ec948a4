"""Sample layouts at the edges: slides whose samples carry an alpha (gray + alpha, RGB + alpha;
stored straight or premultiplied) are read as their colours over white, the same by tiffslide
and OpenSlide, or refused where OpenSlide would read them wrong; a plain TIFF's premultiplied
alpha is read as straight colours and alpha; 16-bit slides are refused by every backend."""

import warnings

import numpy as np
import tifffile

from iste.slides.formats import open_slide
from slide_data import he_image


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight ``colour`` (..., C) uint8 with ``alpha`` (...) over white, as ints."""
    c, a = colour.astype(int), alpha.astype(int)[..., None]
    return (c * a + 255 * (255 - a) + 127) // 255


def _region(path, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile's and OpenSlide's notes on the layout
        with open_slide(path, backend=backend) as slide:
            return slide.read_region((0, 0), 0, slide.dimensions).astype(int)


def test_premultiplied_alpha_is_composited_as_premultiplied(tmp_path):
    # a TIFF whose alpha is associated (ExtraSamples 1: colours stored multiplied by it):
    # tiffslide, which auto picks, composited it as straight alpha, up to the alpha's
    # complement too dark (35 levels at alpha 200); OpenSlide read it right
    rgb = he_image(128, 96)
    alpha = np.tile(np.linspace(60, 255, 128).astype(np.uint8), (96, 1))
    stored = (rgb.astype(np.uint16) * alpha[..., None] // 255).astype(np.uint8)
    path = tmp_path / "premultiplied.tif"
    tifffile.imwrite(path, np.concatenate([stored, alpha[..., None]], -1), tile=(64, 64),
                     photometric="rgb", extrasamples=[1], compression="deflate")
    want = np.minimum(stored.astype(int) + 255 - alpha[..., None], 255)
    for backend in ("tiffslide", "openslide"):
        got = _region(path, backend)
        assert np.abs(got - want).max() <= 2, backend  # OpenSlide's own rounding
    assert np.abs(want - _over_white(rgb, alpha)).max() <= 2  # the straight colours' view


def test_a_gray_slide_with_alpha_is_read(tmp_path):
    # gray + alpha (two samples a pixel) was refused under auto ("2 samples per pixel are
    # not supported"): tiffslide reads it, alpha over white, as RGB + alpha is read
    gray = he_image(128, 96)[..., 1]
    alpha = np.tile(np.linspace(60, 255, 128).astype(np.uint8), (96, 1))
    path = tmp_path / "gray_alpha.tif"
    tifffile.imwrite(path, np.stack([gray, alpha], -1), tile=(64, 64),
                     photometric="minisblack", extrasamples=[2], compression="deflate")
    got = _region(path, "auto")
    np.testing.assert_array_equal(got, np.repeat(_over_white(gray[..., None], alpha), 3, -1))
    with open_slide(path) as slide:
        assert slide.stored_mode == "L"


def test_a_plain_tiffs_premultiplied_alpha_is_read_as_straight_colours_and_alpha(tmp_path):
    # a plain (untiled) TIFF with associated alpha: its colours were read as stored
    # (multiplied by the alpha: the image as if over black) and its alpha dropped, so the
    # output showed it dark and opaque; PIL, and viewers, show the straight colours
    from PIL import Image

    from iste.data.images import read_image_and_alpha

    rgb = he_image(64, 48)
    alpha = np.tile(np.linspace(40, 255, 64).astype(np.uint8), (48, 1))
    stored = (rgb.astype(np.uint16) * alpha[..., None] // 255).astype(np.uint8)
    path = tmp_path / "premultiplied.tif"
    tifffile.imwrite(path, np.concatenate([stored, alpha[..., None]], -1), photometric="rgb",
                     extrasamples=[1])
    colours, read_alpha = read_image_and_alpha(path)
    np.testing.assert_array_equal(read_alpha, alpha)
    with Image.open(path) as img:
        assert img.mode == "RGBA"
        pil = np.asarray(img)[..., :3].astype(int)
    assert np.abs(colours.astype(int) - pil).max() <= 1  # PIL truncates, iste rounds
    assert np.abs(colours.astype(int) - rgb).max() <= 255 // 40 + 1  # the stored precision


def test_openslide_refuses_a_gray_slide_with_straight_alpha_it_would_read_too_light(tmp_path):
    # libtiff premultiplies an RGB page's unassociated alpha for OpenSlide but not a gray
    # one's, which OpenSlide then divides by the alpha: --backend openslide (and auto for a
    # min-is-white one, which tiffslide refuses) read gray 170 at alpha 200 as 216
    import pytest

    from iste.slides.reader import SlideError

    gray = he_image(128, 96)[..., 1]
    alpha = np.full_like(gray, 200)
    path = tmp_path / "gray_alpha.tif"
    tifffile.imwrite(path, np.stack([gray, alpha], -1), tile=(64, 64),
                     photometric="minisblack", extrasamples=[2], compression="deflate")
    with pytest.raises(SlideError, match="unassociated alpha.*--backend tiffslide"):
        open_slide(path, backend="openslide")
    white = tmp_path / "white_alpha.tif"
    tifffile.imwrite(white, np.stack([255 - gray, alpha], -1), tile=(64, 64),
                     photometric="miniswhite", extrasamples=[2], compression="deflate")
    with pytest.raises(SlideError, match="unassociated alpha"):
        open_slide(white)
    path = tmp_path / "premultiplied_gray.tif"  # an associated one OpenSlide reads right
    stored = (gray.astype(np.uint16) * alpha // 255).astype(np.uint8)
    tifffile.imwrite(path, np.stack([stored, alpha], -1), tile=(64, 64),
                     photometric="minisblack", extrasamples=[1], compression="deflate")
    want = np.minimum(stored.astype(int) + 255 - alpha, 255)
    for backend in ("openslide", "tiffslide"):
        assert np.abs(_region(path, backend)[..., 0] - want).max() <= 2, backend


def test_openslide_refuses_16_bit_samples_as_the_other_readers_do(tmp_path):
    # tiffslide, wsidicom and plain images refuse 16-bit samples (their range cannot be
    # guessed); --backend openslide read them keeping the high byte: 12-bit data in 16 bits
    # came out 16 times too dark, without a word
    import pytest

    from iste.slides.reader import SlideError

    rgb12 = he_image(128, 96).astype(np.uint16) * 16  # 12-bit values
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, rgb12, tile=(64, 64), photometric="rgb", compression="deflate")
    for backend in ("openslide", "auto"):
        with pytest.raises(SlideError, match="16-bit samples are not supported|uint16"):
            open_slide(path, backend=backend)


def test_an_extra_sample_of_unspecified_meaning_is_no_alpha(tmp_path):
    # a fourth (or second) sample marked unspecified (ExtraSamples 0) was composited as an
    # alpha by the tiffslide backend, whitening the slide (206 beside a 50 read 245), and
    # OpenSlide takes an RGB page's for a premultiplied alpha (206, 170, 198 read 210, 224,
    # 252): tiffslide now leaves it out, and --backend openslide refuses the RGB one
    import pytest

    from iste.slides.reader import SlideError

    rgb = he_image(128, 96)
    extra = np.full(rgb.shape[:2], 50, np.uint8)
    path = tmp_path / "rgb_extra.tif"
    tifffile.imwrite(path, np.concatenate([rgb, extra[..., None]], -1), tile=(64, 64),
                     photometric="rgb", extrasamples=[0], compression="deflate")
    np.testing.assert_array_equal(_region(path, "auto"), rgb)
    with pytest.raises(SlideError, match="unspecified meaning.*--backend tiffslide"):
        open_slide(path, backend="openslide")
    path = tmp_path / "gray_extra.tif"
    tifffile.imwrite(path, np.stack([rgb[..., 1], extra], -1), tile=(64, 64),
                     photometric="minisblack", extrasamples=[0], compression="deflate")
    for backend in ("auto", "openslide"):
        np.testing.assert_array_equal(_region(path, backend)[..., 0], rgb[..., 1])
