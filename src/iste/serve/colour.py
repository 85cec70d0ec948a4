"""The colours the viewer shows: a slide's pixels converted from its scanner's colour space
(the slide's ICC profile) to sRGB, the space a browser takes an untagged image to be in.

Scanners record RGB in a colour space of their own and say which in an ICC profile (Aperio
and Hamamatsu scans carry one); `iste upscale`'s outputs keep the profile beside the pixels
(:mod:`iste.slides.writer`), so a colour-managed viewer shows them as the scanner saw them.
The viewer's tiles are JPEGs without a profile, shown as sRGB: sent as stored, a profiled
scan's colours were shown as if its RGB were sRGB. Each tile is converted instead, after the
model (which sees the stored pixels, as in training), with LittleCMS (Pillow's ImageCms) at
the profile's own rendering intent. Embedding the profile in every tile would have the browser
convert them alike, at the profile's size per tile: a GT450 scan's profile is 13 MB, a tile
20-60 kB (docs/viewer.md, "Colour").
"""

from __future__ import annotations

import hashlib
import io
from typing import Literal

import numpy as np
from PIL import Image, ImageCms

from iste.data.imagemeta import declared_space, littlecms_input

__all__ = ["DISPLAY_MODES", "DisplayColour", "DisplayMode"]

DisplayMode = Literal["srgb", "stored"]
DISPLAY_MODES: tuple[DisplayMode, ...] = ("srgb", "stored")
"""How ``iste serve --colour`` shows a profiled slide: converted to sRGB (a colour-managed
viewer's view), or its pixels as stored (as QuPath shows them by default, and as the values
of an output file read back)."""

class DisplayColour:
    """Converts uint8 (h, w, 3) pixels of a slide from the colour space of ``icc`` (the
    slide's ICC profile, or None) to sRGB. Without a profile the pixels are shown as stored;
    so they are where the profile is not an RGB one (a gray or CMYK profile cannot describe
    RGB pixels: the slide writer drops it too) or LittleCMS cannot read it, and ``problem``
    says why (one line for the server log). Safe to call from several threads."""

    def __init__(self, icc: bytes | None):
        self.problem: str | None = None
        self._transform: ImageCms.ImageCmsTransform | None = None
        self.description = ""
        if icc and declared_space(icc) != b"RGB ":  # gray, CMYK, Lab, garbage
            self.problem = ("its ICC profile is not one of RGB pixels; its tiles are "
                            "shown as stored")
        elif icc:
            # NOCACHE: no one-pixel cache shared by the threads that convert tiles
            built = littlecms_input(icc, "RGB", flags=ImageCms.Flags.NOCACHE)
            if built is None:
                self.problem = ("its ICC profile cannot be read or converts no RGB pixels "
                                "(LittleCMS); its tiles are shown as stored, not "
                                "colour-managed")
            else:
                self._transform, intent = built
                self.description = _description(icc)
                if _is_identity(self._transform):  # sRGB itself: nothing to pay per tile
                    self._transform = None
        # what the conversion is, for the tile cache's names: another profile, intent or
        # LittleCMS gives other pixels
        self.key = "as-stored" if self._transform is None else "srgb:" + hashlib.sha256(
            icc + f"\0{intent}\0{ImageCms.core.littlecms_version}".encode()).hexdigest()

    @property
    def converts(self) -> bool:
        """Whether pixels are converted (the slide has an RGB profile LittleCMS reads, other
        than sRGB's own)."""
        return self._transform is not None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` uint8 (h, w, 3) in the slide's colour space -> the same in sRGB (``rgb``
        itself without a conversion)."""
        if self._transform is None:
            return rgb
        return np.asarray(self._transform.apply(Image.fromarray(np.ascontiguousarray(rgb))))


def _description(icc: bytes) -> str:
    """The profile's description tag, or "" where it has none LittleCMS reads."""
    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except ImageCms.PyCMSError:
        return ""


def _is_identity(transform: ImageCms.ImageCmsTransform) -> bool:
    """Whether ``transform`` leaves pixels as they are (a profile of sRGB itself, which many
    TIFFs carry): on a lattice of 52^3 colours (every 5th level) and every gray. Converting
    with it anyway cost a tile 1-2 ms for nothing. Checked once per slide (a few ms)."""
    levels = np.arange(0, 256, 5, dtype=np.uint8)  # 0, 5, ..., 255
    lattice = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    grays = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    rgb = np.ascontiguousarray(np.concatenate([lattice, grays])[:, None])  # (N, 1, 3)
    return np.array_equal(np.asarray(transform.apply(Image.fromarray(rgb))), rgb)
