"""Image IO: round trips, conversions to 8-bit RGB, clear errors and atomic writes."""

from __future__ import annotations

import os
import re
import sys

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from iste.data import imageformats, imagemeta, images, imagewrite
from iste.data.images import ImageReadError, read_image
from iste.data.imagewrite import write_image
from icc_profiles import edited, gray_profile


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
    (np.zeros((4, 4, 5), np.uint8), ValueError),
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
        fp.write(b"half an image")
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

    monkeypatch.setattr(imagewrite.tifffile, "imwrite", failing_imwrite)
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


def test_palette_min_is_white_and_cmyk_tiffs_read_as_their_colours(tmp_path, rgb):
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.tif"), np.asarray(pal.convert("RGB")))
    gray = rgb[..., 0]
    tifffile.imwrite(tmp_path / "white.tif", 255 - gray, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif")[..., 1], gray)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"),
                                  np.asarray(cmyk.convert("RGB")))
    tifffile.imwrite(tmp_path / "lab.tif", rgb, photometric="cielab")
    with pytest.raises(ImageReadError, match="CIELAB"):
        read_image(tmp_path / "lab.tif")


def test_a_ycbcr_tiff_outside_jpeg_reads_as_its_colours(tmp_path, rgb):
    # tifffile converts YCbCr to RGB in its JPEG decoders only: deflated YCbCr samples were
    # returned as RGB (grey-green, tens of levels off)
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    path = tmp_path / "ycbcr.tif"
    tifffile.imwrite(path, ycbcr, photometric="ycbcr", subsampling=(1, 1), compression="zlib")
    assert np.abs(read_image(path).astype(int) - rgb).max() <= 3
    with tifffile.TiffFile(path, mode="r+b") as tif:  # studio-range levels: not converted
        tif.pages[0].tags["ReferenceBlackWhite"].overwrite(
            (16, 1, 235, 1, 128, 1, 240, 1, 128, 1, 240, 1))
    with pytest.raises(ImageReadError, match="YCbCr with ADOBE_DEFLATE compression and its own"):
        read_image(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.mark.parametrize("interlace", [0, 1])
def test_a_png_whose_data_end_early_is_refused_not_read_black(tmp_path, interlace):
    import struct
    import zlib

    def png(rows: int, side: int = 64) -> bytes:
        # gray 8-bit; for interlace 1 the Adam7 passes' rows, each with its filter byte
        if interlace:
            raw = b"".join(b"\0" + b"\x80" * (-(-max(side - x0, 0) // dx))
                           for x0, y0, dx, dy in images._ADAM7
                           for _ in range(-(-max(side - y0, 0) // dy)))
        else:
            raw = (b"\0" + b"\x80" * side) * side
        raw = raw[:rows * (side + 1)] if rows < side else raw
        return (imageformats.PNG_SIGNATURE
                + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, interlace))
                + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))

    (tmp_path / "whole.png").write_bytes(png(64))
    assert read_image(tmp_path / "whole.png").shape == (64, 64, 3)
    (tmp_path / "short.png").write_bytes(png(10))
    with pytest.raises(ImageReadError, match="truncated PNG"):
        read_image(tmp_path / "short.png")


def test_an_animated_png_is_refused(tmp_path, rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="animated PNG"):
        read_image(tmp_path / "anim.png")


def test_metadata_that_does_not_describe_the_pixels_read_is_not_carried(tmp_path, rgb):
    from PIL import ImageCms

    exif = Image.Exif()
    exif[271], exif[274] = "scanner", 6  # Make and Orientation, no resolution
    Image.fromarray(rgb).save(tmp_path / "exif.jpg", exif=exif)
    meta = imagemeta.read_image_meta(tmp_path / "exif.jpg")
    assert meta.mpp is None and meta.orientation == 6  # not PIL's 72 dpi default
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray = gray_profile()
    Image.fromarray(rgb).save(tmp_path / "rgb.png", icc_profile=srgb)
    Image.fromarray(rgb).save(tmp_path / "rgb_gray.png", icc_profile=bytes(gray))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray_rgb.png", icc_profile=srgb)
    assert imagemeta.read_image_meta(tmp_path / "rgb.png").icc_profile == srgb
    # a gray profile describes no pixel of a colour image, an RGB one none of a gray image
    # (written gray: ImageMeta.gray)
    assert imagemeta.read_image_meta(tmp_path / "rgb_gray.png").icc_profile is None
    assert imagemeta.read_image_meta(tmp_path / "gray_rgb.png").icc_profile is None


def test_a_profile_littlecms_cannot_apply_is_not_carried(tmp_path, rgb):
    # the header said RGB, so a truncated or device-link profile was kept for the output
    # (PNG iCCP, TIFF tag 34675), where a reader applying it fails
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb[:-60], edited(srgb, 12, b"link")):
        Image.fromarray(rgb).save(tmp_path / "bad.png", icc_profile=icc)
        tifffile.imwrite(tmp_path / "bad.tif", rgb, photometric="rgb", iccprofile=icc)
        for name in ("bad.png", "bad.tif"):
            assert imagemeta.read_image_meta(tmp_path / name).icc_profile is None, name
    assert imagemeta.profile_for(gray_profile(), "L") == gray_profile()  # a real gray one is


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_pixels_as_viewers_that_honour_exif_show_them(tmp_path, rgb, orientation):
    """PIL's exif_transpose (what EXIF-honouring viewers do) is the reference; a TIFF's
    Orientation tag is read as a JPEG's or PNG's."""
    from PIL import ImageOps

    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    tifffile.imwrite(tmp_path / "o.tif", rgb, extratags=[(274, "H", 1, orientation, True)])
    with Image.open(tmp_path / "o.png") as img:
        seen = np.asarray(ImageOps.exif_transpose(img))
    for name in ("o.png", "o.tif"):
        meta = imagemeta.read_image_meta(tmp_path / name)
        assert meta.orientation == orientation
        np.testing.assert_array_equal(imagemeta.upright(read_image(tmp_path / name),
                                                     meta.orientation), seen)
    assert imagemeta.upright_xy((0.25, 0.5), orientation) == \
        ((0.5, 0.25) if orientation >= 5 else (0.25, 0.5))


def test_alpha_is_written_and_read_beside_the_colours(tmp_path, rgb):
    """write_image takes (H, W, 4) and (H, W, 2) for PNG and TIFF (as unassociated alpha),
    refuses them for JPEG before writing; read_image_and_alpha returns the alpha, None where
    every pixel is opaque or a TIFF's extra sample is not marked as alpha."""
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    for suffix in (".png", ".tif"):
        for image in (np.dstack([rgb, alpha]), np.dstack([rgb[..., 1], alpha])):
            write_image(tmp_path / f"a{suffix}", image)
            got, got_alpha = images.read_image_and_alpha(tmp_path / f"a{suffix}")
            np.testing.assert_array_equal(got_alpha, alpha)
            np.testing.assert_array_equal(got[..., 1], image[..., image.shape[2] // 2 - 1])
            assert imagemeta.read_image_meta(tmp_path / f"a{suffix}").gray == (image.shape[2] == 2)
        write_image(tmp_path / f"opaque{suffix}", np.dstack([rgb, np.full_like(alpha, 255)]))
        assert images.read_image_and_alpha(tmp_path / f"opaque{suffix}")[1] is None
    tifffile.imwrite(tmp_path / "extra.tif", np.dstack([rgb, alpha]), photometric="rgb",
                     extrasamples=("unspecified",))
    assert images.read_image_and_alpha(tmp_path / "extra.tif")[1] is None
    with pytest.raises(ValueError, match="JPEG has no alpha"):
        write_image(tmp_path / "a.jpg", np.dstack([rgb, alpha]))
    assert not (tmp_path / "a.jpg").exists()


def test_a_tiff_whose_pixels_may_not_fit_4_gib_is_a_bigtiff(tmp_path, rgb, monkeypatch):
    # tifffile's own choice looks at uncompressed data only: a zlib TIFF was classic whatever
    # its size. The threshold lowered to this image's bytes stands for a 4 GiB one.
    import tifffile

    write_image(tmp_path / "small.tif", rgb)
    monkeypatch.setattr(imagewrite, "_CLASSIC_TIFF_BYTES", rgb.nbytes - 1)
    write_image(tmp_path / "large.tif", rgb)
    with tifffile.TiffFile(tmp_path / "small.tif") as small, \
            tifffile.TiffFile(tmp_path / "large.tif") as large:
        assert not small.is_bigtiff and large.is_bigtiff
        assert np.array_equal(large.asarray(), rgb)


@pytest.mark.parametrize("suffix,beyond,within", [
    (".png", 2e-5, 3e-4), (".png", 1e7, 1e4), (".tif", 1e-6, 1e-5), (".tif", 1e15, 1e12),
    (".jpg", 1e-6, 1e-5)])
def test_a_pixel_size_beyond_the_formats_fields_is_left_out_with_a_warning(tmp_path, rgb,
                                                                          suffix, beyond, within):
    # an x8 output of a source claiming 2.5 pm pixels: the PNG failed with OverflowError once
    # the model had run, the TIFF with "max_denominator should be at least 1", the JPEG's
    # EXIF read NaN
    path = tmp_path / f"o{suffix}"
    with pytest.warns(UserWarning, match="beyond what a .* file's resolution fields hold"):
        write_image(path, rgb, mpp=(beyond, beyond))
    assert imagemeta.read_image_meta(path).mpp is None
    assert np.abs(read_image(path).astype(int) - rgb).max() <= (0 if suffix != ".jpg" else 40)
    write_image(path, rgb, mpp=(within, within))
    assert imagemeta.read_image_meta(path).mpp == pytest.approx((within, within), rel=1e-3)


def test_a_tiff_written_without_a_pixel_size_has_no_resolution_tags(tmp_path, rgb):
    """tifffile writes XResolution = YResolution = 1 per unit NONE, which Bio-Formats (QuPath)
    reads as 1 um pixels: iste's TIFFs of unknown pixel size carry no resolution at all."""
    imagewrite.write_image(tmp_path / "bare.tif", rgb, description="x")
    imagewrite.write_image(tmp_path / "res.tif", rgb, mpp=(0.25, 0.5))
    with tifffile.TiffFile(tmp_path / "bare.tif") as tif:
        assert 282 not in tif.pages.first.tags and 283 not in tif.pages.first.tags
        assert tif.pages.first.description == "x"
    assert np.array_equal(images.read_image(tmp_path / "bare.tif"), rgb)
    assert imagemeta.read_image_meta(tmp_path / "bare.tif").mpp is None
    assert imagemeta.read_image_meta(tmp_path / "res.tif").mpp == pytest.approx((0.25, 0.5))


def test_a_tiff_without_resolution_tags_has_no_pixel_size(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "bare.tif")  # PIL writes no resolution tags
    with tifffile.TiffFile(tmp_path / "bare.tif") as tif:
        assert 282 not in tif.pages.first.tags  # no XResolution: tifffile still says (1, 1)
    assert imagemeta.read_image_meta(tmp_path / "bare.tif").mpp is None  # not 25 400 um/px
    tifffile.imwrite(tmp_path / "res.tif", rgb, photometric="rgb", resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER")
    assert imagemeta.read_image_meta(tmp_path / "res.tif").mpp == pytest.approx((0.25, 0.25))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_file_cut_short_is_found_without_decoding(tmp_path, suffix):
    big = np.random.default_rng(1).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    path = tmp_path / f"t{suffix}"
    if suffix == ".tif":  # strips after the header, which stays readable when cut
        tifffile.imwrite(path, big, rowsperstrip=16)
    else:
        write_image(path, big)
    images.check_complete(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=f"cannot read .*t{suffix}: truncated"):
        images.check_complete(path)


def test_a_stack_with_an_empty_tile_in_a_later_plane_is_named(tmp_path):
    """A stack's planes after the first are tifffile TiffFrames (no ``imagewidth``): the check
    that names an empty tile failed on them, and a training or test folder holding such a
    file was refused as "corrupt or unreadable ('TiffFrame' object has no attribute ...)"."""
    path = tmp_path / "stack.tif"
    planes = np.random.default_rng(1).integers(0, 256, size=(2, 128, 128, 3), dtype=np.uint8)
    tifffile.imwrite(path, planes, tile=(64, 64), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[1].databytecounts)
        tif.pages[1].tags["TileByteCounts"].overwrite([0] + counts[1:])
    for check in (images.check_complete, images.checked_image_size):
        with pytest.raises(ImageReadError, match="1 of the 4 tiles of its 128 x 128 px image "
                           "are stored with no bytes"):
            check(path)


def test_a_tiff_whose_chain_of_images_loops_is_refused_not_followed_for_ever(tmp_path, rgb):
    """A two-page TIFF whose second IFD names itself as the next: tifffile's series walked
    the loop page by page for ever (it finds loops only where it indexes the whole chain at
    once), and reading, sizing or checking the file hung, its memory growing."""
    from hostile_cases import deadline

    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, np.stack([rgb, rgb]), photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[1].offset
    data = bytearray(path.read_bytes())
    link = offset + 2 + 12 * int.from_bytes(data[offset:offset + 2], "little")
    data[link:link + 4] = offset.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    for read in (images.check_complete, images.checked_image_size, read_image):
        with deadline(30), pytest.raises(ImageReadError, match="chain of images loops"):
            read(path)


def test_a_strip_said_to_lie_at_byte_0_is_refused_not_read_black(tmp_path, rgb):
    """A strip whose offset is 0 (the TIFF header's byte) with its byte count intact:
    tifffile takes it for an empty strip and read it black, without a word."""
    path = tmp_path / "at0.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=4)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        offsets = list(tif.pages[0].dataoffsets)
        tif.pages[0].tags["StripOffsets"].overwrite([0] + offsets[1:])
    for check in (images.check_complete, images.checked_image_size):
        with pytest.raises(ImageReadError, match="stored with no bytes or at byte 0, the first "
                                                 "strip 0"):
            check(path)


def test_a_tiff_with_fewer_strip_byte_counts_than_strips_is_refused(tmp_path, rgb):
    """StripByteCounts two short of StripOffsets: tifffile logged "incorrect StripByteCounts
    count" and read the strips without a count black, and iste upscale wrote the black
    rows super-resolved, with exit 0."""
    path = tmp_path / "counts.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=rgb.shape[0] // 4)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        tif.pages[0].tags["StripByteCounts"].overwrite(counts[:-2])
    for read in (images.checked_image_size, read_image):
        with pytest.raises(ImageReadError, match=f"holds {len(counts) - 2} of the {len(counts)} "
                                                 "strips that size needs"):
            read(path)


def test_complete_files_with_trailing_bytes_or_thumbnails_pass(tmp_path, rgb):
    import io

    thumb = io.BytesIO()
    Image.fromarray(rgb[:16, :16]).save(thumb, "JPEG")  # its own scan and end marker
    exif = Image.Exif()
    exif[0x0112] = 1
    path = tmp_path / "thumb.jpg"
    Image.fromarray(np.tile(rgb, (6, 6, 1))).save(path, exif=exif.tobytes() + thumb.getvalue(),
                                                  progressive=True)
    images.check_complete(path)
    whole = path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # the thumbnail's end stays
    with pytest.raises(ImageReadError, match="end-of-image"):
        images.check_complete(tmp_path / "cut.jpg")
    (tmp_path / "padded.jpg").write_bytes(whole + bytes(70000))  # past the 64 KiB tail
    images.check_complete(tmp_path / "padded.jpg")
    write_image(tmp_path / "p.png", rgb)
    with open(tmp_path / "p.png", "ab") as f:
        f.write(b"trailing")
    images.check_complete(tmp_path / "p.png")


def test_an_interrupted_save_leaves_no_open_file_nor_temporary(tmp_path, monkeypatch):
    # PIL closes the file it opened on an Exception only: Ctrl-C or SIGTERM (our Terminated)
    # mid-save left it open, and a ResourceWarning reached the terminal
    import gc
    import warnings

    def interrupted(im, fp, filename):
        fp.write(b"half a PNG")
        raise KeyboardInterrupt

    Image.init()  # the plugins registered, so that ours stays
    monkeypatch.setitem(Image.SAVE, "PNG", interrupted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt):
            write_image(tmp_path / "out.png", np.zeros((8, 8, 3), np.uint8))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert list(tmp_path.iterdir()) == []


def test_checked_image_size_names_the_file_pil_cannot_identify(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="cannot identify image file '.*empty.png'\\)$"):
        images.checked_image_size(tmp_path / "empty.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_write_image_returns_the_digest_of_the_bytes_it_put_in_place(tmp_path, monkeypatch,
                                                                     suffix):
    import hashlib

    from iste import digest
    from file_times import after_the_tick_of

    # every file digested is kept as if settled: a rewrite must still get its own digest
    monkeypatch.setattr(digest, "_now_ns", lambda: 1 << 62)
    path = tmp_path / f"out{suffix}"
    rng = np.random.default_rng(0)
    for _ in range(3):
        digest = write_image(path, rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
        after_the_tick_of(path.stat().st_ctime_ns, tmp_path)  # as settled as the clock says


def test_a_jpeg2000_codestream_without_its_end_marker_is_named():
    import imagecodecs

    from iste.data.integrity import jpeg2000_problem

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stream = bytes(imagecodecs.jpeg2k_encode(rgb, level=30, codecformat="j2k"))
    assert jpeg2000_problem(stream) is None
    assert jpeg2000_problem(stream + bytes(16)) is None  # padded after its end: whole
    cut = stream[:len(stream) // 2] + bytes(len(stream) - len(stream) // 2)
    assert "no end-of-codestream marker" in jpeg2000_problem(cut)
    assert "no end-of-codestream marker" in jpeg2000_problem(stream[:len(stream) // 2])
    jp2 = bytes(imagecodecs.jpeg2k_encode(rgb, level=30, codecformat="jp2"))
    assert jpeg2000_problem(jp2[:len(jp2) // 2]) is None  # a JP2 file's boxes: not judged


@pytest.mark.parametrize("codec, stream", [("jpeg", True), ("jpeg2000", False)])
def test_only_a_jpeg_tiff_levels_first_tile_is_given_as_a_jpeg_stream(tmp_path, codec, stream):
    # since JPEG 2000 tiles are judged too, the deblocking tables were parsed from a JPEG 2000
    # codestream (refused by the parser, by luck of its checks) as if it were JPEG
    import tifffile

    from iste.slides.tilecheck import JpegTileCheck

    path = tmp_path / "t.tiff"
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(path, rgb, tile=(32, 32), compression=codec, photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        check = JpegTileCheck(tif.pages[0])
        try:
            assert check.active
            first = next(check.tile_streams(1), b"")
            assert first[:2] == b"\xff\xd8" if stream else first == b""
        finally:
            check.close()


def test_a_tiff_description_is_written_whole_as_ascii(tmp_path):
    """A description with other than ASCII failed the TIFF write (tifffile: 7-bit ASCII
    only), and a NUL ended it for readers (libtiff, OpenSlide): both are escapes now."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    write_image(tmp_path / "a.tif", rgb, description="Pr\u00e4parat\x00a\x1bb")
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.pages.first.description == "Pr\\xe4parat\\x00a\\x1bb"


def test_a_large_scan_export_is_sized_and_only_beyond_a_gigapixel_refused(tmp_path):
    # PIL's decompression-bomb guard refused a 12 000 x 16 000 PNG (192 Mpx, a scan region
    # exported whole) as 'corrupt or unreadable' and warned from 89 Mpx; iste's own bound is
    # MAX_INPUT_PIXELS (1 Gpx), said as such
    import warnings

    from hostile_cases import png_header_only

    export = png_header_only(tmp_path / "export.png", 12000, 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert images.image_size(export) == (16000, 12000)
    for width, height in ((40000, 40000), (100000, 100000)):  # PIL's warning; its error
        huge = png_header_only(tmp_path / f"huge{width}.png", width, height)
        for read in (images.image_size, images.checked_image_size):  # from the header
            with pytest.raises(ImageReadError, match=r"beyond the 1 Gpx iste reads from a PNG "
                                                     r"or JPEG; save it as a tiled TIFF"):
                read(huge)


def test_an_image_whose_decoding_would_not_fit_in_memory_is_refused_from_its_header(
        tmp_path, monkeypatch):
    # a 0.9 MB PNG of 30000 x 30000 flat pixels in a test folder stopped iste eval with "out
    # of memory (MemoryError)", the file unnamed, once its decoding had taken what memory
    # there was; a training folder's crops and a single-image source read it the same way
    import iste.data.memory as memory

    rgb = np.full((48, 64, 3), 128, np.uint8)
    paths = [tmp_path / name for name in ("a.png", "a.jpg", "a.tif")]
    for path in paths:
        write_image(path, rgb)
    need = 48 * 64 * imageformats.DECODE_BYTES
    monkeypatch.setattr(memory, "host_memory_available", lambda: need - 1)
    for path in paths:
        for read in (images.read_image, images.checked_image_size):
            with pytest.raises(ImageReadError, match=rf"^cannot read {path}: decoding 64 x "
                                                     r"48 px takes about [0-9.e-]+ GiB; "
                                                     r"[0-9.e-]+ GiB are available$"):
                read(path)
        assert images.image_size(path) == (48, 64)  # sizing a job decodes nothing
    monkeypatch.setattr(memory, "host_memory_available", lambda: need)
    for path in paths:
        assert read_image(path).shape == (48, 64, 3)


def test_a_png_transparent_colour_is_an_alpha_for_rgb_as_for_gray_and_palette(tmp_path, rgb):
    # a PNG's tRNS chunk names one colour transparent: read as an alpha for gray and palette
    # images, it was dropped for RGB ones (their output opaque where the source was not)
    key = tuple(int(v) for v in rgb[0, 0])
    Image.fromarray(rgb).save(tmp_path / "keyed.png", transparency=key)
    got, alpha = images.read_image_and_alpha(tmp_path / "keyed.png")
    np.testing.assert_array_equal(got, rgb)
    np.testing.assert_array_equal(alpha, np.where((rgb == key).all(-1), 0, 255))
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "keyed_gray.png", transparency=int(gray[0, 0]))
    np.testing.assert_array_equal(images.read_image_and_alpha(tmp_path / "keyed_gray.png")[1],
                                  np.where(gray == gray[0, 0], 0, 255))


def test_a_1_bit_tiff_is_read_as_gray_as_a_1_bit_png_is(tmp_path, rgb):
    # refused as "bool TIFF is not supported" where the same pixels in a PNG were read
    bits = rgb[..., 0] > 127
    Image.fromarray(bits).save(tmp_path / "bits.png")
    Image.fromarray(bits).save(tmp_path / "pil.tif")  # min-is-black
    tifffile.imwrite(tmp_path / "white.tif", ~bits, photometric="miniswhite")  # fax-style
    want = np.repeat(np.where(bits, 255, 0)[..., None], 3, -1)
    for name in ("bits.png", "pil.tif", "white.tif"):
        assert images.checked_image_size(tmp_path / name) == bits.shape
        np.testing.assert_array_equal(read_image(tmp_path / name), want)
        assert imagemeta.read_image_meta(tmp_path / name).gray


@pytest.mark.parametrize("name, data", [
    ("deep.png", np.full((8, 8, 3), 4080, np.uint16)), ("deep.tif", np.zeros((8, 8), np.uint16)),
    ("float.tif", np.zeros((8, 8, 3), np.float32))])
def test_deep_samples_are_refused_saying_how_to_convert_them(tmp_path, name, data):
    # the one advice plain images, slides and PIL images give (imageformats.DEEP_ADVICE)
    path = tmp_path / name
    if name.endswith(".png"):
        path.write_bytes(imagecodecs.png_encode(data))
    else:
        tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack")
    for read in (read_image, images.checked_image_size):
        with pytest.raises(ImageReadError, match=f"{name}: .*not supported; "
                           + re.escape(imageformats.DEEP_ADVICE)):
            read(path)
