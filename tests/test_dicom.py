"""DICOM WSI input and output: a small DICOM WSI made here from the sample slide."""

import os

import numpy as np
import pytest

from iste.cli.main import main
from iste.data.samples import sample_path
from iste.models.checkpoint import save_model
from iste.models.registry import build_model
from iste.slides.dicom import write_dicom
from iste.slides.formats import is_slide, open_slide
from iste.slides.reader import SlideError
from iste.slides.writer import PyramidSpec, TileCodec
from model_zoo import tiny_config

TILE = 128


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory):
    """A 384 x 256 region of the CMU sample (0.499 mpp, 20x, its label) as a DICOM WSI."""
    with open_slide(sample_path("cmu-svs")) as src:
        rgb = src.read_region((900, 1400), 0, (384, 256))
        label, power, mpp = src.read_associated("label"), src.objective_power, src.mpp
    codec = TileCodec("jpeg", TILE, 95)
    spec = PyramidSpec(384, 256, tile=TILE, mpp=mpp, codec="jpeg", quality=95,
                       layout="dicom", objective_power=power, associated=(("label", label),))
    folder = tmp_path_factory.mktemp("dcm") / "cmu_dicom"
    write_dicom(folder, spec, lambda r, c: codec.encode(
        rgb[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]))
    return folder, rgb


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_model(build_model(tiny_config("liif")),
                      tmp_path_factory.mktemp("m") / "tiny.safetensors")


def _changed_copy(dicom_slide, folder, change):
    """A copy of the fixture slide in the new folder ``folder``, each instance read with
    pydicom and passed to ``change(ds)`` before it is saved: ``change`` alters ``ds`` in
    place, or returns False to leave the instance out. Returns ``folder``."""
    import pydicom

    source, _ = dicom_slide
    folder.mkdir()
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if change(ds) is not False:
            ds.save_as(folder / path.name, enforce_file_format=True)
    return folder


def test_dicom_folder_and_file_open_through_open_slide(dicom_slide):
    folder, rgb = dicom_slide
    assert is_slide(folder)
    files = sorted(folder.glob("*.dcm"))
    for path, backend in [(folder, "auto"), (folder, "openslide"), (files[0], "auto")]:
        with open_slide(path, backend=backend) as s:
            assert s.dimensions == (384, 256) and s.level_count >= 2
            assert s.mpp == pytest.approx((0.499, 0.499))
            assert s.objective_power == pytest.approx(20)
            assert "label" in s.associated_images
            got = s.read_region((0, 0), 0, (384, 256))
            assert np.abs(got.astype(int) - rgb).mean() < 3  # RGB JPEG q95: ~2 levels


def test_the_label_is_written_with_the_colour_detail_of_the_slide(dicom_slide):
    """wsidicom wrote the label (and overview) as YBR_FULL_422 JPEG at its own quality: the
    CMU label's barcode and text edges came back up to 119 levels off (mean 3.6), where the
    volume keeps every colour sample at the job's quality; all three readers agreed on it."""
    import openslide

    folder, _ = dicom_slide
    with open_slide(sample_path("cmu-svs")) as src:
        label = src.read_associated("label").astype(int)
    with open_slide(folder) as a:
        seen = a.read_associated("label")
    os_label = openslide.OpenSlide(str(sorted(folder.glob("*.dcm"))[0])).associated_images
    assert np.array_equal(np.asarray(os_label["label"].convert("RGB")), seen)
    err = np.abs(seen.astype(int) - label)
    assert err.max() <= 32 and err.mean() < 1.5, (err.max(), err.mean())


def test_upscale_dicom_to_svs_and_to_dicom(dicom_slide, tiny_ckpt, tmp_path):
    folder, _ = dicom_slide
    out = tmp_path / "x2.tiff"
    assert main(["upscale", str(folder), "-s", "2", "-o", str(out), "--model", str(tiny_ckpt),
                 "--tile", "128", "-q"]) == 0
    with open_slide(out, backend="openslide") as s:
        assert s.dimensions == (768, 512) and s.mpp == pytest.approx((0.2495, 0.2495))
        assert s.objective_power == pytest.approx(40)
    dcm = tmp_path / "x2_dicom"
    assert main(["upscale", str(folder), "-s", "2", "-o", str(dcm), "--format", "dicom",
                 "--model", str(tiny_ckpt), "--tile", "128", "-q"]) == 0
    with open_slide(dcm) as a, open_slide(out) as b:
        assert a.dimensions == (768, 512) and a.mpp == pytest.approx((0.2495, 0.2495))
        diff = np.abs(a.read_region((0, 0), 0, (256, 256)).astype(int)
                      - b.read_region((0, 0), 0, (256, 256)))
        assert diff.mean() < 3  # the same SR pixels, JPEG-encoded twice
    import pydicom

    instances = [pydicom.dcmread(f, stop_before_pixels=True) for f in dcm.glob("*.dcm")]
    volumes = [d for d in instances if d.ImageType[2] == "VOLUME"]
    assert volumes and "LABEL" in {d.ImageType[2] for d in instances}
    for d in instances:  # the label too (wsidicom's default for it is 1970-01-01)
        assert d.AcquisitionDateTime == volumes[0].AcquisitionDateTime
    for d in volumes:  # a lossy, computed image, as archives and viewers must be told
        assert d.ImageType[0] == "DERIVED" and d.LossyImageCompression == "01"
        frame_type = d.SharedFunctionalGroupsSequence[0] \
            .WholeSlideMicroscopyImageFrameTypeSequence[0].FrameType
        assert list(frame_type) == list(d.ImageType)  # DICOM asks the two to agree
        # levels made by downsampling level 0 say so (wsidicom wrote NONE in every level)
        assert d.ImageType[3] == ("NONE" if d.TotalPixelMatrixColumns == 768 else "RESAMPLED")
        assert d.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(d.LossyImageCompressionRatio) > 1
        assert not d.AcquisitionDateTime.startswith("1970")
    # an existing DICOM output is not silently replaced
    assert main(["upscale", str(folder), "-s", "2", "-o", str(dcm), "--format", "dicom",
                 "--model", str(tiny_ckpt), "-q"]) == 2


