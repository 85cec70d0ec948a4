"""Where HR training crops come from: in-memory images, folders of images, whole slides.

Every source draws a square uint8 (size, size, 3) crop from a ``numpy.random.Generator``, so
a crop is a pure function of the generator's seed (what makes resumed runs exact).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from iste.data.imageformats import SUPPORTED_SUFFIXES
from iste.data.folders import index_folder
from iste.data.images import read_image
from iste.data.samples import tissue_fraction
from iste.paths import link_note

MAX_TRIES = 20


class Source(Protocol):
    name: str
    images: int | None  # how many images an epoch passes over; None for a whole slide
    # (name, bytes, modification time in ns) of each file it reads, in order: what a resumed
    # run compares its training data with (:func:`files_digest`)
    files: list[tuple[str, int, int]]

    def max_side(self) -> int:
        """The largest square crop this source can give."""

    def crop(self, rng: np.random.Generator, size: int, min_tissue: float) -> np.ndarray:
        """A random (size, size, 3) uint8 crop, redrawn (up to 20 times) while its tissue
        fraction is below ``min_tissue``; the last draw is kept if none qualifies."""


def _square_at_random(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, ...) view of ``image`` (H, W, ...) at a uniformly drawn position (the
    row drawn first, then the column)."""
    y = rng.integers(0, image.shape[0] - size + 1)
    x = rng.integers(0, image.shape[1] - size + 1)
    return image[y:y + size, x:x + size]


def _best_of_tries(draw, min_tissue: float) -> np.ndarray:
    crop = draw()
    for _ in range(MAX_TRIES - 1):
        if min_tissue <= 0 or tissue_fraction(crop) >= min_tissue:
            break
        crop = draw()
    return crop


class ArraySource:
    """Images held in memory, e.g. the CMU split. Crops are drawn area-weighted."""

    def __init__(self, name: str, images: list[np.ndarray]):
        self.name = name
        self.arrays = [np.ascontiguousarray(im) for im in images]
        self.images = len(self.arrays)
        self.files = [(f"{name}[{i}]", int(im.nbytes), 0) for i, im in enumerate(self.arrays)]
        self.weights = np.array([im.shape[0] * im.shape[1] for im in self.arrays], float)
        self.weights /= self.weights.sum()

    def max_side(self) -> int:
        return max(min(im.shape[:2]) for im in self.arrays)

    def crop(self, rng, size, min_tissue):
        fits = [i for i, im in enumerate(self.arrays) if min(im.shape[:2]) >= size]
        w = self.weights[fits] / self.weights[fits].sum()

        def draw():
            return _square_at_random(self.arrays[fits[rng.choice(len(fits), p=w)]], size, rng)

        return _best_of_tries(draw, min_tissue)


class FolderSource:
    """A folder (recursively) of PNG/JPEG/TIFF HR images, read when sampled: the images
    :func:`~iste.data.folders.index_folder` finds, checked when the folder is indexed (so that
    a bad file stops the run before it starts, not when a crop first draws it hours in; only
    the ``HR`` folders' images of a HistoSR-style tree). Images smaller than a crop are
    skipped for that crop.

    role: "training" or "validation", for the messages.
    """

    def __init__(self, root: Path, role: str = "training"):
        self.name = str(root)
        found = index_folder(root, role).images
        self.paths = [image.path for image in found]
        self.sizes = [min(image.hw) for image in found]
        self.images = len(self.paths)
        self.files = [_stat(image.path, image.name) for image in found]

    def max_side(self) -> int:
        return max(self.sizes)

    def crop(self, rng, size, min_tissue):
        fits = [i for i, s in enumerate(self.sizes) if s >= size]

        def draw():
            return _square_at_random(read_image(self.paths[fits[rng.integers(len(fits))]]),
                                     size, rng)

        return _best_of_tries(draw, min_tissue)


