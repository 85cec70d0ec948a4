"""Named degradations (HR -> LR), shared by training and evaluation.

- ``paper``: the ISTE paper's Gaussian blur + PIL bicubic (:func:`iste.data.degrade.degrade`).
- ``scanner``: ``paper``, then mild Gaussian sensor noise (sigma ~ U(0, 2) 8-bit levels, before
  compression as in a scanner) and a JPEG round trip at quality ~ U{40, ..., 95} in a colour
  mode drawn from :data:`iste.data.jpeg.COLOUR_MODES` (YCbCr 4:2:0 or Aperio's RGB 4:4:4),
  with the 8 x 8 block grid shifted by a random (0-7, 0-7) pixels so a model cannot learn
  where the crop's block edges are.
- ``mixed``: ``paper`` or ``scanner`` with probability 1/2 each (what the default model trains on).
- ``scanner-q<LO>``, ``mixed-q<LO>``, ``mixed-j<PCT>``, ``mixed-q<LO>-j<PCT>`` (e.g.
  ``mixed-q30-j70``): the same with JPEG qualities drawn from LO-95 instead of 40-95, and/or
  ``scanner`` for PCT % of the crops instead of 50 %; the plain names keep their meaning.
- ``jpeg<Q>`` / ``jpeg<Q>-rgb`` (e.g. ``jpeg75``): ``paper`` then JPEG at quality Q in YCbCr
  4:2:0 / in Aperio's RGB mode, no noise, block grid at the image's top-left corner; fixed, so
  usable for evaluation (``iste eval --degradation jpeg75``).
- ``jpeg<Q>-deblock`` / ``jpeg<Q>-rgb-deblock``: the same, then deblocked with that JPEG's own
  tables (:func:`iste.data.deblock.deblock`), as ``iste upscale`` does to JPEG-compressed input
  by default: what the model sees from such a scan. ``scanner...-deblock`` and
  ``mixed...-deblock`` (e.g. ``mixed-q30-j75-deblock``) deblock their compressed crops the same
  way (on the crop's shifted block grid), for training on what ``iste upscale`` feeds a model;
  their random draws are those of the name without ``-deblock``.

Random degradations draw everything from the ``numpy.random.Generator`` they are given, so a
training sample stays a pure function of (seed, index). Evaluation accepts only the fixed ones.

Convention: images are uint8 (H, W, 3) numpy arrays; sizes are (H, W).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from iste.data.degrade import crop_to_scale, degrade, lr_size_for
from iste.data.deblock import deblock, grid_origin
from iste.data.jpeg import COLOUR_MODES, ColourMode, block_quantisation_of, jpeg_roundtrip

__all__ = ["Degradation", "parse_degradation", "TRAINING_DEGRADATIONS", "SCANNER_QUALITY",
           "SCANNER_NOISE_SIGMA", "degradation_pair"]

SCANNER_QUALITY = (40, 95)
"""Inclusive range of JPEG qualities of ``scanner`` (Aperio and DICOM WSI write 70-90 by
default; the CMU sample was written at 30, see docs/real-scans.md)."""
SCANNER_NOISE_SIGMA = 2.0
"""Upper end of the sensor noise's standard deviation, in 8-bit levels."""

TRAINING_DEGRADATIONS = ("paper", "scanner", "mixed")
# ASCII digits only: \d also took other scripts' (jpeg\uff17\uff15 ran as jpeg75)
_FIXED_JPEG = re.compile(r"^jpeg(\d{1,3})(-rgb)?(-deblock)?$", re.ASCII)
_RANDOM = re.compile(r"^(scanner|mixed)(?:-q(\d{1,3}))?(?:-j(\d{1,3}))?(-deblock)?$", re.ASCII)


@dataclass(frozen=True)
class Degradation:
    """A parsed degradation name; call :meth:`apply` to degrade an HR array.

    kind: "paper", "scanner", "mixed" or "jpeg" (fixed quality).
    quality, mode: for kind "jpeg".
    deblock: deblock each decoded JPEG with its own tables (kinds "jpeg", "scanner", "mixed").
    quality_low: lowest JPEG quality of "scanner" and "mixed" (the highest is
        ``SCANNER_QUALITY[1]``).
    jpeg_fraction: probability that "mixed" applies "scanner" to a crop.
    """

    name: str
    kind: str
    quality: int = 0
    mode: ColourMode = "ycbcr420"
    quality_low: int = SCANNER_QUALITY[0]
    jpeg_fraction: float = 0.5
    deblock: bool = False

    @property
    def is_random(self) -> bool:
        return self.kind in ("scanner", "mixed")

    def apply(self, hr: np.ndarray, scale: float, lr_size: tuple[int, int],
              rng: np.random.Generator | None = None) -> np.ndarray:
        """LR of size ``lr_size`` from uint8 HR (H, W, 3); random kinds need ``rng``.

        Returns:
            uint8 (h, w, 3).
        """
        lr = degrade(hr, scale, lr_size)
        if self.kind == "paper":
            return lr
        if self.kind == "jpeg":
            decoded = jpeg_roundtrip(lr, self.quality, self.mode)
            if not self.deblock:
                return decoded
            return deblock(decoded, block_quantisation_of(self.quality, self.mode))
        if rng is None:
            raise ValueError(f"degradation {self.name!r} is random and needs a generator")
        if self.kind == "mixed" and rng.random() < 1 - self.jpeg_fraction:
            return lr
        return _scanner(lr, rng, self.quality_low, deblocked=self.deblock)