def test_a_dicom_output_of_a_dicom_source_is_a_new_series_of_its_study_and_patient(
        dicom_slide, tiny_ckpt, tmp_path):
    # it had a new study and an empty patient: an archive filed it apart from its source
    import pydicom

    folder, _ = dicom_slide
    source = tmp_path / "named"
    source.mkdir()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Doe^Jane", "P-0042", "A-77"
        ds.StudyID, ds.SeriesNumber = "S-9", 3
        ds.save_as(source / path.name)
    out = tmp_path / "out_dicom"
    assert main(["upscale", str(source), "-s", "2", "-o", str(out), "--format", "dicom",
                 "--model", str(tiny_ckpt), "--tile", "128", "-q"]) == 0
    src = pydicom.dcmread(next(source.glob("*.dcm")), stop_before_pixels=True)
    made = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.glob("*.dcm")]
    for d in made:
        assert d.StudyInstanceUID == src.StudyInstanceUID and d.StudyID == "S-9"
        assert (str(d.PatientName), d.PatientID, d.AccessionNumber) == (
            "Doe^Jane", "P-0042", "A-77")
        assert d.SeriesInstanceUID != src.SeriesInstanceUID and d.SeriesNumber == 4
        assert d.ContainerIdentifier == src.ContainerIdentifier  # the same glass slide
    svs = tmp_path / "from_svs_dicom"  # a source that is no DICOM: a study of its own
    assert main(["upscale", str(source), "-s", "2", "-o", str(tmp_path / "x.tiff"),
                 "--model", str(tiny_ckpt), "--tile", "128", "-q"]) == 0
    assert main(["upscale", str(tmp_path / "x.tiff"), "-s", "1.5", "-o", str(svs),
                 "--format", "dicom", "--model", str(tiny_ckpt), "--tile", "128", "-q"]) == 0
    other = pydicom.dcmread(next(svs.glob("*.dcm")), stop_before_pixels=True)
    assert other.StudyInstanceUID != src.StudyInstanceUID and other.PatientID == ""
    assert "SourceImageSequence" not in other  # no DICOM instances to name


def test_a_dicom_output_names_the_source_instances_it_was_made_from(dicom_slide, tiny_ckpt,
                                                                     tmp_path):
    """Every volume level of a DICOM output of a DICOM source references the source's
    instances of the level read (Source Image Sequence, purpose 121322): it had none."""
    import pydicom

    folder, _ = dicom_slide
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    by_width = {d.TotalPixelMatrixColumns: d for d in source if d.ImageType[2] == "VOLUME"}
    for level, width in [(0, 384), (1, 192)]:
        out = tmp_path / f"from_level_{level}"
        assert main(["upscale", str(folder), "-s", "2", "--level", str(level), "-o", str(out),
                     "--format", "dicom", "--model", str(tiny_ckpt), "--tile", "128",
                     "-q"]) == 0
        made = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.glob("*.dcm")]
        volumes = [d for d in made if d.ImageType[2] == "VOLUME"]
        assert volumes
        for d in volumes:
            ref, = d.SourceImageSequence
            assert ref.ReferencedSOPInstanceUID == by_width[width].SOPInstanceUID
            assert ref.ReferencedSOPClassUID == by_width[width].SOPClassUID
            assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert all("SourceImageSequence" not in d for d in made if d not in volumes)


def test_a_dicom_output_of_a_region_says_which_level_and_region(dicom_slide, tiny_ckpt,
                                                                  tmp_path):
    """Its provenance text (Contribution Description, Image Comments) named the source and the
    model but not the level and region the pixels came from."""
    import pydicom

    folder, _ = dicom_slide
    out = tmp_path / "region_dicom"
    assert main(["upscale", str(folder), "-s", "2", "--region", "100,60,200,120", "-o",
                 str(out), "--format", "dicom", "--model", str(tiny_ckpt), "--tile", "128",
                 "-q"]) == 0
    made = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.glob("*.dcm")]
    volumes = [d for d in made if d.ImageType[2] == "VOLUME"]
    assert volumes
    for d in volumes:
        for text in (d.ContributingEquipmentSequence[0].ContributionDescription,
                     d.ImageComments):
            assert "| level 0 | region 100,60,200,120 |" in text and len(text) <= 1024


def test_a_dicom_output_of_a_dicom_region_lies_where_the_region_does_on_the_slide(
        dicom_slide, tiny_ckpt, tmp_path):
    """It had a frame of reference of its own and wsidicom's default origin: a viewer could
    not place it over the slide it came from. Now it shares the source's frame of reference,
    its origin the region's top-left corner in slide coordinates (the source's origin moved
    along the source's Image Orientation (Slide) by the region's offset)."""
    import pydicom

    folder, _ = dicom_slide
    out = tmp_path / "region_dicom"
    assert main(["upscale", str(folder), "-s", "2", "--level", "1", "--region",
                 "100,60,200,120", "-o", str(out), "--format", "dicom", "--model",
                 str(tiny_ckpt), "--tile", "128", "-q"]) == 0
    src = next(d for d in (pydicom.dcmread(p, stop_before_pixels=True)
                           for p in folder.glob("*.dcm")) if d.ImageType[2] == "VOLUME")
    made = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.glob("*.dcm")]
    volumes = [d for d in made if d.ImageType[2] == "VOLUME"]
    mm = 0.499 / 1000  # the fixture's level-0 pixel size; the region is in level-0 pixels
    o = src.TotalPixelMatrixOriginSequence[0]
    along_row = np.array(src.ImageOrientationSlide[:3], float)  # as columns increase
    along_col = np.array(src.ImageOrientationSlide[3:], float)  # as rows increase
    want = (np.array([o.XOffsetInSlideCoordinateSystem, o.YOffsetInSlideCoordinateSystem, 0],
                     float) + 100 * mm * along_row + 60 * mm * along_col)
    assert volumes
    for d in volumes:
        assert d.FrameOfReferenceUID == src.FrameOfReferenceUID
        got = d.TotalPixelMatrixOriginSequence[0]
        assert float(got.XOffsetInSlideCoordinateSystem) == pytest.approx(want[0], abs=1e-6)
        assert float(got.YOffsetInSlideCoordinateSystem) == pytest.approx(want[1], abs=1e-6)
        assert list(d.ImageOrientationSlide) == list(src.ImageOrientationSlide)


