"""Reading ordinary image files (PNG, JPEG, TIFF) at the edges of the package.

Convention:
    Arrays are ``np.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)``: rows first, RGB last.
    PIL's ``size`` is ``(width, height)``; nothing outside this module sees it.

Only 8-bit RGB comes out of :func:`read_image`:

- gray (``L``, 1-bit PNG or TIFF, TIFF min-is-white inverted) and palette images are
  expanded to RGB, CMYK converted to sRGB through its CMYK profile where it has one
  (:func:`~iste.data.imagemeta.cmyk_to_rgb`), else as PIL converts it; an alpha channel
  (a PNG's transparent colour too, :func:`pil_has_alpha`) is left out (not
  composited: the colour values are kept as stored), :func:`read_image_and_alpha` returns it
  beside the RGB (:attr:`~iste.data.imagemeta.ImageMeta.gray` says whether the source was
  gray);
- 16-bit, 32-bit and float images raise :class:`ImageReadError` rather than being rescaled,
  because the meaningful range of such data (12-bit in a 16-bit container, ...) cannot be
  guessed; convert them to 8 bits yourself;
- pixels come back in stored order whatever the EXIF orientation tag says
  (:attr:`~iste.data.imagemeta.ImageMeta.orientation`); :func:`~iste.data.imagemeta.upright`
  turns them as viewers show them.

TIFFs (``.tif``/``.tiff``) are read with tifffile (first series, base level; multi-page
stacks are rejected), everything else with PIL. For whole-slide images use ``iste.slides``.
What a file records beside its pixels is read by :mod:`iste.data.imagemeta`; images are
written by :mod:`iste.data.imagewrite`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from iste.data.imagemeta import cmyk_to_rgb, tiff_profile
from iste.data.imageformats import (DEEP_ADVICE, MAX_INPUT_PIXELS, PNG_SIGNATURE,
                                    SUPPORTED_SUFFIXES, TIFF_SUFFIXES, tiff_alpha)
from iste.data.integrity import (incomplete, jpeg_problem, open_tiff, tiff_codec_missing,
                                  tiff_missing_chunks, tiff_raw_ycbcr, tiff_tile_judge)
from iste.data.jpeg import tiff_jpeg_stream
from iste.data.memory import decode_memory_problem
from iste.paths import link_note
from iste.text import error_line

__all__ = ["ImageReadError", "read_image", "read_image_and_alpha", "image_size",
           "png_bit_depth", "check_complete", "checked_image_size", "plain_image_kind",
           "pil_refusal", "pil_has_alpha"]

_JPEG_START = b"\xff\xd8\xff"  # start of image, then the next marker


class ImageReadError(Exception):
    """An image file is missing, unreadable, corrupt or of an unsupported kind."""


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
    counts as one when marked alpha, unassociated or associated: the colours of an
    associated one are divided by it) or every pixel is opaque (255).

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    path = Path(path)
    _check_readable(path)
    with _unreadable_named(path):
        rgb, alpha = (_read_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES
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
        if path.suffix.lower() in TIFF_SUFFIXES:
            with open_tiff(path) as tif:
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
        if path.suffix.lower() in TIFF_SUFFIXES:
            with open_tiff(f) as tif:
                size = _tiff_size(tif.series[0])
                problem = incomplete(f, length, tif)
                refusal = _tiff_refusal(tif.series[0])
        else:
            with _pil_opened(f, path) as img:
                size = img.size[1], img.size[0]
                refusal = _pil_refusal(img)
            problem = incomplete(f, length)
            f.seek(0)
            if _png_depth(f.read(25)) == 16:  # PIL reads 16-bit RGB as 8: refused
                refusal = _PNG16
    if problem is not None:
        raise ImageReadError(f"cannot read {path}: truncated ({problem})")
    if refusal is not None:
        raise ImageReadError(f"cannot read {path}: {refusal}")
    _check_decode_fits(path, size)
    return size


def _check_decode_fits(path: Path, hw: tuple[int, int]) -> None:
    """Refuse, from the (H, W) in the file's header, an image whose decoding would not fit in
    the memory available (:func:`iste.data.memory.decode_memory_problem`). Without it a 0.9
    MB PNG of 30000 x 30000 flat pixels in a test folder stopped ``iste eval`` with "out of
    memory (MemoryError)", the file unnamed, after taking all the memory it could; without an
    address-space limit the kernel may kill the process instead."""
    problem = decode_memory_problem(hw)
    if problem is not None:
        raise ImageReadError(f"cannot read {path}: {problem}")


def _tiff_size(series) -> tuple[int, int]:
    """(H, W) of a tifffile series' base level."""
    page = series.levels[0]
    return page.shape[page.axes.index("Y")], page.shape[page.axes.index("X")]


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
        problem = incomplete(f, os.fstat(f.fileno()).st_size)
    if problem is not None:
        raise ImageReadError(f"cannot read {path}: truncated ({problem})")


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
            head = f.read(len(PNG_SIGNATURE))
    except OSError:
        return None
    return ("PNG" if head.startswith(PNG_SIGNATURE)
            else "JPEG" if head.startswith(_JPEG_START) else None)


