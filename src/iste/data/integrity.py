"""Checks of stored image data that decoders pass on without a word: a file or TIFF page cut
short or with tiles of no bytes, damaged JPEG and JPEG 2000 streams, TIFF YCbCr samples that
tifffile leaves unconverted, compressions this environment cannot decode. Shared by the plain
image reader (:mod:`iste.data.images`) and the slide readers (:mod:`iste.slides`); none decodes
the pixels it judges."""

from __future__ import annotations

import math
from typing import Callable

import tifffile

from iste.data.imageformats import PNG_SIGNATURE
from iste.data.jpeg import TIFF_JPEG, TIFF_JPEG2000
from iste.text import error_line

__all__ = ["incomplete", "open_tiff", "tiff_chain_broken", "tiff_data_past_end",
           "tiff_empty_data", "tiff_missing_chunks", "tiff_short_raw_chunks", "tiff_raw_ycbcr",
           "tiff_tile_judge", "tiff_codec_missing", "jpeg_problem", "jpeg2000_problem"]


_TAIL = 1 << 16  # bytes read from a file's end to find its end marker


def incomplete(f, size: int, tif: tifffile.TiffFile | None = None) -> str | None:
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

    if head.startswith(PNG_SIGNATURE):
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
        with open_tiff(f) as opened:
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


def open_tiff(source) -> tifffile.TiffFile:
    """``tifffile.TiffFile(source)`` (a path or an open binary file), refused with
    :class:`tifffile.TiffFileError` when its chain of images is broken
    (:func:`tiff_chain_broken`). tifffile finds a loop in the chain only where it walks the
    whole chain at once, up to its 100th image: walking it image by image, as its ``series``
    does, it followed an image that names itself as the next for ever (iste serve and iste
    upscale hung on such a file, their memory growing); a chain that breaks off (a copy cut
    short) it logs, and reads the images before the break as the whole file."""
    tif = tifffile.TiffFile(source)
    try:
        broken = tiff_chain_broken(tif)
    except BaseException:
        tif.close()
        raise
    if broken is not None:
        tif.close()
        raise tifffile.TiffFileError(broken)
    return tif


def tiff_chain_broken(tif: tifffile.TiffFile) -> str | None:
    """Why the chain of a TIFF's images (each IFD names the next, the last 0) does not end as
    a TIFF's ends, or None: an image whose next lies past the end of the file (a copy cut
    short), one named twice (a loop), or an IFD cut off. Walked as tifffile reads it (its
    offset and entry sizes: BigTIFF's, NDPI's), an entry count and a next offset per image,
    without parsing the tags."""
    fmt, fh = tif.tiff, tif.filehandle
    size = fh.size
    order = "little" if fmt.byteorder == "<" else "big"
    try:
        offset, seen = tif.pages.first.offset, set()
    except IndexError:  # no first image (its offset past the end): tifffile's to say why
        return None
    while offset:
        if offset in seen:
            return (f"its chain of images loops: image {len(seen)} names the one at byte "
                    f"{offset} as the next")
        seen.add(offset)
        fh.seek(offset)
        raw = fh.read(fmt.tagnosize)
        entries = int.from_bytes(raw, order)
        link = offset + fmt.tagnosize + entries * fmt.tagsize
        if len(raw) < fmt.tagnosize or link + fmt.offsetsize > size:
            return (f"image {len(seen)} of its chain of images, at byte {offset}, runs past "
                    f"the file's end (byte {size})")
        fh.seek(link)
        offset = int.from_bytes(fh.read(fmt.offsetsize), order)
        if offset >= size:
            return (f"image {len(seen)} of its chain of images names the next at byte "
                    f"{offset}, past the file's end (byte {size}): a truncated copy?")
    return None


def tiff_data_past_end(page: tifffile.TiffPage | tifffile.TiffFrame, size: int) -> bool:
    """Whether a tifffile page's strips or tiles run past ``size`` bytes (the file's length):
    a copy cut short."""
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
    return bool(ends) and max(ends) > size


