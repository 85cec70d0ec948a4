"""The slides a server may show: exactly those given on the command line, under opaque ids.

A slide id is 16 hex digits of a sha256 of the slide's resolved path and its files' size,
modification time, inode and ctime (:func:`slide_id_for`): stable across restarts (bookmarks
and the disk cache keep working), different when a file changes, and it reveals nothing about
where the file lives. Requests name slides only by id; an id that is not in the catalog is
unknown (HTTP 404) whatever it contains.

Clients see a slide's id and a display name ("Slide 1", "Slide 2", ... in command-line order),
never its file name: slide file names often carry accession numbers or patient names. The
server prints which file each display name stands for on its own console
(:meth:`SlideCatalog.sources`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from iste.paths import link_note
from iste.serve.colour import DisplayMode
from iste.serve.deepzoom import MAX_SCALE, DeepZoom, check_max_scale
from iste.serve.pixels import ServedSlide
from iste.serve.tiles import TileRefused
from iste.slides.reader import SlideError, SlideReader
from iste.slides.deblocked import DeblockMode, deblocked
from iste.slides.formats import open_slide

__all__ = ["SlideCatalog", "SlideChanged", "UnknownSlide", "slide_id_for", "find_slides",
           "ID_PATTERN"]

ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_POWER_PER_MPP = 10.0  # the usual equivalence: 10x objective ~ 1.0 micron per pixel


class UnknownSlide(KeyError):
    """No served slide has this id."""


def slide_id_for(path: Path, files: tuple[Path, ...] | None = None) -> str:
    """16 hex digits of a sha256 of the slide's resolved path and the size, modification
    time, inode and status-change time (ctime) of each file it is read from (``files``, as
    :attr:`SlideReader.files` lists them: a DICOM series' or MIRAX data folder's files;
    default ``path`` alone). The ctime because nothing else tells a slide apart from another
    of the same size copied over it with its modification time set back (``cp``, then
    ``touch -r``): no program can set it back, and hashing every served slide's bytes at each
    start would take minutes. It also changes on ``chmod`` or a new hard link, which costs a
    new id (an old link to the slide is unknown) and the slide's cached tiles, never a
    stale tile."""
    text = str(path.resolve())
    for f in files or (path,):
        st = f.stat()
        text += (f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
                 f"\0{st.st_ctime_ns}")
    # a file name is bytes: one that is not UTF-8 (copied from another system) is hashed as
    # it is on disk (os.fsencode's rule; a UTF-8 name's bytes, and so its id, are unchanged)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def find_slides(specs: list[str | os.PathLike]) -> list[Path]:
    """Slide files named on the command line: files as given, a DICOM folder as one slide,
    other folders expanded to the slides they hold (not recursive). Raises ValueError for a
    missing path or an empty folder."""
    from iste.slides.cohort import list_slides
    from iste.slides.formats import is_dicom

    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir() and is_dicom(p):  # a DICOM WSI: one slide
            paths.append(p)
        elif p.is_dir():
            paths.extend(list_slides(p))
        elif p.is_file():
            paths.append(p)
        else:
            raise ValueError(f"{p}: no such slide file or folder{link_note(p)}")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    return unique


@dataclass(frozen=True)
class _Entry:
    id: str
    served: ServedSlide
    source: str | None = None  # the file, for the server's console only
    files: tuple[Path, ...] = ()  # what the id was made of (slide_id_for), when from a file


class SlideChanged(TileRefused):
    """A served slide's file changed on disk after the server opened it (logged once; the
    viewer is told so, without the file's name)."""

    PUBLIC = ("the slide's file changed on disk after the server opened it; restart iste "
              "serve to show it as it is now")

    def __init__(self, message: str):
        super().__init__(message, self.PUBLIC)


