"""Pyramidal writer: what OpenSlide and tiffslide read back (levels, pixels, mpp, layout)."""

import numpy as np
import pytest
import tifffile

from iste.slides.reader import InMemorySlide
from iste.slides.formats import open_slide
from iste.slides.levels import MISPLACEMENT_PX, halve, halvings_to_fit, pyramid_sizes_to_fit
from iste.slides.omexml import ome_xml
from iste.slides.writer import PyramidSpec, TileCodec, aperio_description, write_pyramid
from slide_data import he_image

TILE = 128


def _write(path, rgb, *, codec="deflate", layout="generic", mpp=(0.2, 0.25), tile=TILE,
           **more):
    h, w = rgb.shape[:2]
    spec = PyramidSpec(w, h, tile=tile, mpp=mpp, codec=codec, layout=layout,
                       **{"description": "iste test pyramid", **more})
    enc = TileCodec(codec, tile)
    write_pyramid(path, spec, lambda r, c: enc.encode(rgb[r * tile:(r + 1) * tile,
                                                         c * tile:(c + 1) * tile]))
    return spec


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_generic_layout_round_trips_levels_pixels_and_mpp(tmp_path, backend):
    rgb = he_image()
    spec = _write(tmp_path / "out.tiff", rgb)
    ref = InMemorySlide(rgb, min_level_size=1)
    with open_slide(tmp_path / "out.tiff", backend=backend) as s:
        assert s.level_dimensions == spec.level_sizes == [(600, 440), (300, 220), (150, 110),
                                                          (75, 55)]
        assert max(s.level_dimensions[-1]) <= TILE  # down to a thumbnail in one tile
        assert s.mpp == pytest.approx((0.2, 0.25))
        for level, (w, h) in enumerate(s.level_dimensions):
            assert np.array_equal(s.read_level(level, (0, 0), (w, h)),
                                  ref.read_level(level, (0, 0), (w, h))), level


def test_every_svs_page_says_its_subfile_type(tmp_path):
    """The thumbnail page went without NewSubfileType: Bio-Formats (QuPath) takes such a page
    for the label and, with no real label after it, showed the pyramid's last level as an
    image of its own (3 resolutions of 4; test_slides_layout.py checks with Bio-Formats)."""
    _write(tmp_path / "out.tiff", he_image(), codec="jpeg", layout="svs")
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        assert len(tif.pages) == 5  # level 0, thumbnail, levels 1-3
        for page in tif.pages:
            assert "NewSubfileType" in page.tags, page.index
            assert page.tags["NewSubfileType"].value == 0, page.index


@pytest.mark.parametrize("layout", ["svs", "generic", "ome"])
def test_no_resolution_is_recorded_for_an_unknown_pixel_size(tmp_path, layout):
    """tifffile wrote XResolution = YResolution = 1 per unit NONE, which Bio-Formats (QuPath)
    reads as 1 um pixels (test_slides_layout.py checks with Bio-Formats)."""
    _write(tmp_path / "out.tiff", he_image(), codec="jpeg", layout=layout, mpp=None)
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        pages = [lv.keyframe for lv in tif.series[0].levels] + list(tif.pages)
        for page in pages:
            assert "XResolution" not in page.tags and "YResolution" not in page.tags
        assert len(tif.series[0].levels) == 4
    with open_slide(tmp_path / "out.tiff") as s:
        assert s.mpp is None and s.level_count == 4  # the IFDs rewritten still read
        assert np.abs(s.read_level(0, (0, 0), (600, 440)).astype(int) - he_image()).mean() < 4
        assert s.read_level(3, (0, 0), (75, 55)).shape == (55, 75, 3)


