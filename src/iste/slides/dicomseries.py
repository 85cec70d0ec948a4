"""Which files make one DICOM slide, read from their headers, and whether they are all there.

A slide is the instances of one series (its levels, label and overview), in one folder or
named by one of its files. wsidicom and OpenSlide open what they find: these checks refuse,
before them, a folder of several series, one instance twice, a series spread over several
studies, a file whose pixel data are cut short (:func:`iste.slides.dicomcheck.truncation`)
and a level split over several files (a concatenation) with a part missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from iste.slides.reader import SlideError
from iste.text import error_line

__all__ = ["folder_headers", "series_headers", "check_one_series", "check_one_study",
           "check_complete", "has_dicom_preamble", "WSI_STORAGE"]

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""SOPClassUID of a VL Whole Slide Microscopy Image: a level, label, overview or
thumbnail of a slide."""


class _Concatenated(NamedTuple):
    """An instance's part of a DICOM concatenation (one level split over several files)."""
    uid: str  # ConcatenationUID
    number: int  # InConcatenationNumber, from 1
    total: int | None  # InConcatenationTotalNumber (optional in DICOM)
    offset: int  # ConcatenationFrameOffsetNumber: the frames of the parts before it
    frames: int  # NumberOfFrames


class _DicomHeader(NamedTuple):
    """What a file's DICOM header says of the instances it goes with: ``uids``
    (SeriesInstanceUID, SOPInstanceUID), None when not DICOM or no series; ``study``
    (StudyInstanceUID), None when not DICOM or no study; ``truncation``: where its pixel data
    runs past the file's end (:func:`iste.slides.dicomcheck.truncation`), None when it does
    not; ``part``: its part of a concatenation, None when it is none; ``unreadable``: why
    the header of a file that says it is DICOM (its preamble's "DICM") does not read (cut
    short, damaged), None when it reads or is not DICOM; ``sop_class``: its SOPClassUID."""
    uids: tuple[str, str] | None
    study: str | None
    truncation: str | None = None
    part: _Concatenated | None = None
    unreadable: str | None = None
    sop_class: str | None = None


def _dicom_header(p: Path) -> _DicomHeader:
    """:class:`_DicomHeader` of file ``p``, its header read once."""
    import pydicom

    from iste.slides.dicomcheck import truncation

    try:
        with open(p, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "Rows",
                "ExtendedOffsetTable", "ConcatenationUID", "InConcatenationNumber",
                "InConcatenationTotalNumber", "ConcatenationFrameOffsetNumber",
                "NumberOfFrames", "SOPClassUID"])
            syntax = ds.file_meta.get("TransferSyntaxUID")
            cut = None
            if syntax is not None and syntax.is_little_endian:  # where pydicom stopped
                cut = truncation(f.fileno(), f.tell(), os.fstat(f.fileno()).st_size,
                                 explicit_vr=not syntax.is_implicit_VR, rows="Rows" in ds,
                                 extended_offsets=ds.get("ExtendedOffsetTable"))
    except Exception as exc:  # not DICOM, or a DICOM file that does not read
        return _DicomHeader(None, None, unreadable=error_line(exc) if has_dicom_preamble(p)
                            else None)
    try:
        uids = str(ds.SeriesInstanceUID), str(ds.get("SOPInstanceUID", ""))
    except Exception:
        uids = None
    try:
        study = str(ds.StudyInstanceUID)
    except Exception:
        study = None
    try:
        total = ds.get("InConcatenationTotalNumber")
        part = _Concatenated(str(ds.ConcatenationUID), int(ds.InConcatenationNumber),
                             None if total is None else int(total),
                             int(ds.ConcatenationFrameOffsetNumber), int(ds.NumberOfFrames))
    except Exception:  # not a concatenation's part (or not one that says where it goes)
        part = None
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    sop_class = None if sop_class is None else str(sop_class)
    unreadable = None  # pydicom reads what a file cut inside its header holds, without error
    if sop_class is None and has_dicom_preamble(p):
        unreadable = "no SOP class in its header"
    elif sop_class == WSI_STORAGE and uids is None:
        unreadable = "a whole-slide image without a SeriesInstanceUID"
    return _DicomHeader(uids, study, cut, part, unreadable, sop_class)


