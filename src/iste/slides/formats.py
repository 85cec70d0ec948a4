"""Which files are slides and which library opens them: the one place that knows.

Every part of iste that meets a slide (``iste upscale``, cohorts, ``iste serve``, ``iste eval``,
training sources, the samples) asks this module: :func:`is_slide` for "is this a slide?",
:func:`open_slide` to read it.

Backends:
    ``tiffslide``  pure Python (tifffile): SVS, NDPI, SCN, Philips TIFF, QPTIFF, generic / OME
                   TIFF.
    ``openslide``  the OpenSlide C library: all of the above plus MIRAX (.mrxs), Hamamatsu VMS,
                   Ventana BIF, and DICOM WSI (OpenSlide 4).
    ``wsidicom``   DICOM WSI (DICOM Part 14): a ``.dcm`` file or a folder of the instances of
                   one slide.
    ``auto``       (default) wsidicom for DICOM; OpenSlide for formats tiffslide cannot read
                   (MIRAX, VMS/VMU) or reads less of (BIF); tiffslide otherwise, and OpenSlide
                   where tiffslide refuses a TIFF it would read wrong or not at all
                   (:class:`~iste.slides.tiffcheck.TiffSlideRefusal`: Aperio's YCbCr JPEG
                   2000, YCbCr outside JPEG, palette or planar samples, a Ventana BIF named
                   .tif, a sparse Philips TIFF).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from iste.paths import link_note
from iste.slides.dicomseries import has_dicom_preamble
from iste.slides.reader import SlideError, SlideReader

__all__ = ["AUTO_BACKEND", "BACKENDS", "Backend", "TIFF_SUFFIXES", "DICOM_SUFFIXES",
           "SLIDE_SUFFIXES", "open_slide", "is_slide", "is_dicom", "backend_for"]

Backend = Literal["auto", "tiffslide", "openslide", "wsidicom"]
BACKENDS: tuple[str, ...] = ("auto", "tiffslide", "openslide", "wsidicom")
AUTO_BACKEND = ("wsidicom for DICOM, OpenSlide for MIRAX/VMS/VMU, BIF and the TIFFs tiffslide "
                "would read wrong, tiffslide otherwise")
"""What ``auto`` picks, in the words of the commands' ``--backend`` help."""

TIFF_SUFFIXES = (".tif", ".tiff")  # a slide when tiled or pyramidal, else a plain image
DICOM_SUFFIXES = (".dcm",)
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu")
# Suffixes tiffslide opens but reads less of than OpenSlide (a BIF's pixel size, magnification
# and tile overlaps): OpenSlide's under auto, named up front (tiffslide would refuse them).
_OPENSLIDE_FIRST = (".bif",)
# Suffixes that always mean a whole-slide image.
WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".svslide", ".qptiff", *_OPENSLIDE_ONLY,
                *DICOM_SUFFIXES)
SLIDE_SUFFIXES = (*WSI_SUFFIXES, *TIFF_SUFFIXES)


def is_dicom(path: str | os.PathLike) -> bool:
    """A DICOM file (``.dcm`` or the ``DICM`` preamble), or a folder holding DICOM files
    (the instances of one slide).

    Raises:
        SlideError: a folder holding DICOM files beside other slides (slide files, or
            folders of DICOM files): read as one DICOM slide its other slides would be
            left out, read as a folder of slides its DICOM files would.
    """
    path = Path(path)
    if not path.is_dir():
        return _is_dicom_file(path)
    dicom, others, folders = [], [], []
    for p in sorted(path.iterdir()):
        if p.is_file() and _is_dicom_file(p):
            dicom.append(p.name)
        elif p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES:
            others.append(p.name)
        elif p.is_dir():
            folders.append(p)
    if dicom:  # only then its folders' files are looked at (a cohort's work folders: many)
        others = sorted([*others, *(p.name for p in folders if any(
            _is_dicom_file(q) for q in p.iterdir() if q.is_file()))])
    if dicom and others:
        raise SlideError(f"folder {path} holds DICOM files ({_some(dicom)}) beside other slides "
                         f"({_some(others)}): a DICOM slide's folder holds its instances alone; "
                         "move the DICOM files into a folder of their own")
    return bool(dicom)


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)