def test_overwrite_replaces_a_dicom_output_only_once_the_new_one_is_complete(
        dicom_slide, tiny_ckpt, tmp_path, monkeypatch):
    import wsidicom

    folder, _ = dicom_slide
    dcm = tmp_path / "out_dicom"
    args = [str(folder), "-o", str(dcm), "--format", "dicom", "--model", str(tiny_ckpt),
            "--tile", "128", "-q"]
    assert main(["upscale", *args, "-s", "2"]) == 0
    before = {p.name: p.read_bytes() for p in dcm.iterdir()}

    def fail_half_way(self, output_path, *a, **k):
        (output_path / "partial.dcm").write_bytes(b"half a series")
        raise ValueError("injected failure while writing the series")

    with monkeypatch.context() as m:
        m.setattr(wsidicom.WsiDicom, "save", fail_half_way)
        assert main(["upscale", *args, "-s", "1.5", "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in dcm.iterdir()} == before  # the old output stays
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out_dicom")] == []

    assert main(["upscale", *args, "-s", "1.5", "--overwrite"]) == 0
    with open_slide(dcm) as s:
        assert s.dimensions == (576, 384)
    assert not set(before) & {p.name for p in dcm.iterdir()}  # no file of the old series left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_dicom"]  # nor any temporary


def test_a_folder_of_two_dicom_slides_is_refused_naming_both(dicom_slide, tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    from iste.slides.reader import SlideError

    folder, _ = dicom_slide
    both = tmp_path / "both"
    both.mkdir()
    other_series = generate_uid()
    for path in sorted(folder.glob("*.dcm")):
        (both / path.name).write_bytes(path.read_bytes())
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = other_series, generate_uid()
        ds.save_as(both / f"other-{path.name}")
    for backend in ("auto", "openslide"):  # OpenSlide read the first file's, silently
        with pytest.raises(SlideError, match="holds 2 DICOM series"):
            open_slide(both, backend=backend)
    with open_slide(both / sorted(p.name for p in folder.glob("*.dcm"))[0]) as one:
        assert one.dimensions == (384, 256)  # one of its files: that file's series


def test_a_folder_of_slides_holding_a_dicom_file_is_neither_one_slide_nor_a_cohort(
        dicom_slide, tiny_ckpt, tmp_path, capsys):
    # a DICOM file beside a folder of slides made the folder one DICOM slide: a folder run
    # stopped on 'slide output must end in .tif ...', and with -o x.tiff the DICOM file's
    # series was written and the folder's other slides left out, exit code 0
    import shutil

    from iste.slides.formats import is_dicom
    from iste.slides.reader import SlideError

    folder, _ = dicom_slide
    cohort = tmp_path / "cohort"
    shutil.copytree(folder, cohort / "series")
    shutil.copy(sorted(folder.glob("*.dcm"))[0], cohort / "stray.dcm")
    (cohort / "notes.txt").write_text("a lab's notes")
    with pytest.raises(SlideError, match=r"holds DICOM files \(stray.dcm\) beside other "
                       r"slides \(series\)"):
        is_dicom(cohort)
    assert is_dicom(cohort / "series") and is_dicom(cohort / "stray.dcm")
    for out in ("out", "x.tiff"):
        assert main(["upscale", str(cohort), "-s", "2", "-o", str(tmp_path / out), "--model",
                     str(tiny_ckpt), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "move the DICOM files into a folder of their own" in err[0]
        assert not (tmp_path / out).exists()
    (cohort / "stray.dcm").unlink()
    assert not is_dicom(cohort)


def test_a_folder_without_dicom_files_is_told_without_reading_its_folders_files(
        tmp_path, monkeypatch):
    # the check for DICOM files beside other slides opened every file of every subfolder of
    # any folder listed, DICOM files or not: a cohort holding a folder of 30 folders of
    # 12 000 files in all took 0.11 s per listing instead of 0.2 ms (on local disk)
    from iste.slides import formats

    for name in ("a.tiff", "work/t1/0.png", "work/t1/1.png", "work/t2/0.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    looked = []
    real = formats._is_dicom_file
    monkeypatch.setattr(formats, "_is_dicom_file", lambda p: looked.append(p.name) or real(p))
    assert not formats.is_dicom(tmp_path) and not formats.is_dicom(tmp_path / "work")
    assert looked == ["a.tiff"]


def test_an_output_inside_a_dicom_slides_folder_is_refused(dicom_slide, tiny_ckpt, tmp_path,
                                                           capsys):
    # a folder run with -o the DICOM slide's own folder (or a folder in it), and one slide
    # with -o a file in it, wrote the outputs among the slide's instances
    import shutil

    folder, _ = dicom_slide
    cohort = tmp_path / "cohort"
    series = cohort / "series"
    shutil.copytree(folder, series)
    before = sorted(p.name for p in series.iterdir())
    for src, out in ((cohort, series), (cohort, series / "sub"), (series, series / "x.tiff"),
                     (series, series / "sub" / "x.tiff")):
        assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--model",
                     str(tiny_ckpt), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(series) in err[0] and "choose another" in err[0], err
        assert sorted(p.name for p in series.iterdir()) == before


def test_openslide_opens_a_dicom_folder_through_a_dicom_file(dicom_slide, tmp_path):
    # it took the first file named .dcm: a stray non-DICOM one, or none (names without it)
    folder, rgb = dicom_slide
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, path in enumerate(sorted(folder.glob("*.dcm"))):
        (plain / f"IM{i:04d}").write_bytes(path.read_bytes())
    (plain / "0-notes.dcm").write_text("not DICOM")
    with open_slide(plain, backend="openslide") as s:
        assert s.dimensions == (384, 256)
        assert np.abs(s.read_region((0, 0), 0, (384, 256)).astype(int) - rgb).mean() < 3


def test_a_folder_holding_one_instance_twice_names_the_copies(dicom_slide, tmp_path):
    from iste.slides.reader import SlideError

    folder, _ = dicom_slide
    copy = tmp_path / "copy"
    copy.mkdir()
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "zz-copy.dcm").write_bytes(files[0].read_bytes())
    with pytest.raises(SlideError, match=f"{files[0].name} and zz-copy.dcm are the same"):
        open_slide(copy)


def test_a_dicom_input_rewritten_in_place_changes_the_job_identity(dicom_slide, tmp_path):
    import shutil

    from iste.slides.pipeline import input_identity

    folder = tmp_path / "copy"
    shutil.copytree(dicom_slide[0], folder)
    files = sorted(folder.glob("*.dcm"))
    with open_slide(folder) as slide:
        before = input_identity(slide)
    assert [name for name, *_ in before["files"]] == [p.name for p in files]
    for backend in ("wsidicom", "openslide"):  # one instance is read with its whole series
        with open_slide(files[0], backend=backend) as slide:
            assert input_identity(slide)["files"] == before["files"]
    stat = files[-1].stat()
    data = bytearray(files[-1].read_bytes())
    data[-1] ^= 1  # same size, rewritten in place
    files[-1].write_bytes(bytes(data))
    os.utime(files[-1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with open_slide(folder) as slide:
        assert input_identity(slide) != before


def test_a_dicom_slide_with_16_bit_samples_is_refused_when_it_opens(dicom_slide, tmp_path,
                                                                     capsys):
    # wsidicom opens 16-bit grey; the slide was refused at its first tile, after the model
    from pydicom.uid import ExplicitVRLittleEndian

    from iste.slides.reader import SlideError

    def to_16_bit(ds):
        if "NumberOfFrames" in ds and ds.ImageType[2] in ("VOLUME", "THUMBNAIL"):
            frames, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.LossyImageCompression = "00"
            for name in ("PlanarConfiguration", "LossyImageCompressionRatio",
                         "LossyImageCompressionMethod"):
                if name in ds:
                    delattr(ds, name)
            ds.PixelData = np.full((frames, rows, cols), 1000, np.uint16).tobytes()
            ds["PixelData"].VR = "OW"

    deep = _changed_copy(dicom_slide, tmp_path / "deep", to_16_bit)
    with pytest.raises(SlideError, match="16-bit samples are not supported"):
        open_slide(deep, backend="wsidicom")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    # the slide is refused before the model loads (the model here would fail to load)
    assert main(["upscale", str(deep), "-s", "2", "-o", str(tmp_path / "out.tiff"),
                 "--model", str(tmp_path / "bad.safetensors")]) == 2
    assert "16-bit samples are not supported" in capsys.readouterr().err


def _black_copy(ds, path_id):
    """A copy of volume instance ``ds`` (pydicom) on optical path ``path_id``, its frames
    black (a fluorescence channel, say)."""
    import copy as copying
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    copy = copying.deepcopy(ds)
    frame = io.BytesIO()
    Image.new("RGB", (int(ds.Columns), int(ds.Rows))).save(frame, "JPEG")
    copy.PixelData = encapsulate([frame.getvalue()] * int(ds.NumberOfFrames))
    copy.PhotometricInterpretation = "YBR_FULL_422"
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.OpticalPathSequence[0].OpticalPathIdentifier = path_id
    return copy


def test_every_level_is_read_from_one_optical_path_which_a_warning_names(dicom_slide,
                                                                          tmp_path):
    # wsidicom defaults each level to the instance it lists first: level 0 could come from
    # one optical path and level 1 (the thumbnail, tissue detection, --level 1) from another
    import pydicom

    folder, _ = dicom_slide
    paths = tmp_path / "paths"
    paths.mkdir()
    volumes = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.ImageType[2] == "VOLUME":
            volumes.append(ds)
    volumes.sort(key=lambda ds: -int(ds.TotalPixelMatrixColumns))
    assert len(volumes) == 3
    level0, level1, level2 = volumes
    # level 0 on both paths, level 1 on path 2 only, level 2 on path 1 only
    for i, ds in enumerate([level0, _black_copy(level0, "2"), _black_copy(level1, "2"),
                            level2]):
        ds.save_as(paths / f"i{i}.dcm", enforce_file_format=True)
    with pytest.warns(UserWarning, match=r"2 optical paths \(1, 2\); iste reads optical path"):
        slide = open_slide(paths)
    with slide:
        assert slide.level_count == 2  # the level without the path read is left out
        means = [slide.read_region((0, 0), lv, slide.level_dimensions[lv]).mean()
                 for lv in range(slide.level_count)]
        assert max(means) - min(means) < 20, means  # one path: all tissue or all black


def _without_imaged_volume(ds):
    del ds.ImagedVolumeWidth


def _without_pixel_spacing(ds):
    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence


def _as_palette(ds):
    ds.PhotometricInterpretation = "PALETTE COLOR"


def _uncompressed(ds, *, colour="RGB", planar=0):
    """Volume ``ds`` with its frames stored uncompressed (Explicit VR Little Endian), as
    ``colour`` (RGB, YBR_FULL), pixel by pixel (``planar`` 0) or plane by plane (1)."""
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian

    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns), 3)
    if colour != "RGB":
        frames = convert_color_space(frames, "RGB", colour)
    if planar:
        frames = frames.transpose(0, 3, 1, 2)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation, ds.PlanarConfiguration = colour, planar
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds["PixelData"].VR = "OB"


def _uncompressed_ybr_full(ds):
    _uncompressed(ds, colour="YBR_FULL")


def _plane_by_plane(ds):
    _uncompressed(ds, planar=1)


def _level1_a_third(ds):
    """Level 1 (192 px wide) as if it were 1/3 of level 0 (header only)."""
    if int(ds.TotalPixelMatrixColumns) == 192:
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = 128, 85
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        measures.PixelSpacing = [float(v) * 1.5 for v in measures.PixelSpacing]


@pytest.mark.parametrize("change, said", [
    (_without_imaged_volume, r"no ImagedVolumeWidth/Height, which wsidicom needs; --backend "
                             "openslide may read it"),
    (_without_pixel_spacing, "record no pixel spacing, which wsidicom needs"),
    (_as_palette, "stored as PALETTE COLOR, which wsidicom does not read"),
    # wsidicom (and OpenSlide) turn these away: 'Level files not found' named no cause
    (_uncompressed_ybr_full, r"stored as YBR_FULL in Explicit VR Little Endian, which "
                             r"wsidicom does not read\)$"),
    (_plane_by_plane, r"stored plane by plane \(PlanarConfiguration 1\), which wsidicom "
                      r"does not read\)$"),
    (_level1_a_third, r"not powers of two apart \(384 and 128 px wide\)"),
    (None, "no volume \\(pyramid level\\) instances, only LABEL"),
])
def test_a_dicom_slide_wsidicom_refuses_is_refused_saying_why(dicom_slide, tmp_path, change,
                                                               said):
    # wsidicom said 'generator raised StopIteration', 'WsiDicomNoResolutionError' or
    # 'Level files not found in FOLDER'
    from iste.slides.reader import SlideError

    def volumes_changed(ds):  # change None: the volumes left out
        if ds.ImageType[2] == "VOLUME":
            return False if change is None else change(ds)

    bad = _changed_copy(dicom_slide, tmp_path / "bad", volumes_changed)
    with pytest.raises(SlideError, match=said):
        open_slide(bad)


def test_a_dicom_level_wsidicom_passes_over_is_refused_not_left_out(dicom_slide, tmp_path):
    # level 0 alone stored plane by plane: wsidicom logged "Non-supported file" (at INFO) and
    # opened the slide from its other levels, as if level 1 were the scan
    from iste.slides.reader import SlideError

    def level0_plane_by_plane(ds):
        if ds.ImageType[2] == "VOLUME" and int(ds.TotalPixelMatrixColumns) == 384:
            _plane_by_plane(ds)

    bad = _changed_copy(dicom_slide, tmp_path / "bad", level0_plane_by_plane)
    with pytest.raises(SlideError, match=r"wsidicom does not read \S+\.dcm, an image of the "
                                         "slide's series"):
        open_slide(bad)


@pytest.mark.parametrize("keep", [132, 200, 400])
def test_a_dicom_file_cut_inside_its_header_is_refused(dicom_slide, tmp_path, keep):
    # a level-0 file cut before its pixel data (a copy interrupted early): pydicom read what
    # was there without an error, and both libraries passed over the file: the slide opened
    # from its other levels
    from iste.slides.reader import SlideError

    source, _ = dicom_slide
    level0 = max(source.glob("*.dcm"), key=lambda p: p.stat().st_size)
    cut = tmp_path / "cut"
    cut.mkdir()
    for p in source.iterdir():
        (cut / p.name).write_bytes(p.read_bytes()[:keep] if p == level0 else p.read_bytes())
    for backend in ("wsidicom", "openslide"):
        with pytest.raises(SlideError, match=f"{level0.name} is a DICOM file whose header "
                                             "does not read"):
            open_slide(cut, backend=backend)


def test_a_dicom_series_split_over_two_studies_is_refused(dicom_slide, tmp_path):
    # wsidicom opened the instances of one study: the others (levels, the label) were left out
    from pydicom.uid import generate_uid

    from iste.slides.reader import SlideError

    def level0_in_another_study(ds):
        if ds.ImageType[2] == "VOLUME" and int(ds.TotalPixelMatrixColumns) == 384:
            ds.StudyInstanceUID = generate_uid()

    split = _changed_copy(dicom_slide, tmp_path / "split", level0_in_another_study)
    with pytest.raises(SlideError, match="instances of one series in 2 studies"):
        open_slide(split)
    with open_slide(split, backend="openslide") as s:
        assert s.level_count == 3 and "label" in s.associated_images


def test_each_dicom_header_is_read_once_by_the_checks_when_a_slide_opens(dicom_slide,
                                                                         monkeypatch):
    # the series and the study checks read every header in a pass of their own
    from iste.slides import dicomseries

    folder, _ = dicom_slide
    files = sorted(folder.glob("*.dcm"))
    reads = []
    real = dicomseries._dicom_header
    monkeypatch.setattr(dicomseries, "_dicom_header", lambda p: reads.append(p.name) or real(p))
    for path, backend in [(folder, "wsidicom"), (files[0], "wsidicom"), (folder, "openslide")]:
        reads.clear()
        with open_slide(path, backend=backend):
            assert sorted(reads) == [p.name for p in files], (path, backend)


def _with_offset_table(kind):
    """A ``_changed_copy`` change re-encapsulating level 0's frames with offset table ``kind``:
    "basic" (as written), "none" (an empty Basic Offset Table) or "extended"."""
    from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames

    def change(ds):
        if ds.ImageType[2] != "VOLUME" or int(ds.TotalPixelMatrixColumns) != 384 or \
                kind == "basic":
            return
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
        if kind == "none":
            ds.PixelData = encapsulate(frames, has_bot=False)
        else:
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = \
                encapsulate_extended(frames)
    return change


def _pixel_data_offset(path):
    import pydicom

    with open(path, "rb") as f:
        pydicom.dcmread(f, stop_before_pixels=True)
        return f.tell()


@pytest.mark.parametrize("tables", ["basic", "none", "extended"])
def test_a_dicom_file_cut_short_is_refused_when_the_slide_opens(dicom_slide, tmp_path, tables):
    # cut inside its last frame, wsidicom read the frame as far as the file went and libjpeg
    # decoded the rest as grey blocks without an error (up to 157 levels off, silently); cut
    # earlier, the first read failed with pydicom's "Unexpected end of file"
    from iste.slides.reader import SlideError

    whole = _changed_copy(dicom_slide, tmp_path / "whole", _with_offset_table(tables))
    level0 = max(whole.glob("*.dcm"), key=lambda p: p.stat().st_size)
    for backend in ("wsidicom", "openslide"):  # the re-encapsulated frames read as before
        with open_slide(whole, backend=backend) as slide, \
                open_slide(dicom_slide[0], backend=backend) as written:
            assert np.array_equal(slide.read_region((0, 0), 0, (384, 256)),
                                  written.read_region((0, 0), 0, (384, 256)))
    size, pixels = level0.stat().st_size, _pixel_data_offset(level0)
    for keep in (size - 300, (pixels + size) // 2, pixels + 6, pixels):
        cut = tmp_path / f"cut{keep}"
        cut.mkdir()
        for p in whole.iterdir():
            (cut / p.name).write_bytes(p.read_bytes()[:keep] if p == level0 else p.read_bytes())
        for path in (cut, cut / level0.name):
            for backend in ("wsidicom", "openslide"):
                with pytest.raises(SlideError, match="truncated file") as caught:
                    open_slide(path, backend=backend)
                assert level0.name in str(caught.value) and f"{keep}" in str(caught.value)


def test_a_corrupt_jpeg_frame_of_a_dicom_slide_is_named_in_a_warning(dicom_slide, tmp_path):
    # wsidicom decoded the damaged frame as grey blocks without a word (up to 255 levels off);
    # the tiffslide reader already warned for TIFF tiles
    import warnings

    from pydicom.encaps import encapsulate, generate_frames

    def damage_frame_1(ds):
        if ds.ImageType[2] == "VOLUME" and int(ds.TotalPixelMatrixColumns) == 384:
            frames = list(generate_frames(ds.PixelData,
                                          number_of_frames=int(ds.NumberOfFrames)))
            frame = bytearray(frames[1])
            frame[len(frame) // 3:-2] = bytes(len(frame) - 2 - len(frame) // 3)
            frames[1] = bytes(frame)
            ds.PixelData = encapsulate(frames, has_bot=True)

    bad = _changed_copy(dicom_slide, tmp_path / "bad", damage_frame_1)
    with open_slide(bad, backend="wsidicom") as slide:
        with pytest.warns(UserWarning, match="corrupt JPEG data in level 0, tile column 1 "
                                             "row 0") as caught:
            slide.read_region((0, 0), 0, (384, 256))
        assert len([w for w in caught if "corrupt JPEG" in str(w.message)]) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            slide.read_region((100, 0), 0, (200, 100))  # each frame is judged once
    with open_slide(dicom_slide[0], backend="wsidicom") as slide, warnings.catch_warnings():
        warnings.simplefilter("error")
        slide.read_region((0, 0), 0, (384, 256))
        slide.read_region((0, 0), 1, (192, 128))


def test_a_sparse_levels_frames_are_judged_by_its_transfer_syntax(dicom_slide):
    # the codec was told by frame (0, 0) alone: a sparse level without it (glass in the corner)
    # went unjudged
    from iste.slides.tilecheck import DicomFrameCheck
    from iste.slides.writer import encode_jpeg

    _, rgb = dicom_slide
    good = encode_jpeg(rgb[:128, 128:256], 95)
    bad = good[:len(good) // 3] + bytes(len(good) - len(good) // 3 - 2) + good[-2:]

    class Sparse:  # wsidicom's read_encoded_tile for a level whose frame (0, 0) is absent
        def read_encoded_tile(self, level, tile, z, path, crop_to_image_boundary):
            if tile == (0, 0):
                raise KeyError(tile)
            return bad if tile == (1, 0) else good

    judged = DicomFrameCheck(Sparse(), 0, 0.0, "0", (384, 256), (128, 128),
                             "1.2.840.10008.1.2.4.50")
    assert [(c, r) for c, r, _ in judged.problems(0, 0, 384, 256)] == [(1, 0)]
    assert not DicomFrameCheck(Sparse(), 0, 0.0, "0", (384, 256), (128, 128)).active


def _grey_dicom(folder, *, provenance=None, **spec) -> list:
    """Write a flat grey 150 x 100 DICOM output (``spec``: PyramidSpec fields) into ``folder``;
    its instances' headers (pydicom), sorted by file name."""
    import pydicom

    rgb = np.full((100, 150, 3), 200, np.uint8)
    codec = TileCodec("jpeg", TILE)
    write_dicom(folder, PyramidSpec(150, 100, tile=TILE, mpp=(0.25, 0.25), layout="dicom",
                                    **spec),
                lambda r, c: codec.encode(rgb[:TILE, :TILE]), provenance=provenance)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def test_a_name_written_with_escapes_is_one_value_of_each_dicom_string(tmp_path):
    """A source named Präparat.svs is recorded as 'Pr\\xe4parat.svs' (iste.provenance); its
    backslash, DICOM's value separator, split the series and pyramid descriptions and the
    slide's identifiers (LO, one value each) into several ('Pr', 'xe4parat.svs'). The
    provenance text keeps it in the Image Comments (LT, which holds backslashes)."""
    from iste.provenance import Provenance, recorded

    prov = Provenance(model="m", model_sha="0" * 16, architecture="a", scale=2.0,
                      precision="fp32", stf_keys=None, source="Pr\\xe4parat.svs",
                      source_sha256=None)
    ds = _grey_dicom(tmp_path / "out", provenance=prov)[0]
    specimen = ds.SpecimenDescriptionSequence[0]
    for value in (ds.SeriesDescription, ds.PyramidDescription, ds.ContainerIdentifier,
                  specimen.SpecimenIdentifier):
        assert isinstance(value, str) and "Pr/xe4parat.svs" in value
    assert recorded(tmp_path / "out")["source"] == "Pr\\xe4parat.svs"


def test_an_objective_power_of_many_digits_is_written(tmp_path):
    """A 20x slide 301 px wide at x2.5 is 753 px wide: its power, 20 x 753 / 301 =
    50.03322259136213, is more than the 16 characters of a DICOM decimal string, and the
    write failed (pydicom's ValueError) once every tile was made. It is written with the 6
    significant digits of the TIFF layouts' AppMag and NominalMagnification."""
    for ds in _grey_dicom(tmp_path / "out", objective_power=20 * 753 / 301):
        assert float(ds.OpticalPathSequence[0].ObjectiveLensPower) == 50.0332
    with open_slide(tmp_path / "out") as s:
        assert s.objective_power == pytest.approx(50.0332)


def test_the_provenance_of_long_names_is_written_whole_where_dicom_holds_it(tmp_path):
    """A source and a model named in 80 CJK characters each are recorded as escapes
    ('\\u4e2d...'): the provenance text, 1174 characters, is more than the 1024 a DICOM ST
    (Contribution Description) holds, and the write failed once every tile was made. The
    Contribution Description is cut at 1024; the Image Comments (LT) hold it whole."""
    from iste.provenance import Provenance, recorded

    name = "\u4e2d" * 80 + ".svs"
    prov = Provenance(model=name, model_sha="0" * 16, architecture="a", scale=2.0,
                      precision="fp32", stf_keys=None, source=name, source_sha256="f" * 64)
    assert len(prov.to_text()) > 1024
    ds = _grey_dicom(tmp_path / "out", provenance=prov)[0]
    assert ds.ContributingEquipmentSequence[0].ContributionDescription == prov.to_text()[:1024]
    assert ds.ImageComments == prov.to_text()
    assert recorded(tmp_path / "out")["source"] == "\\u4e2d" * 80 + ".svs"


def test_a_dicom_level_whose_first_frame_is_damaged_is_deblocked(dicom_slide,
                                                                          tmp_path):
    """The quantisation tables were read from frame (0, 0) alone: its headers gone, the
    level was read as decoded (not deblocked) without a word. A read of that frame is an
    UnreadableRegionError whose reader reads on."""
    from pydicom.encaps import encapsulate, generate_frames

    from iste.slides.reader import UnreadableRegionError

    def zero_frame_0(ds):
        if ds.ImageType[2] == "VOLUME" and int(ds.TotalPixelMatrixColumns) == 384:
            frames = list(generate_frames(ds.PixelData,
                                          number_of_frames=int(ds.NumberOfFrames)))
            frames[0] = bytes(len(frames[0]))
            ds.PixelData = encapsulate(frames, has_bot=True)

    bad = _changed_copy(dicom_slide, tmp_path / "bad", zero_frame_0)
    with open_slide(bad, backend="wsidicom") as slide:
        assert slide.jpeg_quantisation(0) is not None
        with pytest.raises(UnreadableRegionError) as caught:
            slide.read_level(0, (0, 0), (16, 16))
        assert caught.value.level == 0
        assert slide.read_level(0, (200, 0), (16, 16)).std() > 0


def test_a_label_wsidicom_cannot_read_leaves_the_output_without_it(dicom_slide, tiny_ckpt,
                                                                   tmp_path):
    # wsidicom writes an uncompressed label of odd size (the CMU label: 463 x 387 x 3 bytes)
    # without its padding byte, and then refuses to read it: the job ended in a traceback
    from wsidicom import WsiDicom
    from wsidicom.codec import Channels, NumpySettings

    from iste.slides.reader import SlideError

    folder, rgb = dicom_slide
    raw = tmp_path / "raw"
    raw.mkdir()
    with WsiDicom.open(folder) as wsi:
        wsi.save(raw, transcoding=NumpySettings(channels=Channels.RGB), force_transcoding=True)
    with open_slide(raw) as slide:
        assert "label" in slide.associated_images
        with pytest.raises(SlideError, match="label: .*Pixel data"):
            slide.read_associated("label")
        assert np.abs(slide.read_region((0, 0), 0, (384, 256)).astype(int) - rgb).mean() < 3
    out = tmp_path / "x2.tiff"
    with pytest.warns(UserWarning, match="the source's label image cannot be read"):
        assert main(["upscale", str(raw), "-s", "2", "-o", str(out), "--model",
                     str(tiny_ckpt), "--tile", "128", "-q"]) == 0
    with open_slide(out) as s:
        assert s.dimensions == (768, 512) and "label" not in s.associated_images


def _focal_stack(ds, planes):
    """Volume instance ``ds`` (pydicom, TILED_FULL) as a sparse instance holding its frames at
    focal plane 0 and black frames at each other of ``planes`` (um): a z-stack."""
    import copy as copying

    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import generate_uid

    stack = copying.deepcopy(ds)
    black = _black_copy(ds, "1")
    own = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    dark = list(generate_frames(black.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    cols = -(-int(ds.TotalPixelMatrixColumns) // int(ds.Columns))
    items, frames = [], []
    for z in planes:
        for i, frame in enumerate(own if z == 0 else dark):
            position = Dataset()
            position.ColumnPositionInTotalImagePixelMatrix = 1 + i % cols * int(ds.Columns)
            position.RowPositionInTotalImagePixelMatrix = 1 + i // cols * int(ds.Rows)
            position.XOffsetInSlideCoordinateSystem = position.YOffsetInSlideCoordinateSystem = 0
            position.ZOffsetInSlideCoordinateSystem = z
            item = Dataset()
            item.PlanePositionSlideSequence = [position]
            items.append(item)
            frames.append(frame)
    del stack.DimensionOrganizationType  # TILED_SPARSE: each frame says where it lies
    stack.PerFrameFunctionalGroupsSequence = items
    stack.NumberOfFrames, stack.TotalPixelMatrixFocalPlanes = len(frames), len(planes)
    stack.PixelData = encapsulate(frames)
    stack.SOPInstanceUID = stack.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return stack


@pytest.mark.parametrize("stacked", ["level 0", "every level"])
def test_a_z_stack_is_read_at_its_middle_plane_on_every_level(dicom_slide, tmp_path, stacked):
    # wsidicom's default plane is the one nearest half the stack's extent, (max - min) / 2:
    # of -1.5, 0 and 1.5 um it read 1.5 (black here), and only level 0 (the others hold 0)
    import pydicom

    folder, rgb = dicom_slide

    def stack(ds):
        level0 = ds.ImageType[2] == "VOLUME" and int(ds.TotalPixelMatrixColumns) == 384
        if ds.ImageType[2] == "VOLUME" and (level0 or stacked == "every level"):
            return _focal_stack(ds, (-1.5, 0, 1.5))

    stacks = tmp_path / "stack"
    stacks.mkdir()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        (stack(ds) or ds).save_as(stacks / path.name, enforce_file_format=True)
    with pytest.warns(UserWarning, match=r"3 focal planes \(-1.5, 0, 1.5 um\); iste reads "
                                         "optical path 1 at focal plane 0 um"):
        slide = open_slide(stacks)
    with slide:
        assert slide.level_count == 3
        got = slide.read_region((0, 0), 0, (384, 256))
        assert np.abs(got.astype(int) - rgb).mean() < 3
        assert slide.read_region((0, 0), 2, (96, 64)).mean() > 100  # tissue, not black


@pytest.mark.parametrize("total", [True, False])
def test_a_dicom_concatenation_missing_a_part_is_refused_when_the_slide_opens(
        dicom_slide, tmp_path, total):
    # wsidicom opened it and failed at the first read over the missing frames ('Frame index
    # 2 not found in instance'), after the model had loaded, or filled them with
    # --unreadable-tiles fill; DICOM's InConcatenationTotalNumber is optional
    import pydicom
    from wsidicom import WsiDicom
    from wsidicom.options import ConcatenationByFrames

    from iste.slides.reader import SlideError

    folder, rgb = dicom_slide
    parts = tmp_path / "parts"
    parts.mkdir()
    with WsiDicom.open(folder) as wsi:  # level 0 (6 frames) in 3 files of 2 frames
        wsi.save(parts, concatenation=ConcatenationByFrames(2))
    with open_slide(parts) as slide:
        assert slide.level_count == 3
        got = slide.read_region((0, 0), 0, (384, 256))
        assert np.abs(got.astype(int) - rgb).mean() < 3
    for path in parts.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        if ds.get("InConcatenationNumber") == 2:
            path.unlink()
        elif "InConcatenationNumber" in ds and not total:
            del ds.InConcatenationTotalNumber
            ds.save_as(path, enforce_file_format=True)
    for backend in ("wsidicom", "openslide"):
        with pytest.raises(SlideError, match=r"part\(s\) 2 (of 3 )?of the concatenation"):
            open_slide(parts, backend=backend)


def test_an_uncompressed_dicom_slide_of_odd_sized_images_reads_without_a_warning(
        dicom_slide, tmp_path):
    # pydicom warned 'The odd length pixel data is missing a trailing padding byte' at each
    # read of the 463 x 387 label, which the file pads as DICOM asks
    import warnings

    folder, rgb = dicom_slide
    native = _changed_copy(dicom_slide, tmp_path / "native", _uncompressed)
    with open_slide(native) as slide, open_slide(folder) as source:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            label = slide.read_associated("label")
            got = slide.read_region((0, 0), 0, (384, 256))
        assert not [str(w.message) for w in said]
        assert np.array_equal(label, source.read_associated("label"))
        assert np.array_equal(got, source.read_region((0, 0), 0, (384, 256)))


def _without_colour_marker(stream: bytes) -> bytes:
    """JPEG ``stream`` without its JFIF (APP0) and Adobe (APP14) segments, its components
    numbered 1, 2, 3: a stream that does not say its colour (Aperio's tiles, which converters
    copy into DICOM frames as they are)."""
    out, i = bytearray(stream[:2]), 2
    while stream[i + 1] != 0xDA:  # up to the scan
        segment = bytearray(stream[i:i + 2 + int.from_bytes(stream[i + 2:i + 4], "big")])
        if segment[1] == 0xC0:  # frame header: 3 components of 3 bytes after 8
            segment[10], segment[13], segment[16] = 1, 2, 3
        if segment[1] not in (0xE0, 0xEE):
            out += segment
        i += len(segment)
    scan = bytearray(stream[i:])
    scan[5], scan[7], scan[9] = 1, 2, 3  # the scan's component selectors
    return bytes(out + scan)


@pytest.mark.parametrize("colour", ["RGB", "YCbCr"])
def test_a_dicom_jpeg_level_whose_streams_do_not_say_their_colour_is_deblocked(
        dicom_slide, tmp_path, colour):
    # the colour was taken from the header as lv.datasets[0].PhotometricInterpretation, which
    # wsidicom's datasets do not have: AttributeError, a traceback before the first tile
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate, generate_frames

    folder, rgb = dicom_slide

    def unmarked(ds):
        if ds.ImageType[2] != "VOLUME":
            return
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
        if colour == "YCbCr":  # 4:2:0, JFIF
            encoded = []
            for frame in frames:
                out = io.BytesIO()
                Image.open(io.BytesIO(frame)).convert("RGB").save(out, "JPEG", quality=90)
                encoded.append(out.getvalue())
            frames, ds.PhotometricInterpretation = encoded, "YBR_FULL_422"
        ds.PixelData = encapsulate([_without_colour_marker(f) for f in frames])

    bare = _changed_copy(dicom_slide, tmp_path / "bare", unmarked)
    with open_slide(bare) as slide:
        tables = slide.jpeg_quantisation(0)
        assert tables is not None and tables.colour == colour
        got = slide.read_region((0, 0), 0, (384, 256))
        # the colours of the source (4:2:0 at q90 over it: 7 levels off; YCbCr as RGB: 60+)
        assert np.abs(got.astype(int) - rgb).mean() < 10


def test_ycbcr_jpeg_frames_tagged_rgb_are_refused_not_read_unconverted(dicom_slide, tmp_path):
    """JPEG frames whose stream says YCbCr (a JFIF marker) in instances tagged RGB: wsidicom
    passed their YCbCr on as RGB, some 120 levels off, without a word (a JFIF stream is
    YCbCr whatever the header says). Refused naming the tag that reads them; so tagged, they
    read as the stream says."""
    import imagecodecs
    from pydicom.encaps import encapsulate, generate_frames

    first: list = []  # level 0's first frame, re-encoded

    def reencoded(tag):
        def change(ds):
            if "PixelData" not in ds or int(ds.SamplesPerPixel) != 3:
                return None
            frames = generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
            encoded = [imagecodecs.jpeg8_encode(imagecodecs.jpeg8_decode(f), level=90,
                                                subsampling="420") for f in frames]
            if int(ds.TotalPixelMatrixColumns) == rgb.shape[1]:
                first[:] = encoded[:1]
            ds.PixelData = encapsulate(encoded)
            ds.PhotometricInterpretation = tag
            return None
        return change

    source, rgb = dicom_slide
    tagged_rgb = _changed_copy(dicom_slide, tmp_path / "rgb", reencoded("RGB"))
    with pytest.raises(SlideError, match="JPEG frames of its level 0 say YCbCr but are tagged "
                                         "RGB.*tag them YBR_FULL_422"):
        open_slide(tagged_rgb)
    ybr = _changed_copy(dicom_slide, tmp_path / "ybr", reencoded("YBR_FULL_422"))
    with open_slide(ybr, backend="wsidicom") as slide:
        read = slide.read_region((0, 0), 0, (TILE, TILE)).astype(int)
    # libjpeg by the stream's JFIF marker (an unconverted read is ~120 levels off)
    assert np.abs(read - imagecodecs.jpeg8_decode(first[0])).max() <= 1


def test_a_dicom_slide_whose_frame_would_not_decode_in_memory_is_refused_at_open(dicom_slide,
                                                                                  monkeypatch):
    # a level of one 65528 x 65528 px frame holding 600 bytes of JPEG was decoded to 12 GiB at
    # the job's first read: "cannot read ... Unable to allocate 12.0 GiB ...: rerun with
    # --unreadable-tiles fill", or the machine's memory taken
    import iste.data.memory as memory
    from iste.data.imageformats import DECODE_BYTES

    folder, _ = dicom_slide
    need = TILE * TILE * DECODE_BYTES
    monkeypatch.setattr(memory, "host_memory_available", lambda: need - 1)
    with pytest.raises(SlideError, match=rf"^cannot open slide {folder}: a frame of level 0 is "
                                         rf"{TILE} x {TILE} px; decoding {TILE} x {TILE} px "
                                         r"takes about [0-9.e-]+ GiB; [0-9.e-]+ GiB are "
                                         r"available$"):
        open_slide(folder)
    monkeypatch.setattr(memory, "host_memory_available", lambda: need)
    with open_slide(folder) as slide:
        assert slide.dimensions == (384, 256)


@pytest.mark.parametrize("backend", ["wsidicom", "openslide"])
def test_a_thin_dicom_output_has_only_the_levels_readers_place(tmp_path, backend):
    """wsidicom added every halving down to one tile: a 1034 x 18 output had levels of
    259 x 5, 130 x 3 and 65 x 2, read as downsamples 3.80, 6.98 and 12.45, and a rerun found
    them no pyramid of ours. A DICOM output holds the levels the TIFF layouts hold."""
    from iste.slides.levels import MISPLACEMENT_PX

    with open_slide(sample_path("cmu-svs")) as src:
        rgb = src.read_region((900, 1400), 0, (1034, 18))
    codec = TileCodec("jpeg", TILE)
    spec = PyramidSpec(1034, 18, tile=TILE, mpp=(0.25, 0.25), codec="jpeg", layout="dicom")
    write_dicom(tmp_path / "thin", spec, lambda r, c: codec.encode(
        rgb[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]))
    with open_slide(tmp_path / "thin", backend=backend) as s:
        assert s.level_dimensions == spec.level_sizes and s.level_count > 1
        for level, ds in enumerate(s.level_downsamples):
            assert 1034 * abs(1 / ds - 1 / 2 ** level) <= MISPLACEMENT_PX, (level, ds)
