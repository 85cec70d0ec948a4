"""ICC profiles for tests, built with Pillow's ImageCms (LittleCMS) or byte by byte from the
header the ICC specification lays out (size at 0, class at 12, colour space at 16, PCS at
20, rendering intent at 64; the tag count at 128, then 12-byte entries)."""

from __future__ import annotations

import struct

from PIL import ImageCms


def srgb_profile() -> bytes:
    """LittleCMS's sRGB profile (v4, a matrix and curves)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def edited(icc: bytes, offset: int, value: bytes) -> bytes:
    """``icc`` with ``value`` written at ``offset`` and no profile id (an MD5 of the bytes
    that the edit would contradict)."""
    out = bytearray(icc)
    out[offset:offset + len(value)] = value
    out[84:100] = bytes(16)
    return bytes(out)


def gray_profile(gamma: float = 2.2) -> bytes:
    """A v2 monitor profile of gray pixels (GRAY, PCS XYZ): a description, the D50 white
    point and one gamma curve (kTRC), as a gray scan's profile has them."""
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))
    return _profile(b"mntr", b"GRAY", b"XYZ ", "gray gamma", [(b"kTRC", curve)])


def cmyk_profile(lab, intent: int = 1) -> bytes:
    """A v2 output profile of CMYK pixels (PCS Lab) whose A2B0 (a lut16 on a grid of two
    points a channel) gives each corner of the CMYK cube the Lab ``lab(c, m, y, k)`` (each 0
    or 1; L in 0-100, a and b in -128-127), with a description, the D50 white point and the
    rendering ``intent`` in its header (relative colorimetric by default: at perceptual,
    LittleCMS maps the profile's darkest colour to black)."""
    clut = b""
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    L, a, b = lab(c, m, y, k)
                    clut += struct.pack(">3H", round(L / 100 * 0xFF00), round((a + 128) * 256),
                                        round((b + 128) * 256))
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536)
    ramp = struct.pack(">2H", 0, 65535)
    lut = (b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + identity + struct.pack(">2H", 2, 2)
           + ramp * 4 + clut + ramp * 3)
    return _profile(b"prtr", b"CMYK", b"Lab ", "cmyk test", [(b"A2B0", lut)], intent)


_D50 = struct.pack(">3i", 63190, 65536, 54061)  # the white point, s15Fixed16


def _profile(device_class: bytes, space: bytes, pcs: bytes, description: str,
             tags: list[tuple[bytes, bytes]], intent: int = 0) -> bytes:
    """A v2 profile of ``device_class`` (b"mntr", b"prtr") for pixels of ``space`` with the
    connection space ``pcs``: a description, the D50 white point, then ``tags`` (signature,
    data), at rendering ``intent``."""
    text = description.encode() + b"\0"
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(75)),
            (b"wtpt", b"XYZ " + bytes(4) + _D50), *tags]
    first = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", first + len(body), len(data))
        body += data
    header = (struct.pack(">I", first + len(body)) + b"lcms" + b"\x02\x10\x00\x00"
              + device_class + space + pcs + bytes(12) + b"acsp").ljust(64, b"\0")
    header = (header + struct.pack(">I", intent) + _D50).ljust(128, b"\0")
    return header + struct.pack(">I", len(tags)) + table + body
