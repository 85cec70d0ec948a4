"""Reading and writing ordinary image files (PNG, JPEG, TIFF) at the edges of the package.

Convention:
    Arrays are ``np.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)``: rows first, RGB last.
    PIL's ``size`` is ``(width, height)``; nothing outside this module sees it.

Only 8-bit RGB comes out of :func:`read_image`:

- gray (``L``, ``1``, TIFF min-is-white inverted) and palette images are expanded to RGB, CMYK
  converted as PIL converts it (no colour profile); an alpha channel is left out (not
  composited: the colour values are kept as stored), :func:`read_image_and_alpha` returns it
  beside the RGB (:attr:`ImageMeta.gray` says whether the source was gray);
- 16-bit, 32-bit and float images raise :class:`ImageReadError` rather than being rescaled,
  because the meaningful range of such data (12-bit in a 16-bit container, ...) cannot be
  guessed; convert them to 8 bits yourself;
- pixels come back in stored order whatever the EXIF orientation tag says
  (:attr:`ImageMeta.orientation`); :func:`upright` turns them as viewers show them.

TIFFs (``.tif``/``.tiff``) are read with tifffile (first series, base level; multi-page
stacks are rejected), everything else with PIL. For whole-slide images use ``iste.slides``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from iste.data.jpeg import TIFF_JPEG, TIFF_JPEG2000, tiff_jpeg_stream
from iste.files import ascii_text, link_note, remove_stale_temps, sha256_file, write_atomic

__all__ = ["ImageReadError", "ImageMeta", "read_image", "read_image_and_alpha",
           "read_image_meta", "image_size",
           "write_image", "SUPPORTED_SUFFIXES", "jpeg_problem", "jpeg2000_problem",
           "tiff_tile_judge", "check_write_size", "png_bit_depth", "profile_for",
           "check_complete", "checked_image_size", "tiff_data_past_end", "tiff_empty_data",
           "tiff_raw_ycbcr", "drop_tiff_resolution", "upright", "upright_xy", "plain_image_kind"]

_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_TIFF_SUFFIXES = (".tif", ".tiff")
SUPPORTED_SUFFIXES: tuple[str, ...] = (*_PIL_FORMATS, *_TIFF_SUFFIXES)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_START = b"\xff\xd8\xff"  # start of image, then the next marker


class ImageReadError(Exception):
    """An image file is missing, unreadable, corrupt or of an unsupported kind."""


MAX_INPUT_PIXELS = 1 << 30
"""Largest PNG or JPEG read (1 Gpx, 3 GB as uint8; the largest output written whole is the
same, :data:`iste.engine.budget.MAX_OUTPUT_PIXELS`). It stands in for PIL's own guard, which
refused a 12 000 x 16 000 scan export (192 Mpx) as a "decompression bomb DOS attack" (iste
said "corrupt or unreadable") and warned so from 89 Mpx."""
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS  # PIL warns above it, refuses above twice it


@contextlib.contextmanager
def _pil_opened(source, path: Path):
    """``Image.open(source)`` of the file ``path``, refused (:class:`ImageReadError`) from its
    header above :data:`MAX_INPUT_PIXELS`."""
    beyond = (f"cannot read {path}: beyond the {MAX_INPUT_PIXELS / 2**30:g} Gpx iste reads "
              "from a PNG or JPEG; save it as a tiled TIFF, which is read as a slide, tile by "
              "tile")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError:
        raise ImageReadError(beyond) from None
    with img:
        if img.size[0] * img.size[1] > MAX_INPUT_PIXELS:
            raise ImageReadError(f"{beyond} ({img.size[0]} x {img.size[1]} px)")
        yield img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG, JPEG or TIFF file as 8-bit RGB.

    Returns:
        ``np.ndarray`` uint8 of shape (H, W, 3), C-contiguous.

    Raises:
        ImageReadError: one-line message naming the file and the reason (missing, not a file,
            unsupported suffix, corrupt or truncated data, more than 8 bits per sample,
            multi-page TIFF, unexpected channel count).
    """
    return read_image_and_alpha(path)[0]


