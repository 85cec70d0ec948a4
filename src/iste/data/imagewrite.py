"""Writing ordinary image files (PNG, JPEG, TIFF) at the edges of the package: atomically,
with the pixel size, colour profile and description they are given (:func:`write_image`).

Arrays are ``np.ndarray`` of dtype ``uint8``: (H, W, 3) RGB, (H, W) gray, or with alpha last.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
from PIL import Image

from iste.data.imageformats import (EXIF_RES_UNIT, EXIF_XRES, EXIF_YRES, PIL_FORMATS,
                                    SUPPORTED_SUFFIXES, TIFF_SUFFIXES, TIFF_XRES, TIFF_YRES,
                                    UM_PER_CM, UM_PER_INCH)
from iste.digest import sha256_file
from iste.files import write_atomic
from iste.text import ascii_text

__all__ = ["write_image", "check_write_size", "drop_tiff_resolution"]


# libjpeg's JPEG_MAX_DIMENSION: below the 65535 the format's 16-bit header fields could hold
_MAX_SIDE = {"JPEG": 65500, "PNG": 2**31 - 1}
# tifffile picks BigTIFF by size only for uncompressed data: a zlib TIFF of pixels that do not
# compress (an RGBA output near 1 Gpx) failed past 4 GiB once the work was done. Its margin.
_CLASSIC_TIFF_BYTES = 2**32 - 2**25


def check_write_size(path: str | os.PathLike, hw: tuple[int, int]) -> None:
    """Refuse, before any work, an image size the format of ``path`` cannot store (JPEG
    sides are at most 65500 pixels, libjpeg's limit).

    Raises:
        ValueError: one line naming the limit.
    """
    fmt = PIL_FORMATS.get(Path(path).suffix.lower())
    if fmt is not None and max(hw) > _MAX_SIDE[fmt]:
        raise ValueError(f"cannot write {path}: {hw[1]} x {hw[0]} px exceeds the {fmt} limit "
                         f"of {_MAX_SIDE[fmt]} px per side; write a .png or .tif")


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
                    if int.from_bytes(e[:2], endian) not in (TIFF_XRES, TIFF_YRES)]
            f.seek(offset)
            f.write(len(kept).to_bytes(count, endian) + b"".join(kept) + after)


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
    is removed by the next write of ``path``: :func:`iste.temps.remove_stale_temps`). The
    parent directory must exist.

    Args:
        path: destination; suffix one of ``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``
            (case-insensitive). TIFFs are written zlib-compressed (lossless; a BigTIFF where
            the uncompressed pixels come within 32 MiB of 4 GiB); JPEGs with
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
    if alpha and PIL_FORMATS.get(suffix) == "JPEG":
        raise ValueError(f"cannot write {path}: JPEG has no alpha channel; write a .png or .tif")
    image = np.ascontiguousarray(image)

    if mpp is not None and not all(v > 0 for v in mpp):
        raise ValueError(f"cannot write {path}: mpp must be positive, got {mpp}")
    if mpp is not None and not _resolution_fits(suffix, mpp):
        warnings.warn(f"{path}: a pixel size of {mpp[0]:.3g} x {mpp[1]:.3g} um is beyond what "
                      f"a {suffix} file's resolution fields hold; written without one",
                      stacklevel=2)
        mpp = None

    written = hashlib.sha256()
    tiff_sha256 = None

    def write(tmp_name: str) -> None:
        nonlocal tiff_sha256
        if suffix in TIFF_SUFFIXES:
            extra: dict = {}
            if mpp is not None:
                extra.update(resolution=(UM_PER_CM / mpp[0], UM_PER_CM / mpp[1]),
                             resolutionunit="CENTIMETER")
            if alpha:
                extra["extrasamples"] = ("unassalpha",)
            tifffile.imwrite(tmp_name, image, compression="zlib",
                             bigtiff=image.nbytes > _CLASSIC_TIFF_BYTES,
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
            pil["dpi"] = (UM_PER_INCH / mpp[0], UM_PER_INCH / mpp[1])
        if icc_profile:
            pil["icc_profile"] = icc_profile
        if PIL_FORMATS[suffix] == "JPEG":
            if mpp is not None:  # JFIF density is 16-bit (dpi < 65536): EXIF in cm as well
                exif = Image.Exif()
                exif[EXIF_XRES], exif[EXIF_YRES] = (UM_PER_CM / mpp[0], UM_PER_CM / mpp[1])
                exif[EXIF_RES_UNIT] = 3  # centimetre
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
            Image.fromarray(image).save(_Hashing(fp, written), format=PIL_FORMATS[suffix],
                                        **pil)
    def digest() -> str:
        return written.hexdigest() if tiff_sha256 is None else tiff_sha256

    write_atomic(path, write, replace=replace,
                 then=None if then is None else lambda: then(digest()))
    return digest()


_UINT32_MAX = 2**32 - 1


def _resolution_fits(suffix: str, mpp: tuple[float, float]) -> bool:
    """Whether ``mpp`` (x, y) can be recorded: a PNG's pHYs holds whole pixels per metre, a
    TIFF's and a JPEG's EXIF resolution pixels per centimetre as ratios of 32-bit integers
    (beyond them PIL raised OverflowError, tifffile a ValueError, the EXIF read NaN)."""
    if suffix == ".png":
        return all(0.5 <= 1e6 / v < _UINT32_MAX + 0.5 for v in mpp)
    return all(1 / _UINT32_MAX <= UM_PER_CM / v <= _UINT32_MAX for v in mpp)


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