@contextlib.contextmanager
def _unreadable_named(path: Path):
    """Inside, a decoder's error (they raise many types: OSError, ValueError, SyntaxError...)
    becomes :class:`ImageReadError` "cannot read PATH: corrupt or unreadable (its first
    line)"; an ImageReadError, already said, passes as it is, and so does a MemoryError (the
    machine's memory, not the file: said as "corrupt or unreadable (MemoryError)" until session
    35)."""
    try:
        yield
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        reason = (f"cannot identify image file {str(path)!r}"  # PIL names an open file's object
                  if isinstance(exc, UnidentifiedImageError) else error_line(exc, 200))
        raise ImageReadError(f"cannot read {path}: corrupt or unreadable ({reason})") from exc


_PNG16 = f"16-bit PNG is not supported; {DEEP_ADVICE}"


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
        _check_decode_fits(path, (img.size[1], img.size[0]))
        img.load()
        if img.format == "JPEG":
            _warn_corrupt_jpeg(path)
        if img.mode == "CMYK":  # a JPEG's: through its profile
            return cmyk_to_rgb(np.asarray(img), img.info.get("icc_profile")), None
        alpha = pil_has_alpha(img)
        rgb = img if img.mode == "RGB" and not alpha else img.convert("RGBA" if alpha else "RGB")
        array = np.asarray(rgb)
    return array[..., :3], array[..., 3] if array.shape[-1] == 4 else None


def _pil_refusal(img: Image.Image) -> str | None:
    """Why :func:`read_image` refuses an image PIL opened (from its header), or None."""
    if getattr(img, "is_animated", False):  # PIL's way to ask; APNG, MPO
        return f"an animated {img.format} ({img.n_frames} frames) is not supported"
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return (f"{img.mode!r} images (more than 8 bits per sample) are not supported; "
                f"{DEEP_ADVICE}")
    return pil_refusal(img)


# PIL's raw modes of 16-bit samples decoded to an 8-bit mode: RGB;16B, LA;16B, L;16B (SGI)...
# (not BMP's 5-6-5 BGR;16, whose samples are narrower than 8 bits)
_WIDE_RAWMODE = re.compile(r";16[BLN]")
_NARROW_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                 "YCbCr", "LAB", "HSV")