class SlideCatalog:
    """Served slides by id, in the order given. ``files``: per slide opened from a file, the
    files its id was made of (:func:`slide_id_for` of ``sources[i]`` and them), which
    :meth:`check_unchanged` looks at again."""

    def __init__(self, slides: list[tuple[str, ServedSlide]], *,
                 sources: list[str] | None = None,
                 files: list[tuple[Path, ...]] | None = None):
        if not slides:
            raise ValueError("no slide to serve")
        self._entries: dict[str, _Entry] = {}
        for i, (slide_id, served) in enumerate(slides):
            if not ID_PATTERN.match(slide_id) or slide_id in self._entries:
                raise ValueError(f"invalid or duplicate slide id {slide_id!r}")
            self._entries[slide_id] = _Entry(slide_id, served, sources[i] if sources else None,
                                             files[i] if files else ())

    def check_unchanged(self, slide_id: str) -> None:
        """Raise :class:`SlideChanged` if the files of slide ``slide_id`` are no longer those
        it was opened from (its id would differ now: rewritten in place, replaced, removed).
        A few ``stat`` calls: run before a tile of it is stored, so that tiles read from
        another file's bytes are neither cached nor shown beside the old slide's under its
        id (a slide given as an open reader, without files, is not checked)."""
        entry = self._entries[slide_id]
        if not entry.files:
            return
        try:
            same = slide_id_for(Path(entry.source or entry.files[0]), entry.files) == slide_id
        except OSError:
            same = False
        if not same:
            raise SlideChanged(f"{entry.source} changed on disk after the server opened it "
                               "(its tiles are no longer rendered); restart iste serve to "
                               "show it as it is now")

    @contextlib.contextmanager
    def reading(self, slide_id: str) -> Iterator[None]:
        """Around a read of slide ``slide_id``: a read that fails because the files changed
        (cut short by a copy over them, removed) raises :class:`SlideChanged`, the one line
        that says so, instead of the decoder's error; the reader's own one-line refusal of
        an unchanged file (:class:`SlideError`: data that does not decode) becomes a
        :class:`TileRefused` of that line, logged without a traceback; other failures pass
        as they are."""
        try:
            yield
        except SlideError as err:
            self.check_unchanged(slide_id)
            raise TileRefused(str(err)) from err
        except Exception:
            self.check_unchanged(slide_id)
            raise

    @classmethod
    def open(cls, paths: list[Path], *, max_scale: float = MAX_SCALE,
             backend: str = "auto", deblock: DeblockMode = "auto",
             colour: DisplayMode = "srgb") -> "SlideCatalog":
        """Open every slide (JPEG-compressed ones read through :func:`deblocked` by
        ``deblock``; shown by ``colour``, :data:`~iste.serve.colour.DISPLAY_MODES`); one that
        cannot be opened, not read (another user's file, a disk error) or not served (a 1 x 1
        px slide at ``max_scale`` 1.2: no level it could show) is skipped with a warning (an
        error when none can)."""
        check_max_scale(max_scale)  # the server's own: not one slide's to skip
        slides, sources, files, errors = [], [], [], []
        try:
            for path in paths:
                try:
                    reader = open_slide(path, backend=backend)  # type: ignore[arg-type]
                except (SlideError, OSError) as err:
                    if not isinstance(err, SlideError):
                        err = SlideError(f"cannot open slide {path}: {err.strerror or err}")
                    errors.append(str(err))
                    warnings.warn(f"skipping {path.name}: {err}", stacklevel=2)
                    continue
                try:
                    reader = deblocked(reader, deblock)
                    served = serve_slide(reader, f"Slide {len(slides) + 1}", max_scale,
                                         colour=colour)
                except ValueError as err:  # this slide's own (1 x 1 px at --max-scale 1.2)
                    reader.close()
                    errors.append(str(err))
                    warnings.warn(f"skipping {path.name}: {err}", stacklevel=2)
                    continue
                except BaseException:
                    reader.close()
                    raise
                try:
                    files.append(tuple(reader.files))
                    slides.append((slide_id_for(path, files[-1]), served))
                    sources.append(str(path))
                except BaseException:
                    reader.close()
                    raise
            if not slides:
                raise ValueError("no slide could be opened" + (f": {errors[0]}" if errors else ""))
            return cls(slides, sources=sources, files=files)
        except BaseException:
            for _, served in slides:
                served.slide.close()
            raise

    def get(self, slide_id: str) -> ServedSlide:
        entry = self._entries.get(slide_id) if ID_PATTERN.match(slide_id) else None
        if entry is None:
            raise UnknownSlide(slide_id)
        return entry.served

    def ids(self) -> list[str]:
        return list(self._entries)

    def sources(self) -> list[tuple[str, str]]:
        """(display name, file) of every slide opened from a file: for the server's console,
        never for clients."""
        return [(e.served.name, e.source) for e in self._entries.values() if e.source]

    def describe(self, slide_id: str) -> dict:
        """What the viewer page needs to know about a slide: id and display name, no file
        name or path."""
        served = self.get(slide_id)
        zoom, slide = served.zoom, served.slide
        mpp = slide.mpp
        return {
            "id": slide_id, "name": served.name,
            "width": zoom.width, "height": zoom.height,
            "mpp": None if mpp is None else list(mpp),
            "magnification": None if mpp is None else _POWER_PER_MPP / mpp[0],
            "max_scale": zoom.max_scale, "dzi_size": list(zoom.full_size),
            "level_count": zoom.level_count, "native_level": zoom.native_level,
            "first_sr_level": zoom.first_sr_level, "tile": zoom.tile,
        }

    def close(self) -> None:
        for entry in self._entries.values():
            entry.served.slide.close()


def serve_slide(reader: SlideReader, name: str, max_scale: float = MAX_SCALE, *,
                colour: DisplayMode = "srgb") -> ServedSlide:
    """A reader wrapped with its DeepZoom geometry; ``name`` is what clients see."""
    w, h = reader.dimensions
    return ServedSlide(reader, DeepZoom(w, h, max_scale=max_scale), name=name, colour=colour)