def tiff_empty_data(page: tifffile.TiffPage | tifffile.TiffFrame) -> str | None:
    """Which of a tifffile page's strips or tiles are stored with no bytes, or at byte 0 (where
    the file's header is), or None: a damaged file, or a sparse writer's empty tile. tifffile
    reads both as empty, filled black, without a word."""
    empty = [not (n and o) for o, n in zip(page.dataoffsets, page.databytecounts)]
    if not any(empty):
        return None
    index = empty.index(True)
    # a stack's pages after the first (a z-stack's or an OME-TIFF's planes) are TiffFrames: their
    # own strips or tiles, their size and tiling their keyframe's (a TiffPage's keyframe: itself)
    key = page.keyframe
    kind, cols = ("tile", -(-key.imagewidth // key.tilewidth)) if key.is_tiled else ("strip", 0)
    where = f"column {index % cols} row {index // cols}" if cols else f"{index}"
    at_0 = any(n and not o for o, n in zip(page.dataoffsets, page.databytecounts))
    return (f"{sum(empty)} of the {len(empty)} {kind}s of its {key.imagewidth} x "
            f"{key.imagelength} px image are stored with no bytes{' or at byte 0' * at_0}, "
            f"the first {kind} {where}")


def tiff_missing_chunks(page: tifffile.TiffPage | tifffile.TiffFrame) -> str | None:
    """Why a tifffile page holds fewer strips or tiles than its size needs, or None: a chunk
    is held where it has both an offset and a byte count (a damaged or altered header; one
    list shorter than the other too). tifffile reads the chunks it lacks as black, with a log
    line at most; tiffslide failed a read of a tile without its count with
    "KeyError: '1.1.0'"."""
    key = page.keyframe  # a TiffFrame's size and tiling are its keyframe's
    held = min(len(page.dataoffsets), len(page.databytecounts))
    needed = math.prod(page.chunked)
    if held >= needed:
        return None
    kind = "tile" if key.is_tiled else "strip"
    return (f"its {key.imagewidth} x {key.imagelength} px image holds {held} of the {needed} "
            f"{kind}s that size needs (a damaged or altered header)")


def tiff_short_raw_chunks(page: tifffile.TiffPage | tifffile.TiffFrame) -> str | None:
    """Which uncompressed strip or tile of a tifffile page holds fewer bytes than its pixels
    need, or None (and None for a compressed page): a damaged byte count, or a Compression
    tag that says "none" over compressed data. libtiff (OpenSlide) reads such a chunk's
    bytes and those after it as pixels, without an error: garbage."""
    key = page.keyframe
    if key.compression != 1:
        return None
    contig = key.planarconfig != 2
    samples = key.samplesperpixel if contig else 1
    sx, sy = key.subsampling or (1, 1)
    sub = contig and int(key.photometric) == 6 and (sx, sy) != (1, 1)  # YCbCr, 4:2:x

    def needs(w: int, h: int) -> int:
        if sub:  # sx * sy luma and two chroma samples per block, 8-bit
            return -(-w // sx) * -(-h // sy) * (sx * sy + 2) * key.bitspersample // 8
        return h * -(-w * samples * key.bitspersample // 8)

    if key.is_tiled:
        sizes = [needs(key.tilewidth, key.tilelength)] * len(page.databytecounts)
    else:
        rows = max(1, min(key.rowsperstrip or key.imagelength, key.imagelength))
        per_plane = -(-key.imagelength // rows)
        sizes = [needs(key.imagewidth, min(rows, key.imagelength - (i % per_plane) * rows))
                 for i in range(len(page.databytecounts))]
    for index, (count, size) in enumerate(zip(page.databytecounts, sizes)):
        if 0 < count < size:
            kind = "tile" if key.is_tiled else "strip"
            return (f"uncompressed {kind} {index} of its {key.imagewidth} x "
                    f"{key.imagelength} px image holds {count} bytes of the {size} its "
                    "pixels need (a damaged byte count, or compressed data marked "
                    "uncompressed)")
    return None


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


def tiff_codec_missing(page) -> str | None:
    """Why no strip or tile of a tifffile page can be decoded here, or None: a compression
    tifffile does not decode (SGILOG ...), or one whose codec this build of imagecodecs lacks.
    imagecodecs then stands in a function that raises ImportError whatever it is given; a
    real decoder called without its data raises TypeError before it runs, so the decoder is
    called without arguments to tell (no pixels are decoded: an NDPI level is one JPEG).
    Met only at the first read, such a file was taken for a damaged one: a slide's error
    named the first tile and advised ``--unreadable-tiles fill``, which filled the whole
    output from white."""
    compression = int(page.keyframe.compression)
    if compression == 1:
        return None
    try:
        name = f"{tifffile.COMPRESSION(compression).name} (compression {compression})"
    except ValueError:
        name = f"compression {compression}"
    try:
        decode = tifffile.TIFF.DECOMPRESSORS[compression]
    except KeyError:  # its text is the compression's name again
        return (f"its pixels are compressed as {name}, which tifffile {tifffile.__version__} "
                "does not decode; convert the file to a codec it reads (JPEG, JPEG 2000, "
                "deflate, LZW ...)")
    try:
        decode()
    except ImportError as exc:  # imagecodecs' stand-in for a codec it was built without
        import imagecodecs

        return (f"its pixels are compressed as {name}, whose codec this environment's "
                f"imagecodecs {imagecodecs.__version__} was built without "
                f"({error_line(exc)}); install an imagecodecs with it, or convert the file")
    except Exception:  # noqa: BLE001 - a real decoder, which wants its data
        return None
    return None


def tiff_tile_judge(page) -> tuple[str, Callable[[bytes], str | None]] | None:
    """(codec name, the function saying what is wrong with one of its strips or tiles) for a
    JPEG- or JPEG 2000-compressed TIFF page (tifffile's): :func:`jpeg_problem`,
    :func:`jpeg2000_problem`; None for other codecs (not judged)."""
    if page.compression == TIFF_JPEG:
        return "JPEG", jpeg_problem
    if page.compression in TIFF_JPEG2000:
        return "JPEG 2000", jpeg2000_problem
    return None


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
        return error_line(exc, 200)


def jpeg2000_problem(data: bytes) -> str | None:
    """Why a JPEG 2000 codestream is damaged, or None when it ends as one must (openjpeg
    decodes a codestream cut short, or zero-filled after some point, without a word): its
    last bytes before any zero padding must be the end-of-codestream marker. Only raw
    codestreams (starting with the SOC marker, as TIFF and DICOM tiles store them) are
    judged; damage inside the coded data that keeps the end cannot be told this way."""
    if data[:2] != b"\xff\x4f" or data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    return "no end-of-codestream marker: the tile is cut short or zero-filled"