def pil_refusal(img: Image.Image) -> str | None:
    """Why an 8-bit PIL image is not the file's samples: PIL decodes 16-bit RGB, RGBA and
    gray-with-alpha (PNG, TIFF) to 8-bit modes keeping each sample's high byte, which
    darkens 12-bit data held in 16 bits sixteen-fold, without a word; None where its
    samples are the file's (or it came from no file). Told from the decoder's raw mode
    (before the image is loaded), a TIFF's BitsPerSample, or a loaded PNG's header (PIL
    keeps no trace of its depth once loaded). The rule :func:`read_image` and ``iste.upscale``
    (PIL images) follow: 16-bit input is refused, never clipped or rescaled by guess."""
    if img.mode not in _NARROW_MODES:
        return None
    tiles = getattr(img, "tile", None) or ()  # an ImageFile's, until it is loaded
    wide = any(_WIDE_RAWMODE.search(str(_tile_rawmode(tile))) for tile in tiles)
    bits = getattr(img, "tag_v2", {}).get(258) if img.format == "TIFF" else None
    if isinstance(bits, tuple) and img.mode != "P" and any(int(b) > 8 for b in bits):
        wide = True
    if not wide and not tiles and img.format == "PNG" and getattr(img, "filename", None):
        try:
            wide = png_bit_depth(Path(img.filename)) == 16
        except OSError:
            pass  # the file is gone: nothing to tell by
    if not wide:
        return None
    return (f"its file stores 16 bits per sample, which PIL decodes to their high byte "
            f"(mode {img.mode}); {DEEP_ADVICE}")


def _tile_rawmode(tile) -> str:
    """The raw mode of one of PIL's decoder tiles (``args`` is the raw mode, or a tuple that
    starts with it)."""
    args = tile.args if hasattr(tile, "args") else tile[3]
    return args[0] if isinstance(args, tuple) and args else args


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # (x0, y0, dx, dy) of the interlaced passes


def _check_png_data(path: Path) -> None:
    """ImageReadError when a PNG's compressed image data holds fewer bytes than its header's
    size needs. PIL decodes such a file without a word, the missing rows black: a damaged
    file, or a few hundred bytes declaring 3000 x 3000 px. Read streaming (nothing the size
    of the image is allocated); a file that is not a PNG is left to the decoder."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
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


def pil_has_alpha(img: Image.Image) -> bool:
    """Whether a PIL image has transparency: a mode with alpha, a transparent colour or
    index (a PNG's tRNS, a GIF's: ``info["transparency"]``, for RGB and gray images as for
    palette ones), or an RGBA palette (``Image.quantize`` of an RGBA image, which ``info``
    does not mention). The rule :func:`read_image_and_alpha` and ``iste.upscale`` follow."""
    return (img.mode in ("RGBA", "RGBa", "LA", "La", "PA")
            or img.info.get("transparency") is not None
            or (img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"))


def png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (byte 24), or None for a non-PNG file."""
    with open(path, "rb") as f:
        return _png_depth(f.read(25))


