"""Deblocking of JPEG-compressed input with its own quantisation tables (iste.data.deblock)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from iste.data.deblock import DEBLOCK_MARGIN, BlockQuantisation, deblock, grid_origin
from iste.data.deblock import block_grid_score as grid_score
from iste.data.degradations import parse_degradation
from iste.data.jpeg import (COLOUR_MODES, _ijg_table, block_quantisation_of,
                            jpeg_file_quantisation, jpeg_roundtrip)
from iste.data.metrics import psnr
from slide_data import smooth_tissue as tissue_like


def block_coefficients(plane: np.ndarray) -> np.ndarray:
    """(8h, 8w) -> (h, w, 8, 8) JPEG DCT coefficients (level-shifted), by scipy."""
    from scipy.fft import dctn

    h, w = plane.shape[0] // 8, plane.shape[1] // 8
    blocks = (plane.astype(float) - 128).reshape(h, 8, w, 8).transpose(0, 2, 1, 3)
    return dctn(blocks, axes=(2, 3), norm="ortho")


@pytest.mark.parametrize("quality", [30, 75])
def test_tables_read_back_are_libjpegs(quality):
    rgb = block_quantisation_of(quality, "rgb")
    assert rgb.colour == "RGB" and not rgb.subsampled
    for table in rgb.tables:  # Aperio's mode: one (luminance) table for every plane
        np.testing.assert_array_equal(table.reshape(-1), _ijg_table(quality))
    ycc = block_quantisation_of(quality, "ycbcr420")
    assert ycc.colour == "YCbCr" and ycc.subsampled
    np.testing.assert_array_equal(ycc.tables[0].reshape(-1), _ijg_table(quality))
    assert not np.array_equal(ycc.tables[1], ycc.tables[0])  # the chrominance table


def test_deblocked_image_is_one_the_jpeg_could_have_come_from():
    clean = tissue_like()
    decoded = jpeg_roundtrip(clean, 30, "rgb")
    quant = block_quantisation_of(30, "rgb")
    out = deblock(decoded, quant)
    assert not np.array_equal(out, decoded)
    table = quant.tables[0]
    for c in range(3):
        stored = np.rint(block_coefficients(decoded[..., c]) / table)
        got = block_coefficients(out[..., c])
        # every coefficient inside its quantisation interval (+ the final 8-bit rounding)
        assert np.all(np.abs(got - stored * table) <= table / 2 + 2.0)


@pytest.mark.parametrize("mode", ["rgb", "ycbcr420"])
def test_deblocking_removes_the_grid_and_moves_towards_the_original(mode):
    clean = tissue_like(seed=1)
    decoded = jpeg_roundtrip(clean, 30, mode)
    out = deblock(decoded, block_quantisation_of(30, mode))
    assert grid_score(out, 1.0) < grid_score(decoded, 1.0) - 0.1
    assert psnr(out, clean, scale=1, border=0) > psnr(decoded, clean, scale=1, border=0)


def test_high_quality_is_barely_touched():
    clean = tissue_like(seed=2)
    decoded = jpeg_roundtrip(clean, 95, "rgb")
    out = deblock(decoded, block_quantisation_of(95, "rgb"))
    assert np.abs(out.astype(int) - decoded).max() <= 3


@pytest.mark.parametrize("shape", [(5, 6), (1, 1), (9, 3), (16, 8)])
def test_tiny_images(shape):
    decoded = jpeg_roundtrip(tissue_like(*shape), 30, "rgb")
    out = deblock(decoded, block_quantisation_of(30, "rgb"))
    assert out.shape == decoded.shape and out.dtype == np.uint8
    assert deblock(np.zeros((0, 4, 3), np.uint8), block_quantisation_of(30)).shape == (0, 4, 3)


def test_a_constant_image_stays_constant():
    flat = np.full((40, 48, 3), 131, np.uint8)
    np.testing.assert_array_equal(deblock(flat, block_quantisation_of(30, "rgb")), flat)


def test_subsampled_chroma_is_left_alone():
    decoded = jpeg_roundtrip(tissue_like(seed=3), 30, "ycbcr420")
    out = deblock(decoded, block_quantisation_of(30, "ycbcr420"))

    def ycc(rgb):
        m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                      [0.5, -0.418688, -0.081312]])
        return rgb.astype(float) @ m.T

    before, after = ycc(decoded), ycc(out)
    assert np.abs(after[..., 0] - before[..., 0]).max() > 2  # luma deblocked
    assert np.abs(after[..., 1:] - before[..., 1:]).max() <= 1.5  # chroma: 8-bit rounding only


@pytest.mark.parametrize("x, y", [(21, 13), (40, 8), (3, 30)])
def test_a_region_read_with_the_margin_matches_the_whole(x, y):
    decoded = jpeg_roundtrip(tissue_like(128, 136, seed=4), 30, "rgb")
    quant = block_quantisation_of(30, "rgb")
    whole = deblock(decoded, quant)
    m, w, h = DEBLOCK_MARGIN, 40, 36
    padded = np.pad(decoded, ((m, m), (m, m), (0, 0)), mode="edge")  # out of the image: any
    around = padded[y:y + h + 2 * m, x:x + w + 2 * m]  # image (x - m, y - m) .. with the margin
    region = deblock(around, quant, grid_origin(x - m, y - m))[m:m + h, m:m + w]
    inside = (slice(max(0, m - y), None), slice(max(0, m - x), None))  # away from the border
    diff = np.abs(region.astype(int) - whole[y:y + h, x:x + w])[inside]
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float summation order only


@pytest.mark.parametrize("oy", [0, 5])
def test_bands_give_the_whole_images_pixels(oy):
    decoded = jpeg_roundtrip(tissue_like(150, 40, seed=10), 30, "rgb")[oy:]
    quant = block_quantisation_of(30, "rgb")
    origin = ((8 - oy) % 8, 0)
    whole = deblock(decoded, quant, origin)
    banded = deblock(decoded, quant, origin, band_pixels=24 * 40)  # bands of 24 rows
    diff = np.abs(banded.astype(int) - whole)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_grid_origin_is_the_offset_to_the_next_block():
    assert grid_origin(0, 0) == (0, 0)
    assert grid_origin(3, 10) == (6, 5)  # (row, col): next block edge 6 rows, 5 columns in
    assert grid_origin(-5, -16) == (0, 5)


def test_bad_input_is_refused():
    quant = block_quantisation_of(50, "rgb")
    with pytest.raises(ValueError, match="uint8"):
        deblock(np.zeros((16, 16, 3), np.float32), quant)
    with pytest.raises(ValueError, match="0-7"):
        deblock(np.zeros((16, 16, 3), np.uint8), quant, (8, 0))
    # the README's recipe on a file that is not a JPEG (jpeg_file_quantisation: None) and a
    # PIL image were AttributeErrors from inside ('NoneType' object has no attribute 'colour')
    with pytest.raises(TypeError, match="^quant must be a BlockQuantisation, got NoneType: "
                                        "jpeg_file_quantisation returns None"):
        deblock(np.zeros((16, 16, 3), np.uint8), None)
    with pytest.raises(TypeError, match=r"^rgb must be a uint8 \(H, W, 3\) numpy array, got "
                                        "Image"):
        deblock(Image.new("RGB", (16, 16)), quant)
    with pytest.raises(ValueError, match="three"):
        BlockQuantisation("RGB", quant.tables[:2])
    with pytest.raises(ValueError, match="colour"):
        BlockQuantisation("CMYK", quant.tables)
    with pytest.raises(ValueError, match=">= 1"):
        BlockQuantisation("RGB", (np.zeros((8, 8)),) * 3)


def test_deblocking_degradations():
    plain, deblocked = parse_degradation("jpeg30-rgb"), parse_degradation("jpeg30-rgb-deblock")
    assert deblocked.deblock and not plain.deblock and deblocked.mode == "rgb"
    assert parse_degradation("jpeg75-deblock").mode == "ycbcr420"
    hr = tissue_like(144, 144, seed=5)
    lr_size = (48, 48)
    np.testing.assert_array_equal(
        deblocked.apply(hr, 3.0, lr_size),
        deblock(plain.apply(hr, 3.0, lr_size), block_quantisation_of(30, "rgb")))
    with pytest.raises(ValueError, match="deblock"):
        parse_degradation("jpeg30-deblock-rgb")


def test_training_crops_can_be_deblocked_on_their_shifted_grid():
    hr = tissue_like(144, 144, seed=11)
    plain, deblocked = parse_degradation("scanner-q30"), parse_degradation("scanner-q30-deblock")
    assert deblocked.deblock and deblocked.is_random and not plain.deblock
    assert parse_degradation("mixed-q30-j75-deblock").jpeg_fraction == 0.75
    for seed in range(6):
        a = plain.apply(hr, 3.0, (48, 48), np.random.default_rng(seed))
        b = deblocked.apply(hr, 3.0, (48, 48), np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # the scanner's draws, in its order
        rng.uniform()  # noise sigma
        quality = int(rng.integers(30, 96))
        mode = COLOUR_MODES[int(rng.integers(len(COLOUR_MODES)))]
        dy, dx = (int(v) for v in rng.integers(0, 8, size=2))
        # the same draws: the deblocked crop is the plain crop deblocked on its shifted grid
        np.testing.assert_array_equal(
            b, deblock(a, block_quantisation_of(quality, mode), grid_origin(dx, dy)))
        assert not np.array_equal(a, b)


def test_quantisation_of_image_files(tmp_path):
    rgb = tissue_like(seed=6)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=40, subsampling=0)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    quant = jpeg_file_quantisation(tmp_path / "a.jpg")
    assert quant is not None and quant.colour == "YCbCr" and not quant.subsampled
    with Image.open(tmp_path / "a.jpg") as im:
        luma = np.array(im.quantization[0], float)  # PIL: natural order
    np.testing.assert_array_equal(quant.tables[0].reshape(-1), luma)
    assert jpeg_file_quantisation(tmp_path / "a.png") is None


def test_streams_it_cannot_deblock_give_none(tmp_path):
    from iste.data.jpeg import jpeg_encode

    stream = bytearray(jpeg_encode(tissue_like(16, 16), 50, "rgb"))
    dqt = stream.index(b"\xff\xdb")
    stream[dqt + 5] = 0  # the first table's first step: 0, which the standard forbids
    (tmp_path / "zero.jpg").write_bytes(bytes(stream))
    assert jpeg_file_quantisation(tmp_path / "zero.jpg") is None
    (tmp_path / "cut.jpg").write_bytes(bytes(stream[:dqt + 3]))  # truncated in its tables
    assert jpeg_file_quantisation(tmp_path / "cut.jpg") is None
    grey = tmp_path / "grey.jpg"
    Image.fromarray(tissue_like(16, 16)[..., 0]).save(grey, quality=30)  # one component
    assert jpeg_file_quantisation(grey) is None
