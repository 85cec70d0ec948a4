"""JPEG as slide scanners write it: encoding in their colour modes, and reading their settings.

Two colour modes cover what we have seen in whole-slide files (docs/real-scans.md):

- ``"ycbcr420"``: the JFIF default — RGB converted to YCbCr, chroma halved in both
  directions (4:2:0); PIL's and most DICOM WSI writers' baseline JPEG.
- ``"rgb"``: Aperio's "JPEG/RGB" — the R, G and B planes compressed as they are, no colour
  transform and no chroma subsampling, every plane quantised with one table (the CMU SVS
  sample is written this way).

Encoding and decoding go through imagecodecs' libjpeg (the codec tifffile uses for these tiles).
The quality of an existing stream is estimated from its luminance quantisation table as the
IJG quality whose scaled standard table is closest (the way libjpeg's ``-quality`` scales it).

Convention: images are uint8 (H, W, 3) RGB numpy arrays.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from iste.data.deblock import BlockQuantisation

__all__ = ["ColourMode", "COLOUR_MODES", "jpeg_encode", "jpeg_roundtrip", "JpegSettings",
           "estimate_quality", "parse_jpeg_settings", "jpeg_settings_of_file",
           "jpeg_file_quantisation", "with_tiff_colour", "block_quantisation_of", "TIFF_JPEG",
           "TIFF_JPEG2000", "tiff_jpeg_stream"]

ColourMode = Literal["ycbcr420", "rgb"]
COLOUR_MODES: tuple[ColourMode, ...] = ("ycbcr420", "rgb")

# The IJG standard luminance table (JPEG standard, Annex K.1), natural (row-major) order.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], float)

# Zig-zag position k -> natural index (DQT segments store tables in zig-zag order).
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34,
    27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44,
    51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])


def jpeg_encode(rgb: np.ndarray, quality: int, mode: ColourMode = "ycbcr420") -> bytes:
    """A baseline JPEG stream of ``rgb`` at IJG ``quality`` (1-100) in colour ``mode``.

    The 8 x 8 block grid starts at the array's top-left pixel (as in a scanner's tile).
    """
    import imagecodecs

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1-100, got {quality}")
    data = np.ascontiguousarray(rgb)
    if mode == "ycbcr420":
        return bytes(imagecodecs.jpeg8_encode(data, level=int(quality), subsampling="420"))
    if mode == "rgb":
        return bytes(imagecodecs.jpeg8_encode(data, level=int(quality), colorspace="RGB",
                                              outcolorspace="RGB", subsampling="444"))
    raise ValueError(f"unknown JPEG colour mode {mode!r}; expected one of {COLOUR_MODES}")


def jpeg_roundtrip(rgb: np.ndarray, quality: int, mode: ColourMode = "ycbcr420") -> np.ndarray:
    """:func:`jpeg_encode` then decode: what a viewer of the scanner's file sees.

    Returns:
        uint8 (H, W, 3).
    """
    import imagecodecs

    return np.asarray(imagecodecs.jpeg8_decode(jpeg_encode(rgb, quality, mode)))


@dataclass(frozen=True)
class JpegSettings:
    """What a JPEG stream (or a TIFF's JPEGTables + tile) says about its compression.

    quality: estimated IJG quality of the luminance (first) table; exact when the table is
        the IJG standard one scaled, ``table_error`` is then 0.
    sampling: per component (horizontal, vertical) sampling factors, e.g. ((2, 2), (1, 1),
        (1, 1)) for 4:2:0 and ((1, 1),) * 3 for 4:4:4.
    colour: "YCbCr" or "RGB" as the stream declares it, in libjpeg's order (a JFIF marker,
        else the Adobe APP14 transform, else component ids 'R', 'G', 'B'); "unknown" when it
        says nothing (the TIFF's PhotometricInterpretation then decides).
    tables: number of quantisation tables.
    component_tables: per component, its (8, 8) quantisation steps (natural order).
    """

    quality: int
    table_error: float
    sampling: tuple[tuple[int, int], ...]
    colour: str
    tables: int
    component_tables: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)

    @property
    def subsampling(self) -> str:
        """"4:4:4", "4:2:2", "4:2:0" or "other" (from the first component's factors)."""
        if len(self.sampling) < 3 or any(s != (1, 1) for s in self.sampling[1:]):
            return "other"
        return {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0"}.get(self.sampling[0], "other")

    def block_quantisation(self) -> BlockQuantisation | None:
        """What :func:`iste.data.deblock.deblock` needs, or None for a stream it cannot
        deblock (not three components, a colour the stream and file leave unknown, or a
        step of 0, which the JPEG standard forbids: :class:`BlockQuantisation` refuses them)."""
        try:
            return BlockQuantisation(self.colour, self.component_tables,
                                     subsampled=self.subsampling != "4:4:4")
        except ValueError:
            return None


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # libjpeg: integer
    return np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)


def estimate_quality(luma_table_natural: np.ndarray) -> tuple[int, float]:
    """The IJG quality (1-100) whose luminance table is closest (mean absolute difference) to
    ``luma_table_natural`` (64 values, row-major); returns (quality, that difference)."""
    table = np.asarray(luma_table_natural, float).reshape(64)
    errors = [float(np.abs(_ijg_table(q) - table).mean()) for q in range(1, 101)]
    best = int(np.argmin(errors))
    return best + 1, errors[best]


def _segments(stream: bytes):
    """(marker, payload) of each marker segment up to the start of scan."""
    i = 2 if stream[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(stream):
        if stream[i] != 0xFF:
            i += 1
            continue
        marker = stream[i + 1]
        if marker in (0xD8, 0xD9, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", stream[i + 2:i + 4])[0]
        if length < 2 or i + 2 + length > len(stream):
            raise ValueError(f"JPEG stream cut short in its marker 0xFF{marker:02X} segment")
        yield marker, stream[i + 4:i + 2 + length]
        if marker == 0xDA:
            return
        i += 2 + length


def parse_jpeg_settings(*streams: bytes) -> JpegSettings:
    """Settings from one JPEG stream, or a TIFF's JPEGTables followed by a tile's stream."""
    tables: dict[int, np.ndarray] = {}
    sampling: tuple[tuple[int, int], ...] = ()
    ids: tuple[int, ...] = ()
    table_ids: tuple[int, ...] = ()
    colour, jfif, adobe = "unknown", False, None
    for stream in streams:
        for marker, seg in _segments(stream):
            if marker == 0xDB:  # DQT: one or more (precision/id, 64 values) tables
                j = 0
                while j < len(seg):
                    precision, table_id = seg[j] >> 4, seg[j] & 15
                    width = 2 if precision else 1
                    raw = seg[j + 1:j + 1 + 64 * width]
                    values = np.frombuffer(raw, ">u2" if width == 2 else np.uint8).astype(float)
                    natural = np.empty(64)
                    natural[_ZIGZAG] = values
                    tables[table_id] = natural
                    j += 1 + 64 * width
            elif marker in (0xC0, 0xC1, 0xC2):  # SOF: per component id, sampling, table
                count = seg[5] if len(seg) > 5 else 0
                if count < 1 or len(seg) < 6 + 3 * count:
                    raise ValueError("a JPEG frame header is shorter than its components")
                comps = [seg[6 + 3 * k:9 + 3 * k] for k in range(count)]
                ids = tuple(c[0] for c in comps)
                sampling = tuple((c[1] >> 4, c[1] & 15) for c in comps)
                table_ids = tuple(c[2] for c in comps)
            elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
                adobe = "RGB" if seg[11] == 0 else "YCbCr"
            elif marker == 0xE0 and seg[:4] == b"JFIF":
                jfif = True
    if not tables or not sampling:
        raise ValueError("not a JPEG stream with quantisation tables and a frame header")
    # libjpeg's order: a JFIF marker means YCbCr whatever an Adobe marker says, then the
    # Adobe transform, then component ids R, G, B
    if jfif:
        colour = "YCbCr"
    elif adobe is not None:
        colour = adobe
    elif ids == (ord("R"), ord("G"), ord("B")):
        colour = "RGB"
    if any(t not in tables for t in table_ids):
        raise ValueError("a JPEG frame names a quantisation table the stream does not define")
    quality, error = estimate_quality(tables[min(tables)])
    return JpegSettings(quality, error, sampling, colour, len(tables),
                        tuple(tables[t].reshape(8, 8) for t in table_ids))


TIFF_JPEG = 7
"""The TIFF Compression tag's value for (new-style) JPEG strips and tiles."""

TIFF_JPEG2000 = frozenset({33003, 33005, 34712})
"""TIFF Compression values of JPEG 2000 tiles: Aperio's (YCbCr, RGB) and the standard one."""


def tiff_jpeg_stream(page, data: bytes) -> bytes:
    """A JPEG-compressed TIFF page's (tifffile's) stored strip or tile ``data`` as a complete
    JPEG stream: the page's JPEGTables (its shared quantisation and Huffman tables) merged
    in."""
    tables = page.jpegtables
    if tables and data[:2] == b"\xff\xd8":
        return bytes(tables[:-2]) + data[2:]  # tables without EOI + segment without SOI
    return data


def jpeg_settings_of_file(path: Path) -> JpegSettings | None:
    """A JPEG file's settings, or those of a tiled TIFF/SVS's first JPEG tile of level 0
    (colour taken from PhotometricInterpretation when the stream does not say); None when
    the file is not JPEG-compressed (PNG, or a TIFF with another codec)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\xff\xd8":
        return parse_jpeg_settings(path.read_bytes())
    if head[:2] not in (b"II", b"MM"):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.compression != TIFF_JPEG:
            return None
        tables = page.tags["JPEGTables"].value if "JPEGTables" in page.tags else b""
        tif.filehandle.seek(page.dataoffsets[0])
        tile = tif.filehandle.read(page.databytecounts[0])
        return with_tiff_colour(parse_jpeg_settings(tables, tile), int(page.photometric))


def jpeg_file_quantisation(path: Path) -> BlockQuantisation | None:
    """The BlockQuantisation of a JPEG file (block grid at its top-left pixel), or None when
    the file is not a JPEG stream or not one :func:`iste.data.deblock.deblock` handles."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
    try:
        return parse_jpeg_settings(path.read_bytes()).block_quantisation()
    except (ValueError, IndexError):
        return None


def with_tiff_colour(settings: JpegSettings, photometric: int) -> JpegSettings:
    """``settings`` with the colour a TIFF's PhotometricInterpretation gives (2: RGB, as
    Aperio's JPEG/RGB; otherwise YCbCr) where the stream itself does not say."""
    if settings.colour != "unknown":
        return settings
    return replace(settings, colour="RGB" if photometric == 2 else "YCbCr")


@functools.lru_cache(maxsize=256)
def block_quantisation_of(quality: int, mode: ColourMode = "ycbcr420") -> BlockQuantisation:
    """The tables :func:`jpeg_encode` writes at ``quality`` in ``mode`` (read back from a
    stream it writes, so they are libjpeg's own)."""
    settings = parse_jpeg_settings(jpeg_encode(np.zeros((16, 16, 3), np.uint8), quality, mode))
    return settings.block_quantisation()