class SlideSource:
    """Tissue patches of a whole-slide image at one pyramid level.

    Candidate positions are the tissue cells of a thumbnail mask (saturation > 0.15); a crop
    is read through the slide reader at a random position inside a random tissue cell.
    """

    def __init__(self, path: Path, level: int = 0):
        from iste.slides.formats import open_slide

        self.name, self.path, self.level = str(path), path, level
        self.images = None  # no image count: runs on slides are counted in steps
        self.files = [_stat(path, path.name)]
        with open_slide(path) as slide:
            self.level_wh = slide.level_dimensions[level]
            self.down = slide.level_downsamples[level]
            thumb = slide.get_thumbnail((512, 512))
        th, tw = thumb.shape[:2]
        sat = thumb.max(-1).astype(float) - thumb.min(-1)
        sat /= np.maximum(thumb.max(-1), 1)
        ys, xs = np.nonzero(sat > 0.15)
        if len(ys) == 0:
            raise ValueError(f"no tissue found in {path} (thumbnail saturation <= 0.15 everywhere)")
        w, h = self.level_wh
        self.cells = np.stack([ys * h / th, xs * w / tw], 1)  # level-frame (row, col) of cells
        self.cell_size = (h / th, w / tw)
        self._slide = None

    def max_side(self) -> int:
        return min(self.level_wh)

    def crop(self, rng, size, min_tissue):
        from iste.slides.formats import open_slide

        if self._slide is None:  # opened lazily: each DataLoader worker gets its own handle
            self._slide = open_slide(self.path)
        w, h = self.level_wh

        def draw():
            r, c = self.cells[rng.integers(len(self.cells))]
            y = int(np.clip(r + rng.random() * self.cell_size[0] - size / 2, 0, h - size))
            x = int(np.clip(c + rng.random() * self.cell_size[1] - size / 2, 0, w - size))
            loc = (round(x * self.down), round(y * self.down))
            return self._slide.read_region(loc, self.level, (size, size))

        return _best_of_tries(draw, min_tissue)

    def close(self) -> None:
        """Close the slide handle :meth:`crop` opened (it is opened again when needed)."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class DownsampledSource:
    """Another source at ``factor`` times lower resolution (e.g. a 20x scan seen as 10x): a
    crop of ``size`` is a crop of round(size * factor) pixels box-filtered down to ``size``
    (PIL's BOX resampling: each output pixel the mean of the input pixels it covers)."""

    def __init__(self, inner: Source, factor: float):
        if factor < 1:
            raise ValueError(f"downsample factor must be >= 1, got {factor}")
        self.inner, self.factor = inner, factor
        self.name = f"{inner.name}@/{factor:g}"
        self.images = inner.images
        self.files = inner.files

    def max_side(self) -> int:
        return int(self.inner.max_side() / self.factor)

    def crop(self, rng, size, min_tissue):
        from PIL import Image

        big = self.inner.crop(rng, round(size * self.factor), min_tissue)
        return np.asarray(Image.fromarray(np.ascontiguousarray(big)).resize(
            (size, size), Image.Resampling.BOX))

    def close(self) -> None:
        close_sources([self.inner])


def _stat(path: Path, name: str) -> tuple[str, int, int]:
    """(``name``, bytes, modification time in ns) of the file at ``path``."""
    st = path.stat()
    return name, st.st_size, st.st_mtime_ns


def files_digest(sources: Sequence) -> dict[str, str]:
    """What the training data of ``sources`` is, cheaply (no byte is read): sha256 of the
    files' names (within each source: a folder moved elsewhere is the same data) and sizes,
    and sha256 of their modification times; each source's files in its order. A resumed run
    compares them with the saved run's: an image edited or replaced in place, the count of
    images unchanged, changed the data without a word."""
    shapes, times = hashlib.sha256(), hashlib.sha256()
    for n, source in enumerate(sources):
        for name, size, mtime in source.files:
            shapes.update(f"{n}\0{name}\0{size}\0".encode("utf-8", "surrogatepass"))
            times.update(f"{mtime}\0".encode())
        shapes.update(b"\1")
    return {"names_sizes": shapes.hexdigest(), "mtimes": times.hexdigest()}


def close_sources(sources: list) -> None:
    """Close the files the sources hold open (a slide's handle, opened at its first crop):
    left to the garbage collector, each said 'unclosed file' on the terminal at exit."""
    for source in sources:
        if hasattr(source, "close"):
            source.close()


def _slide_level_for(path: Path, downsample: float) -> int | None:
    """The slide's pyramid level whose downsample is within 2 % of ``downsample``, if any."""
    from iste.slides.formats import open_slide

    with open_slide(path) as slide:
        for level, down in enumerate(slide.level_downsamples):
            if abs(down / downsample - 1) <= 0.02:
                return level
    return None


def _missing(spec: str, role: str) -> str:
    """The error line for a source ``spec`` that does not exist."""
    # a config is no shell: '~/data' is a folder named '~' in the current one
    home = (" ('~' is not read as the home folder in a config: write the path out)"
            if spec.startswith("~") else "")
    return f"{role} source {spec} does not exist{link_note(Path(spec))}{home}"


def check_sources_exist(train: Sequence[str], val: Sequence[str], *,
                        config_dir: Path | None = None) -> None:
    """ValueError naming the key (``data.val[0]``) for the first source of ``train`` or
    ``val`` that does not exist, before any is opened: each training folder is indexed (every
    image checked) before the next is looked at, so a missing validation folder was found
    only after minutes of indexing. Sample sets (``sample:...``) are checked by the config.
    config_dir: the config file's folder; a relative source found there is said to be there
    (paths are relative to the folder iste runs in, not to the config)."""
    for key, role, specs in (("train", "training", train), ("val", "validation", val)):
        for n, spec in enumerate(specs):
            if not spec.startswith("sample:") and not os.path.exists(spec):
                there = config_dir / spec if config_dir is not None else None
                hint = (f"; {there} beside the config exists, but a config's paths are "
                        "relative to the folder iste runs in: write that path"
                        if there is not None and not Path(spec).is_absolute()
                        and there.exists() else "")
                raise ValueError(f"data.{key}[{n}]: {_missing(spec, role)}{hint}")


def open_source(spec: str, *, downsample: float = 1.0, role: str = "training") -> Source:
    """``sample:cmu-train|val|test``, a folder of images, or a slide file, seen at
    ``downsample`` times its stored resolution (a slide's own level when it has one).
    role: "training" (data.train) or "validation" (data.val), for the messages."""
    if spec.startswith("sample:"):
        from iste.slides.samples import load_cmu_region

        split = spec[len("sample:"):]
        if not split.startswith("cmu-"):
            raise ValueError(f"unknown sample source {spec!r}; use sample:cmu-train, -val or -test")
        source: Source = ArraySource(spec, load_cmu_region(split[len("cmu-"):]))
    else:
        from iste.slides.formats import is_slide

        path = Path(spec)
        if path.is_dir() and not is_slide(path):
            source = FolderSource(path, role)
        elif not path.exists():
            raise ValueError(_missing(spec, role))
        elif is_slide(path, tiff_as_slide=False):
            level = _slide_level_for(path, downsample)
            if level is not None:
                return SlideSource(path, level)
            source = SlideSource(path)
        elif path.suffix.lower() in SUPPORTED_SUFFIXES:
            source = ArraySource(str(path), [read_image(path)])
        else:
            raise ValueError(f"{role} source {spec}: not a folder, an image or a slide")
    return source if downsample == 1 else DownsampledSource(source, downsample)
