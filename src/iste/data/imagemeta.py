"""What a plain image file (PNG, JPEG, TIFF) records beside its pixels: pixel size, colour
profile and chunks, EXIF orientation (:class:`ImageMeta`), and the turn that orientation asks
for (:func:`upright`)."""

from __future__ import annotations

import functools
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageCms

from iste.data.imageformats import (EXIF_ORIENTATION, EXIF_RES_UNIT, EXIF_XRES, EXIF_YRES,
                                    TIFF_SUFFIXES, TIFF_XRES, TIFF_YRES, UM_PER_CM,
                                    UM_PER_INCH)

__all__ = ["ImageMeta", "read_image_meta", "upright", "upright_xy", "pil_orientation",
           "orientation_exif", "profile_for",
           "profile_problem", "space_problem", "UNAPPLIED", "tiff_profile", "tiff_mode",
           "declared_space", "littlecms_input", "header_intent", "cmyk_to_rgb"]


@dataclass(frozen=True)
class ImageMeta:
    """What a plain image file records beside its pixels.

    mpp: microns per pixel (x, y) from the file's resolution (PNG pHYs / JPEG JFIF density /
        TIFF X/YResolution with a unit), or None when absent or only an aspect ratio.
    icc_profile: the embedded ICC colour profile (bytes) when it describes the pixels as stored
        and as an output writes them (:func:`profile_for`): an RGB profile of an RGB or
        palette source, a gray one of a gray source (:attr:`gray`); else None (a CMYK
        source's profile, an RGB one of gray pixels or a gray one of RGB pixels describes no
        pixel written).
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


def read_image_meta(path: str | os.PathLike) -> ImageMeta:
    """Resolution and ICC profile of a PNG / JPEG / TIFF (an empty ImageMeta if unreadable)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                unit = {2: UM_PER_INCH, 3: UM_PER_CM}.get(int(page.resolutionunit or 1))
                xr, yr = page.get_resolution()  # (1, 1) per inch where the tags are absent
                recorded = TIFF_XRES in page.tags and TIFF_YRES in page.tags
                mpp = (unit / xr, unit / yr) if recorded and unit and xr > 0 and yr > 0 \
                    else None
                orientation = _orientation(page.tags.valueof(EXIF_ORIENTATION))
                mode = tiff_mode(page)
                gray = mode == "L"
                return ImageMeta(mpp, _pixels_profile(tiff_profile(page), mode, gray),
                                 orientation, gray=gray)
        with Image.open(path) as img:
            exif = img.getexif()
            dpi = _jfif_dpi(img.info) if img.format == "JPEG" else img.info.get("dpi")
            unit = {2: UM_PER_INCH, 3: UM_PER_CM}.get(int(exif.get(EXIF_RES_UNIT, 0)))
            mpp = None
            if unit and float(exif.get(EXIF_XRES, 0)) > 0 and float(exif.get(EXIF_YRES, 0)) > 0:
                mpp = (unit / float(exif[EXIF_XRES]), unit / float(exif[EXIF_YRES]))
            elif dpi and all(float(v) > 1 for v in dpi):  # PIL reports (1, 1) for "no unit"
                mpp = (UM_PER_INCH / float(dpi[0]), UM_PER_INCH / float(dpi[1]))
            gray = img.mode in _GRAY_MODES
            return ImageMeta(mpp, _pixels_profile(img.info.get("icc_profile"), img.mode, gray),
                             _orientation(exif.get(EXIF_ORIENTATION)), _png_colour(img.info),
                             gray)
    except Exception:  # metadata is optional; the pixel reader reports broken files
        return ImageMeta()


