"""Small files laid out as scanners lay out theirs, written with tifffile and imagecodecs:
Aperio SVS with JPEG 2000 tiles, Hamamatsu NDPI, Philips TIFF (sparse too), Ventana BIF.

Each writes ``IMG`` (or its halves) as level 0; what each vendor's reader looks for is noted
beside it (tifffile's ``is_svs`` / ``is_ndpi`` / ``is_philips`` / ``is_bif``, OpenSlide's
vendor checks).
"""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from scipy import ndimage


def tissue(height: int = 256, width: int = 320, seed: int = 0) -> np.ndarray:
    """Smooth pink-purple blobs, uint8 (height, width, 3); red, green and blue far apart, so
    a reader that swaps or skips a colour conversion is told from one that does not."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((height, width, 3)), (6, 6, 0))
    base = (base - base.min()) / (base.max() - base.min())
    low, span = np.array([120, 40, 90]), np.array([120, 80, 120])
    return (low + base * span).astype(np.uint8)


def levels(img: np.ndarray, n: int = 3) -> list[np.ndarray]:
    return [np.ascontiguousarray(img[::2 ** i, ::2 ** i]) for i in range(n)]


# --- Aperio SVS with JPEG 2000 tiles -----------------------------------------------------
def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    """JPEG's (ITU-R BT.601 full range) RGB -> YCbCr, uint8."""
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                  [0.5, -0.418688, -0.081312]])
    ycc = rgb.astype(np.float64) @ m.T + [0, 128, 128]
    return np.clip(np.round(ycc), 0, 255).astype(np.uint8)


def svs_jpeg2000(path: Path, img: np.ndarray, compression: int, tile: int = 128) -> Path:
    """Aperio SVS whose tiles are JPEG 2000 codestreams: 33005, RGB through the codec's
    colour transform; 33003, YCbCr components and no transform (PhotometricInterpretation
    RGB all the same, as Aperio writes it). Level 0, a thumbnail, level 1."""
    def tiles(level):
        h, w = level.shape[:2]
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                t = np.zeros((tile, tile, 3), np.uint8)
                part = level[r:r + tile, c:c + tile]
                t[:part.shape[0], :part.shape[1]] = part
                data = _ycbcr(t) if compression == 33003 else t
                yield imagecodecs.jpeg2k_encode(data, level=0, codecformat="J2K",
                                                mct=compression != 33003, reversible=True)

    h, w = img.shape[:2]
    codec = "J2K/YUV16" if compression == 33003 else "J2K/KDU"
    head = (f"Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) {codec} "
            "Q=70|AppMag = 20|MPP = 0.4990")
    full, half = levels(img, 2)
    with tifffile.TiffWriter(path) as t:
        t.write(tiles(full), shape=full.shape, dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression=compression, metadata=None, description=head)
        t.write(np.ascontiguousarray(img[::8, ::8]), photometric="rgb", metadata=None,
                description="Aperio thumbnail")
        t.write(tiles(half), shape=half.shape, dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression=compression, metadata=None,
                description=f"Aperio level {half.shape[1]}x{half.shape[0]}")
    return path


# --- Hamamatsu NDPI --------------------------------------------------------------------------
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_OFFSET_TAGS = (273, 324)  # StripOffsets, TileOffsets


def ndpi(path: Path, img: np.ndarray, mpp: float = 0.4545, lens: float = 20.0) -> Path:
    """Hamamatsu NDPI: each level one JPEG strip with the NDPI tags (65420 FileFormat, 65421
    SourceLens: the objective, -1 for the macro; Make), in NDPI's layout (a classic TIFF
    whose IFD offsets are 8 bytes: tifffile reads a ``.ndpi`` so)."""
    def tags(lens_here):
        return [(271, "s", 0, "Hamamatsu", True), (272, "s", 0, "NanoZoomer", True),
                (65420, "I", 1, 1, True), (65421, "f", 1, lens_here, True),
                (65422, "i", 1, 0, True), (65423, "i", 1, 0, True), (65424, "i", 1, 0, True)]

    classic = path.with_name(path.name + ".classic.tif")
    with tifffile.TiffWriter(classic) as t:
        for i, level in enumerate(levels(img)):
            res = 1e4 / (mpp * 2 ** i)
            t.write(level, photometric="rgb", compression="jpeg",
                    compressionargs={"level": 95}, rowsperstrip=level.shape[0],
                    resolution=(res, res), resolutionunit="CENTIMETER", metadata=None,
                    extratags=tags(lens), software="NDP.scan 3.4.0")
        macro = np.full((40, 120, 3), 200, np.uint8)  # the glass slide: not the tissue
        t.write(macro, photometric="rgb", compression="jpeg", metadata=None,
                extratags=tags(-1.0))
    _to_ndpi_layout(classic, path)
    classic.unlink()
    return path