def read_image_and_alpha(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_image`'s RGB and the image's alpha channel: uint8 (H, W, 3) and uint8
    (H, W), both C-contiguous; the alpha None where the image has none (a TIFF's extra sample
    counts as one when marked unassociated alpha) or every pixel is opaque (255).

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    path = Path(path)
    _check_readable(path)
    with _unreadable_named(path):
        rgb, alpha = (_read_tiff(path) if path.suffix.lower() in _TIFF_SUFFIXES
                      else _read_pil(path))
    if alpha is not None and int(alpha.min()) == 255:
        alpha = None
    return np.ascontiguousarray(rgb), None if alpha is None else np.ascontiguousarray(alpha)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels (to size a job
    before reading it).

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    path = Path(path)
    _check_readable(path)
    with _unreadable_named(path):
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return _tiff_size(tif.series[0])
        with _pil_opened(path, path) as img:
            return img.size[1], img.size[0]


def checked_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header, once the file is checked to be one
    :func:`read_image` reads, from one open of the file and without decoding the pixels (to
    index a folder of many: on a network mount each open is a round trip). Checked: its data
    complete (as :func:`check_complete`), and what :func:`read_image` refuses from a header
    (more than 8 bits per sample, float, an animated PNG, a multi-page TIFF, a TIFF layout or
    photometric it does not take). Damage inside complete data is found when it is read.

    Raises:
        ImageReadError: as :func:`image_size`, :func:`check_complete` and :func:`read_image`.
    """
    path = Path(path)
    _check_readable(path)
    with _unreadable_named(path), open(path, "rb") as f:
        length = os.fstat(f.fileno()).st_size
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(f) as tif:
                size = _tiff_size(tif.series[0])
                problem = _incomplete(f, length, tif)
                refusal = _tiff_refusal(tif.series[0])
        else:
            with _pil_opened(f, path) as img:
                size = img.size[1], img.size[0]
                refusal = _pil_refusal(img)
            problem = _incomplete(f, length)
            f.seek(0)
            if _png_depth(f.read(25)) == 16:  # PIL reads 16-bit RGB as 8: refused
                refusal = _PNG16
    if problem is not None:
        raise ImageReadError(f"cannot read {path}: truncated ({problem})")
    if refusal is not None:
        raise ImageReadError(f"cannot read {path}: {refusal}")
    return size


def _tiff_size(series) -> tuple[int, int]:
    """(H, W) of a tifffile series' base level."""
    page = series.levels[0]
    return page.shape[page.axes.index("Y")], page.shape[page.axes.index("X")]


_TAIL = 1 << 16  # bytes read from a file's end to find its end marker


def check_complete(path: str | os.PathLike) -> None:
    """Refuse an image file that ends before its image data do (a copy cut short), from its
    header and its last 64 KiB, without decoding the pixels: a PNG without its IEND chunk, a
    JPEG without an end-of-image marker after its scan header, a TIFF whose strips or tiles run
    past the end of the file. Damage inside complete data is found when the pixels are read
    (:func:`read_image`).

    Raises:
        ImageReadError: as :func:`read_image`, naming the file.
    """
    path = Path(path)
    _check_readable(path)
    with _unreadable_named(path), open(path, "rb") as f:
        problem = _incomplete(f, os.fstat(f.fileno()).st_size)
    if problem is not None:
        raise ImageReadError(f"cannot read {path}: truncated ({problem})")


def _incomplete(f, size: int, tif: tifffile.TiffFile | None = None) -> str | None:
    """Why the open image file ``f`` of ``size`` bytes ends before its data do, or None (see
    :func:`check_complete`). tif: the file already opened by tifffile, if it is."""
    f.seek(0)
    head = f.read(_TAIL)
    f.seek(max(0, size - _TAIL))
    tail_at = f.tell()
    tail = f.read()

    def whole() -> bytes:
        f.seek(0)
        return f.read()

    if head.startswith(_PNG_SIGNATURE):
        return None if b"IEND\xaeB`\x82" in tail else "a PNG without its IEND chunk"
    if head.startswith(b"\xff\xd8"):
        scan = _jpeg_scan_start(head)
        if scan is None and len(head) < size:  # headers longer than 64 KiB: read them all
            head = whole()
            scan = _jpeg_scan_start(head)
        if scan is None:
            return "a JPEG that ends before its first scan"
        end = tail.rfind(b"\xff\xd9")
        if end >= 0 and tail_at + end > scan:
            return None
        if tail_at > scan and whole().rfind(b"\xff\xd9") > scan:
            return None  # data past the end marker, more than 64 KiB of it
        return "a JPEG without its end-of-image marker"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        if tif is not None:
            return _tiff_cut(tif, size)
        f.seek(0)
        with tifffile.TiffFile(f) as opened:
            return _tiff_cut(opened, size)
    return None


def _tiff_cut(tif: tifffile.TiffFile, size: int) -> str | None:
    for page in tif.series[0].pages:
        if page is not None and tiff_data_past_end(page, size):
            return f"TIFF image data end past the file's {size} bytes"
        empty = None if page is None else tiff_empty_data(page)
        if empty is not None:
            return f"TIFF {empty}"
    return None


def _jpeg_scan_start(data: bytes) -> int | None:
    """The offset of a JPEG's first start-of-scan marker, found by walking the marker
    segments from the start (an EXIF thumbnail's markers lie inside a segment); None when
    ``data`` ends first."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:
            return pos
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def tiff_data_past_end(page: tifffile.TiffPage | tifffile.TiffFrame, size: int) -> bool:
    """Whether a tifffile page's strips or tiles run past ``size`` bytes (the file's length):
    a copy cut short."""
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
    return bool(ends) and max(ends) > size


def tiff_empty_data(page: tifffile.TiffPage | tifffile.TiffFrame) -> str | None:
    """Which of a tifffile page's strips or tiles are stored with no bytes (a damaged file, or
    a sparse writer's empty tile, which would read as black), or None."""
    counts = list(page.databytecounts)
    if 0 not in counts:
        return None
    index = counts.index(0)
    # a stack's pages after the first (a z-stack's or an OME-TIFF's planes) are TiffFrames: their
    # own strips or tiles, their size and tiling their keyframe's (a TiffPage's keyframe: itself)
    key = page.keyframe
    kind, cols = ("tile", -(-key.imagewidth // key.tilewidth)) if key.is_tiled else ("strip", 0)
    where = f"column {index % cols} row {index // cols}" if cols else f"{index}"
    return (f"{counts.count(0)} of the {len(counts)} {kind}s of its {key.imagewidth} x "
            f"{key.imagelength} px image are stored with no bytes, the first {kind} {where}")


_TIFF_JPEG_CODECS = (6, 7, 33007, 34892)  # compressions whose decoders turn YCbCr into RGB
_APERIO_JP2K_YCBCR = 33003  # Aperio's JPEG 2000 whose components are YCbCr (no colour transform)


def tiff_raw_ycbcr(page) -> str | None:
    """How a tifffile page stores YCbCr samples that tifffile decodes but leaves YCbCr (it
    converts them to RGB in its JPEG decoders only), or None: YCbCr under another compression
    ("YCbCr with ADOBE_DEFLATE compression"), or Aperio's JPEG 2000 with YCbCr components
    (compression 33003, whose PhotometricInterpretation says RGB). Read as RGB they give
    grey-green tissue, some 60 levels off."""
    photometric, compression = int(page.photometric), int(page.compression)
    if photometric == tifffile.PHOTOMETRIC.YCBCR and compression not in _TIFF_JPEG_CODECS:
        try:
            codec = tifffile.COMPRESSION(compression).name
        except ValueError:
            codec = str(compression)
        return f"YCbCr with {codec} compression"
    if compression == _APERIO_JP2K_YCBCR:
        return "Aperio JPEG 2000 with YCbCr components (compression 33003)"
    return None


def _check_readable(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ImageReadError(f"cannot read {path}: unsupported suffix {path.suffix!r} "
                             f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if not path.exists():
        raise ImageReadError(f"cannot read {path}: no such file{link_note(path)}")
    if not path.is_file():
        raise ImageReadError(f"cannot read {path}: not a regular file")


def plain_image_kind(path: str | os.PathLike) -> str | None:
    """"PNG" or "JPEG" where the file's first bytes are one's signature (whatever its name),
    else None (another format, a folder, or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_PNG_SIGNATURE))
    except OSError:
        return None
    return ("PNG" if head.startswith(_PNG_SIGNATURE)
            else "JPEG" if head.startswith(_JPEG_START) else None)


@contextlib.contextmanager
def _unreadable_named(path: Path):
    """Inside, a decoder's error (they raise many types: OSError, ValueError, SyntaxError...)
    becomes :class:`ImageReadError` "cannot read PATH: corrupt or unreadable (its first
    line)"; an ImageReadError, already said, passes as it is."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as exc:
        reason = (f"cannot identify image file {str(path)!r}"  # PIL names an open file's object
                  if isinstance(exc, UnidentifiedImageError) else _reason(exc))
        raise ImageReadError(f"cannot read {path}: corrupt or unreadable ({reason})") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


_PNG16 = "16-bit PNG is not supported, convert it to 8 bits per sample first"


def _read_pil(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB (H, W, 3), alpha (H, W) or None) of a PNG or JPEG, views of one array."""
    if png_bit_depth(path) == 16:
        # PIL silently keeps only the high byte of 16-bit RGB PNGs; refuse instead.
        raise ImageReadError(f"cannot read {path}: {_PNG16}")
    _check_png_data(path)
    with _pil_opened(path, path) as img:
        refusal = _pil_refusal(img)
        if refusal is not None:
            raise ImageReadError(f"cannot read {path}: {refusal}")
        img.load()
        if img.format == "JPEG":
            _warn_corrupt_jpeg(path)
        rgb = img if img.mode == "RGB" else img.convert("RGBA" if _has_alpha(img) else "RGB")
        array = np.asarray(rgb)
    return array[..., :3], array[..., 3] if array.shape[-1] == 4 else None


def _pil_refusal(img: Image.Image) -> str | None:
    """Why :func:`read_image` refuses an image PIL opened (from its header), or None."""
    if getattr(img, "is_animated", False):  # PIL's way to ask; APNG, MPO
        return f"an animated {img.format} ({img.n_frames} frames) is not supported"
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return (f"{img.mode!r} images (more than 8 bits per sample) are not supported, "
                "convert to 8 bits first")
    return None


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # (x0, y0, dx, dy) of the interlaced passes


def _check_png_data(path: Path) -> None:
    """ImageReadError when a PNG's compressed image data holds fewer bytes than its header's
    size needs. PIL decodes such a file without a word, the missing rows black: a damaged
    file, or a few hundred bytes declaring 3000 x 3000 px. Read streaming (nothing the size
    of the image is allocated); a file that is not a PNG is left to the decoder."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return
        expected = None
        inflate, got = zlib.decompressobj(), 0
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)  # the CRC: PIL checks it
            if kind == b"IHDR" and len(data) >= 13:
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB",
                                                                              data[:13])
                bits = depth * _PNG_CHANNELS.get(colour, 1)
                passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
                expected = 0
                for x0, y0, dx, dy in passes:
                    w, h = -(-max(width - x0, 0) // dx), -(-max(height - y0, 0) // dy)
                    if w and h:
                        expected += h * (1 + math.ceil(w * bits / 8))
            elif kind == b"IDAT" and expected is not None:
                try:
                    while data and got < expected:
                        got += len(inflate.decompress(data, 1 << 20))
                        data = inflate.unconsumed_tail
                except zlib.error:
                    return  # corrupt data: PIL's decoder says so
            if kind == b"IEND" or (expected is not None and got >= expected):
                break
    if expected is not None and got < expected:
        raise ImageReadError(f"cannot read {path}: corrupt or truncated PNG (its image data hold "
                             f"{got} of the {expected} bytes its {width} x {height} px need)")


def _warn_corrupt_jpeg(path: Path) -> None:
    """Warn (naming the file) when libjpeg reports corrupt data that PIL decodes silently
    (damaged entropy-coded data: PIL returns garbage blocks without a word)."""
    problem = jpeg_problem(path.read_bytes())
    if problem is not None:
        warnings.warn(f"{path}: corrupt JPEG data ({problem}); the decoded pixels may be "
                      "wrong", stacklevel=3)


def tiff_tile_judge(page) -> tuple[str, Callable[[bytes], str | None]] | None:
    """(codec name, the function saying what is wrong with one of its strips or tiles) for a
    JPEG- or JPEG 2000-compressed TIFF page (tifffile's): :func:`jpeg_problem`,
    :func:`jpeg2000_problem`; None for other codecs (not judged)."""
    if page.compression == TIFF_JPEG:
        return "JPEG", jpeg_problem
    if page.compression in TIFF_JPEG2000:
        return "JPEG 2000", jpeg2000_problem
    return None


def _warn_corrupt_tiff_jpeg(path: Path, tif: tifffile.TiffFile, pages) -> None:
    """:func:`_warn_corrupt_jpeg` for each stored strip or tile of the JPEG- or JPEG
    2000-compressed ``pages`` of ``tif`` (tifffile decodes damaged ones as garbage blocks
    without a word; :func:`tiff_tile_judge`)."""
    for page in pages:
        found = None if page is None else tiff_tile_judge(page)
        if found is None:
            continue
        codec, judge = found
        kind = "tile" if page.is_tiled else "strip"
        for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            if not count:
                continue
            tif.filehandle.seek(offset)
            problem = judge(tiff_jpeg_stream(page, tif.filehandle.read(count)))
            if problem is not None:
                warnings.warn(f"{path}: corrupt {codec} data in {kind} {index} ({problem}); "
                              "the decoded pixels may be wrong", stacklevel=4)


def jpeg_problem(data: bytes) -> str | None:
    """libjpeg's complaint about a JPEG stream, or None when it decodes cleanly (strict
    decoding with simplejpeg; streams it cannot decode at all, e.g. CMYK, are not judged)."""
    import simplejpeg

    try:  # decoded at 1/8 scale: every entropy-coded bit is still read, buffers stay small
        simplejpeg.decode_jpeg(data, strict=True, min_factor=8)
        return None
    except ValueError as exc:
        try:
            simplejpeg.decode_jpeg(data, strict=False, min_factor=8)
        except ValueError:
            return None  # not a kind it decodes; PIL's decoding stands
        return _reason(exc)


def jpeg2000_problem(data: bytes) -> str | None:
    """Why a JPEG 2000 codestream is damaged, or None when it ends as one must (openjpeg
    decodes a codestream cut short, or zero-filled after some point, without a word): its
    last bytes before any zero padding must be the end-of-codestream marker. Only raw
    codestreams (starting with the SOC marker, as TIFF and DICOM tiles store them) are
    judged; damage inside the coded data that keeps the end cannot be told this way."""
    if data[:2] != b"\xff\x4f" or data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    return "no end-of-codestream marker: the tile is cut short or zero-filled"


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (byte 24), or None for a non-PNG file."""
    with open(path, "rb") as f:
        return _png_depth(f.read(25))


def _png_depth(head: bytes) -> int | None:
    """Bit depth from the first bytes of a file if it is a PNG (byte 24, its IHDR's)."""
    if len(head) < 25 or not head.startswith(_PNG_SIGNATURE):
        return None
    return head[24]


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB (H, W, 3), alpha (H, W) or None) of a TIFF (:func:`_tiff_rgb`)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        refusal = _tiff_refusal(series)  # before decoding: a 16-bit slide is not read to say so
        if refusal is not None:
            raise ImageReadError(f"cannot read {path}: {refusal}")
        page = series.keyframe
        extra = tuple(int(v) for v in (page.extrasamples or ()))
        axes, array = series.axes, series.asarray()
        _warn_corrupt_tiff_jpeg(path, tif, series.pages)
    keep = [i for i, ax in enumerate(axes) if ax in "YXS"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes == "SYX":  # planar configuration: channels first
        array = np.moveaxis(array, 0, -1)
    elif axes == "YX":
        array = array[..., None]
    colours = array.shape[-1] - len(extra)
    unassociated = bool(extra) and extra[0] == tifffile.EXTRASAMPLE.UNASSALPHA
    alpha = array[..., colours] if unassociated and colours >= 1 else None
    return _tiff_rgb(path, array, page), alpha


def _tiff_rgb(path: Path, array: np.ndarray, page) -> np.ndarray:
    """A TIFF page's samples ``array`` (H, W, S) as RGB (H, W, 3), as its photometric
    interpretation says."""
    photometric, colormap = page.photometric, page.colormap
    ycbcr = tiff_raw_ycbcr(page)
    if ycbcr is not None:  # JPEG's full-range YCbCr (the TIFF default; checked), as PIL has it
        return np.asarray(Image.fromarray(np.ascontiguousarray(array[..., :3]), "YCbCr")
                          .convert("RGB"))
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        return _apply_colormap(path, array[..., 0], colormap)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        return np.repeat(255 - array[..., :1], 3, axis=-1)
    if photometric == tifffile.PHOTOMETRIC.SEPARATED:
        # CMYK (+ alpha) as PIL converts CMYK JPEGs: without a colour profile
        return np.asarray(Image.fromarray(np.ascontiguousarray(array[..., :4]), "CMYK")
                          .convert("RGB"))
    if array.shape[-1] in (1, 2):  # gray, gray + alpha
        return np.repeat(array[..., :1], 3, axis=-1)
    return array[..., :3]  # RGB, RGBA


def _tiff_refusal(series) -> str | None:
    """Why :func:`read_image` refuses a TIFF whose first series (tifffile's) this is, from its
    header, or None: several pages, a layout other than (Y, X[, S]) or (S, Y, X), more than 8
    bits per sample (a palette's indices excepted), a photometric interpretation or a count
    of samples per pixel it does not convert to RGB."""
    axes, shape = series.axes, tuple(series.shape)
    if any(ax not in "YXS" and n > 1 for ax, n in zip(axes, shape)):
        return f"multi-page TIFF (axes {axes!r}, shape {shape}) is not supported"
    kept = "".join(ax for ax in axes if ax in "YXS")
    if kept not in ("YXS", "SYX", "YX"):
        return f"unsupported TIFF layout {kept!r}"
    photometric = series.keyframe.photometric
    if photometric == tifffile.PHOTOMETRIC.PALETTE and series.keyframe.colormap is not None:
        return None
    if series.dtype != np.uint8:
        return (f"{series.dtype} TIFF is not supported, convert it to 8 bits per sample "
                "(uint8) first")
    channels = shape[axes.index("S")] if "S" in kept else 1
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and channels in (1, 2):
        return None
    if photometric == tifffile.PHOTOMETRIC.SEPARATED and channels in (4, 5):
        return None
    if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB,
                           tifffile.PHOTOMETRIC.YCBCR):  # tifffile decodes YCbCr to RGB
        name = getattr(photometric, "name", photometric)
        return (f"TIFF photometric interpretation {name} with {channels} samples per pixel "
                "is not supported; convert it to RGB or gray first")
    if channels not in (1, 2, 3, 4):
        return f"{channels} samples per pixel are not supported"
    ycbcr = tiff_raw_ycbcr(series.keyframe)
    if ycbcr is not None and not _default_ycbcr(series.keyframe):
        return (f"{ycbcr} and its own coefficients, reference levels or chroma subsampling "
                "is not supported; convert it to RGB first")
    return None


_DEFAULT_REFERENCE = (0, 255, 128, 255, 128, 255)  # TIFF's ReferenceBlackWhite for YCbCr


def _default_ycbcr(page) -> bool:
    """Whether a page's YCbCr is JPEG's (what PIL converts): BT.601 coefficients, full-range
    reference levels, no chroma subsampling (the TIFF defaults, absent or written out)."""
    coefficients = page.tags.valueof(529)  # YCbCrCoefficients, as rationals
    reference = page.tags.valueof(532)  # ReferenceBlackWhite, as rationals
    def values(v):
        v = np.asarray(v, float).ravel()
        return v[0::2] / v[1::2] if v.size and v.size % 2 == 0 else v
    return ((coefficients is None or np.allclose(values(coefficients), (0.299, 0.587, 0.114),
                                                 atol=1e-3))
            and (reference is None or np.allclose(values(reference), _DEFAULT_REFERENCE,
                                                  atol=0.5))
            and tuple(page.subsampling or (1, 1)) == (1, 1))


def _apply_colormap(path: Path, index: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """A palette TIFF's colours: ``index`` (H, W) through ``colormap`` (3, N) of 16-bit
    values -> uint8 (H, W, 3), as libtiff reads them."""
    if colormap.ndim != 2 or colormap.shape[0] != 3 or not np.issubdtype(index.dtype,
                                                                          np.integer):
        raise ImageReadError(f"cannot read {path}: malformed palette TIFF (colour map "
                             f"{colormap.shape}, indices {index.dtype})")
    if int(index.max(initial=0)) >= colormap.shape[1]:
        raise ImageReadError(f"cannot read {path}: a pixel indexes past the colour map's "
                             f"{colormap.shape[1]} entries")
    # libtiff's reading: the high byte, unless no entry exceeds 255 (a map written 8-bit)
    rgb8 = (colormap if int(colormap.max()) < 256 else colormap >> 8).astype(np.uint8)
    return np.ascontiguousarray(rgb8.T[index])


_MAX_SIDE = {"JPEG": 65535, "PNG": 2**31 - 1}


def check_write_size(path: str | os.PathLike, hw: tuple[int, int]) -> None:
    """Refuse, before any work, an image size the format of ``path`` cannot store (JPEG
    sides are at most 65535 pixels).

    Raises:
        ValueError: one line naming the limit.
    """
    fmt = _PIL_FORMATS.get(Path(path).suffix.lower())
    if fmt is not None and max(hw) > _MAX_SIDE[fmt]:
        raise ValueError(f"cannot write {path}: {hw[1]} x {hw[0]} px exceeds the {fmt} limit "
                         f"of {_MAX_SIDE[fmt]} px per side; write a .png or .tif")


@dataclass(frozen=True)
class ImageMeta:
    """What a plain image file records beside its pixels.

    mpp: microns per pixel (x, y) from the file's resolution (PNG pHYs / JPEG JFIF density /
        TIFF X/YResolution with a unit), or None when absent or only an aspect ratio.
    icc_profile: the embedded ICC colour profile (bytes) when it describes the pixels as an
        output writes them: an RGB profile, a gray one of a gray source (:attr:`gray`); else
        None (a CMYK profile, or a gray one of a colour image, describes no pixel written).
    gray: the source stores one colour sample a pixel (gray, 1-bit, TIFF min-is-black or
        min-is-white; with or without alpha): :func:`read_image` expands it to three equal
        channels, and an output of it is written gray.
    orientation: the EXIF orientation (1-8) of a JPEG/PNG/TIFF that records one (tag 274);
        pixels are read in stored order whatever it says, :func:`upright` turns them.
    png_colour: a PNG's other colour chunks, ``(type, data)`` as stored: gAMA (the
        gamma the pixels are encoded with), cHRM (the primaries and white point) and sRGB
        (the pixels are sRGB; its rendering intent); :func:`write_image` writes them into a
        PNG output. No other format has these chunks, so a JPEG or TIFF output drops them
        (an ICC profile is carried to every format).
    """

    mpp: tuple[float, float] | None = None
    icc_profile: bytes | None = None
    orientation: int | None = None
    png_colour: tuple[tuple[bytes, bytes], ...] = ()
    gray: bool = False


_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations whose stored rows are shown as columns


def upright(image: np.ndarray, orientation: int | None) -> np.ndarray:
    """``image`` (H, W[, C]) in stored order, turned as its EXIF ``orientation`` (1-8,
    :attr:`ImageMeta.orientation`) asks viewers to show it (as ``PIL.ImageOps.exif_transpose``
    turns it): (W, H[, C]) for 5-8. None, 1 or a value outside 1-8 leave it as it is.
    Returns a view."""
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: a[::-1].swapaxes(0, 1),
             7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: a.swapaxes(0, 1)[::-1]}
    turn = turns.get(orientation)
    return image if turn is None else turn(image)


def upright_xy(xy: tuple, orientation: int | None) -> tuple:
    """A stored image's (x, y) pair (its mpp, ...) for the image :func:`upright` turns it
    into: swapped for the orientations that show rows as columns (5-8)."""
    return (xy[1], xy[0]) if orientation in _SIDEWAYS else tuple(xy)


_UM_PER_INCH, _UM_PER_CM = 25400.0, 10000.0
_EXIF_XRES, _EXIF_YRES, _EXIF_RES_UNIT, _EXIF_ORIENTATION = 282, 283, 296, 274
_TIFF_XRES, _TIFF_YRES = 282, 283  # XResolution, YResolution: the same tags in a TIFF


def drop_tiff_resolution(path: str | os.PathLike) -> None:
    """Remove XResolution and YResolution from every IFD (SubIFDs too) of a TIFF or BigTIFF
    that iste has just written, for an unknown pixel size: tifffile always writes them, as
    1 / 1 per unit NONE, which Bio-Formats (QuPath) reads as 1 um pixels. Each IFD is
    rewritten in place, shorter by those entries (values of 8 bytes or less, held inline)."""
    with tifffile.TiffFile(path) as tif:
        big, order = tif.is_bigtiff, tif.byteorder
        offsets = [o for page in tif.pages for o in (page.offset, *(page.subifds or ()))]
    count, entry, link = (8, 20, 8) if big else (2, 12, 4)
    endian = "little" if order == "<" else "big"
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            n = int.from_bytes(f.read(count), endian)
            entries = [f.read(entry) for _ in range(n)]
            after = f.read(link)  # the next IFD's offset
            kept = [e for e in entries
                    if int.from_bytes(e[:2], endian) not in (_TIFF_XRES, _TIFF_YRES)]
            f.seek(offset)
            f.write(len(kept).to_bytes(count, endian) + b"".join(kept) + after)


def read_image_meta(path: str | os.PathLike) -> ImageMeta:
    """Resolution and ICC profile of a PNG / JPEG / TIFF (an empty ImageMeta if unreadable)."""
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                unit = {2: _UM_PER_INCH, 3: _UM_PER_CM}.get(int(page.resolutionunit or 1))
                xr, yr = page.get_resolution()  # (1, 1) per inch where the tags are absent
                recorded = _TIFF_XRES in page.tags and _TIFF_YRES in page.tags
                mpp = (unit / xr, unit / yr) if recorded and unit and xr > 0 and yr > 0 \
                    else None
                orientation = _orientation(page.tags.valueof(_EXIF_ORIENTATION))
                gray = (page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK,
                                             tifffile.PHOTOMETRIC.MINISWHITE)
                        and page.samplesperpixel - len(page.extrasamples or ()) == 1)
                return ImageMeta(mpp, _pixels_profile(page.iccprofile, gray), orientation,
                                 gray=gray)
        with Image.open(path) as img:
            exif = img.getexif()
            dpi = _jfif_dpi(img.info) if img.format == "JPEG" else img.info.get("dpi")
            unit = {2: _UM_PER_INCH, 3: _UM_PER_CM}.get(int(exif.get(_EXIF_RES_UNIT, 0)))
            mpp = None
            if unit and float(exif.get(_EXIF_XRES, 0)) > 0 and float(exif.get(_EXIF_YRES, 0)) > 0:
                mpp = (unit / float(exif[_EXIF_XRES]), unit / float(exif[_EXIF_YRES]))
            elif dpi and all(float(v) > 1 for v in dpi):  # PIL reports (1, 1) for "no unit"
                mpp = (_UM_PER_INCH / float(dpi[0]), _UM_PER_INCH / float(dpi[1]))
            gray = img.mode in _GRAY_MODES
            return ImageMeta(mpp, _pixels_profile(img.info.get("icc_profile"), gray),
                             _orientation(exif.get(_EXIF_ORIENTATION)), _png_colour(img.info),
                             gray)
    except Exception:  # metadata is optional; the pixel reader reports broken files
        return ImageMeta()


def _orientation(value) -> int | None:
    """An EXIF orientation tag's value as 1-8, or None (absent, or a value no viewer turns
    by)."""
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _jfif_dpi(info: dict) -> tuple[float, float] | None:
    """A JPEG's JFIF density in dots per inch, or None. Not PIL's ``dpi``, which reads 72
    where an EXIF block has no resolution (that default is no measurement)."""
    density, unit = info.get("jfif_density"), info.get("jfif_unit")
    if not density or unit not in (1, 2):
        return None
    return tuple(float(d) * (2.54 if unit == 2 else 1.0) for d in density)


_GRAY_MODES = ("1", "L", "LA", "La")  # PIL's modes of one colour sample (16-bit: refused)


def _pixels_profile(icc: bytes | None, gray: bool) -> bytes | None:
    """``icc`` when it describes the pixels an output of the image holds (gray ones for a gray
    source, else RGB), else None: a CMYK source's profile does not describe the RGB pixels
    :func:`read_image` returns, and a reader cannot apply it to them."""
    return profile_for(icc, "L" if gray else "RGB")


def _png_colour(info: dict) -> tuple[tuple[bytes, bytes], ...]:
    """The gAMA, cHRM and sRGB chunks of a PNG, re-encoded from what PIL read of them
    (``info["gamma"]``, ``["chromaticity"]``, ``["srgb"]``; PIL does not write them back by
    itself); a value out of its chunk's range is dropped. Written into a PNG output, they
    describe its pixels as they described the source's (the model keeps their encoding)."""
    chunks = []
    gamma = info.get("gamma")
    if isinstance(gamma, float) and 0 < gamma * 100000 < 2 ** 31:
        chunks.append((b"gAMA", struct.pack(">I", round(gamma * 100000))))
    xy = info.get("chromaticity")
    if isinstance(xy, tuple) and len(xy) == 8 and all(0 <= v * 100000 < 2 ** 31 for v in xy):
        chunks.append((b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in xy))))
    if info.get("srgb") in (0, 1, 2, 3):  # the rendering intent
        chunks.append((b"sRGB", bytes([info["srgb"]])))
    return tuple(chunks)


