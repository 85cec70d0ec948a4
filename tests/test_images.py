"""Image IO: round trips, conversions to 8-bit RGB, clear errors and atomic writes."""

from __future__ import annotations

import os
import sys

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from iste.data import images
from iste.data.images import ImageReadError, read_image, write_image


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".PNG", ".TIF"])
def test_lossless_round_trip(tmp_path, rgb, suffix):
    path = tmp_path / f"img{suffix}"
    write_image(path, rgb)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_round_trip_is_close(tmp_path, suffix):
    smooth = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    path = tmp_path / f"img{suffix}"
    write_image(path, smooth)
    out = read_image(path)
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 2


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gray_write_reads_back_as_rgb(tmp_path, rgb, suffix):
    gray = rgb[..., 0]
    write_image(tmp_path / f"g{suffix}", gray)
    out = read_image(tmp_path / f"g{suffix}")
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "1"])
def test_pil_modes_become_rgb(tmp_path, rgb, mode):
    path = tmp_path / "m.png"
    Image.fromarray(rgb).convert(mode).save(path)
    out = read_image(path)
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGBA" if "A" in mode else "RGB"))[..., :3]
    np.testing.assert_array_equal(out, expected)


def test_rgba_alpha_is_dropped_not_composited(tmp_path, rgb):
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), rgb)


def test_tiff_layouts(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)
    tifffile.imwrite(tmp_path / "gray.tif", rgb[..., 1])
    np.testing.assert_array_equal(read_image(tmp_path / "gray.tif")[..., 2], rgb[..., 1])


@pytest.mark.parametrize("case", ["png16-rgb", "png16-gray", "tif16", "tif-float", "multipage"])
def test_unsupported_image_kinds_raise(tmp_path, case):
    data16 = np.arange(5 * 6 * 3, dtype=np.uint16).reshape(5, 6, 3) * 1000
    if case == "png16-rgb":  # PIL would silently keep the high byte
        path = tmp_path / "x.png"
        path.write_bytes(imagecodecs.png_encode(data16))
    elif case == "png16-gray":
        path = tmp_path / "x.png"
        Image.fromarray(data16[..., 0]).save(path)
    elif case == "tif16":
        path = tmp_path / "x.tif"
        tifffile.imwrite(path, data16, photometric="rgb")
    elif case == "tif-float":
        path = tmp_path / "x.tif"
        tifffile.imwrite(path, data16.astype(np.float32), photometric="rgb")
    else:
        path = tmp_path / "x.tif"
        tifffile.imwrite(path, np.zeros((4, 5, 6), np.uint8), photometric="minisblack")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path / "d.png")


def test_unsupported_suffix(tmp_path, rgb):
    path = tmp_path / "x.bmp"
    Image.fromarray(rgb).save(path)
    with pytest.raises(ImageReadError, match="unsupported suffix"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_garbage_file_is_reported_as_corrupt(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError, match="corrupt") as info:
        read_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_reported_as_corrupt(tmp_path, rgb, suffix):
    path = tmp_path / f"t{suffix}"
    write_image(path, rgb)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(path)


def test_write_rejects_bad_suffix_before_writing(tmp_path, rgb):
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_image(tmp_path / "x.bmp", rgb)
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_image(tmp_path / "noext", rgb)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("bad", "error"), [
    (np.zeros((4, 4, 3), np.float32), TypeError),
    ([[0, 1], [2, 3]], TypeError),
    (np.zeros((4, 4, 4), np.uint8), ValueError),
    (np.zeros((0, 4, 3), np.uint8), ValueError),
    (np.zeros((2, 4, 4, 3), np.uint8), ValueError),
])
def test_write_rejects_bad_arrays_before_writing(tmp_path, bad, error):
    with pytest.raises(error):
        write_image(tmp_path / "x.png", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_accepts_non_contiguous_views(tmp_path, rgb):
    view = rgb[::2, ::-1]
    write_image(tmp_path / "v.png", view)
    np.testing.assert_array_equal(read_image(tmp_path / "v.png"), view)


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, rgb, monkeypatch):
    path = tmp_path / "out.png"
    write_image(path, rgb)
    old = path.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half an image")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, rgb[::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert path.read_bytes() == old


def test_failed_tiff_write_leaves_nothing(tmp_path, rgb, monkeypatch):
    def failing_imwrite(name, *args, **kwargs):
        with open(name, "wb") as f:
            f.write(b"II*\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(images.tifffile, "imwrite", failing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.tif", rgb)
    assert list(tmp_path.iterdir()) == []


def test_write_to_missing_directory_raises(tmp_path, rgb):
    with pytest.raises(FileNotFoundError):
        write_image(tmp_path / "missing" / "x.png", rgb)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_written_file_has_umask_permissions(tmp_path, rgb):
    old = os.umask(0o022)
    try:
        write_image(tmp_path / "p.png", rgb)
    finally:
        os.umask(old)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o644
