"""Test sets for evaluation: HR images that the protocol degrades itself (DESIGN.md section 4).

A test set is opened from one ``spec``:

- ``sample:cmu-test`` — the built-in real H&E test split: the tissue tiles of the CMU slide's
  test band (:func:`iste.slides.samples.cmu_test_images`) plus the two held-out tiles from other
  scanners (:func:`iste.data.samples.extra_test_images`).
- ``sample:other-sources`` — only those two held-out tiles (never trained on by any bundled
  config): the images the default model's bars are set on.
- a folder of HR images (.png, .jpg, .jpeg, .tif, .tiff), searched recursively, as a training
  folder is (:func:`iste.data.folders.index_folder`): HistoSR-style patch folders
  (``.../HR/*.png`` next to ``.../LR...`` folders) work as is (only the images below folders
  named ``HR`` are used: the LR side is always made by :func:`iste.data.degrade.degrade`);
  every file is checked when the folder is opened (a 16-bit or truncated file, a link to
  nothing is an error then). Image names are paths relative to the folder.
- a regions file (.csv with header ``slide,x,y,width,height`` or .json with a list of objects
  with those keys): rectangles of whole-slide images, in each slide's level-0 pixel frame,
  (x, y) of the top-left corner and (width, height) like OpenSlide, integers; ``slide`` is
  relative to the regions file. Every region is checked against its slide's level 0 when the
  file is opened, before any image is read; a bad row (a blank ``slide``, a file that is no
  slide, a region outside it) is an error naming the file and the row.
- ``wsi:PATH`` — tissue tiles of one whole-slide image: level 0 is cut into ``tile`` x
  ``tile`` pixel tiles in raster order and those whose tissue fraction (measured on the
  slide's smallest level) is at least ``min_tissue`` are kept.

Images are read lazily (:meth:`TestImage.load`), one at a time, so big test sets need not fit
in memory. Convention: loaded images are uint8 (H, W, 3) RGB.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from iste.data.folders import index_folder
from iste.data.images import read_image
from iste.data.places import folder_places, place
from iste.paths import link_note
from iste.slides.formats import open_slide
from iste.slides.reader import SlideError
from iste.typed import clip_text, excerpt, path_from_text

__all__ = ["TestImage", "TestSet", "open_test_set", "SAMPLE_SETS"]

SAMPLE_SETS = ("cmu-test", "other-sources")


@dataclass(frozen=True)
class TestImage:
    """One HR test image: a unique ``name``, a loader returning uint8 (H, W, 3), and its
    (H, W) where known without loading it (an evaluation checks those sizes before its first
    super-resolution)."""

    name: str
    loader: Callable[[], np.ndarray]
    hw: tuple[int, int] | None = None

    def load(self) -> np.ndarray:
        return self.loader()


@dataclass(frozen=True)
class TestSet:
    """Named HR images (sorted as given) and a one-line description for reports; ``places``:
    where they are read from (:func:`iste.data.places.place`: the folder, the slides, the
    sample set; and a folder's images that are links out of it, where they lead:
    :func:`iste.data.places.folder_places`), which the training data of the models evaluated
    is compared with."""

    images: tuple[TestImage, ...]
    description: str
    places: tuple[str, ...] = ()


def open_test_set(spec: str, *, tile: int = 256, min_tissue: float = 0.5,
                  max_images: int | None = None) -> TestSet:
    """Open the test set ``spec`` (see the module notes); ValueError when it holds no image.

    max_images: keep only the first this many images (for quick runs).
    """
    if spec.startswith("sample:"):
        test_set = replace(_sample_set(spec[len("sample:"):]), places=(spec,))
    elif spec.startswith("wsi:"):
        slide = Path(spec[len("wsi:"):])
        test_set = replace(_wsi_tiles(slide, tile=tile, min_tissue=min_tissue),
                           places=(place(slide),))
    else:
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"test data not found: {path}{link_note(path)}")
        if path.is_dir():
            test_set = _folder(path)
        elif path.suffix.lower() in (".csv", ".json"):
            test_set = _regions_file(path)
        else:
            raise ValueError(f"test data {path} is neither a folder of images, a regions "
                             "file (.csv/.json), sample:NAME nor wsi:SLIDE")
    if not test_set.images:
        raise ValueError(f"no test images in {spec}")
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be positive, got {max_images}")
        test_set = replace(test_set, images=test_set.images[:max_images],
                           description=f"{test_set.description} (first {max_images})")
    return test_set


def _constant(array: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: array


def _sample_set(name: str) -> TestSet:
    from iste.data.samples import extra_test_images, path_note
    from iste.slides.samples import cmu_test_images

    if name not in SAMPLE_SETS:
        raise ValueError(f"unknown sample test set {name!r}; known: "
                         f"{', '.join('sample:' + s for s in SAMPLE_SETS)}"
                         f"{path_note(f'sample:{name}')}")
    if name == "other-sources":
        return TestSet(tuple(TestImage(n, _constant(a), a.shape[:2])
                             for n, a in extra_test_images()),
                       "sample:other-sources: the wsidicom (240 x 240 PNG) and slideflow "
                       "(299 x 299 JPEG) held-out tiles")
    pairs = cmu_test_images() + extra_test_images()
    return TestSet(tuple(TestImage(n, _constant(a), a.shape[:2]) for n, a in pairs),
                   "sample:cmu-test: tissue tiles (256 x 256) of the CMU slide's test band "
                   "(Aperio SVS, 20x) + the wsidicom (240 x 240 PNG) and slideflow "
                   "(299 x 299 JPEG) held-out tiles")


def _folder(root: Path) -> TestSet:
    index = index_folder(root, "test")
    images = tuple(TestImage(image.name, lambda p=image.path: read_image(p), image.hw)
                   for image in index.images)
    where = " (HR folders only)" if index.hr_only else ""
    return TestSet(images, f"{len(images)} HR images from folder {root.name}{where}",
                   folder_places(root, [image.path for image in index.images]))


def _read_region(slide_path: Path, x: int, y: int, width: int, height: int) -> np.ndarray:
    with open_slide(slide_path) as slide:
        w0, h0 = slide.dimensions
        if x < 0 or y < 0 or width < 1 or height < 1 or x + width > w0 or y + height > h0:
            raise ValueError(f"region (x={x}, y={y}, width={width}, height={height}) is outside "
                             f"{slide_path.name} (level 0: {w0} x {h0})")
        return slide.read_region((x, y), 0, (width, height))


_REGION_COLUMNS = ("slide", "x", "y", "width", "height")


def _region_rows(path: Path) -> list[dict]:
    """The rows of a regions file, as UTF-8 with or without a byte-order mark (spreadsheets
    write one). A column or key named twice is refused: its last value would be read
    silently (``x,y,width,height,x``: the region of the second x)."""
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text(encoding="utf-8-sig"),
                              object_pairs_hook=_unique_keys)
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                _csv_header(path, reader.fieldnames or [])
                rows = list(reader)
    except (OSError, ValueError, csv.Error) as err:  # ValueError: JSON's and UTF-8's errors,
        # and an integer of over 4300 digits, which named no file
        raise ValueError(f"cannot read regions file {path}: {clip_text(str(err))}") from None
    except RecursionError:  # a JSON list nested 100 000 deep: a traceback
        raise ValueError(f"cannot read regions file {path}: nested too deeply") from None
    except _Repeated as err:
        raise ValueError(f"regions file {path} names {err} twice") from None
    except _NoHeader as err:
        raise ValueError(str(err)) from None
    if not isinstance(rows, list):
        raise ValueError(f"regions file {path} must hold a list of regions")
    return rows


def _csv_header(path: Path, names: list[str]) -> None:
    """Refuse a CSV whose first line names no column of a region: a file of regions alone
    (``slide.svs,0,0,256,256``), its first region read as the header, said "no test images"
    or "names '256' twice"; :class:`_Repeated` for a column named twice."""
    if names and not set(names) & set(_REGION_COLUMNS):
        raise _NoHeader(f"regions file {path} must begin with the header line "
                        f"{','.join(_REGION_COLUMNS)}: its first line is "
                        f"{excerpt(','.join(names))}")
    _unique_keys([(name, None) for name in names])


class _NoHeader(Exception):
    """A CSV regions file's first line names no column of a region."""