def pil_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation (1-8) a PIL image records (its EXIF, or a TIFF's tag 274), as
    :attr:`ImageMeta.orientation` reads a file's; None where it records none."""
    try:
        return _orientation(img.getexif().get(EXIF_ORIENTATION))
    except Exception:  # a damaged EXIF block: no orientation to go by, as for a file
        return None


def orientation_exif(orientation: int | None) -> bytes | None:
    """An EXIF block holding only ``orientation`` (2-8), as PIL keeps one in
    ``info["exif"]``; None for none or 1 (upright). Its other tags (a resolution, a camera's)
    no longer describe a super-resolved image."""
    if orientation in (None, 1):
        return None
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


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


def _pixels_profile(icc: bytes | None, stored: str, gray: bool) -> bytes | None:
    """``icc`` when it describes the pixels of an output of an image stored in PIL mode
    ``stored``, written gray for a gray source, else RGB (:func:`profile_for`): a CMYK
    source's profile does not describe the RGB pixels :func:`read_image` returns, nor an RGB
    one a gray source's."""
    return profile_for(icc, stored, "L" if gray else "RGB")


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


def tiff_profile(page: tifffile.TiffPage) -> bytes | None:
    """The ICC profile of a TIFF page (tag 34675), or None where the tag is absent or not a
    run of bytes: tifffile gives the value of a tag written with another type as it is (an
    int, a float, a str, a tuple), and an int or a float stopped `iste serve` and `iste
    upscale` with a TypeError where they took its length."""
    icc = page.iccprofile
    return bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc else None


_SPACES = {"1": b"GRAY", "L": b"GRAY", "LA": b"GRAY", "La": b"GRAY", "F": b"GRAY",
           "RGB": b"RGB ", "RGBA": b"RGB ", "RGBa": b"RGB ", "RGBX": b"RGB ", "P": b"RGB ",
           "PA": b"RGB ", "CMYK": b"CMYK", "LAB": b"Lab "}
"""The ICC colour space (header bytes 16-19) of pixels of each PIL mode: a palette's colours
are RGB; a mode not here (16-bit, YCbCr as a PIL mode) has none a profile may declare."""
_WORDS = {b"GRAY": "gray", b"RGB ": "RGB", b"CMYK": "CMYK", b"Lab ": "Lab"}
UNAPPLIED = ("not one LittleCMS can apply (truncated, garbage, or a device link, abstract or "
             "named-colour profile)")
"""Why a profile whose colour space fits is still not one of the pixels
(:func:`profile_problem`)."""


def space_problem(icc: bytes | None, stored: str, written: str | None = None) -> str | None:
    """Why the colour space an ICC profile's header declares (:func:`declared_space`) is not
    that of pixels stored in PIL mode ``stored`` and written (an output's, the viewer's) in
    ``written`` (default: as stored), e.g. "an RGB profile of gray pixels"; None where it is,
    or where there is no profile. From the header alone: no LittleCMS."""
    if not icc:
        return None
    space = declared_space(icc)
    if space is None or space != _SPACES.get(stored):
        return f"{_profile_words(space)} of {_pixel_words(stored)} pixels"
    if written is not None and space != _SPACES.get(written):
        return f"{_profile_words(space)}, of pixels written as {_pixel_words(written)}"
    return None


def _profile_words(space: bytes | None) -> str:
    if space is None:
        return "a profile without a whole header"
    word = _WORDS.get(space)
    if word is None:
        return f"a profile of colour space {space.decode('latin-1')!r}"
    return f"{'an' if word == 'RGB' else 'a'} {word} profile"


def _pixel_words(mode: str) -> str:
    return _WORDS.get(_SPACES.get(mode), f"{mode or 'unknown'}-mode")


def profile_problem(icc: bytes | None, stored: str, written: str | None = None) -> str | None:
    """Why ``icc`` is not a profile of pixels stored in PIL mode ``stored`` and written in
    ``written`` (default: as stored): its colour space is another (:func:`space_problem`), or
    LittleCMS cannot apply it to them (:data:`UNAPPLIED`); None where it is one, or where
    there is no profile. The one rule every reader of a file's profile follows: plain images
    (:func:`read_image_meta`), the slide writers and the viewer
    (:mod:`iste.slides.pipeline`, :mod:`iste.serve.colour`), the API's PIL images."""
    problem = space_problem(icc, stored, written)
    if problem is None and icc and littlecms_input(icc, _littlecms_mode(stored)) is None:
        return UNAPPLIED
    return problem


def profile_for(icc: bytes | None, stored: str, written: str | None = None) -> bytes | None:
    """``icc`` when it is a profile of pixels stored in PIL mode ``stored`` and written in
    ``written`` (:func:`profile_problem`), else None: a profile of another colour space (an
    RGB one of gray pixels, a gray one of RGB pixels, any of CMYK pixels written as RGB)
    describes nothing written, and a truncated or garbage one, copied into an output, made
    that output's profile fail in its readers (OpenSlide's ``color_profile`` raises)."""
    return icc if icc and profile_problem(icc, stored, written) is None else None


def _littlecms_mode(mode: str) -> str:
    """The PIL mode a LittleCMS transform of pixels of ``mode`` (one :data:`_SPACES` gives
    GRAY or RGB) reads: "L" or "RGB"."""
    return "L" if _SPACES.get(mode) == b"GRAY" else "RGB"


def tiff_mode(page: tifffile.TiffPage) -> str:
    """The PIL mode of a TIFF page's stored samples, as a profile of them must declare its
    colour space: "L" for one colour sample (min-is-black or min-is-white, with or without
    alpha), "P" for a palette, "RGB" for RGB or YCbCr (decoded to RGB), "CMYK" for separated
    inks, "LAB" for CIE Lab; "" for anything else (no profile describes it)."""
    photometric = int(page.photometric) if page.photometric is not None else -1
    P = tifffile.PHOTOMETRIC
    if photometric in (P.MINISBLACK, P.MINISWHITE):
        colours = page.samplesperpixel - len(page.extrasamples or ())
        return "L" if colours == 1 else "RGB" if colours == 3 else ""
    return {P.PALETTE: "P", P.RGB: "RGB", P.YCBCR: "RGB", P.SEPARATED: "CMYK",
            P.CIELAB: "LAB", P.ICCLAB: "LAB"}.get(photometric, "")


def declared_space(icc: bytes | None) -> bytes | None:
    """The colour space an ICC profile's header declares (bytes 16-19: ``b"RGB "``,
    ``b"GRAY"``, ``b"CMYK"`` ...), or None where there is no whole header."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def cmyk_to_rgb(cmyk: np.ndarray, icc: bytes | None) -> np.ndarray:
    """CMYK pixels, uint8 (H, W, 4), as sRGB, uint8 (H, W, 3): through ``icc`` where it is a
    CMYK profile (:func:`space_problem`) LittleCMS can apply, at its rendering intent, as
    the viewer converts a slide's RGB; else as PIL converts CMYK (255 - c and k ..., no
    profile). The rule of every CMYK image read whole: files (:func:`iste.data.images.read_image`)
    and PIL images (``iste.upscale``). Until session 38 the profile was ignored: a CMYK file's
    colours were PIL's formula's, not those its profile says it prints."""
    img = Image.fromarray(np.ascontiguousarray(cmyk), "CMYK")
    built = littlecms_input(icc, "CMYK") if icc and space_problem(icc, "CMYK") is None \
        else None
    if built is None:
        return np.asarray(img.convert("RGB"))
    return np.asarray(ImageCms.applyTransform(img, built[0]))


def littlecms_input(icc: bytes, mode: str, flags: int = 0
                    ) -> tuple[ImageCms.ImageCmsTransform, int] | None:
    """A LittleCMS transform of pixels of PIL ``mode`` ("RGB", "L", "CMYK") in the colour space of
    ``icc`` to sRGB ("RGB"), at the profile's rendering intent (:func:`header_intent`),
    and that intent; None where LittleCMS cannot read the profile or build the transform.
    Its cost grows with the profile's tables: 3 ms for a matrix profile, 0.16 s for a 20 MB
    table, 1 s for 100 MB (docs/wsi.md)."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        intent = header_intent(icc)
        return ImageCms.buildTransform(profile, _srgb(), mode, "RGB", renderingIntent=intent,
                                       flags=flags), intent
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def header_intent(icc: bytes) -> int:
    """The rendering intent an ICC profile's header names (bytes 64-67), or perceptual (0)
    where it names none of the four the ICC defines (0-3): LittleCMS refuses to build a
    transform at another, and the profile was dropped for a field colour-managed viewers pass
    over. Read from the bytes: the viewer names its conversion before it builds it."""
    intent = int.from_bytes(icc[64:68], "big") if len(icc) >= 68 else 0
    return intent if intent in (0, 1, 2, 3) else 0


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