def _scanner(lr: np.ndarray, rng: np.random.Generator, quality_low: int, *,
             deblocked: bool = False) -> np.ndarray:
    sigma = rng.uniform(0, SCANNER_NOISE_SIGMA)
    quality = int(rng.integers(quality_low, SCANNER_QUALITY[1] + 1))
    mode = COLOUR_MODES[int(rng.integers(len(COLOUR_MODES)))]
    dy, dx = (int(v) for v in rng.integers(0, 8, size=2))
    noisy = lr.astype(np.float32) + rng.normal(0, 1, lr.shape).astype(np.float32) * sigma
    noisy = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    # Reflect-pad top/left so the block grid falls (dy, dx) pixels into the crop.
    padded = np.pad(noisy, ((dy, 0), (dx, 0), (0, 0)), mode="reflect") if dy or dx else noisy
    decoded = np.ascontiguousarray(jpeg_roundtrip(padded, quality, mode)[dy:, dx:])
    if not deblocked:
        return decoded
    return deblock(decoded, block_quantisation_of(quality, mode), grid_origin(dx, dy))


def parse_degradation(name: str, *, allow_random: bool = True) -> Degradation:
    """``paper``, ``scanner[-q<LO>][-deblock]``, ``mixed[-q<LO>][-j<PCT>][-deblock]``,
    ``jpeg<Q>[-rgb][-deblock]``
    (Q in 1-100; LO in 1-95; PCT in 0-100).

    Raises:
        ValueError: unknown name, Q out of range, or a random kind where ``allow_random`` is
            False (evaluation needs fixed LR images).
    """
    text = str(name).strip().lower()
    if text == "paper":
        return Degradation(text, text)
    random = _RANDOM.match(text)
    if random:
        if not allow_random:
            raise ValueError(f"degradation {name!r} is random; evaluation takes paper, "
                             "jpeg<Q> or jpeg<Q>-rgb, each with -deblock (e.g. jpeg75, "
                             "jpeg75-deblock)")
        kind, low, percent, deblocked = random.groups()
        quality_low = SCANNER_QUALITY[0] if low is None else int(low)
        if not 1 <= quality_low <= SCANNER_QUALITY[1]:
            raise ValueError(f"degradation {name!r}: the lowest JPEG quality must be in "
                             f"1-{SCANNER_QUALITY[1]}")
        if percent is not None and (kind != "mixed" or int(percent) > 100):
            raise ValueError(f"degradation {name!r}: -j<PCT> (percent of crops compressed, "
                             "0-100) belongs to mixed")
        fraction = (0.5 if percent is None else int(percent) / 100) if kind == "mixed" else 1.0
        return Degradation(text, kind, quality_low=quality_low, jpeg_fraction=fraction,
                           deblock=bool(deblocked))
    match = _FIXED_JPEG.match(text)
    if match:
        quality = int(match.group(1))
        if not 1 <= quality <= 100:
            raise ValueError(f"degradation {name!r}: JPEG quality must be in 1-100")
        return Degradation(text, "jpeg", quality, "rgb" if match.group(2) else "ycbcr420",
                           deblock=bool(match.group(3)))
    raise ValueError(f"unknown degradation {name!r}; expected paper, scanner[-q<LO>], "
                     "mixed[-q<LO>][-j<PCT>], jpeg<Q> (YCbCr 4:2:0) or jpeg<Q>-rgb (Aperio RGB), "
                     "Q in 1-100, each with -deblock")


def degradation_pair(image: np.ndarray, scale: float,
                     degradation: Degradation) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation protocol's (LR, HR) under a fixed ``degradation`` (see
    :func:`iste.data.degrade.evaluation_pair`, which this equals for ``paper``)."""
    if degradation.is_random:
        raise ValueError(f"degradation {degradation.name!r} is random; evaluation needs a "
                         "fixed one")
    hr = crop_to_scale(image, scale)
    return degradation.apply(hr, scale, lr_size_for(image.shape[:2], scale)), hr