class _Repeated(Exception):
    """A regions file names a column (CSV) or a region's key (JSON) twice."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``dict(pairs)``; :class:`_Repeated` naming a key given twice."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Repeated(repr(key))
        out[key] = value
    return out


def _coordinate(row: dict, key: str) -> int:
    """``row[key]`` as an integer pixel coordinate: an int, an integral float (JSON 64.0) or
    the text of an integer (CSV); ValueError for anything else (0.7 would be truncated to a
    region the file does not name, true read as 1, 1e400 overflow)."""
    value = row[key]
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _regions_file(path: Path) -> TestSet:
    """The regions listed in ``path``, each checked against its slide's level 0 before any
    image is read (a bad row is an error naming it, not a failure after hours of work)."""
    regions, sizes, unread = [], {}, set()
    csv_file = path.suffix.lower() == ".csv"
    for i, row in enumerate(_region_rows(path)):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: region {i} must be an object with slide, x, y, width, "
                             f"height, got {type(row).__name__}")
        if None in row:  # csv.DictReader's key for values beyond the header's columns
            raise ValueError(f"{path}: region {i} has more values than the header names "
                             f"columns ({', '.join(map(str, row[None]))} left over)")
        short = [k for k, v in row.items() if v is None] if csv_file else []
        if short:  # csv.DictReader's value for the columns a short row lacks
            raise ValueError(f"{path}: region {i} has fewer values than the header names "
                             f"columns (none for {', '.join(short)})")
        unread |= row.keys() - set(_REGION_COLUMNS)
        missing = [key for key in _REGION_COLUMNS if key not in row]
        if missing:  # a misspelt column ("widht"), or " x" after a comma and a space
            raise ValueError(f"{path}: region {i} has no {', '.join(missing)} (it has "
                             f"{', '.join(map(repr, row)) or 'nothing'}); a region is "
                             f"{', '.join(_REGION_COLUMNS)}")
        if not isinstance(row["slide"], str) or not row["slide"].strip():
            # "" is the regions file's own folder: "cannot open slide FOLDER", no row named
            raise ValueError(f"{path}: region {i}: slide must be a path, got "
                             f"{excerpt(row['slide'])}")
        try:
            # text decoded as UTF-8: as the file system takes it under any locale
            slide = (path.parent / path_from_text(row["slide"])).resolve()
            x, y, w, h = (_coordinate(row, k) for k in _REGION_COLUMNS[1:])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: region {i} needs slide, x, y, width, height as "
                             f"integers ({err})") from err
        if not slide.exists():
            raise ValueError(f"{path}: region {i}: slide not found: {slide}{link_note(slide)}")
        if slide not in sizes:
            try:
                with open_slide(slide) as opened:
                    sizes[slide] = opened.dimensions
            except SlideError as err:  # a listed file that is no slide: which row names it
                raise ValueError(f"{path}: region {i}: {err}") from None
        w0, h0 = sizes[slide]
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > w0 or y + h > h0:
            raise ValueError(f"{path}: region {i} (x={x}, y={y}, width={w}, height={h}) is "
                             f"outside {slide.name} (level 0: {w0} x {h0})")
        regions.append((slide, (x, y, w, h)))
    if len(set(regions)) != len(regions):
        raise ValueError(f"{path} lists the same region twice")
    if unread:  # a "level" column, say, would otherwise pass for one that is read
        warnings.warn(f"{path}: column{'s' if len(unread) > 1 else ''} "
                      f"{', '.join(sorted(map(str, unread)))} not read: a region is its "
                      f"slide's level-0 {', '.join(_REGION_COLUMNS)}", stacklevel=2)
    names = _slide_names(path.parent, {slide for slide, _ in regions})
    images = [TestImage(f"{names[slide]}-x{x}-y{y}-w{w}-h{h}",
                        lambda s=slide, r=(x, y, w, h): _read_region(s, *r), (h, w))
              for slide, (x, y, w, h) in regions]
    return TestSet(tuple(images), f"{len(images)} WSI regions from {path.name}",
                   tuple(sorted({place(slide) for slide, _ in regions})))


def _slide_names(folder: Path, slides: set[Path]) -> dict[Path, str]:
    """A name per slide for its regions' image names: its stem, or where two slides share
    one (case/a.svs and control/a.svs), its path from ``folder`` with "_" for the
    separators."""
    stems: dict[str, int] = {}
    for slide in slides:
        stems[slide.stem] = stems.get(slide.stem, 0) + 1

    def name(slide: Path) -> str:
        if stems[slide.stem] == 1:
            return slide.stem
        try:
            where = slide.with_suffix("").relative_to(folder.resolve())
        except ValueError:  # outside the regions file's folder
            where = slide.with_suffix("")
        return "_".join(part for part in where.parts if part not in ("/", ""))

    return {slide: name(slide) for slide in slides}


def _wsi_tiles(path: Path, *, tile: int, min_tissue: float) -> TestSet:
    from iste.data.samples import tissue_fraction

    if not path.exists():
        raise ValueError(f"slide not found: {path}{link_note(path)}")
    if tile < 16:
        raise ValueError(f"tile size must be >= 16 pixels, got {tile}")
    with open_slide(path) as slide:
        w0, h0 = slide.dimensions
        level = slide.best_level_for_downsample(math.inf)  # the coarsest that is the slide
        lw, lh = slide.level_dimensions[level]
        thumb = slide.read_level(level, (0, 0), (lw, lh))
    fx, fy = lw / w0, lh / h0
    images = []
    for row in range(h0 // tile):
        for col in range(w0 // tile):
            x, y = col * tile, row * tile
            patch = thumb[int(y * fy):max(int(y * fy) + 1, math.ceil((y + tile) * fy)),
                          int(x * fx):max(int(x * fx) + 1, math.ceil((x + tile) * fx))]
            if tissue_fraction(patch) >= min_tissue:
                images.append(TestImage(f"{path.stem}-x{x}-y{y}-s{tile}",
                                        lambda r=(x, y, tile, tile): _read_region(path, *r),
                                        (tile, tile)))
    return TestSet(tuple(images), f"{len(images)} tissue tiles ({tile} x {tile}) of {path.name}")
