"""Whole-slide inputs a lab may meet, made with tifffile: colour spaces tiffslide would pass on
raw, headers that promise more than the file holds, levels that are not one downsample,
implausible pixel sizes, DICOM inputs changed in place, outputs that would replace the input,
unreadable labels and tampered work folders. Each is a clear error or a warning, never wrong
pixels or a lost source."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

from iste.paths import check_not_input
from iste.refusals import FileSystemError
from iste.slides.formats import open_slide
from iste.slides.reader import SlideError

APERIO = ("Aperio Image Library v1.0\n{w}x{h} [0,0 {w}x{h}] (64x64) RAW|AppMag = 20|"
          "MPP = {mpp}")


def _tissue(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (h, w, 3), dtype=np.uint8)


def _svs(path, level0, *levels, mpp="0.5"):
    with tifffile.TiffWriter(path) as t:
        h, w = level0.shape[:2]
        t.write(level0, tile=(64, 64), photometric="rgb", metadata=None,
                description=APERIO.format(w=w, h=h, mpp=mpp))
        t.write(level0[::8, ::8].copy(), photometric="rgb", metadata=None,
                description="Aperio thumbnail")
        for level in levels:
            t.write(level, tile=(64, 64), photometric="rgb", metadata=None, subfiletype=0,
                    description="Aperio level")
    return path


def test_colour_spaces_tiffslide_reads_raw_are_read_by_openslide(tmp_path):
    # tiffslide passes the palette indices on as RGB; it refuses them and auto reads them
    # with OpenSlide (they were refused naming --backend openslide)
    index = np.zeros((128, 128), np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[0] = 65535  # every index red
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, index, tile=(64, 64), photometric="palette", colormap=colormap)
    with pytest.raises(SlideError, match="PALETTE.*--backend openslide"):
        open_slide(path, backend="tiffslide")
    for backend in ("auto", "openslide"):
        with open_slide(path, backend=backend) as slide:
            assert tuple(slide.read_level(0, (0, 0), (4, 4))[0, 0]) == (255, 0, 0)


def test_a_layout_tiffslide_cannot_read_is_read_by_openslide(tmp_path):
    tissue = _tissue(128, 128)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, tissue.transpose(2, 0, 1).copy(), tile=(64, 64),
                     photometric="rgb", planarconfig="separate")
    with pytest.raises(SlideError, match="--backend openslide may read it$"):
        open_slide(path, backend="tiffslide")
    with open_slide(path) as slide:
        assert (slide.read_level(0, (0, 0), (128, 128)) == tissue).all()


def test_a_header_that_declares_more_pixels_than_the_file_has_tiles_is_refused(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, _tissue(128, 128), tile=(64, 64), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(1_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(1_000_000)
    with pytest.raises(SlideError, match="holds 4 of the .* tiles"):
        open_slide(path)


def test_a_header_with_fewer_tile_byte_counts_than_tiles_is_refused(tmp_path):
    """TileByteCounts one short of TileOffsets: the slide opened, and a read of the last
    tile failed with tiffslide's "KeyError: '1.1.0'" (the missing count's index), in
    iste upscale's error and in each viewer tile's."""
    path = tmp_path / "counts.tif"
    tifffile.imwrite(path, _tissue(128, 128), tile=(64, 64), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["TileByteCounts"].overwrite(list(tif.pages[0].databytecounts)[:3])
    with pytest.raises(SlideError, match="holds 3 of the 4 tiles that size needs"):
        open_slide(path)


@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_compressed_tiles_marked_uncompressed_are_refused_not_read_as_pixels(tmp_path, backend):
    """JPEG tiles under Compression 1 (none): libtiff read each tile's bytes and those after
    it as pixels, and OpenSlide gave garbage without an error (iste upscale wrote it, exit
    0)."""
    path = tmp_path / "marked.tif"
    tifffile.imwrite(path, _tissue(128, 192), tile=(64, 64), photometric="rgb",
                     compression="jpeg")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(1)
    with pytest.raises(SlideError, match=r"uncompressed tile 0 of its 192 x 128 px image "
                                         r"holds \d+ bytes of the \d+ its pixels need"):
        open_slide(path, backend=backend)


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_a_tile_stored_with_no_bytes_is_named_not_called_a_truncated_copy(tmp_path, backend):
    """A whole file with an empty tile (read as black or transparent) was refused as a
    'truncated file (image data ends past byte N)': a user would copy it again, in vain."""
    path = tmp_path / "empty.tif"
    tifffile.imwrite(path, _tissue(128, 192), tile=(64, 64), photometric="rgb",
                     compression="jpeg")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        tif.pages[0].tags["TileByteCounts"].overwrite(counts[:4] + [0] + counts[5:])
    with pytest.raises(SlideError, match="no bytes, the first tile column 1 row 1") as caught:
        open_slide(path, backend=backend)
    assert "truncated" not in str(caught.value) and "1 of the 6 tiles" in str(caught.value)


def test_an_empty_tile_in_a_later_plane_of_a_stack_is_named(tmp_path):
    """tifffile gives a stack's planes after the first (a z-stack, an OME-TIFF) as TiffFrames,
    which have no ``imagewidth`` or ``is_tiled``: the check that names an empty tile failed on
    them, and the slide was refused as "corrupt or truncated TIFF ('TiffFrame' object has no
    attribute 'is_tiled')"."""
    path = tmp_path / "stack.ome.tif"
    planes = np.stack([_tissue(128, 192)] * 3)
    tifffile.imwrite(path, planes, tile=(64, 64), photometric="rgb", metadata={"axes": "ZYXS"})
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[1].databytecounts)
        tif.pages[1].tags["TileByteCounts"].overwrite(counts[:4] + [0] + counts[5:])
    with pytest.raises(SlideError, match="empty tiles .*no bytes, the first tile column 1 row 1"):
        open_slide(path)


