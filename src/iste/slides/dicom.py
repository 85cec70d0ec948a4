"""DICOM WSI output (DICOM Part 14, VL Whole Slide Microscopy Image) through wsidicom.

The output is a folder of .dcm files, one per pyramid level (plus the label and overview when
the source has them), that wsidicom, OpenSlide 4 and DICOM archives read. Level 0's tiles come
from the pipeline's tile store (decoded, re-encoded as baseline JPEG by wsidicom); wsidicom
builds the lower levels. The pixel spacing is the output's mpp; the objective power and the
source's ICC profile go into the optical path; the provenance into Software Versions,
Contributing Equipment and the series description. The volume is marked as what it is: a
DERIVED image (computed, not scanned; its Image Type and Frame Type; the levels wsidicom
downsamples from level 0 RESAMPLED), that names a DICOM source's instances it was made from
(Source Image Sequence), lossy-compressed (ISO 10918-1 JPEG, with the ratio of a sample
tile), acquired when iste made its pixels (the source's acquisition time is not read; the
label and overview, copied from the source, carry the same time). From a DICOM source it
shares the source's frame of reference, its origin where its top-left corner lies on the
slide (a region's, not the source's). Written into a temporary
folder beside the target and put in its place only when complete
(:func:`iste.files.write_dir_atomic`): an older output there stays until then, and stays if
the run fails.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from iste.files import write_dir_atomic
from iste.slides.writer import PyramidSpec, TileCodec

__all__ = ["write_dicom", "check_output_folder", "tile_encoder"]

TileSource = Callable[[int, int], bytes]


def tile_encoder(quality: int):
    """The wsidicom encoder of the DICOM output's tiles (``.encode(uint8 (h, w, 3))`` ->
    bytes): RGB JPEG, no colour transform, no chroma subsampling. OpenSlide 4 refuses
    YBR_FULL (4:4:4 YCbCr) and 4:2:2 costs H&E its fine colour detail."""
    from wsidicom.codec import Channels, Encoder, JpegSettings, Subsampling

    return Encoder.create_for_settings(JpegSettings(quality=quality, channels=Channels.RGB,
                                                    subsampling=Subsampling.R444))


def _image_data_class():
    """The wsidicom ImageData over iste's encoded tile store (built lazily: wsidicom is
    imported only when DICOM is written)."""
    from pydicom.uid import JPEGBaseline8Bit
    from wsidicom.geometry import Point, Size, SizeMm
    from wsidicom.instance.image_data import ImageData

    class TileStoreImageData(ImageData):
        def __init__(self, spec: PyramidSpec, tiles: TileSource):
            super().__init__(tile_encoder(spec.quality))
            self._spec, self._tiles = spec, tiles
            self._codec = TileCodec(spec.codec, spec.tile, spec.quality)

        transfer_syntax = property(lambda self: JPEGBaseline8Bit)
        image_size = property(lambda self: Size(self._spec.width, self._spec.height))
        tile_size = property(lambda self: Size(self._spec.tile, self._spec.tile))
        samples_per_pixel = property(lambda self: 3)
        bits = property(lambda self: 8)
        photometric_interpretation = property(lambda self: "RGB")
        image_coordinate_system = property(lambda self: None)
        thread_safe = property(lambda self: False)
        transcoder = property(lambda self: None)

        @functools.cached_property  # wsidicom reads it three times per dataset
        def lossy_compression(self):
            """JPEG, at the ratio of the level's middle tile (DICOM asks for an approximate
            ratio): raw bytes against its encoding, worked out once."""
            from wsidicom.codec import LossyCompressionIsoStandard
            from wsidicom.metadata.image import LossyCompression

            rows, cols = self._spec.grid(0)
            middle = Point(cols // 2, rows // 2)
            tile = self.get_decoded_tile(middle, 0.0, "")
            ratio = tile.nbytes / len(self.encoder.encode(tile))
            return [LossyCompression(LossyCompressionIsoStandard.JPEG_LOSSY, round(ratio, 1))]

        @property
        def pixel_spacing(self):
            mpp = self._spec.mpp
            return None if mpp is None else SizeMm(mpp[0] / 1000, mpp[1] / 1000)

        @property
        def imaged_size(self):
            ps = self.pixel_spacing
            return None if ps is None else SizeMm(ps.width * self._spec.width,
                                                  ps.height * self._spec.height)

        def get_decoded_tile(self, tile_point: Point, z: float, path: str,
                             cache: bool = True) -> np.ndarray:
            return self._codec.decode(self._tiles(tile_point.y, tile_point.x))

        def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
            return self.encoder.encode(self.get_decoded_tile(tile, z, path))

    return TileStoreImageData


@functools.cache
def _associated_data_class():
    """wsidicom's in-memory image (a label or overview, uint8 (h, w, 3)) encoded as the
    volume's tiles are (:func:`tile_encoder`: RGB JPEG 4:4:4 at the job's quality). wsidicom's
    own encoding, YBR_FULL_422 at its quality, put the source's label up to 119 levels off
    (mean 3.6; its macro up to 95), a barcode's and handwriting's edges among them.
    NumpyImageData's constructor takes no encoder; its public ``encoder`` property, which
    every encoding of the image reads, answers with this one."""
    from wsidicom.instance.numpy_image_data import NumpyImageData

    class AssociatedImageData(NumpyImageData):
        def __init__(self, rgb: np.ndarray, quality: int):
            super().__init__(rgb)
            self._tile_encoder = tile_encoder(quality)

        photometric_interpretation = property(lambda self: "RGB")
        encoder = property(lambda self: self._tile_encoder)

    return AssociatedImageData


def _metadata(spec: PyramidSpec, provenance):
    from pydicom.uid import generate_uid
    from wsidicom.conceptcode import ContributingEquipmentPurposeCode
    from wsidicom.geometry import SizeMm
    from wsidicom.metadata import (ContributingEquipment, Equipment, Image, Label, Objectives,
                                   OpticalPath, Overview, Patient, Pyramid, Series, Slide,
                                   SlideSample, Study, WsiMetadata)

    versions = ["iste " + (provenance.iste if provenance else "")]
    if provenance is not None:
        versions.append(f"torch {provenance.torch}")
    # 6 significant digits, as the TIFF layouts write it: a DS holds 16 characters, and a
    # power such as 20 x 753 / 301 (50.03322259136213) failed the write after every tile
    objective = None if spec.objective_power is None else Objectives(
        objective_power=float(f"{spec.objective_power:.6g}"))
    optical = OpticalPath(icc_profile=spec.icc_profile, objective=objective,
                          description="super-resolved by iste")
    pixel_spacing = None if spec.mpp is None else SizeMm(spec.mpp[0] / 1000, spec.mpp[1] / 1000)
    description = provenance.to_text() if provenance is not None else "iste super-resolution"
    # When the pixels were made (the label and overview too: a copy made with them, and
    # wsidicom's default for them is 1970-01-01): the source's acquisition time is not read
    made = datetime.fromisoformat(provenance.created) if provenance is not None \
        else datetime.now(timezone.utc)
    slide_id = _lo(provenance.source if provenance is not None and provenance.source
                   else "slide")
    source = spec.dicom_source  # a DICOM source: a new series of its study, patient and slide
    placed = _placed_on_source(spec)
    return WsiMetadata(
        study=source.study if source is not None else Study(uid=generate_uid()),
        series=Series(uid=generate_uid(), number=_next_series_number(source),
                      description=_lo(description)),
        patient=source.patient if source is not None else Patient(),
        equipment=Equipment(manufacturer="iste", model_name="iste super-resolution",
                            software_versions=versions),
        slide=source.slide if source is not None else Slide(
            identifier=slide_id, samples=[SlideSample(
                identifier=slide_id, uid=generate_uid(),
                short_description="source slide (not described by iste)")]),
        label=Label(image=Image(acquisition_datetime=made)),
        overview=Overview(image=Image(acquisition_datetime=made), optical_paths=[optical]),
        frame_of_reference_uid=(source.frame_of_reference_uid if placed is not None
                                else generate_uid()),
        dimension_organization_uids=[generate_uid()],
        pyramid=Pyramid(image=Image(pixel_spacing=pixel_spacing, acquisition_datetime=made,
                                    image_coordinate_system=placed),
                        optical_paths=[optical],
                        uid=generate_uid(),
                        description=_lo(description), comments=description),
        contributing_equipment=[ContributingEquipment(
            purpose=ContributingEquipmentPurposeCode("Processing Equipment"),
            manufacturer="iste", software_versions=versions,
            description=description[:_ST_LENGTH])],
    )


_ST_LENGTH = 1024
"""The most characters of a DICOM ST (Contribution Description): the provenance text of long
names written as escapes is more; it is whole in the Image Comments (LT), which
:func:`iste.provenance.recorded` reads."""


def _lo(text: str) -> str:
    """``text`` as one DICOM LO value (a series or pyramid description, a slide's
    identifier): 64 characters, its backslashes, which split an LO into several values, as
    ``/``. The escapes of a name (``Pr\\xe4parat.svs``) made 'Pr', 'xe4parat.svs' of it."""
    return text.replace("\\", "/")[:64]


def _placed_on_source(spec: PyramidSpec):
    """The output's wsidicom ImageCoordinateSystem in a DICOM source's frame of reference:
    the source's rotation and z offset, its origin moved to the output's top-left corner
    (``spec.origin_mm`` from the source's, through the source's orientation); None for
    other sources, or a DICOM source without one."""
    from wsidicom.geometry import PointMm
    from wsidicom.metadata import ImageCoordinateSystem

    source = spec.dicom_source
    image = None if source is None or source.pyramid is None else source.pyramid.image
    system = None if image is None else image.image_coordinate_system
    if system is None or source.frame_of_reference_uid is None:
        return None
    origin = system.image_to_slide(PointMm(*spec.origin_mm))
    return ImageCoordinateSystem(origin=origin, rotation=system.rotation,
                                 z_offset=system.z_offset)


def _next_series_number(source) -> int:
    """1, or the number after a DICOM source's series in its study (archives list a study's
    series by number)."""
    number = None if source is None else source.series.number
    return number + 1 if number is not None else 1


def check_output_folder(folder: str | os.PathLike) -> None:
    """ValueError unless ``folder`` is absent or a folder of plain .dcm files (a DICOM series,
    which :func:`write_dicom` may replace); never a link, a file, a folder holding folders or
    other files."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"output {folder} exists and is not a folder")
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if any(p.is_symlink() or not p.is_file() for p in entries):
        raise ValueError(f"output folder {folder} holds more than files: not replacing it "
                         "with a DICOM series")
    others = sorted(p.name for p in entries if p.suffix.lower() != ".dcm")
    if others:
        raise ValueError(f"output folder {folder} holds files that are not DICOM "
                         f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): not "
                         "replacing it with a DICOM series")


