"""What the file backends of :func:`iste.slides.formats.open_slide` share: one lock on the
file, a read that failed or found damaged tiles said as such, a library slide's levels.

Each backend (:mod:`~iste.slides.tiffslide_reader`, :mod:`~iste.slides.openslide_reader`,
:mod:`~iste.slides.wsidicom_reader`) implements :class:`~iste.slides.reader.SlideReader`
(documented there); it only adapts its library's conventions (PIL/RGBA, level-0 locations)
to it, and refuses truncated TIFF and DICOM files up front.

Threads: a reader may be read from several threads (the viewer's I/O threads and its model
worker). Each backend reads its file through one library handle, so what touches the file runs
one call at a time under the reader's own lock (:func:`one_at_a_time`); work on the pixels
after the read (deblocking, resizing) runs outside it, side by side.
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import numpy as np

from iste.slides.reader import SlideReader, UnreadableRegionError, to_rgb_uint8
from iste.slides.scale import mpp_pair, positive
from iste.text import error_line

__all__ = ["ASSOCIATED_ALIASES", "FileBackend", "LibrarySlide", "associated_names",
           "one_at_a_time", "judge_corrupt", "read_failed"]


class FileBackend(SlideReader):
    """A reader of a slide file through a library whose file handle is not safe to read from
    several threads at once: its reading methods, wrapped in :func:`one_at_a_time`, run
    under the one lock made here (the rule is in :class:`SlideReader`'s docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self._file_lock = threading.Lock()


def one_at_a_time(method):
    """``method`` of a :class:`FileBackend` under its file lock."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._file_lock:
            return method(self, *args, **kwargs)
    return locked


def judge_corrupt(reader: SlideReader, level: int, x: int, y: int, check,
                   size: tuple[int, int]) -> None:
    """Each stored tile of ``level`` under the read of ``size`` (width, height) at (x, y) that
    ``check`` (:class:`~iste.slides.tilecheck.TileCheck`) finds corrupt: a warning, or where
    ``reader.corrupt_is_unreadable`` an :class:`UnreadableRegionError` naming them all."""
    if reader.corrupt_is_unreadable:
        found = check.damaged(x, y, *size)
        if found:
            raise UnreadableRegionError(
                f"cannot read {reader.path} (level {level}, x={x}, y={y}): corrupt "
                f"{check.codec} data: {found[0][2]}{_naming(check, found)}", level=level,
                box=(x, y, *size), tiles=tuple((col, row) for col, row, _ in found))
        return
    for col, row, problem in check.problems(x, y, *size):
        warnings.warn(f"{reader.path}: corrupt {check.codec} data in level {level}, tile "
                      f"column {col} row {row} (read at x={x}, y={y}): {problem}; its pixels "
                      "may be wrong", stacklevel=4)


def read_failed(path: Path, level: int, box: tuple[int, int, int, int], exc: BaseException,
                 check) -> UnreadableRegionError:
    """The error of a read of ``box`` (x, y, width, height in ``level``'s frame) that failed
    with ``exc``: it names the stored tiles under the read which ``check`` (a
    :class:`~iste.slides.tilecheck.TileCheck`, or None) finds damaged, " (damaged JPEG tile
    column C row R, ...)", where the damage is and not only where the read began, and
    carries them (:class:`~iste.slides.reader.UnreadableRegionError`). A MemoryError is raised
    as it is: memory ran out, the file is not damaged (it was said as an unreadable region,
    with the advice to fill it from a coarser level).
    """
    if isinstance(exc, MemoryError):
        raise exc
    x, y, width, height = box
    try:
        found = [] if check is None else check.damaged(x, y, width, height)
    except Exception:  # noqa: BLE001 - the read's own error is the one to give
        found = []
    return UnreadableRegionError(f"cannot read {path} (level {level}, x={x}, y={y}): "
                                 f"{error_line(exc)}{_naming(check, found)}", level=level,
                                 box=box, tiles=tuple((col, row) for col, row, _ in found))


def _naming(check, found: list[tuple[int, int, str]]) -> str:
    """" (damaged JPEG tile column C row R, ... and N more)" for the damaged tiles ``found``
    by ``check`` under a read (its first three named), "" for none."""
    if not found:
        return ""
    listed = ", ".join(f"column {col} row {row}" for col, row, _ in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f" (damaged {check.codec} tile {listed}{more})"


ASSOCIATED_ALIASES = {"label image": "label", "macro image": "macro", "overview": "macro",
                      "overview image": "macro", "thumbnail image": "thumbnail"}
"""iste's name (:attr:`SlideReader.associated_images`) of an associated image a library
names otherwise, compared in lower case: the series names Bio-Formats gives a scan's label
and macro ("label image", "macro image"; a DICOM slide's "LABEL", "OVERVIEW"), which an
OME-TIFF converted by Bio-Formats (bfconvert, raw2ometiff) carries and tiffslide passes on.
Under those names a job left the label and macro out of its output without a word."""


def associated_names(library_names) -> dict[str, str]:
    """{iste's name: the library's} of a slide's associated images: "label", "macro",
    "thumbnail" by :data:`ASSOCIATED_ALIASES` (a library's own "label" wins over an alias),
    other names as they are."""
    names = {name: name for name in library_names}
    for name in sorted(library_names):
        ours = ASSOCIATED_ALIASES.get(name.strip().lower(), name.strip().lower())
        if ours in ("label", "macro", "thumbnail") and ours not in names:
            names[ours] = names.pop(name)
    return names


class LibrarySlide(FileBackend):
    """What the OpenSlide-like backends share: an opened library slide, its levels, mpp,
    objective power and associated images (by iste's names: :func:`associated_names`),
    closing it."""

    _prefix = ""  # the library's property namespace: "openslide." or "tiffslide."

    def __init__(self, path: Path, slide):
        super().__init__(path)
        self._slide = slide
        props = slide.properties
        self._mpp = mpp_pair(props.get(self._prefix + "mpp-x"),
                              props.get(self._prefix + "mpp-y"))
        self._power = positive(props.get(self._prefix + "objective-power"))
        self._dims = [tuple(int(v) for v in d) for d in slide.level_dimensions]
        self._downsamples = [float(d) for d in slide.level_downsamples]
        self._associated = associated_names(slide.associated_images)

    @property
    def objective_power(self):
        return self._power

    @property
    def associated_images(self):
        return tuple(sorted(self._associated))

    @one_at_a_time
    def read_associated(self, name):
        if name not in self._associated:
            return super().read_associated(name)
        image = self._slide.associated_images[self._associated[name]]
        return to_rgb_uint8(np.asarray(image), f"{self.path} {name}")

    @property
    def level_dimensions(self):
        return list(self._dims)

    @property
    def level_downsamples(self):
        return list(self._downsamples)

    @property
    def mpp(self):
        return self._mpp

    def _close(self):
        self._slide.close()