def _pyramid(path):
    """A three-level tiled TIFF (tifffile writes each level's IFD after the levels before)."""
    with tifffile.TiffWriter(path) as t:
        for level in range(3):
            t.write(_tissue(256 >> level, 192 >> level), tile=(64, 64), photometric="rgb",
                    subfiletype=1 if level else 0, metadata=None)
    return path


def _link(path, index: int) -> int:
    """The byte at which IFD ``index`` of a (classic, little-endian) TIFF names the next."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[index].offset
    with open(path, "rb") as f:
        f.seek(offset)
        return offset + 2 + 12 * int.from_bytes(f.read(2), "little")


def test_a_chain_of_images_that_loops_is_refused_not_followed_for_ever(tmp_path):
    """A level whose IFD names itself as the next: tifffile's series followed the loop image
    by image for ever (it finds loops only where it walks the whole chain at once), and
    iste serve and iste upscale hung on the file, their memory growing."""
    from hostile_cases import deadline

    path = _pyramid(tmp_path / "loop.tif")
    with tifffile.TiffFile(path) as tif:
        level1 = tif.pages[1].offset
    data = bytearray(path.read_bytes())
    link = _link(path, 1)
    data[link:link + 4] = level1.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with deadline(30), pytest.raises(SlideError, match="chain of images loops: image 2"):
        open_slide(path)


def test_a_pyramid_cut_inside_its_chain_of_images_is_refused(tmp_path):
    """A copy cut short at the IFD of level 1 (its level 0 whole): tifffile logged the
    broken chain and read level 0 as the whole file, and the slide was served and upscaled
    without its lower levels, as if nothing were wrong."""
    path = _pyramid(tmp_path / "cut.tif")
    with tifffile.TiffFile(path) as tif:
        level1 = tif.pages[1].offset
    path.write_bytes(path.read_bytes()[:level1])
    with pytest.raises(SlideError, match=f"names the next at byte {level1}, past the file's "
                                         f"end \\(byte {level1}\\)"):
        open_slide(path)


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_a_tile_said_to_lie_at_byte_0_is_refused_not_read_black(tmp_path, backend):
    """A tile whose offset is 0 (where the TIFF header is) with its byte count intact:
    tifffile takes it for an empty tile and tiffslide read it black, without a word."""
    path = tmp_path / "at0.tif"
    tifffile.imwrite(path, _tissue(128, 192), tile=(64, 64), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        offsets = list(tif.pages[0].dataoffsets)
        tif.pages[0].tags["TileOffsets"].overwrite(offsets[:4] + [0] + offsets[5:])
    with pytest.raises(SlideError, match="empty tiles .*or at byte 0, the first tile column 1 "
                                         "row 1"):
        open_slide(path, backend=backend)


def _cut_tile_1_1(path):
    """A JPEG TIFF of 64 px tiles whose tile column 1 row 1 is cut to 2/3 of its bytes."""
    tifffile.imwrite(path, _tissue(128, 192), tile=(64, 64), photometric="rgb",
                     compression="jpeg")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        tif.pages[0].tags["TileByteCounts"].overwrite(
            counts[:4] + [counts[4] * 2 // 3] + counts[5:])
    return path


def test_a_read_that_fails_on_a_damaged_tile_names_the_tile(tmp_path):
    """OpenSlide refuses a tile cut short inside its scan: the error named only where the
    read began (x=0, y=0 for a whole-level read), not the tile to look at."""
    path = _cut_tile_1_1(tmp_path / "cut.tif")
    with open_slide(path, backend="openslide") as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SlideError, match=r"x=0, y=0\): .*\(damaged JPEG tile column 1 "
                                             r"row 1\)$"):
            slide.read_region((0, 0), 0, (192, 128))


def test_openslide_reads_on_after_a_damaged_tile(tmp_path):
    """An OpenSlide handle keeps its first error: after one damaged tile every read (and the
    slide's properties) failed with it, in a job and in the viewer. A second read of the
    damaged tile named it no more (the tile check names each tile once)."""
    from iste.slides.reader import UnreadableRegionError

    path = _cut_tile_1_1(tmp_path / "cut.tif")
    with open_slide(path, backend="openslide") as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            with pytest.raises(UnreadableRegionError, match=r"\(damaged JPEG tile column 1 "
                                                            r"row 1\)$") as caught:
                slide.read_level(0, (70, 70), (16, 16))
            assert caught.value.tiles == ((1, 1),) and caught.value.level == 0
            assert caught.value.box == (70, 70, 16, 16)
        assert slide.read_level(0, (0, 0), (64, 64)).std() > 0
        assert slide.files == (path,)


def test_a_level_that_is_not_one_downsample_is_refused(tmp_path):
    from iste.slides.job import SlideJob, make_plan

    img = _tissue(512, 512)
    path = _svs(tmp_path / "aspect.svs", img, img[::2, ::8].copy())
    with open_slide(path) as slide:
        make_plan(slide, SlideJob(scale=2.0, level=0, region=(0, 0, 64, 64)))
        with pytest.raises(SlideError, match="not the slide .* shrunk by one factor"):
            make_plan(slide, SlideJob(scale=2.0, level=1))



def test_a_level_that_is_not_one_downsample_is_never_read_for_a_zoomed_out_view(tmp_path):
    """Thumbnails (tissue detection) and the viewer's zoomed-out tiles read the coarsest
    level fine enough for them: a level 8 x 2 smaller (downsample 5) was read as if it were
    one 5 x smaller, and its stretched pixels were shown. Such a level is passed over for a
    finer one: the pixels of a file without it."""
    from iste.serve.catalog import serve_slide

    img = _tissue(512, 512)
    bad = _svs(tmp_path / "aspect.svs", img, img[::2, ::8].copy())
    good = _svs(tmp_path / "plain.svs", img)
    with open_slide(bad) as slide, open_slide(good) as plain:
        assert slide.level_count == 2 and "not the slide" in slide.level_mismatch(1)
        assert slide.best_level_for_downsample(8) == 0
        assert np.array_equal(slide.get_thumbnail((64, 64)), plain.get_thumbnail((64, 64)))
        served, reference = serve_slide(slide, "s"), serve_slide(plain, "p")
        for level in range(4, served.zoom.native_level):
            assert np.array_equal(served.render("scan", level, 0, 0),
                                  reference.render("scan", level, 0, 0))


def test_wsi_test_tiles_are_not_chosen_on_a_level_that_is_not_one_downsample(tmp_path):
    """iste eval --data wsi:SLIDE picks its tissue tiles on the slide's coarsest level: a
    transposed one put the tissue of the left half elsewhere, and glass tiles were chosen."""
    from iste.eval.datasets import open_test_set

    img = np.full((256, 512, 3), 255, np.uint8)
    img[:, :256] = _tissue(256, 256)
    path = _svs(tmp_path / "half.svs", img, img[::4, ::4].transpose(1, 0, 2).copy())
    tiles = open_test_set(f"wsi:{path}", tile=64, min_tissue=0.5)
    assert [t.name for t in tiles.images] == [f"half-x{x}-y{y}-s64" for y in range(0, 256, 64)
                                              for x in range(0, 256, 64)]

@pytest.mark.parametrize("mpp", ["1e-300", "1e300"])
def test_an_implausible_pixel_size_is_taken_as_unknown(tmp_path, mpp):
    path = _svs(tmp_path / "mpp.svs", _tissue(128, 128), mpp=mpp)
    with pytest.warns(UserWarning, match="no pixel size a microscope gives"):
        with open_slide(path) as slide:
            assert slide.mpp is None


def test_an_output_folder_holding_the_input_is_refused(tmp_path):
    (tmp_path / "slides").mkdir()
    source = tmp_path / "slides" / "a.tif"
    source.write_bytes(b"x")
    with pytest.raises(FileSystemError, match="holds the input"):
        check_not_input(tmp_path / "slides", source)
    check_not_input(tmp_path / "elsewhere", source)  # a new folder is fine


def test_a_dicom_output_folder_with_other_files_is_not_replaced(tmp_path):
    from iste.slides.dicom import check_output_folder

    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "a.dcm").write_bytes(b"x")
    check_output_folder(tmp_path / "series")
    (tmp_path / "series" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not DICOM .*notes.txt"):
        check_output_folder(tmp_path / "series")


def test_an_unreadable_label_is_left_out_with_a_warning():
    from iste.slides.pipeline import _readable_associated

    class Slide:
        associated_images = ("label", "macro")

        def read_associated(self, name):
            if name == "label":
                raise SlideError("label: uint16 samples are not supported")
            return np.zeros((4, 4, 3), np.uint8)

    with pytest.warns(UserWarning, match="label image cannot be read"):
        kept = list(_readable_associated(Slide()))
    assert [name for name, _ in kept] == ["macro"]


def test_a_work_folder_with_a_file_for_its_tiles_folder_is_one_clear_error(tmp_path):
    from iste.slides.workdir import WorkDir, WorkDirTrustError

    with WorkDir(tmp_path / "w", {"a": 1}) as wd:
        wd.put(0, 0, b"tile")
    (tmp_path / "w" / "tiles" / "0" / "0").unlink()
    (tmp_path / "w" / "tiles" / "0").rmdir()
    (tmp_path / "w" / "tiles").rmdir()
    (tmp_path / "w" / "tiles").write_text("not a folder")
    with pytest.raises(WorkDirTrustError, match="cannot be used: .*remove it and rerun"):
        with WorkDir(tmp_path / "w", {"a": 1}):
            pass


def test_an_ome_tiff_pixel_size_is_read_from_its_ome_xml(tmp_path):
    img = _tissue(128, 128)
    # Å, pm and inches (the OME schema's UnitsLength) were dropped without a word
    for unit, size, expected in (("µm", 0.5, 0.5), ("nm", 0.5, 0.0005), ("Å", 5000, 0.5),
                                 ("pm", 5e5, 0.5), ("in", 1e-5, 0.254)):
        path = tmp_path / f"ome-{unit.encode().hex()}.ome.tif"
        tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb",
                         metadata={"PhysicalSizeX": size, "PhysicalSizeY": size,
                                   "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit})
        with open_slide(path) as slide:
            assert slide.mpp == pytest.approx((expected, expected))
    path = tmp_path / "pixel.ome.tif"
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb",
                     metadata={"PhysicalSizeX": 1, "PhysicalSizeY": 1,
                               "PhysicalSizeXUnit": "pixel", "PhysicalSizeYUnit": "pixel"})
    with pytest.warns(UserWarning, match="pixel size in 'pixel'.*taken as unknown"):
        with open_slide(path) as slide:
            assert slide.mpp is None


@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_an_ome_tiffs_ome_xml_pixel_size_wins_over_its_resolution_tags(tmp_path, backend):
    # a writer's default resolution tags (72 dpi) beside the OME-XML's 0.25 um: Bio-Formats
    # (QuPath) reads the OME-XML alone; iste took the tags, 352.8 um, and wrote x2 of the
    # slide as 176 um pixels
    path = tmp_path / "dpi.ome.tif"
    tifffile.imwrite(path, _tissue(128, 128), tile=(64, 64), photometric="rgb",
                     resolution=(72, 72), resolutionunit="INCH",
                     metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.2})
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp == pytest.approx((0.25, 0.2))


def test_a_label_and_macro_named_as_bio_formats_names_them_are_the_label_and_macro(tmp_path):
    # an OME-TIFF converted by Bio-Formats (bfconvert, raw2ometiff) names a scan's label and
    # macro "label image" and "macro image" (a DICOM slide's "LABEL", "OVERVIEW"); tiffslide
    # passed those names on, and iste upscale left both out of its output without a word
    label, macro = _tissue(40, 60), _tissue(30, 90)
    for names in (("label image", "macro image"), ("LABEL", "OVERVIEW")):
        path = tmp_path / f"{names[0].replace(' ', '_')}.ome.tif"
        with tifffile.TiffWriter(path, ome=True) as tif:
            tif.write(_tissue(128, 128), tile=(64, 64), photometric="rgb",
                      metadata={"Name": "scan", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
            for name, rgb in zip(names, (label, macro)):
                tif.write(rgb, photometric="rgb", metadata={"Name": name})
        with open_slide(path) as slide:
            assert slide.associated_images == ("label", "macro")
            assert np.array_equal(slide.read_associated("label"), label)
            assert np.array_equal(slide.read_associated("macro"), macro)


def test_a_mirax_slides_identity_holds_its_data_folder(tmp_path):
    # a .mrxs file is an index; its pixels are in the folder of its name (Data*.dat): a job
    # resumed after those were rewritten must not take the old tiles (no MIRAX sample is at
    # hand, so the reader is made around a stand-in for OpenSlide's handle)
    from types import SimpleNamespace

    from iste.slides.openslide_reader import OpenSlideReader

    index = tmp_path / "slide.mrxs"
    index.write_text("[GENERAL]\n")
    (tmp_path / "slide").mkdir()
    for name in ("Slidedat.ini", "Index.dat", "Data0000.dat"):
        (tmp_path / "slide" / name).write_bytes(b"x")
    reader = object.__new__(OpenSlideReader)
    reader.path = index
    reader._slide = SimpleNamespace(properties={"openslide.vendor": "mirax"})
    assert [p.name for p in reader.files] == ["slide.mrxs", "Data0000.dat", "Index.dat",
                                              "Slidedat.ini"]
    reader._slide = SimpleNamespace(properties={"openslide.vendor": "aperio"})
    assert reader.files == (index,)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_samples_other_than_8_bit_are_refused_when_the_slide_opens(tmp_path, dtype, capsys):
    from iste.cli.main import main

    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, np.ones((128, 128, 3), dtype), tile=(64, 64), photometric="rgb")
    with pytest.raises(SlideError, match=f"{np.dtype(dtype)} samples are not supported"
                       r".*convert it to 8 bits per sample first, scaling by its real range"):
        open_slide(path)  # what to do said, as for a plain image (until session 38: nothing)
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    # the slide is refused before the model loads (the model here would fail to load)
    assert main(["upscale", str(path), "-s", "2", "-o", str(tmp_path / "out.tiff"),
                 "--model", str(tmp_path / "bad.safetensors")]) == 2
    assert "samples are not supported" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["slide", "image"])
def test_a_cohort_item_whose_longest_name_would_not_fit_is_refused_before_the_model(
        tmp_path, capsys, kind):
    """A cohort item's work folder (a slide) or provenance sidecar (an image) too long for
    its folder was an item's error once the model had loaded; now the cohort is refused up
    front (the model here would fail to load), naming the item, nothing written."""
    from iste.cli.main import main
    from iste.data.imagewrite import write_image
    from iste.slides.workdir import SUFFIX

    folder = tmp_path / "cohort"
    folder.mkdir()
    rgb = np.full((128, 128, 3), 200, np.uint8)
    tifffile.imwrite(folder / "a.tif", rgb, tile=(64, 64), photometric="rgb")
    if kind == "slide":  # the name fits; with SUFFIX it does not
        long = folder / ("L" * (255 - len(".tiff") - len(SUFFIX) + 1) + ".tiff")
        tifffile.imwrite(long, rgb, tile=(64, 64), photometric="rgb")
    else:  # the name fits; with .json it does not
        long = folder / ("L" * (255 - len(".png") - len(".json") + 1) + ".png")
        write_image(long, rgb)
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    assert main(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"),
                 "--model", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(long) in err and "longer than" in err and len(err.splitlines()) == 1, err
    assert ("the work folder of" if kind == "slide" else "the provenance sidecar of") in err
    assert not (tmp_path / "out").exists()


def test_an_output_name_whose_work_folder_would_not_fit_is_refused_before_the_model(
        tmp_path, capsys):
    from iste.cli.main import main
    from iste.slides.workdir import SUFFIX

    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((128, 128, 3), 200, np.uint8), tile=(64, 64),
                     photometric="rgb")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    out = tmp_path / ("L" * (255 - len(".tiff") - len(SUFFIX) + 1) + ".tiff")  # fits; +SUFFIX not
    assert main(["upscale", str(path), "-s", "2", "-o", str(out),
                 "--model", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the work folder of" in err and "longer than" in err and len(err.splitlines()) == 1
    # an output name itself too long was a bare 'File name too long: OUT' (Path.is_dir)
    for layout in ("svs", "dicom"):
        assert main(["upscale", str(path), "-s", "2", "-o", str(tmp_path / ("L" * 256)),
                     "--format", layout, "--model", str(tmp_path / "bad.safetensors")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("L: its name is longer than the 255 bytes the file system allows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "in.tif"]


@pytest.mark.parametrize("stream, tagged", [("RGB", "YCbCr"), ("YCbCr", "RGB")])
def test_jpeg_tiles_whose_colour_contradicts_the_tiff_are_not_read_wrong_by_openslide(
        tmp_path, stream, tagged):
    """JPEG tiles whose stream says RGB (Adobe transform 0) in a TIFF whose
    PhotometricInterpretation says YCbCr, or YCbCr (JFIF) in one tagged RGB: libtiff goes
    by the tag, so --backend openslide read them some 190 (120) levels off without a word.
    tiffslide follows the stream and reads them right; OpenSlide refuses them naming it."""
    import imagecodecs

    tissue = _tissue(128, 128)
    colour = {"colorspace": "RGB", "outcolorspace": "RGB"} if stream == "RGB" else {}
    tiles = [imagecodecs.jpeg8_encode(tissue[r:r + 64, c:c + 64].copy(), level=90,
                                      subsampling="444", **colour)
             for r in (0, 64) for c in (0, 64)]
    decoded = [imagecodecs.jpeg8_decode(t) for t in tiles]  # libjpeg, by the stream's markers
    expected = np.concatenate([np.concatenate(decoded[:2], 1), np.concatenate(decoded[2:], 1)])
    path = tmp_path / "clash.tif"
    with tifffile.TiffWriter(path) as t:
        t.write(iter(tiles), shape=tissue.shape, dtype=np.uint8, tile=(64, 64),
                compression=7, photometric="ycbcr", subsampling=(1, 1), metadata=None)
    with tifffile.TiffFile(path, mode="r+b") as tif:  # tifffile tags JPEG tiles YCbCr
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(6 if tagged == "YCbCr" else 2)
    with pytest.raises(SlideError, match=f"tiles say {stream} in a TIFF tagged {tagged}.*"
                                         "--backend tiffslide reads it$"):
        open_slide(path, backend="openslide")
    with open_slide(path) as slide:
        assert (slide.read_level(0, (0, 0), (128, 128)) == expected).all()


@pytest.mark.parametrize("tiled", [True, False])
def test_a_slide_whose_stored_tile_would_not_decode_in_memory_is_refused_at_open(
        tmp_path, monkeypatch, tiled):
    # a TIFF whose one tile claimed 65536 x 65536 px with 600 bytes of JPEG in it was decoded
    # to 12 GiB at the job's first read: "cannot read ... (level 0, x=0, y=0): Unable to
    # allocate 12.0 GiB ...: rerun with --unreadable-tiles fill", or the machine's memory taken
    import iste.data.memory as memory
    from iste.data.imageformats import DECODE_BYTES

    path = tmp_path / "slide.tif"
    layout = {"tile": (64, 128)} if tiled else {"rowsperstrip": 64}
    tifffile.imwrite(path, _tissue(192, 128), photometric="rgb", **layout)
    monkeypatch.setattr(memory, "host_memory_available", lambda: 64 * 128 * DECODE_BYTES - 1)
    kind = "tile" if tiled else "strip"
    for backend in ("tiffslide", "openslide"):
        with pytest.raises(SlideError, match=rf"^cannot open slide {path}: a {kind} of level 0 "
                                             r"is 128 x 64 px; decoding 128 x 64 px takes "
                                             r"about [0-9.e-]+ GiB; [0-9.e-]+ GiB are "
                                             r"available$"):
            open_slide(path, backend=backend)
    monkeypatch.setattr(memory, "host_memory_available", lambda: 64 * 128 * DECODE_BYTES)
    with open_slide(path) as slide:
        assert slide.dimensions == (128, 192)
