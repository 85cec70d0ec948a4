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
import logging
import threading
from typing import Literal

import numpy as np
from PIL import Image, ImageCms

from iste.data.imagemeta import UNAPPLIED, littlecms_input, space_problem

__all__ = ["DISPLAY_MODES", "DisplayColour", "DisplayMode"]

DisplayMode = Literal["srgb", "stored"]
DISPLAY_MODES: tuple[DisplayMode, ...] = ("srgb", "stored")
"""How ``iste serve --colour`` shows a profiled slide: converted to sRGB (a colour-managed
viewer's view), or its pixels as stored (as QuPath shows them by default, and as the values
of an output file read back)."""

class DisplayColour:
    """Converts uint8 (h, w, 3) pixels of a slide from the colour space of ``icc`` (the
    slide's ICC profile, or None) to sRGB. Without a profile the pixels are shown as stored;
    so they are where the profile does not describe them
    (:func:`~iste.data.imagemeta.profile_problem`, the rule the slide writer follows: an RGB
    profile of a gray scan, a gray or CMYK profile; ``stored`` is the PIL mode of the slide's
    stored samples) or LittleCMS cannot apply it, and ``problem`` says why, in one line of
    the server log (``name``: the slide's). Safe to call from several threads.

    The transform is built on the first tile (:meth:`__call__`, :attr:`key`), once: a 13 MB
    profile's takes 0.13 s, which built for every slide at the server's start added 13 s to
    it for 100 such slides. What the header tells (its colour space) is checked here."""

    def __init__(self, icc: bytes | None, stored: str = "RGB", *, name: str = "the slide"):
        self.name = name
        self.problem: str | None = None
        self.description = ""
        self._icc = icc or None
        self._transform: ImageCms.ImageCmsTransform | None = None
        self._key: str | None = None
        self._lock = threading.Lock()
        problem = space_problem(self._icc, stored, "RGB")
        if problem is not None:
            self._icc = None
            self._say(f"its ICC profile is {problem}; its tiles are shown as stored")
        if self._icc is None:
            self._key = "as-stored"

    def _built(self) -> None:
        """The transform, built once (under the lock: threads arriving together build it
        once); a profile LittleCMS cannot apply, or sRGB's own, leaves the pixels as stored."""
        if self._key is not None:
            return
        with self._lock:
            if self._key is not None:
                return
            icc = self._icc
            # NOCACHE: no one-pixel cache shared by the threads that convert tiles
            built = littlecms_input(icc, "RGB", flags=ImageCms.Flags.NOCACHE)
            if built is None:
                self._say(f"its ICC profile is {UNAPPLIED}; its tiles are shown as stored, "
                          "not colour-managed")
            else:
                transform, intent = built
                self.description = _description(icc)
                if not _is_identity(transform):  # sRGB itself: nothing to pay per tile
                    self._transform = transform
            # what the conversion is, for the tile cache's names: another profile, intent
            # or LittleCMS gives other pixels
            self._key = "as-stored" if self._transform is None else "srgb:" + hashlib.sha256(
                icc + f"\0{intent}\0{ImageCms.core.littlecms_version}".encode()).hexdigest()

    def _say(self, problem: str) -> None:
        self.problem = problem
        logging.getLogger("iste.serve").warning("%s: %s", self.name, problem)

    @property
    def key(self) -> str:
        """What the conversion is ("as-stored", or the profile's, intent's and LittleCMS's
        hash), for the names of cached tiles; builds the transform on its first call."""
        self._built()
        return self._key

    @property
    def converts(self) -> bool:
        """Whether pixels are converted (the slide has an RGB profile LittleCMS reads, other
        than sRGB's own); builds the transform on its first call."""
        self._built()
        return self._transform is not None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` uint8 (h, w, 3) in the slide's colour space -> the same in sRGB (``rgb``
        itself without a conversion)."""
        self._built()
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
