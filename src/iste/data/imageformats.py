"""The plain image formats iste reads and writes (PNG, JPEG, TIFF): their suffixes, the PNG
signature, the largest image read and the memory its decoding takes, and the tags and units
a file's resolution is recorded in.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["SUPPORTED_SUFFIXES", "PIL_FORMATS", "TIFF_SUFFIXES", "PNG_SIGNATURE",
           "MAX_INPUT_PIXELS", "DECODE_BYTES", "UM_PER_INCH", "UM_PER_CM", "EXIF_XRES", "EXIF_YRES",
           "EXIF_RES_UNIT", "EXIF_ORIENTATION", "TIFF_XRES", "TIFF_YRES", "tiff_alpha",
           "DEEP_ADVICE"]


PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
TIFF_SUFFIXES = (".tif", ".tiff")
SUPPORTED_SUFFIXES: tuple[str, ...] = (*PIL_FORMATS, *TIFF_SUFFIXES)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


MAX_INPUT_PIXELS = 1 << 30
"""Largest PNG or JPEG read (1 Gpx, 3 GB as uint8; the largest output written whole is the
same, :data:`iste.engine.budget.MAX_OUTPUT_PIXELS`). It stands in for PIL's own guard, which
refused a 12 000 x 16 000 scan export (192 Mpx) as a "decompression bomb DOS attack" (iste
said "corrupt or unreadable") and warned so from 89 Mpx."""
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS  # PIL warns above it, refuses above twice it

DECODE_BYTES = 11
"""Peak bytes an input pixel takes while an image file is decoded into the uint8 RGB array,
with a margin: PIL holds RGB in 4 bytes a pixel and its array conversion copies the 3 twice
(measured: PNG 10.0, JPEG 10.1), tifffile's deflate strips 9.1, an uncompressed TIFF 3."""


DEEP_ADVICE = ("convert it to 8 bits per sample first, scaling by its real range (12-bit "
               "data in 16 bits: by 255 / 4095)")
"""What every refusal of samples deeper than 8 bits (16-bit, float: a plain image, a slide, a
PIL image) tells the user to do. iste does not rescale them itself: the range that matters
(12 bits in a 16-bit container, a float image's) is not in the file."""


UM_PER_INCH, UM_PER_CM = 25400.0, 10000.0
EXIF_XRES, EXIF_YRES, EXIF_RES_UNIT, EXIF_ORIENTATION = 282, 283, 296, 274
TIFF_XRES, TIFF_YRES = 282, 283  # XResolution, YResolution: the same tags in a TIFF


_TIFF_ALPHAS = {1: "premultiplied", 2: "straight"}  # ExtraSamples: associated, unassociated


def tiff_alpha(page) -> str | None:
    """How a TIFF page's (tifffile's) first extra sample, after its colours, is an alpha, as
    its ExtraSamples tag says: "straight" (unassociated), "premultiplied" (associated: the
    colours are stored multiplied by it), or None where it has none or one of unspecified
    meaning (0: no alpha; read as one, it whitened or darkened the pixels). The rule every
    reader of a TIFF's alpha follows: plain images, the tiffslide and OpenSlide backends."""
    extra = page.extrasamples
    return _TIFF_ALPHAS.get(int(extra[0])) if extra else None