def test_each_levels_resolution_is_its_pixel_pitch_also_for_odd_sizes(tmp_path):
    # a level's pixel is 2 x 2 of the one above (edge-padded): the pitch doubles exactly; it
    # was taken from the widths (601 / 76 = 7.91, not 8), and the height's went with it
    _write(tmp_path / "out.tiff", he_image(601, 441), mpp=(0.2, 0.25))
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        sizes = [(p.imagewidth, p.imagelength) for p in tif.pages]
        assert sizes == [(601, 441), (301, 221), (151, 111), (76, 56)]
        for level, page in enumerate(tif.pages):
            (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
            assert xn / xd == pytest.approx(1e4 / (0.2 * 2 ** level), rel=1e-6), level
            assert yn / yd == pytest.approx(1e4 / (0.25 * 2 ** level), rel=1e-6), level


def test_generic_layout_is_what_openslide_expects(tmp_path):
    import openslide

    _write(tmp_path / "out.tiff", he_image())
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        assert tif.is_bigtiff and len(tif.pages) == 4
        for i, page in enumerate(tif.pages):
            assert page.is_tiled and not page.subifds
            assert page.subfiletype == (1 if i else 0)
            assert page.tags["ResolutionUnit"].value == 3  # centimeter
        assert tif.pages[0].description == "iste test pyramid"
    props = openslide.OpenSlide(str(tmp_path / "out.tiff")).properties
    assert props["openslide.vendor"] == "generic-tiff"
    assert float(props["openslide.mpp-x"]) == pytest.approx(0.2)
    assert float(props["openslide.mpp-y"]) == pytest.approx(0.25)


def test_ome_layout_has_subifds_and_physical_size(tmp_path):
    rgb = he_image()
    _write(tmp_path / "out.ome.tiff", rgb, layout="ome")
    with tifffile.TiffFile(tmp_path / "out.ome.tiff") as tif:
        assert tif.is_ome and len(tif.pages) == 1 and len(tif.pages[0].subifds) == 3
        xml = tif.ome_metadata
        assert 'PhysicalSizeX="0.2"' in xml and 'PhysicalSizeY="0.25"' in xml
    with open_slide(tmp_path / "out.ome.tiff") as s:  # tiffslide reads the SubIFD levels
        assert s.level_count == 4 and s.mpp == pytest.approx((0.2, 0.25))
        assert np.array_equal(s.read_level(0, (0, 0), (600, 440)), rgb)


def test_ome_layout_records_magnification_label_and_macro(tmp_path):
    """tifffile's OME-XML had no instrument: no magnification, and the label and macro were
    left out of the OME layout (the svs layout carried them)."""
    rgb, label, macro = he_image(), np.full((40, 60, 3), 180, np.uint8), he_image(90, 30)
    _write(tmp_path / "out.ome.tiff", rgb, layout="ome", objective_power=40,
           associated=(("label", label), ("macro", macro)))
    with tifffile.TiffFile(tmp_path / "out.ome.tiff") as tif:
        assert tif.is_ome and len(tif.pages) == 3 and len(tif.pages[0].subifds) == 3
        assert [s.name for s in tif.series] == ["iste", "label", "macro"]
        xml = tif.ome_metadata
        assert 'NominalMagnification="40"' in xml and '<ObjectiveSettings ID="Objective:0:0"' in xml
        assert "<Description>iste test pyramid</Description>" in xml
    with open_slide(tmp_path / "out.ome.tiff") as s:
        assert s.level_count == 4 and s.mpp == pytest.approx((0.2, 0.25))
        assert s.objective_power == 40 and s.associated_images == ("label", "macro")
        assert np.array_equal(s.read_associated("label"), label)
        assert np.array_equal(s.read_associated("macro"), macro)
        assert np.array_equal(s.read_level(0, (0, 0), (600, 440)), rgb)
    # OpenSlide reads level 0 alone, as a generic TIFF: iste reads the OME-XML beside it (it
    # had no magnification)
    with open_slide(tmp_path / "out.ome.tiff", backend="openslide") as s:
        assert s.objective_power == 40 and s.mpp == pytest.approx((0.2, 0.25))
    _write(tmp_path / "bare.ome.tiff", rgb, layout="ome", mpp=None)  # nothing to record
    with tifffile.TiffFile(tmp_path / "bare.ome.tiff") as tif:
        assert len(tif.pages) == 1 and [s.name for s in tif.series] == ["iste"]
        assert "Instrument" not in tif.ome_metadata and "PhysicalSize" not in tif.ome_metadata
    with open_slide(tmp_path / "bare.ome.tiff") as s:
        assert s.objective_power is None and s.mpp is None and s.associated_images == ()


def test_jpeg_tiles_are_close_and_read_alike_by_both_backends(tmp_path):
    rgb = he_image()
    _write(tmp_path / "out.tiff", rgb, codec="jpeg")
    with open_slide(tmp_path / "out.tiff") as a, \
            open_slide(tmp_path / "out.tiff", backend="openslide") as b:
        ra, rb = a.read_level(0, (0, 0), (600, 440)), b.read_level(0, (0, 0), (600, 440))
    assert np.array_equal(ra, rb)
    err = np.abs(ra.astype(int) - rgb).mean()
    assert 0 < err < 4  # lossy, quality 90
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:  # the tagging every reader agrees on
        tags = tif.pages[0].tags  # (docs/wsi.md: tagged RGB, OpenSlide reads other colours)
        assert tags["PhotometricInterpretation"].value == 6
        assert tags["YCbCrSubSampling"].value == (2, 2)


def test_the_svs_thumbnail_page_records_the_pixel_size_of_the_level_it_shows(tmp_path):
    # it had tifffile's default, 1 / 1 per unit NONE: libvips, which opens each page of the
    # file (pyvips-binary, no OpenSlide), read the thumbnail as 1000 um pixels
    _write(tmp_path / "out.tiff", he_image(601, 441), codec="jpeg", layout="svs")
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        thumb, last = tif.pages[1], tif.pages[-1]
        assert (thumb.imagewidth, thumb.imagelength) == (last.imagewidth, last.imagelength)
        for page in (thumb, last):
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            for tag, mpp in (("XResolution", 0.2), ("YResolution", 0.25)):
                n, d = page.tags[tag].value
                assert n / d == pytest.approx(1e4 / (mpp * 8), rel=1e-6), (page.index, tag)


def test_the_svs_thumbnail_keeps_the_colour_of_the_level_it_shows(tmp_path):
    """The thumbnail page (OpenSlide's and QuPath's 'thumbnail') was tifffile's default JPEG,
    4:2:0 at its own quality, where every level is 4:4:4 at ``quality``: its colour was blurred
    (mean 3.7, up to 42 levels from the last level it copies, on H&E). It must be as close to
    that level as one more 4:4:4 encoding of it is, and read alike by both readers."""
    _write(tmp_path / "out.tiff", he_image(), codec="jpeg", layout="svs")
    with open_slide(tmp_path / "out.tiff", backend="openslide") as a, \
            open_slide(tmp_path / "out.tiff") as b:
        last = a.read_level(a.level_count - 1, (0, 0), a.level_dimensions[-1])
        thumb = a.read_associated("thumbnail")
        assert np.array_equal(b.read_associated("thumbnail"), thumb)
    h, w = last.shape[:2]
    codec = TileCodec("jpeg", TILE)
    again = codec.decode(codec.encode(last))[:h, :w]
    assert thumb.shape == last.shape
    assert np.abs(thumb.astype(int) - last).mean() <= 2 * np.abs(again.astype(int) - last).mean()


@pytest.mark.parametrize("layout", ["svs", "generic", "ome"])
def test_progress_counts_every_tile_of_every_level(tmp_path, layout):
    rgb = he_image()  # 600 x 440 in tiles of 128: 5 x 4, 3 x 2, 2 x 1, 1 x 1
    h, w = rgb.shape[:2]
    spec = PyramidSpec(w, h, tile=TILE, mpp=(0.2, 0.2), codec="deflate", layout=layout)
    enc = TileCodec("deflate", TILE)
    counted = []
    write_pyramid(tmp_path / "out.tiff", spec,
                  lambda r, c: enc.encode(rgb[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]),
                  progress=counted.append)
    assert sum(counted) == 20 + 6 + 2 + 1  # the pyramid's bar and log lines reach 100 %


def test_failure_leaves_neither_output_nor_temporary_files(tmp_path):
    spec = PyramidSpec(300, 200, tile=TILE, codec="deflate")
    enc = TileCodec("deflate", TILE)

    def source(r, c):
        if (r, c) == (1, 2):
            raise RuntimeError("disk on fire")
        return enc.encode(np.zeros((TILE, TILE, 3), np.uint8))

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_pyramid(tmp_path / "out.tiff", spec, source)
    assert list(tmp_path.iterdir()) == []


def test_spec_validation():
    with pytest.raises(ValueError, match="multiple of 16"):
        PyramidSpec(10, 10, tile=100)
    with pytest.raises(ValueError, match="codec"):
        PyramidSpec(10, 10, codec="webp")
    assert PyramidSpec(1000, 300, tile=256).level_sizes == [(1000, 300), (500, 150),
                                                            (250, 75)]


def test_tile_codec_round_trip_pads_edges():
    rgb = he_image()[:50, :70]
    for name in ("deflate", "jpeg"):
        codec = TileCodec(name, 80)
        back = codec.decode(codec.encode(rgb))
        assert back.shape == (80, 80, 3)
        tol = 0 if name == "deflate" else 12
        assert np.abs(back[:50, :70].astype(int) - rgb).mean() <= tol


def test_a_tile_that_does_not_decode_is_a_one_line_error():
    for name in ("jpeg", "deflate"):
        codec = TileCodec(name, 64)
        with pytest.raises(ValueError, match="does not decode.*remove the job's work folder"):
            codec.decode(b"not a tile")
    small = TileCodec("jpeg", 32).encode(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="not \\(64, 64, 3\\)"):
        TileCodec("jpeg", 64).decode(small)


BAD = "a\x01b\x1bc\x0cd\x00e\ufffe"  # control characters, a NUL, an XML non-character
SHOWN = "a\\x01b\\x1bc\\x0cd\\x00e\\ufffe"


@pytest.mark.parametrize("layout", ["svs", "generic", "ome"])
def test_control_characters_in_the_text_leave_every_tiff_text_whole_and_xml_readable(
        tmp_path, layout):
    """A description or provenance field holding control characters went raw into the TIFF:
    the OME-XML was no XML (Bio-Formats read the output without its metadata), the XMP no
    XML either, and a NUL cut the ImageDescription (OpenSlide read the text up to it). Now
    they are escapes in every form."""
    import xml.etree.ElementTree as ET

    import openslide

    from iste.provenance import Provenance

    prov = Provenance(model="m", model_sha="0" * 16, architecture="a", scale=2.0,
                      precision="fp32", stf_keys=None, source="s.svs", source_sha256=None,
                      extra={"note": BAD})
    out = tmp_path / "out.tiff"
    rgb = he_image(200, 150)
    _write(out, rgb, layout=layout, properties=(("iste.note", BAD),), xmp=prov.to_xmp(),
           description=f"made of {BAD}")
    with tifffile.TiffFile(out) as tif:
        description = tif.pages.first.description
        xmp = ET.fromstring(bytes(tif.pages.first.tags[700].value))  # parses
    assert xmp.find(".//{*}note").text == SHOWN
    comment = openslide.OpenSlide(str(out)).properties["openslide.comment"]
    assert comment == description  # whole: no NUL cut it short
    if layout == "ome":
        ome = ET.fromstring(description)  # parses
        assert ome.find("{*}Image/{*}Description").text == f"made of {SHOWN}"
    elif layout == "generic":
        assert description == f"made of {SHOWN}"
    else:
        props = openslide.OpenSlide(str(out)).properties
        assert props["aperio.iste.note"] == SHOWN
    assert "\x00" not in prov.to_text() and SHOWN in prov.to_text()


def _box_halved(rgb):
    """An independent 2 x 2 mean, rounded half up, of uint8 (H, W, 3) with an odd last
    row/column repeated: what each lower level must hold."""
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.float64)
    blocks = padded.reshape((h + h % 2) // 2, 2, (w + w % 2) // 2, 2, 3).mean(axis=(1, 3))
    return np.floor(blocks + 0.5).astype(np.uint8)


def test_each_lower_level_is_the_rounded_2x2_mean_of_the_one_above(tmp_path):
    # the round trip above compares the file with InMemorySlide, which halves with the same
    # function as the writer: a mean that dropped one of the four pixels or truncated
    # (darkening every level by 3/8 of a step more than the one above) passed it
    assert halve(np.array([[[1], [2]], [[2], [2]]], np.uint8)).item() == 2  # 7/4 rounds up
    assert halve(np.array([[[0], [0]], [[0], [255]]], np.uint8)).item() == 64  # all four
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (301, 267, 3), dtype=np.uint8)  # odd sides: edge repeated
    _write(tmp_path / "out.tiff", rgb)  # deflate: lossless
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        levels = [page.asarray() for page in tif.pages]
    expected = rgb
    for level in levels:
        assert np.array_equal(level, expected)
        expected = _box_halved(expected)