def write_dicom(folder: str | os.PathLike, spec: PyramidSpec, level0: TileSource, *,
                provenance=None) -> Path:
    """Write a DICOM WSI folder.

    Args:
        folder: the output folder: created, or (a folder of files, see
            :func:`check_output_folder`) replaced once the new series is complete.
        spec: sizes, tile, mpp (-> Pixel Spacing in mm), quality, objective power, ICC profile,
            associated images ("label" -> label, "macro" -> overview).
        level0: ``level0(row, col)`` -> level-0 tile encoded as ``TileCodec(spec.codec, ...)``.
        provenance: :class:`iste.provenance.Provenance` recorded in the attributes.

    Returns:
        ``folder``.
    """
    from wsidicom import WsiDicom
    from wsidicom.instance import WsiDataset, WsiInstance
    from wsidicom.metadata.image import ImageType
    from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema

    folder = Path(folder)
    if spec.mpp is None:
        raise ValueError("DICOM WSI output needs the pixel size (the source records no mpp)")
    check_output_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta = _metadata(spec, provenance)
    dumped = WsiMetadataDicomSchema().dump(meta, ImageType.VOLUME, True)
    image_data = _image_data_class()(spec, level0)
    dataset = WsiDataset.create_instance_dataset(dumped, ImageType.VOLUME, image_data, 0)
    level = WsiInstance(_derived(dataset, spec.dicom_references), image_data)
    labels, overviews = [], []
    for name, rgb in spec.associated:
        kind = ImageType.LABEL if name == "label" else ImageType.OVERVIEW
        base = WsiMetadataDicomSchema().dump(meta, kind, True)
        inst = WsiInstance.create_instance(
            _associated_data_class()(np.ascontiguousarray(rgb), spec.quality), base, kind)
        (labels if name == "label" else overviews).append(inst)

    def save(tmp: Path) -> None:
        with WsiDicom(_Source(level, labels, overviews), True) as wsi:
            # wsidicom halves with ceil down to one tile, as the TIFF layouts do; only the
            # levels readers place where they are (PyramidSpec.level_sizes) are kept
            wsi.save(tmp, add_missing_levels=True,
                     include_levels=list(range(len(spec.level_sizes))))

    return write_dir_atomic(folder, save)


