"""Atomic writes for reports: a temp file in the target folder, os.replace when complete.

JSON is written strictly (no NaN/Infinity tokens, which many JSON parsers reject): nan becomes
null and +-inf the strings "inf" / "-inf".
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from iste import files
from iste.digest import sha256_file
from iste.paths import ensure_dir
from iste.text import shown

__all__ = ["write_atomic", "write_text_atomic", "write_json_atomic", "save_npy_atomic",
           "jsonable", "pixels_digest"]


def write_atomic(path: Path, write) -> None:
    """:func:`iste.files.write_atomic`, creating ``path``'s folder first (FileSystemError
    naming the file in its way, if one is)."""
    path = Path(path)
    ensure_dir(path.parent)
    files.write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` as UTF-8; a file name that is not UTF-8 is written with its bytes as escapes
    (``bad\\xffname.png``: :func:`iste.text.shown`)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(shown(text))
    write_atomic(path, write)


def jsonable(obj: Any) -> Any:
    """``obj`` with nan -> None, +-inf -> "inf"/"-inf", numpy scalars -> Python, Paths -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return obj.as_posix()
    return obj


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


def save_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Save ``array`` as ``.npy`` atomically; returns the sha256 of the bytes written (taken
    before the rename: not of whatever another process puts at ``path`` afterwards)."""
    written = {}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
        written["sha256"] = sha256_file(Path(tmp))
    write_atomic(path, write)
    return written["sha256"]


def pixels_digest(arrays) -> str:
    """sha256 (16 hex digits) of the arrays' shapes, dtypes and bytes, in order: the input
    pixels a cached result or a trained network was made from, for its cache key or tag
    (changed data -> redone)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
