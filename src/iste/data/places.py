"""Where data lies, written so that specs given from different folders compare alike: which
test images a model was trained on, which validation images are training images.

A *place* is a data spec as text: ``sample:NAME`` as it is, a path (a folder, an image, a
slide) absolute and resolved. Training runs record the places of their ``data.train``
(a checkpoint's ``train_sources``), since the specs as written are relative to the folder
the run started in; a run that starts from another checkpoint's weights (``run.init``)
records that checkpoint's places too, since its weights learnt from them.

A sample set lies in the cached sample files it reads (:data:`SAMPLE_PARTS`,
:func:`iste.data.samples.cached_path`): ``sample:cmu-train`` in the CMU slide's file, so a
slide test set (``wsi:``, a regions file) on that file shares its images. A folder's images
reached through links lie where the links lead (:func:`folder_places`). What is compared is
where files lie, never their bytes: a copy of a sample or of a training image elsewhere
(a copied slide, patches cut from it by hand and saved) is not seen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["place", "shared", "recorded", "folder_places", "SAMPLE_PARTS"]

SAMPLE_PARTS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "cmu-train": (("cmu-svs", "train"),),
    "cmu-val": (("cmu-svs", "val"),),
    "cmu-test": (("cmu-svs", "test"), ("wsidicom-tile", None), ("slideflow-tile", None)),
    "other-sources": (("wsidicom-tile", None), ("slideflow-tile", None)),
}
"""What each ``sample:NAME`` reads, as (sample file of :data:`iste.data.samples.SAMPLES`, its
band of :data:`~iste.data.samples.CMU_SPLITS` or None for the whole file): the training
sources ``sample:cmu-train|val|test`` (the last, as training data, the test band alone) and
the test sets of :data:`iste.eval.datasets.SAMPLE_SETS`. Two sample sets share images where
they share a part; the bands of one slide share none."""


def place(spec: str | os.PathLike) -> str:
    """``spec`` as a place: ``sample:NAME`` as it is, a path absolute and resolved."""
    text = os.fspath(spec)
    return text if text.startswith("sample:") else str(Path(text).resolve())


def folder_places(root: Path, files: Iterable[Path]) -> tuple[str, ...]:
    """The places of the images ``files`` read from folder ``root`` (paths below it): the
    folder's, then the place of each image that lies out of it, a link or in a linked folder
    (its target, resolved): a test folder of links to training images shares them."""
    home = Path(place(root))
    out = [str(home)]
    for file in files:
        where = Path(place(file))
        if not where.is_relative_to(home):
            out.append(str(where))
    return tuple(dict.fromkeys(out))


def _files(where: str) -> list[Path]:
    """The files or folders place ``where`` lies in: a path's own; a sample set's cached
    files (none for a sample this iste does not know, or a cache it cannot name)."""
    if not where.startswith("sample:"):
        return [Path(where)]
    from iste.data.samples import cached_path
    from iste.refusals import FileSystemError

    names = dict.fromkeys(n for n, _ in SAMPLE_PARTS.get(where[len("sample:"):], ()))
    try:
        return [Path(place(cached_path(name))) for name in names]
    except FileSystemError:  # a cache root that is a file: no sample is read from it
        return []


def shared(a: str, b: str) -> str | None:
    """How place ``a`` stands to place ``b``: "is" (the same), "shares images with" (one lies
    in the other: a folder and an image in it, a slide and a sample set cut from it, two
    sample sets with a part in common), or None (no image in common)."""
    if a == b:
        return "is"
    if a.startswith("sample:") and b.startswith("sample:"):
        parts = [set(SAMPLE_PARTS.get(p[len("sample:"):], ())) for p in (a, b)]
        return "shares images with" if parts[0] & parts[1] else None
    if any(pa.is_relative_to(pb) or pb.is_relative_to(pa)
           for pa in _files(a) for pb in _files(b)):
        return "shares images with"
    return None


def recorded(meta: dict[str, Any], key: str = "train_sources") -> list[str]:
    """The places a checkpoint's metadata records as its training data (``train_sources``),
    or under ``key`` (``val_sources``: the data that picked it); [] when it records none, or
    not as a list (a foreign or damaged file: no verdict read from it, where a string would
    give its characters). A checkpoint from before ``key`` was recorded (the shipped default's)
    has the sample sets of its ``train_config``'s ``data.train`` (``data.val``): a sample set is
    a place as written, where a path was relative to a folder no longer known."""
    if key not in meta and key in _CONFIGURED:
        data = meta.get("train_config")
        data = data.get("data") if isinstance(data, dict) else None
        sources = data.get(_CONFIGURED[key]) if isinstance(data, dict) else None
        return [s for s in sources if isinstance(s, str) and s.startswith("sample:")
                ] if isinstance(sources, list) else []
    sources = meta.get(key)
    return [s for s in sources if isinstance(s, str)] if isinstance(sources, list) else []


_CONFIGURED = {"train_sources": "train", "val_sources": "val"}