def _derived(dataset, references=()):
    """The volume's WsiDataset marked DERIVED (wsidicom writes ORIGINAL): its Image Type and
    the shared Frame Type, which DICOM asks to agree (a reader may look at either); the
    levels wsidicom makes from it by downsampling are marked RESAMPLED in both
    (:func:`_resampling_dataset_class`: wsidicom keeps level 0's NONE). ``references``:
    (SOP Class UID, SOP Instance UID) of a DICOM source's instances, named in every level's
    Source Image Sequence (purpose: source image for image processing operation)."""
    from pydicom import Dataset
    from pydicom.sequence import Sequence

    changes = {}
    if references:
        items = []
        for sop_class, sop_instance in references:
            purpose = Dataset()
            purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
            purpose.CodeMeaning = "Source image for image processing operation"
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            item.PurposeOfReferenceCodeSequence = Sequence([purpose])
            items.append(item)
        changes["SourceImageSequence"] = Sequence(items)
    # ORIGINAL\PRIMARY\VOLUME\NONE as wsidicom writes it
    derived = _retyped(dataset, lambda values: ["DERIVED", *values[1:]], changes)
    return _resampling_dataset_class()(derived.as_dataset())


def _retyped(dataset, change, changes=None):
    """``dataset`` (a wsidicom WsiDataset) with ``change(values)`` as its Image Type and as
    its shared Frame Type (DICOM asks them to agree; a reader may look at either), and the
    other ``changes`` (tag keyword -> value)."""
    ds = dataset.as_dataset()
    frame_type = ds.SharedFunctionalGroupsSequence[0] \
        .WholeSlideMicroscopyImageFrameTypeSequence[0]
    frame_type.FrameType = change(list(frame_type.FrameType))
    return dataset.replace({**(changes or {}), "ImageType": change(list(ds.ImageType)),
                            "SharedFunctionalGroupsSequence": ds.SharedFunctionalGroupsSequence})


