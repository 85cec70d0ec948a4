"""Where data lies, written so that specs given from different folders compare alike: which
test images a model was trained on, which validation images are training images.

A *place* is a data spec as text: ``sample:NAME`` as it is, a path (a folder, an image, a
slide) absolute and resolved. Training runs record the places of their ``data.train``
(a checkpoint's ``train_sources``), since the specs as written are relative to the folder
the run started in; a run that starts from another checkpoint's weights (``run.init``)
records that checkpoint's places too, since its weights learnt from them.

A folder's images reached through links lie where the links lead (:func:`folder_places`).
What is compared is where files lie, never their bytes: a copy of a training image elsewhere
is not seen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["place", "shared", "recorded", "folder_places"]


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


def shared(a: str, b: str) -> str | None:
    """How place ``a`` stands to place ``b``: "is" (the same), "shares images with" (one lies
    in the other: a folder and an image in it), or None (no image in common)."""
    if a == b:
        return "is"
    if a.startswith("sample:") or b.startswith("sample:"):
        return None
    pa, pb = Path(a), Path(b)
    return "shares images with" if pa.is_relative_to(pb) or pb.is_relative_to(pa) else None


def recorded(meta: dict[str, Any], key: str = "train_sources") -> list[str]:
    """The places a checkpoint's metadata records as its training data (``train_sources``),
    or under ``key`` (``val_sources``: the data that picked it); [] when it records none, or
    not as a list (a foreign or damaged file: no verdict read from it, where a string would
    give its characters)."""
    sources = meta.get(key)
    return [s for s in sources if isinstance(s, str)] if isinstance(sources, list) else []