def has_dicom_preamble(p: Path) -> bool:
    """Whether file ``p`` says it is DICOM: "DICM" after its 128-byte preamble."""
    try:
        with open(p, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def folder_headers(folder: Path) -> dict[Path, _DicomHeader]:
    """The header of each file in ``folder`` (in name order)."""
    return {p: _dicom_header(p) for p in sorted(folder.iterdir()) if p.is_file()}


def series_headers(path: Path) -> dict[Path, _DicomHeader]:
    """The headers of a DICOM file and of the other files of its series in the same folder
    (a slide's levels, label and overview are instances of one series), in name order, as
    OpenSlide opens them; only ``path``'s when it is not DICOM or has no series."""
    own = _dicom_header(path)
    if own.uids is None:
        return {path: own}
    headers = {}
    for p in sorted(path.parent.iterdir()):
        if p.is_file():
            header = own if p == path else _dicom_header(p)
            if p == path or (header.uids is not None and header.uids[0] == own.uids[0]):
                headers[p] = header
    return headers


def check_one_study(path: Path, headers: dict[Path, _DicomHeader]) -> None:
    """SlideError when the instances of a series (their ``headers``) disagree on its
    StudyInstanceUID: wsidicom would open those of one study and leave the others out
    (levels, the label) without a word (OpenSlide reads them)."""
    by_study: dict[str, str] = {}
    for p, header in headers.items():
        if header.study is not None:  # not DICOM, or no study: not wsidicom's to group
            by_study.setdefault(header.study, p.name)
    if len(by_study) > 1:
        names = " and ".join(list(by_study.values())[:2])
        raise SlideError(f"cannot open slide {path}: {names} are instances of one series in "
                         f"{len(by_study)} studies (StudyInstanceUID), of which wsidicom would "
                         "read one; --backend openslide may read them all")


def check_complete(path: Path, headers: dict[Path, _DicomHeader]) -> None:
    """SlideError naming the first of a DICOM slide's files (their ``headers``) whose header
    does not read though it says it is DICOM (a copy cut inside it, which both libraries
    passed over: the slide opened without that level), or whose pixel data runs past its
    end: a copy cut short, whose last frames would decode to grey blocks without an error;
    or a level split over several files (a concatenation) of which one
    is missing, which wsidicom opens and then fails to read where that part's frames lie."""
    for p, header in headers.items():
        if header.unreadable is not None:  # wsidicom and OpenSlide pass over it: a level lost
            raise SlideError(f"cannot open slide {path}: {p.name} is a DICOM file whose header "
                             f"does not read, cut short or damaged ({header.unreadable})")
        if header.truncation is not None:
            named = "" if p == path else f" {p.name}"
            raise SlideError(f"cannot open slide {path}: truncated file{named} "
                             f"({header.truncation})")
    parts: dict[str, list[tuple[_Concatenated, str]]] = {}
    for p, header in headers.items():
        if header.part is not None:
            parts.setdefault(header.part.uid, []).append((header.part, p.name))
    for found in parts.values():
        missing = _missing_parts(sorted(found))
        if missing:
            raise SlideError(f"cannot open slide {path}: part(s) {missing} of the "
                             "concatenation (one level split over several files) of "
                             f"{found[0][1]} are missing; copy the slide's files whole")


def _missing_parts(found: list[tuple[_Concatenated, str]]) -> str | None:
    """The numbers of a concatenation's missing parts (``found``: its parts and file names,
    by number), as text, or None when none is: numbers 1 .. InConcatenationTotalNumber
    (1 .. the last found where no part records it), each part's frames where the ones before
    it end (a missing last part is told only by the total)."""
    numbers = {part.number for part, _ in found}
    last = max([*numbers, *(part.total for part, _ in found if part.total is not None)])
    absent = [n for n in range(1, last + 1) if n not in numbers]
    if not absent:
        frames = 0
        for part, _ in found:
            if part.offset != frames:  # a part with the same number twice, or frames lost
                return f"holding frames {frames + 1} to {part.offset}"
            frames += part.frames
        return None
    return f"{', '.join(map(str, absent))} of {last}"


def check_one_series(folder: Path, headers: dict[Path, _DicomHeader]) -> None:
    """SlideError when a DICOM folder (the ``headers`` of its files) holds instances of more
    than one series (slide), which wsidicom would open one of and ignore the rest without a
    word, or one instance twice (a copied file), which it names only by object addresses."""
    by_series: dict[str, list[str]] = {}
    by_instance: dict[str, list[str]] = {}
    for p, header in headers.items():
        uids = header.uids
        if uids is not None:
            by_series.setdefault(uids[0], []).append(p.name)
            if uids[1]:
                by_instance.setdefault(uids[1], []).append(p.name)
    if len(by_series) > 1:
        names = "; ".join(f"{', '.join(files[:2])}{' ...' if len(files) > 2 else ''}"
                          for files in by_series.values())
        raise SlideError(f"cannot open slide {folder}: it holds {len(by_series)} DICOM series "
                         f"({names}); give one series' folder or one of its files")
    twice = next((files for files in by_instance.values() if len(files) > 1), None)
    if twice:
        raise SlideError(f"cannot open slide {folder}: {' and '.join(twice[:2])} are the same "
                         "DICOM instance (a copy); remove one")
