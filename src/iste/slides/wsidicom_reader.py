"""The wsidicom backend of :func:`iste.slides.formats.open_slide`: DICOM WSI (DICOM Part 14),
a ``.dcm`` file or a folder of one slide's instances.

Its files are checked first (:mod:`iste.slides.dicomseries`); where wsidicom refuses them,
the instances' headers say why; one optical path and focal plane are read from every level.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from iste.data.imageformats import DEEP_ADVICE
from iste.slides.dicomseries import (WSI_STORAGE, check_complete, check_one_series,
                                     check_one_study, folder_headers, series_headers)
from iste.slides.filebackend import FileBackend, judge_corrupt, one_at_a_time, read_failed
from iste.slides.quantisation import TABLE_TRIES, jpeg_settings, warn_no_tables
from iste.slides.reader import SlideError, to_rgb_uint8
from iste.slides.scale import mpp_pair, positive
from iste.text import error_line

__all__ = ["WsiDicomReader"]


class WsiDicomReader(FileBackend):
    """DICOM WSI (a .dcm file or a folder of one slide's instances) through wsidicom; the
    first pyramid, at one optical path and focal plane for every level: wsidicom's default
    for level 0 (its first path, its middle plane), said in a warning when there are more.
    Each level on its own would default to the instance wsidicom lists first, which may be
    another path or plane; a level without the chosen one is left out."""

    @property
    def decoder(self) -> str:
        import imagecodecs
        import PIL
        import wsidicom

        return (f"wsidicom {wsidicom.__version__}, imagecodecs {imagecodecs.__version__}, "
                f"Pillow {PIL.__version__}")

    def __init__(self, path: Path):
        from wsidicom import WsiDicom

        if path.is_dir():  # each file's header read once, for both checks
            headers = folder_headers(path)
            check_one_series(path, headers)
            self._files = None
        else:
            headers = series_headers(path)
            self._files = tuple(headers)
        check_one_study(path, headers)
        check_complete(path, headers)
        try:
            self._wsi = WsiDicom.open(list(self._files) if self._files is not None else path)
            levels = list(self._wsi.levels)
        except Exception as exc:
            files = self._files if self._files is not None else sorted(path.iterdir())
            raise SlideError(f"cannot open slide {path}: not a readable DICOM WSI "
                             f"({_wsidicom_refusal(files, exc)})") from exc
        problem = _unsupported_samples(levels) if levels else "no DICOM WSI volume instances"
        problem = problem or _left_out(headers, self._wsi.files)
        problem = problem or _frame_too_large(levels)
        if problem is not None:  # refused here, before the model, not at the first tile
            self._wsi.close()
            raise SlideError(f"cannot open slide {path}: {problem}")
        super().__init__(path)
        self._path_id, self._z, self._levels = _one_path_and_plane(path, levels,
                                                                   len(self._wsi.pyramids))
        self._dims = [(int(lv.size.width), int(lv.size.height)) for lv, _ in self._levels]
        self._checks: dict = {}
        # each level's first JPEG stream, read once: for the colour check here and for
        # deblocking's tables later (_read_quantisation)
        self._streams = [self._stream_settings(level) for level in range(len(self._levels))]
        clash = self._jpeg_colour_clash()
        if clash is not None:
            self._wsi.close()
            raise SlideError(f"cannot open slide {path}: {clash}")
        mpp = self._wsi.mpp
        self._mpp = None if mpp is None else mpp_pair(mpp.width, mpp.height)

    @property
    def files(self):
        """One instance given: the files of its series in its folder, which are read with it."""
        return self._files if self._files is not None else super().files

    @property
    def level_dimensions(self):
        return list(self._dims)

    @property
    def level_downsamples(self):
        w0, h0 = self._dims[0]
        return [(w0 / w + h0 / h) / 2 for w, h in self._dims]

    @property
    def mpp(self):
        return self._mpp

    def _optical_path(self):
        try:
            paths = self._wsi.metadata.pyramid.optical_paths
        except Exception:  # no or unreadable optical path module
            return None
        return next((p for p in paths if p.identifier == self._path_id),
                    paths[0] if paths else None)

    @property
    def objective_power(self):
        objective = getattr(self._optical_path(), "objective", None)
        return positive(getattr(objective, "objective_power", None))

    @property
    def icc_profile(self):
        return getattr(self._optical_path(), "icc_profile", None) or None

    @property
    def stored_mode(self):
        """"L" for one sample a pixel (MONOCHROME2: 8-bit grey, :func:`_unsupported_samples`),
        else "RGB" (RGB or YBR, which wsidicom decodes to RGB)."""
        data = self._levels[0][0].default_instance.image_data
        return "L" if int(data.samples_per_pixel) == 1 else "RGB"

    @property
    def dicom_metadata(self):
        try:
            return self._wsi.metadata
        except Exception:  # noqa: BLE001 - modules wsidicom cannot parse: none carried
            return None

    def dicom_instances(self, level):
        lv, z = self._levels[level]
        try:
            datasets = lv.instance_at(self._path_id, z).datasets
        except KeyError:  # the plane matched within 1e-6 um, not exactly: the level's all
            datasets = lv.datasets
        found = [(str(d.as_dataset().SOPClassUID), str(d.as_dataset().SOPInstanceUID))
                 for d in datasets]
        return tuple(dict.fromkeys(found))

    @property
    def associated_images(self):
        names = []
        if self._wsi.labels is not None:
            names.append("label")
        if self._wsi.overviews is not None:
            names.append("macro")
        return tuple(names)

    @one_at_a_time
    def read_associated(self, name):
        if name not in self.associated_images:
            return super().read_associated(name)
        read = self._wsi.read_label if name == "label" else self._wsi.read_overview
        try:
            with warnings.catch_warnings():
                # wsidicom hands pydicom an uncompressed image cut to its exact size, odd for
                # an odd-sized RGB label (463 x 387 x 3 bytes), and pydicom warns of a missing
                # padding byte the file does have: said on every run, it made a sound file
                # look damaged
                warnings.filterwarnings("ignore", category=UserWarning,
                                        message="The odd length pixel data is missing")
                arr = np.asarray(read(as_array=True))
        except Exception as exc:  # wsidicom's own errors (a pixel data length it refuses ...)
            raise SlideError(f"{self.path} {name}: {error_line(exc)}") from exc
        return to_rgb_uint8(arr, f"{self.path} {name}")

    @one_at_a_time
    def _read_level(self, level, x, y, width, height):
        try:
            lv, z = self._levels[level]
            arr = self._wsi.read_region((x, y), lv.level, (width, height), z=z,
                                        path=self._path_id, as_array=True)
        except Exception as exc:
            try:
                check = self._frame_check(level)
            except Exception:  # noqa: BLE001 - a level wsidicom cannot describe
                check = None
            raise read_failed(self.path, level, (x, y, width, height), exc, check) from exc
        judge_corrupt(self, level, x, y, self._frame_check(level), (width, height))
        return to_rgb_uint8(np.asarray(arr), str(self.path))

    def _frame_check(self, level: int):
        from iste.slides.tilecheck import DicomFrameCheck

        if level not in self._checks:
            lv, z = self._levels[level]
            try:
                syntax = str(lv.instance_at(self._path_id, z).image_data.transfer_syntax)
            except Exception:  # noqa: BLE001 - not said where wsidicom keeps it: the frames tell
                syntax = None
            self._checks[level] = DicomFrameCheck(
                self._wsi, lv.level, z, self._path_id, self._dims[level],
                (int(lv.tile_size.width), int(lv.tile_size.height)), syntax)
        return self._checks[level]

    def _stream_settings(self, level: int):
        """(settings, frames tried) of ``level``'s first frame whose JPEG headers read, of up
        to :data:`TABLE_TRIES` frames (each DICOM JPEG frame is a whole stream); (None, 0)
        where the level is not JPEG (JPEG 2000, uncompressed ...). Read at open, once
        (``self._streams``)."""
        lv, z = self._levels[level]
        try:
            check = self._frame_check(level)
        except Exception:  # noqa: BLE001 - a level wsidicom cannot describe: left as it is
            return None, 0
        if not check.active or check.codec != "JPEG":
            return None, 0
        cols = math.ceil(self._dims[level][0] / lv.tile_size.width)
        rows = math.ceil(self._dims[level][1] / lv.tile_size.height)
        tried = 0
        for index in range(min(rows * cols, TABLE_TRIES)):
            try:
                stream = self._wsi.read_encoded_tile(lv.level, (index % cols, index // cols),
                                                     z=z, path=self._path_id,
                                                     crop_to_image_boundary=False)
            except Exception:  # noqa: BLE001 - no frame there (sparse) or unreadable
                continue
            tried += 1
            settings = jpeg_settings(stream)
            if settings is not None:
                return settings, tried
        return None, tried

    def _photometric(self, level: int) -> str:
        lv, z = self._levels[level]
        try:
            return str(lv.instance_at(self._path_id, z).image_data.photometric_interpretation)
        except Exception:  # noqa: BLE001 - the plane matched within 1e-6 um: the level's
            return str(lv.default_instance.image_data.photometric_interpretation)

    def _jpeg_colour_clash(self) -> str | None:
        """How a level's JPEG frames contradict its PhotometricInterpretation in a way
        wsidicom decodes wrong, or None: frames that say YCbCr (a JFIF marker, an Adobe
        transform 1) tagged RGB, which wsidicom passes on unconverted (120 levels off,
        without a word). Frames that say RGB tagged YBR it reads by the stream."""
        for level, (settings, _) in enumerate(self._streams):
            if settings is not None and settings.colour == "YCbCr" \
                    and self._photometric(level) == "RGB":
                return (f"the JPEG frames of its level {level} say YCbCr but are tagged RGB "
                        "(PhotometricInterpretation), and wsidicom would pass their YCbCr on "
                        "as RGB (wrong colours); tag them YBR_FULL_422 (YBR_FULL if their "
                        "chroma is full resolution) to read them")
        return None

    @one_at_a_time
    def _read_quantisation(self, level):
        """From the level's first frame whose JPEG headers read (a damaged first frame
        turned deblocking off for the level without a word: up to :data:`TABLE_TRIES`
        frames are tried, then a warning); the colour from PhotometricInterpretation (RGB,
        YBR_*) where the stream does not say."""
        from dataclasses import replace

        lv, _ = self._levels[level]
        if lv.tile_size.width % 8 or lv.tile_size.height % 8:
            return None
        settings, tried = self._streams[level]
        if settings is None:
            if tried:
                warn_no_tables(self.path, level, tried)
            return None
        if settings.colour == "unknown":  # no Adobe or JFIF marker: as the header says
            photometric = self._photometric(level)
            colour = "RGB" if photometric == "RGB" else (
                "YCbCr" if photometric.startswith("YBR") else "unknown")
            settings = replace(settings, colour=colour)
        return settings.block_quantisation()

    def _close(self):
        self._wsi.close()


def _wsidicom_refusal(files, exc: BaseException) -> str:
    """Why wsidicom did not open these instances of a series, from their headers where
    its own message names no cause (a class name, 'generator raised StopIteration', 'Level
    files not found'); with the hint of another backend where OpenSlide reads them."""
    import pydicom

    volumes, kinds = [], set()
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            kind = str(ds.ImageType[2])
        except Exception:  # not DICOM, or no Image Type: not an instance of the slide
            continue
        kinds.add(kind)
        if kind == "VOLUME":
            volumes.append(ds)
    openslide = "; --backend openslide may read it"
    if not volumes:
        held = f", only {', '.join(sorted(kinds))}" if kinds else ""
        return f"no volume (pyramid level) instances{held}"
    colours = sorted({str(ds.get("PhotometricInterpretation", "")) for ds in volumes}
                     - {"RGB", "MONOCHROME2", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
    if colours:
        return f"its pixels are stored as {', '.join(colours)}, which wsidicom does not read"
    stored = _unreadable_storage(volumes)
    if stored is not None:
        return f"its pixels are stored {stored}, which wsidicom does not read"
    widths = []
    for ds in volumes:
        try:
            spacing = [float(v) for v in ds.SharedFunctionalGroupsSequence[0]
                       .PixelMeasuresSequence[0].PixelSpacing]
        except Exception:  # absent or unreadable
            spacing = []
        if len(spacing) != 2 or min(spacing) <= 0:
            return "its levels record no pixel spacing, which wsidicom needs" + openslide
        if "ImagedVolumeWidth" not in ds or "ImagedVolumeHeight" not in ds:
            return ("its levels record no ImagedVolumeWidth/Height, which wsidicom needs"
                    + openslide)
        widths.append(int(ds.get("TotalPixelMatrixColumns", 0)))
    steps = sorted({w for w in widths if w > 0}, reverse=True)
    odd = [w for w in steps[1:] if abs(math.log2(steps[0] / w) % 1 - 0.5) < 0.49]
    if odd:
        return (f"its levels are not powers of two apart ({steps[0]} and {odd[0]} px wide), "
                "which wsidicom needs" + openslide)
    return error_line(exc) + openslide


def _unreadable_storage(volumes) -> str | None:
    """How the first of these volume instances (pydicom headers) that wsidicom turns away
    stores its pixels: plane by plane, or a colour and transfer syntax no wsidicom codec
    pairs (uncompressed YBR_FULL, say); None where it reads them all. wsidicom leaves such
    instances out without a word and then says 'Level files not found'."""
    from wsidicom.codec import Codec

    for ds in volumes:
        if int(ds.get("PlanarConfiguration", 0)) != 0:
            return "plane by plane (PlanarConfiguration 1)"
        syntax = ds.file_meta.TransferSyntaxUID
        colour = str(ds.get("PhotometricInterpretation", ""))
        try:
            readable = Codec.is_supported(syntax, int(ds.SamplesPerPixel),
                                          int(ds.BitsStored), colour)
        except Exception:  # noqa: BLE001 - attributes it cannot take: not this check's to say
            continue
        if not readable:
            return f"as {colour} in {syntax.name or syntax}"  # a pydicom UID
    return None


def _unsupported_samples(levels) -> str | None:
    """Why iste cannot read the pixels of these wsidicom levels, or None: samples other than
    8-bit grey or RGB (wsidicom reads 16-bit grey, as uint16)."""
    for level in levels:
        data = level.default_instance.image_data
        bits, samples = int(data.bits), int(data.samples_per_pixel)
        if bits != 8 or samples not in (1, 3):
            what = f"{bits}-bit samples" if bits != 8 else f"{samples} samples per pixel"
            advice = f"; {DEEP_ADVICE}" if bits > 8 else ""
            return f"{what} are not supported (8-bit grey or RGB only){advice}"
    return None


def _frame_too_large(levels) -> str | None:
    """Why one frame of these wsidicom levels would not decode in the memory available
    (:func:`~iste.data.memory.decode_memory_problem`), or None: a frame is decoded whole to
    read any pixel of it, and a level of one 65528 x 65528 px frame holding 600 bytes of JPEG
    was decoded to 12 GiB at a slide job's first read."""
    from iste.data.memory import decode_memory_problem

    for index, level in enumerate(levels):
        tile = level.tile_size
        problem = decode_memory_problem((int(tile.height), int(tile.width)))
        if problem is not None:
            return f"a frame of level {index} is {tile.width} x {tile.height} px; {problem}"
    return None


def _one_path_and_plane(path: Path, levels, pyramids: int) -> tuple[str, float, list]:
    """The optical path (level 0's default in wsidicom: its first) and focal plane
    (:func:`_focal_plane`) read from every level, and the levels that hold them as (level,
    its value of that plane); a warning names the choice when the slide holds more paths,
    planes or pyramids than that."""
    path_id = levels[0].default_instance.default_path
    z = _focal_plane(levels, path_id)
    kept, planes = [], set()
    for lv in levels:
        here = lv.focal_planes_by_optical_path.get(path_id, [])
        planes.update(lv.focal_planes)
        match = min(here, key=lambda p: abs(p - z), default=None)
        if match is not None and abs(match - z) < 1e-6:
            kept.append((lv, match))
    paths = sorted({p for lv in levels for p in lv.optical_paths})
    if len(paths) > 1 or len(planes) > 1 or pyramids > 1:
        said = [f"{len(paths)} optical paths ({', '.join(paths)})" if len(paths) > 1 else "",
                f"{len(planes)} focal planes ({', '.join(f'{p:g}' for p in sorted(planes))} "
                "um)" if len(planes) > 1 else "",
                f"{pyramids} pyramids" if pyramids > 1 else ""]
        left = len(levels) - len(kept)
        warnings.warn(f"{path}: the slide holds {' and '.join(s for s in said if s)}; iste "
                      f"reads optical path {path_id} at focal plane {z:g} um of the first "
                      "pyramid only" + (f" ({left} level(s) without them left out)"
                                        if left else ""), stacklevel=3)
    return path_id, z, kept


def _focal_plane(levels, path_id: str) -> float:
    """The focal plane of level 0 on optical path ``path_id`` that the most levels hold (a
    stack scanned at level 0 only has its lower levels at the nominal plane), of those the
    one nearest the middle of level 0's stack. wsidicom's default middle is half the stack's
    extent, (max - min) / 2, not its centre: of planes at -1.5, 0 and 1.5 um it read the top
    one, out of focus, and left out every level without it."""
    planes = levels[0].focal_planes_by_optical_path.get(path_id) or [
        levels[0].default_instance.default_z]
    middle = (min(planes) + max(planes)) / 2

    def held(z: float) -> int:
        return sum(any(abs(p - z) < 1e-6 for p in lv.focal_planes_by_optical_path.get(
            path_id, [])) for lv in levels)

    return max(planes, key=lambda z: (held(z), -abs(z - middle), -abs(z)))


def _left_out(headers: dict, opened) -> str | None:
    """The first whole-slide image of the series (its files' ``headers``: a level, label or
    overview) that wsidicom did not open (``opened``: its files), as a refusal, or None:
    wsidicom passes over an instance it does not support (planar configuration 1, an
    unknown transfer syntax ...) with a log line at most, and the slide opened without that
    level."""
    kept = {str(Path(str(f)).resolve()) for f in opened}
    for p, header in headers.items():
        if header.sop_class == WSI_STORAGE and str(p.resolve()) not in kept:
            return (f"wsidicom does not read {p.name}, an image of the slide's series, and "
                    "would leave it out; --backend openslide may read it")
    return None
