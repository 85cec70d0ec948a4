"""Cached arrays (SR images, predictions) that a rerun reuses only after verifying them.

``NAME.npy`` holds the array, ``NAME.json`` its tag (what produced it: method fingerprint,
scale, degradation, options ...) and the sha256 of the ``.npy`` file. The JSON is written
last, so an interrupted write is recomputed; a tag that differs or a file whose bytes changed
is recomputed too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from iste.eval.files import jsonable, save_npy_atomic, write_json_atomic
from iste.digest import sha256_file

__all__ = ["cached_array"]


def cached_array(path: Path, tag: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array at ``path`` (``.npy``) if it was made with ``tag`` and is intact, else
    ``compute()``, saved atomically."""
    meta = path.with_suffix(".json")
    tag = jsonable(tag)
    if path.is_file() and meta.is_file():
        try:
            saved = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if (isinstance(saved, dict) and saved.get("tag") == tag
                and saved.get("sha256") == sha256_file(path)):
            return np.load(path, allow_pickle=False)
    array = np.asarray(compute())
    write_json_atomic(meta, {"tag": tag, "sha256": save_npy_atomic(path, array)})
    return array