def _to_ndpi_layout(src: Path, dst: Path) -> None:
    """A little-endian classic TIFF rewritten in NDPI's layout: an 8-byte first-IFD offset in
    the header, every IFD followed by an 8-byte next-IFD offset and the high 4 bytes of its
    entries' values (zero under 4 GB); all after the header moves 8 bytes on."""
    old, shift = src.read_bytes(), 8
    data = bytearray(old[:4] + bytes(12) + old[8:])
    ifds, at = [], struct.unpack_from("<I", old, 4)[0]
    while at:
        count = struct.unpack_from("<H", old, at)[0]
        entries = []
        for k in range(count):
            tag, kind, n, value = struct.unpack_from("<HHII", old, at + 2 + 12 * k)
            if _TYPE_SIZES[kind] * n > 4:
                if tag in _OFFSET_TAGS:  # the array of data offsets: its values move too
                    fmt = f"<{n}{'I' if kind == 4 else 'H'}"
                    moved = [v + shift for v in struct.unpack_from(fmt, old, value)]
                    struct.pack_into(f"<{n}I", data, value + shift, *moved)
                value += shift
            elif tag in _OFFSET_TAGS:
                value += shift
            entries.append(struct.pack("<HHII", tag, kind, n, value))
        ifds.append(entries)
        at = struct.unpack_from("<I", old, at + 2 + 12 * count)[0]
    data += bytes(len(data) % 2)
    starts, pos = [], len(data)
    for entries in ifds:
        starts.append(pos)
        pos += 2 + 16 * len(entries) + 8
    struct.pack_into("<Q", data, 4, starts[0])
    for i, entries in enumerate(ifds):
        following = starts[i + 1] if i + 1 < len(starts) else 0
        data += (struct.pack("<H", len(entries)) + b"".join(entries)
                 + struct.pack("<Q", following) + bytes(4 * len(entries)))
    dst.write_bytes(bytes(data))


# --- Philips TIFF ---------------------------------------------------------------------------
_PHILIPS = """<?xml version="1.0" encoding="UTF-8" ?>
<DataObject ObjectType="DPUfsImport">
<Attribute Name="DICOM_MANUFACTURER" Group="0x0008" Element="0x0070" PMSVR="IString">PHILIPS\
</Attribute>
<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" \
PMSVR="IDataObjectArray"><Array><DataObject ObjectType="DPScannedImage">
<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" PMSVR="IString">WSI\
</Attribute>
<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">\
&quot;{mm}&quot; &quot;{mm}&quot;</Attribute>
<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" Element="0x8b01" \
PMSVR="IDataObjectArray"><Array>{levels}</Array></Attribute>
</DataObject></Array></Attribute>
</DataObject>
"""
_PHILIPS_LEVEL = """<DataObject ObjectType="PixelDataRepresentation">
<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">\
&quot;{mm}&quot; &quot;{mm}&quot;</Attribute>
<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_NUMBER" Group="0x101D" Element="0x8b01" \
PMSVR="IUInt16">{i}</Attribute>
</DataObject>"""


def philips(path: Path, img: np.ndarray, empty: tuple[int, int] | None = None,
            mpp: float = 0.499, tile: int = 128) -> Path:
    """Philips TIFF (software "Philips DP", an XML DataObject as ImageDescription with each
    level's DICOM_PIXEL_SPACING in mm): tiled JPEG levels, then Macro and Label. ``empty``:
    (column, row) of a level-0 tile stored with no bytes, as Philips leaves the tiles outside
    its scanned areas (a sparse slide)."""
    pyramid = levels(img)
    xml = _PHILIPS.format(mm=mpp / 1000, levels="".join(
        _PHILIPS_LEVEL.format(mm=mpp / 1000 * 2 ** i, i=i) for i in range(len(pyramid))))
    software = "Philips DP v1.0"
    with tifffile.TiffWriter(path, bigtiff=True) as t:
        for i, level in enumerate(pyramid):
            description = xml if i == 0 else f"level={i}"
            if i or empty is None:
                t.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg",
                        compressionargs={"level": 95}, software=software, metadata=None,
                        description=description, subfiletype=1 if i else 0)
                continue
            h, w = level.shape[:2]
            streams = []
            for r in range(0, h, tile):
                for c in range(0, w, tile):
                    part = np.full((tile, tile, 3), 255, np.uint8)
                    part[:min(tile, h - r), :min(tile, w - c)] = level[r:r + tile, c:c + tile]
                    sparse = (c // tile, r // tile) == empty
                    streams.append(b"" if sparse else imagecodecs.jpeg8_encode(part, level=95))
            t.write(iter(streams), shape=level.shape, dtype=np.uint8, tile=(tile, tile),
                    photometric="rgb", compression="jpeg", software=software, metadata=None,
                    description=description)
        for name in ("Macro", "Label"):
            t.write(np.ascontiguousarray(img[::8, ::8]), photometric="rgb", compression="jpeg",
                    metadata=None, description=name, software=software)
    return path


# --- Ventana BIF ------------------------------------------------------------------------------
_ISCAN = ('<?xml version="1.0" encoding="utf-8"?><iScan BuildVersion="1.1.0.15854" '
          'Magnification="{mag:g}" ScanRes="{mpp}" ScannerModel="VENTANA DP 200" ZLayers="1">'
          '<AOI0 Left="0" Top="0" Right="{w}" Bottom="{h}" /></iScan>')


def bif(path: Path, img: np.ndarray, mpp: float = 0.2325, mag: float = 40,
        tile: int = 128) -> Path:
    """Ventana BIF: page 0 the label with the iScan XMP (tag 700: Magnification, ScanRes =
    microns per pixel), the thumbnail, then tiled levels described "level=N mag=M
    quality=Q" (no resolution tags: the XMP alone says the pixel size)."""
    software = "ScanOutputManager 1.1.0.15854"
    xmp = _ISCAN.format(mag=mag, mpp=mpp, w=img.shape[1], h=img.shape[0]).encode()
    with tifffile.TiffWriter(path, bigtiff=True) as t:
        t.write(np.full((60, 180, 3), 230, np.uint8), photometric="rgb", compression="jpeg",
                metadata=None, description="Label_Image", software=software,
                extratags=[(700, "B", len(xmp), xmp, True)])
        t.write(np.ascontiguousarray(img[::8, ::8]), photometric="rgb", compression="jpeg",
                metadata=None, description="Thumbnail", software=software)
        for i, level in enumerate(levels(img)):
            t.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg",
                    compressionargs={"level": 95}, metadata=None, software=software,
                    description=f"level={i} mag={mag / 2 ** i:g} quality=95")
    return path
