"""Whether a TIFF slide lies whole in its file, checked before a library opens it.

tiffslide and OpenSlide read tile data past a truncated file's end, or tiles stored with no
bytes, as black (or glass) without an error: :func:`check_tiff_complete` refuses such a file
from its header (tifffile), and :class:`TiffSlideRefusal` says where OpenSlide reads what
tiffslide would read wrong.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from iste.data.memory import decode_memory_problem
from iste.data.integrity import (open_tiff, tiff_codec_missing, tiff_data_past_end,
                                  tiff_empty_data, tiff_missing_chunks, tiff_short_raw_chunks)
from iste.slides.reader import SlideError
from iste.text import error_line

__all__ = ["TiffSlideRefusal", "check_tiff_complete", "is_tiff", "held_tifffile_messages"]


class TiffSlideRefusal(SlideError):
    """A TIFF that tiffslide cannot read, or would read wrong (raw YCbCr or palette samples
    passed on as RGB, a Ventana BIF's pixel size left out), which OpenSlide reads: ``auto``
    opens it with OpenSlide (:func:`iste.slides.formats.open_slide`). ``what`` says why,
    without the advice the message ends with."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"cannot open slide {path}: {what}; --backend openslide may read it")
        self.what = what


def is_tiff(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_tiff_complete(path: Path, backend: str = "tiffslide") -> None:
    """Refuse a TIFF whose chain of images (IFDs) breaks off before its end (its next image
    past the end of the file, or a loop: the images after it, its lower levels, lost), whose
    tile/strip data runs past the end of the file (truncated copy), or
    with tiles stored with no bytes, save a Philips TIFF read by ``backend`` "openslide":
    Philips leaves the tiles outside its scanned areas out (a sparse slide), which OpenSlide
    reads as glass, tiffslide as black (refused as :class:`TiffSlideRefusal`). A level whose
    compression tifffile cannot decode here (:func:`~iste.data.integrity.tiff_codec_missing`)
    is a :class:`TiffSlideRefusal` for other backends: it read as a damaged first tile. What
    tifffile logs while reading it goes into the error (or, if the file is fine, on to
    tifffile's logger), not to stderr beside iste's own message."""
    if not is_tiff(path):
        return
    size = path.stat().st_size
    with held_tifffile_messages() as held:
        try:
            with open_tiff(path) as tif:
                if not tif.series:
                    raise SlideError(f"cannot open slide {path}: no image in the TIFF"
                                     + _said(held, size))
                for index, level in enumerate(tif.series[0].levels):
                    for page in level.pages:
                        if page is None:
                            continue
                        if tiff_data_past_end(page, size):
                            raise SlideError(f"cannot open slide {path}: truncated file (image "
                                             f"data ends past byte {size})")
                        empty = tiff_empty_data(page)
                        if empty is not None and tif.is_philips:
                            if backend != "openslide":
                                raise TiffSlideRefusal(path, "a sparse Philips TIFF (empty "
                                                       f"tiles: {empty}), which tiffslide "
                                                       "reads as black")
                        elif empty is not None:  # tiffslide reads black, OpenSlide transparent
                            raise SlideError(f"cannot open slide {path}: empty tiles ({empty})")
                        missing = tiff_missing_chunks(page) or tiff_short_raw_chunks(page)
                        if missing is not None:
                            raise SlideError(f"cannot open slide {path}: {missing}")
                    too_large = _chunk_too_large(index, level.keyframe)
                    if too_large is not None:
                        raise SlideError(f"cannot open slide {path}: {too_large}")
                    codec = None if backend == "openslide" else tiff_codec_missing(level.keyframe)
                    if codec is not None:  # libtiff decodes for OpenSlide: it says what it lacks
                        raise TiffSlideRefusal(path, codec)
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"cannot open slide {path}: corrupt or truncated TIFF "
                             f"({error_line(exc)})") from exc
    if backend == "openslide":  # tifffile's view of the file's series is not what is read
        return                  # (a BIF's "tiles are not stitched": OpenSlide stitches them)
    for record in held:  # a readable file: its warnings are tifffile's to report
        logging.getLogger("tifffile").handle(record)


def _chunk_too_large(index: int, page) -> str | None:
    """Why one stored tile (or strip) of level ``index``, whose first page (tifffile's) this
    is, would not decode in the memory available (:func:`~iste.data.memory.
    decode_memory_problem`), or None. Every backend decodes a stored tile whole to read any
    pixel of it: a tile of 65536 x 65536 px holding 600 bytes of JPEG was decoded to 12 GiB
    at a slide job's first read (failing as a damaged tile, or taking the machine's memory)."""
    if page.is_tiled:
        kind, hw = "tile", (page.tilelength, page.tilewidth)
    else:
        rows = page.rowsperstrip or page.imagelength
        kind, hw = "strip", (min(rows, page.imagelength), page.imagewidth)
    problem = decode_memory_problem(hw)
    return (None if problem is None
            else f"a {kind} of level {index} is {hw[1]} x {hw[0]} px; {problem}")


@contextlib.contextmanager
def held_tifffile_messages():
    """The records tifffile logs while the block runs, kept from its handlers: a list."""
    logger = logging.getLogger("tifffile")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _said(held: list[logging.LogRecord], size: int) -> str:
    """tifffile's messages, without the object it names, as an addition to an error."""
    said = dict.fromkeys(record.getMessage().split("> ", 1)[-1] for record in held)
    return f" (tifffile: {'; '.join(said)}; the file has {size} bytes)" if said else ""