def profile_for(icc: bytes | None, mode: str) -> bytes | None:
    """``icc`` when its colour space (bytes 16-19 of the header) is that of pixels of PIL
    ``mode`` (``RGB `` for RGB and RGBA, ``GRAY`` for L, LA and F), else None."""
    space = b"RGB " if mode in ("RGB", "RGBA") else b"GRAY" if mode in ("L", "LA", "F") else None
    return icc if space and icc and len(icc) >= 128 and icc[16:20] == space else None


def write_image(path: str | os.PathLike, image: np.ndarray, *, jpeg_quality: int = 95,
                mpp: tuple[float, float] | None = None, icc_profile: bytes | None = None,
                png_colour: tuple[tuple[bytes, bytes], ...] = (),
                description: str | None = None, replace: bool = True,
                then: Callable[[str], None] | None = None) -> str:
    """Write an 8-bit RGB or gray image, with or without alpha, atomically; the format
    follows the suffix. Returns
    the sha256 (hex) of the bytes written, taken as they are written (PNG, JPEG) or from
    the temporary file before it is put in place (TIFF): never of whatever another process
    puts at ``path`` afterwards.

    The data go to a temporary file in the destination directory which then replaces
    ``path`` (``os.replace``), so a reader never sees a half-written file and a failed write
    leaves neither a temporary file nor a changed ``path`` behind (one a killed process left
    is removed by the next write of ``path``: :func:`iste.files.remove_stale_temps`). The
    parent directory must exist.

    Args:
        path: destination; suffix one of ``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``
            (case-insensitive). TIFFs are written zlib-compressed (lossless); JPEGs with
            ``jpeg_quality`` and no chroma subsampling.
        image: ``np.ndarray`` uint8, (H, W, 3) RGB, (H, W) gray, or with an (unassociated)
            alpha channel last: (H, W, 4) RGBA, (H, W, 2) gray and alpha (PNG and TIFF only:
            JPEG has no alpha).
        mpp: microns per pixel (x, y) to record as the file's resolution (PNG/JPEG in dots
            per inch, TIFF in pixels per centimetre), so viewers and QuPath measure right.
        icc_profile: ICC colour profile to embed.
        png_colour: a PNG source's gAMA, cHRM and sRGB chunks (:attr:`ImageMeta.png_colour`),
            written into a PNG (PIL leaves out sRGB beside an ICC profile, as PNG requires);
            no other format has them.
        description: text to record (TIFF ImageDescription, PNG tEXt "Description", JPEG
            comment).
        replace: False: a file that appears at ``path`` while this one is written (another
            process's) is kept, and FileExistsError raised.
        then: called with the sha256 (hex) of the image's bytes when they are complete,
            before they are put at ``path`` (:func:`iste.files.write_atomic`): if it raises,
            ``path`` is left as it was.

    Raises:
        ValueError: unsupported suffix, an image of the wrong shape, or alpha for a JPEG;
            raised before anything is written.
        TypeError: ``image`` is not a uint8 ndarray.
        FileExistsError: ``replace`` False and ``path`` exists.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot write {path}: unsupported suffix {path.suffix!r} "
                         f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"cannot write {path}: expected a uint8 numpy array, got {kind}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (2, 3, 4))) \
            or 0 in image.shape:
        raise ValueError(f"cannot write {path}: expected shape (H, W, 3), (H, W) or with "
                         f"alpha (H, W, 4), (H, W, 2), got {image.shape}")
    alpha = image.ndim == 3 and image.shape[2] in (2, 4)
    if alpha and _PIL_FORMATS.get(suffix) == "JPEG":
        raise ValueError(f"cannot write {path}: JPEG has no alpha channel; write a .png or .tif")
    image = np.ascontiguousarray(image)

    if mpp is not None and not all(v > 0 for v in mpp):
        raise ValueError(f"cannot write {path}: mpp must be positive, got {mpp}")

    written = hashlib.sha256()
    tiff_sha256 = None

    def write(tmp_name: str) -> None:
        nonlocal tiff_sha256
        if suffix in _TIFF_SUFFIXES:
            extra: dict = {}
            if mpp is not None:
                extra.update(resolution=(_UM_PER_CM / mpp[0], _UM_PER_CM / mpp[1]),
                             resolutionunit="CENTIMETER")
            if alpha:
                extra["extrasamples"] = ("unassalpha",)
            tifffile.imwrite(tmp_name, image, compression="zlib",
                             photometric="rgb" if image.ndim == 3 and image.shape[2] >= 3
                             else "minisblack",
                             description=None if description is None else
                             ascii_text(description), metadata=None, iccprofile=icc_profile,
                             software="iste", **extra)
            if mpp is None:
                drop_tiff_resolution(tmp_name)
            # read back: tifffile seeks as it writes. sha256_file keeps no digest of a
            # file this new, and every digest it kept is of a file with older times
            tiff_sha256 = sha256_file(tmp_name)
            return
        pil: dict = {}
        if mpp is not None:
            pil["dpi"] = (_UM_PER_INCH / mpp[0], _UM_PER_INCH / mpp[1])
        if icc_profile:
            pil["icc_profile"] = icc_profile
        if _PIL_FORMATS[suffix] == "JPEG":
            if mpp is not None:  # JFIF density is 16-bit (dpi < 65536): EXIF in cm as well
                exif = Image.Exif()
                exif[_EXIF_XRES], exif[_EXIF_YRES] = (_UM_PER_CM / mpp[0], _UM_PER_CM / mpp[1])
                exif[_EXIF_RES_UNIT] = 3  # centimetre
                pil["exif"] = exif
                if max(pil["dpi"]) >= 65536:
                    del pil["dpi"]
            if description:
                pil["comment"] = description.encode("utf-8")
            pil.update(quality=jpeg_quality, subsampling=0)
        elif description or png_colour:
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            for kind, data in png_colour:
                info.add(kind, data)
            if description:
                info.add_itxt("Description", description)
                info.add_text("Software", "iste")
            pil["pnginfo"] = info
        # our file object, closed however the save ends (PIL closes its own on an Exception
        # only: Ctrl-C or SIGTERM left it open, and a ResourceWarning on the terminal)
        with open(tmp_name, "wb") as fp:
            Image.fromarray(image).save(_Hashing(fp, written), format=_PIL_FORMATS[suffix],
                                        **pil)
    def digest() -> str:
        return written.hexdigest() if tiff_sha256 is None else tiff_sha256

    remove_stale_temps(path)  # of an earlier write of it that was killed
    write_atomic(path, write, replace=replace,
                 then=None if then is None else lambda: then(digest()))
    return digest()


class _Hashing:
    """A file open for writing that adds every byte written to ``digest``; PIL writes to it
    in order (it has no ``fileno``, ``seek`` or ``tell``, so no byte is written past it)."""

    def __init__(self, fp, digest):
        self._fp, self._digest = fp, digest

    def write(self, data) -> int:
        self._digest.update(data)
        return self._fp.write(data)

    def flush(self) -> None:
        self._fp.flush()

