"""The HR images of a folder: which files are read, in which order, each checked once. The
one rule for training and validation folders (:mod:`iste.train.sources`) and test folders
(:mod:`iste.eval.datasets`), so that a folder is the same images wherever it is given.

Rule:

- Files whose suffix is one of :data:`~iste.data.imageformats.SUPPORTED_SUFFIXES` (any
  case), searched recursively; links to folders are not followed (a link back up the tree
  would be a loop). Every other name with such a suffix (a link to nothing or in a loop, a
  FIFO) is kept, so that its check names it.
- HistoSR-style trees (``HR/`` beside ``LR_x2/``, ``LR_x4/`` ...): when any folder in the tree
  is named ``HR`` (any case), only the images below such folders are the folder's: LR images
  are never read, the LR side is always made by :func:`iste.data.degrade.degrade`.
- Order: by path relative to the folder, compared part by part as text (code points): the
  same on every machine whatever the file system's listing order, the locale or the hash
  seed. A training sample draws its image by index in this order.
- Every image is checked when the folder is indexed (:func:`~iste.data.images.
  checked_image_size`: its header, its data complete, 16-bit and float refused), so that a bad
  file stops the run before any work, not when a crop first draws it hours in; the bad files
  are one error (how many, the first three). A sub-folder that cannot be listed is an error
  too: its images would be left out without a word.
- An image above :data:`~iste.data.imageformats.MAX_INPUT_PIXELS` is refused, a TIFF too (a
  PNG or JPEG is refused there by its reader): a folder's images are read whole, a training
  image once per crop drawn from it, so a whole-slide image saved as .tif in a training folder
  took gigabytes and seconds per crop, or the memory of the machine. Given as a source of its
  own (``data.train: [PATH]``, ``iste eval --data wsi:PATH``) it is read as a slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from iste.data.imageformats import MAX_INPUT_PIXELS, SUPPORTED_SUFFIXES
from iste.data.images import ImageReadError, checked_image_size

__all__ = ["FolderImage", "FolderIndex", "index_folder"]

_SHOWN = 3  # bad files named in the error
_AS_SLIDE = {"training": "list it in data.train by itself", "validation": "list it in "
             "data.val by itself", "test": "iste eval --data wsi:PATH"}  # read as a slide


@dataclass(frozen=True)
class FolderImage:
    """One image of a folder: its path, its ``name`` (the path relative to the folder, with
    ``/``) and its (H, W) from the header."""

    path: Path
    name: str
    hw: tuple[int, int]


@dataclass(frozen=True)
class FolderIndex:
    """The images of a folder in order (module notes); ``hr_only``: the folder has ``HR``
    folders and only their images were taken."""

    images: tuple[FolderImage, ...]
    hr_only: bool


def index_folder(root: Path, role: str) -> FolderIndex:
    """The checked images of folder ``root`` (module notes).

    role: what the folder is for ("training", "validation", "test"), for the messages.

    Raises:
        ImageReadError: unusable images (all of them counted, the first three named), or a
            sub-folder that cannot be listed.
        ValueError: the folder holds no image.
    """
    files, hr_only = _image_files(root, role)
    if not files:
        raise ValueError(f"no {role} images in folder {root} (looked for "
                         f"{', '.join(SUPPORTED_SUFFIXES)}, recursively)")
    images, bad = [], []
    for path in files:
        try:
            images.append(FolderImage(path, path.relative_to(root).as_posix(),
                                      _read_whole(path, role)))
        except ImageReadError as err:
            bad.append(str(err))
    if bad:
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise ImageReadError(f"{role} folder {root}: {len(bad)} of {len(files)} images are "
                             f"unusable (fix or remove them): {'; '.join(bad[:_SHOWN])}{more}")
    return FolderIndex(tuple(images), hr_only)


def _read_whole(path: Path, role: str) -> tuple[int, int]:
    """(H, W) of an image of a folder, once :func:`checked_image_size` has checked it and it
    is small enough to be read whole (module notes)."""
    height, width = checked_image_size(path)
    if height * width > MAX_INPUT_PIXELS:
        raise ImageReadError(f"cannot read {path}: {width} x {height} px is beyond the "
                             f"{MAX_INPUT_PIXELS / 2**30:g} Gpx a folder's image is read whole; "
                             f"to read it as a slide, {_AS_SLIDE.get(role, 'give it alone')}")
    return height, width


def _image_files(root: Path, role: str) -> tuple[list[Path], bool]:
    """(image files below ``root`` in order, whether only ``HR`` folders' were kept)."""

    def unlisted(err: OSError) -> None:
        where = err.filename or root
        raise ImageReadError(f"{role} folder {root}: cannot list {where} "
                             f"({(err.strerror or str(err)).lower()}): its images would be "
                             "left out")

    found = []
    for dirpath, _, names in os.walk(root, onerror=unlisted):
        folder = Path(dirpath)
        found += [folder / n for n in names if Path(n).suffix.lower() in SUPPORTED_SUFFIXES]
    parts = {p: p.relative_to(root).parts for p in found}
    hr = [p for p in found if any(part.lower() == "hr" for part in parts[p][:-1])]
    kept = hr or found
    return sorted(kept, key=parts.__getitem__), bool(hr)