def test_a_level_that_fits_in_one_tile_is_the_last():
    # levels halve "until a level fits in one tile": one of exactly a tile's side fits
    assert PyramidSpec(1024, 512, tile=512).level_sizes == [(1024, 512), (512, 256)]
    assert PyramidSpec(512, 512, tile=512).level_sizes == [(512, 512)]
    assert PyramidSpec(513, 100, tile=512).level_sizes == [(513, 100), (257, 50)]


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
@pytest.mark.parametrize("layout", ["svs", "generic"])
def test_a_thin_outputs_levels_are_where_readers_place_them(tmp_path, backend, layout):
    """A 1034 x 18 output had levels of 259 x 5, 130 x 3 and 65 x 2 (128-px tiles), which
    OpenSlide and tiffslide read as downsamples 3.80, 6.98 and 12.45 for 4, 8 and 16: placed
    up to 14 of their pixels off. The pyramid stops before such a level; the svs thumbnail,
    no level, is still one tile, the box halving of the last level down to it."""
    rgb = he_image(1034, 18)
    _write(tmp_path / "out.tiff", rgb, layout=layout)
    with open_slide(tmp_path / "out.tiff", backend=backend) as s:
        dims = s.level_dimensions
        assert len(dims) > 1
        for level, ds in enumerate(s.level_downsamples):
            edge = max(dims[0]) * abs(1 / ds - 1 / 2 ** level)  # where it puts the far edge
            assert edge <= MISPLACEMENT_PX, (level, ds)
        ref = InMemorySlide(rgb, min_level_size=1)
        for level, (w, h) in enumerate(dims):
            assert np.array_equal(s.read_level(level, (0, 0), (w, h)),
                                  ref.read_level(level, (0, 0), (w, h))), level
        if layout == "svs":
            thumb = s.read_associated("thumbnail")
            assert max(thumb.shape[:2]) <= TILE
            expected = s.read_level(len(dims) - 1, (0, 0), dims[-1])
            while expected.shape[:2] != thumb.shape[:2]:
                expected = halve(expected)
            assert np.array_equal(thumb, expected)


def test_outputs_of_up_to_three_to_one_keep_every_halving_as_a_level():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        w = int(rng.integers(100, 200_000))
        h = int(w / rng.uniform(1, 3))
        w, h = (w, h) if rng.random() < 0.5 else (h, w)
        assert pyramid_sizes_to_fit(w, h, fit=512) == halvings_to_fit(w, h, fit=512), (w, h)


def test_a_fractional_magnification_and_an_uneven_pixel_are_written_as_they_are():
    # x3.3 of a 4x source is 13.2x: QuPath scales its views by the magnification, so neither
    # header may round it; the svs header has one MPP, the mean of x and y
    spec = PyramidSpec(1000, 800, mpp=(0.2, 0.3), objective_power=13.2)
    assert "|AppMag = 13.2|" in aperio_description(spec)
    assert "|MPP = 0.25" in aperio_description(spec)
    xml = ome_xml((1000, 800), mpp=(0.2, 0.3), objective_power=13.2).decode()
    assert 'NominalMagnification="13.2"' in xml