def is_slide(path: str | os.PathLike, *, tiff_as_slide: bool = True) -> bool:
    """Whether ``path`` is a whole-slide image by its name (or, for a folder, a DICOM slide).

    tiff_as_slide: count every .tif/.tiff (True) or only tiled / pyramidal ones (False: an
        untiled single-level TIFF is a plain image).
    """
    path = Path(path)
    if path.is_dir():
        return is_dicom(path)
    suffix = path.suffix.lower()
    if suffix in WSI_SUFFIXES:
        return True
    if suffix in TIFF_SUFFIXES:
        return tiff_as_slide or _is_tiled_tiff(path)
    return False


def _is_tiled_tiff(path: Path) -> bool:
    from iste.data.integrity import open_tiff

    if not path.is_file():
        return False
    try:
        with open_tiff(path) as tif:
            return bool(tif.pages.first.is_tiled) or len(tif.series[0].levels) > 1
    except Exception:  # unreadable: the image reader reports it
        return False


def backend_for(path: Path, backend: str = "auto") -> str:
    """The backend ``auto`` picks for ``path`` (see the module docstring)."""
    if backend != "auto":
        return backend
    if is_dicom(path):
        return "wsidicom"
    if path.suffix.lower() in (*_OPENSLIDE_ONLY, *_OPENSLIDE_FIRST):
        return "openslide"
    return "tiffslide"


def open_slide(path: str | os.PathLike, *, backend: Backend | None = "auto") -> SlideReader:
    """Open a whole-slide image.

    Args:
        path: SVS, generic tiled / pyramidal TIFF, OME-TIFF, NDPI, MIRAX, a DICOM WSI file or
            folder ... (see the module docstring for who reads what).
        backend: ``"auto"`` (default; None means the same), ``"tiffslide"``, ``"openslide"``
            or ``"wsidicom"``.

    Raises:
        SlideError: missing path, unsupported format, truncated TIFF or DICOM file (tile or
            frame data past the end of the file), samples that are not 8-bit.
        TiffSlideRefusal: (a SlideError) ``backend="tiffslide"`` on a TIFF it would read wrong
            (under ``auto`` OpenSlide reads it).
    """
    from iste.data.images import plain_image_kind
    from iste.slides.openslide_reader import OpenSlideReader
    from iste.slides.tiffcheck import TiffSlideRefusal, check_tiff_complete
    from iste.slides.tiffslide_reader import TiffSlideReader
    from iste.slides.wsidicom_reader import WsiDicomReader

    path = Path(path)
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise SlideError(f"unknown slide backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if not path.exists():
        raise SlideError(f"cannot open slide {path}: no such file{link_note(path)}")
    # no slide reader opens a PNG or JPEG, and tiffslide's refusal of one ("not a TIFF file:
    # header=...") did not say what the file is
    plain = plain_image_kind(path)
    if plain is not None:
        raise SlideError(f"cannot open slide {path}: it is a {plain} image, not a whole-slide "
                         "image (`iste upscale` reads a .png or .jpg whole)")
    chosen = backend_for(path, backend)
    if chosen == "tiffslide" and not path.is_file():
        raise SlideError(f"cannot open slide {path}: not a regular file")
    readers = {"tiffslide": TiffSlideReader, "openslide": OpenSlideReader,
               "wsidicom": WsiDicomReader}
    try:
        check_tiff_complete(path, chosen)
        return readers[chosen](path)
    except TiffSlideRefusal as refusal:
        if backend != "auto":
            raise
        try:  # a TIFF tiffslide would read wrong: OpenSlide reads it
            check_tiff_complete(path, "openslide")
            return OpenSlideReader(path)
        except SlideError as exc:
            said = str(exc).removeprefix(f"cannot open slide {path}: ")
            raise SlideError(f"cannot open slide {path}: {refusal.what}, and OpenSlide cannot "
                             f"read it either ({said})") from exc
