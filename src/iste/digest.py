"""The sha256 of a file's bytes, read once per process while the file is unchanged."""

from __future__ import annotations

import hashlib
import os
import threading
import time

__all__ = ["sha256_file"]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks; read once per process while the file
    is unchanged (a slide job's key and its provenance both digest the input: gigabytes).
    Unchanged means the same device, inode, size, modification and status-change times as
    when it was read, with none of them moving during the read; the status-change time moves
    with every write and no program can set it back."""
    with open(path, "rb") as f:
        before = _identity(os.fstat(f.fileno()))
        with _DIGESTS_LOCK:
            known = _DIGESTS.get(before)
        if known is not None:
            return known
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
        after = os.fstat(f.fileno())
        # kept only once its times are old enough that a write now would move them: on file
        # systems with coarse timestamps (1-2 s) a rewrite in the same tick would not (git's
        # rule for its index)
        if _identity(after) == before and _now_ns() - after.st_ctime_ns > _SETTLED_NS:
            with _DIGESTS_LOCK:
                if len(_DIGESTS) >= _MAX_DIGESTS:
                    _DIGESTS.pop(next(iter(_DIGESTS)))
                _DIGESTS[before] = digest.hexdigest()
    return digest.hexdigest()


_DIGESTS: dict[tuple[int, ...], str] = {}  # file identity -> sha256, oldest first
_DIGESTS_LOCK = threading.Lock()
_MAX_DIGESTS = 4096
_HASH_CHUNK = 1 << 20
_SETTLED_NS = 3_000_000_000  # a file's times this old are past any timestamp tick
_now_ns = time.time_ns


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