@functools.cache
def _resampling_dataset_class():
    """A wsidicom WsiDataset whose copies for the levels wsidicom makes by downsampling
    (``as_tiled_full`` to a smaller pixel matrix than level 0's) say RESAMPLED as the
    fourth value of their Image Type and Frame Type, as DICOM asks of a level derived by
    downsampling; wsidicom copies level 0's values, NONE, into every level it writes."""
    from wsidicom.instance import WsiDataset

    class ResamplingDataset(WsiDataset):
        def as_tiled_full(self, *args, **kwargs):
            tiled = super().as_tiled_full(*args, **kwargs)  # a copy (the whole dataset)
            # judged by the copy's size, not by wsidicom's arguments, which may change
            columns = tiled.as_dataset().TotalPixelMatrixColumns
            if columns == self.as_dataset().TotalPixelMatrixColumns:
                return tiled
            return _retyped(tiled, lambda values: [*values[:3], "RESAMPLED"])

    return ResamplingDataset


def _source_class():
    from wsidicom.source import Source

    class _MemorySource(Source):
        def __init__(self, level, labels, overviews):
            super().__init__()
            self._level, self._labels, self._overviews = level, labels, overviews

        base_dataset = property(lambda self: self._level.dataset)
        level_instances = property(lambda self: [self._level])
        label_instances = property(lambda self: list(self._labels))
        overview_instances = property(lambda self: list(self._overviews))
        thumbnail_instances = property(lambda self: [])
        annotation_instances = property(lambda self: [])

        def close(self) -> None:
            pass

    return _MemorySource


def _Source(level, labels, overviews):  # noqa: N802 - a class built on first use
    return _source_class()(level, labels, overviews)