def _png_depth(head: bytes) -> int | None:
    """Bit depth from the first bytes of a file if it is a PNG (byte 24, its IHDR's)."""
    if len(head) < 25 or not head.startswith(PNG_SIGNATURE):
        return None
    return head[24]


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB (H, W, 3), alpha (H, W) or None) of a TIFF (:func:`_tiff_rgb`)."""
    with open_tiff(path) as tif:
        series = tif.series[0]
        refusal = _tiff_refusal(series)  # before decoding: a 16-bit slide is not read to say so
        if refusal is not None:
            raise ImageReadError(f"cannot read {path}: {refusal}")
        _check_decode_fits(path, _tiff_size(series))
        page = series.keyframe
        extra, kind = len(page.extrasamples or ()), tiff_alpha(page)
        axes, array = series.axes, series.asarray()
        icc = tiff_profile(page)  # while the file is open: tifffile reads it lazily
        _warn_corrupt_tiff_jpeg(path, tif, series.pages)
    keep = [i for i, ax in enumerate(axes) if ax in "YXS"]
    array = array.reshape([array.shape[i] for i in keep])
    if array.dtype == np.bool_:  # 1 bit a pixel (refused in colour): as PIL reads mode "1"
        array = array.astype(np.uint8) * np.uint8(255)
    axes = "".join(axes[i] for i in keep)
    if axes == "SYX":  # planar configuration: channels first
        array = np.moveaxis(array, 0, -1)
    elif axes == "YX":
        array = array[..., None]
    colours = array.shape[-1] - extra
    alpha = array[..., colours] if kind is not None and colours >= 1 else None
    if alpha is not None and kind == "premultiplied":
        array = _unpremultiplied(array, colours)
    return _tiff_rgb(path, array, page, icc), alpha


def _unpremultiplied(array: np.ndarray, colours: int) -> np.ndarray:
    """``array`` (H, W, S) uint8 with its first ``colours`` samples divided by the alpha that
    follows them (TIFF associated alpha stores colours multiplied by it), as PIL reads such a
    TIFF: the straight colours an output writes beside the alpha. Read as they were stored,
    an output showed the image as if composited over black, and without its alpha."""
    alpha = array[..., colours:colours + 1].astype(np.uint32)
    straight = (array[..., :colours].astype(np.uint32) * 255 + alpha // 2) // np.maximum(alpha, 1)
    out = array.copy()
    out[..., :colours] = np.where(alpha > 0, np.minimum(straight, 255), 0)
    return out


def _tiff_rgb(path: Path, array: np.ndarray, page, icc: bytes | None) -> np.ndarray:
    """A TIFF page's samples ``array`` (H, W, S) as RGB (H, W, 3), as its photometric
    interpretation says (CMYK through its ICC profile ``icc``)."""
    photometric, colormap = page.photometric, page.colormap
    ycbcr = tiff_raw_ycbcr(page)
    if ycbcr is not None:  # JPEG's full-range YCbCr (the TIFF default; checked), as PIL has it
        return np.asarray(Image.fromarray(np.ascontiguousarray(array[..., :3]), "YCbCr")
                          .convert("RGB"))
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        return _apply_colormap(path, array[..., 0], colormap)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        return np.repeat(255 - array[..., :1], 3, axis=-1)
    if photometric == tifffile.PHOTOMETRIC.SEPARATED:  # CMYK (+ alpha)
        return cmyk_to_rgb(array[..., :4], icc)
    if array.shape[-1] in (1, 2):  # gray, gray + alpha
        return np.repeat(array[..., :1], 3, axis=-1)
    return array[..., :3]  # RGB, RGBA


def _tiff_refusal(series) -> str | None:
    """Why :func:`read_image` refuses a TIFF whose first series (tifffile's) this is, from its
    header, or None: several pages, a layout other than (Y, X[, S]) or (S, Y, X), samples
    other than 8-bit (a palette's indices and 1-bit gray excepted), a photometric
    interpretation or a count of samples per pixel it does not convert to RGB, fewer strips
    or tiles than its size needs (tifffile reads those it lacks as black), a compression it
    cannot decode here (said as "corrupt or unreadable" before)."""
    axes, shape = series.axes, tuple(series.shape)
    if any(ax not in "YXS" and n > 1 for ax, n in zip(axes, shape)):
        return f"multi-page TIFF (axes {axes!r}, shape {shape}) is not supported"
    missing = tiff_missing_chunks(series.keyframe) or tiff_codec_missing(series.keyframe)
    if missing is not None:
        return missing
    kept = "".join(ax for ax in axes if ax in "YXS")
    if kept not in ("YXS", "SYX", "YX"):
        return f"unsupported TIFF layout {kept!r}"
    photometric = series.keyframe.photometric
    if photometric == tifffile.PHOTOMETRIC.PALETTE and series.keyframe.colormap is not None:
        return None
    channels = shape[axes.index("S")] if "S" in kept else 1
    bilevel = series.dtype == np.bool_ and channels == 1 and photometric in (
        tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    if series.dtype != np.uint8 and not bilevel:
        return f"{series.dtype} TIFF is not supported; {DEEP_ADVICE}"
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
