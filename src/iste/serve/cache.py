"""Bounded least-recently-used tile caches: one in memory, one on disk.

Both are bounded in bytes and safe to use from several threads. The disk cache keeps its
recency in file modification times (touched on every hit), so it survives restarts; files are
written to a temporary name and renamed into place, so a crash never leaves a half-written
tile under a valid name. It is private to the user who runs the server: its folders are 0700
and its files 0600 (tiles show patient tissue), and a cache folder owned by someone else is
refused.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Hashable

from iste.files import write_bytes_atomic

__all__ = ["MemoryCache", "DiskCache"]

_NAME = re.compile(r"^[0-9a-f]{16,64}$")
_SUFFIX = ".tile"
_DIR_MODE, _FILE_MODE = 0o700, 0o600


def _private_dir(path: Path) -> None:
    """Create ``path`` (parents as usual) as a folder only its owner can enter, or make an
    existing one so; refuse one that belongs to another user.

    Raises:
        ValueError: ``path`` is not a folder, or is not owned by this user.
    """
    try:
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"tile cache {path} is not a folder") from None
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ValueError(f"tile cache {path} belongs to another user: choose another "
                         "--cache-dir")
    if st.st_mode & 0o777 != _DIR_MODE:
        path.chmod(_DIR_MODE)


class MemoryCache:
    """An LRU map key -> bytes holding at most ``max_bytes`` of values."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"memory cache size must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        """Store ``data`` (values larger than the whole cache are not stored)."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


class DiskCache:
    """Files ``root/<name[:2]>/<name>.tile`` holding at most ``max_bytes`` in total.

    ``name`` is a hex digest chosen by the caller (it must capture everything the tile
    depends on). Files left by an earlier run are adopted, oldest first in the LRU order.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"disk cache size must be >= 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        _private_dir(self.root)
        self._index: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._adopt()
        with self._lock:
            self._evict()

    def _adopt(self) -> None:
        found = []
        for folder in self.root.glob("??"):
            if folder.is_dir() and not folder.is_symlink():
                _private_dir(folder)
        for path in self.root.glob("??/*"):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write interrupted by a crash
                continue
            name = path.name[:-len(_SUFFIX)]
            if path.name.endswith(_SUFFIX) and _NAME.match(name) and not path.is_symlink():
                st = path.stat()
                if st.st_mode & 0o777 != _FILE_MODE:
                    path.chmod(_FILE_MODE)  # written by an older version, world-readable
                found.append((st.st_mtime_ns, name, st.st_size))
        for _, name, size in sorted(found):
            self._index[name] = size
            self._bytes += size

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid cache name {name!r}")
        return self.root / name[:2] / (name + _SUFFIX)

    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        with self._lock:
            if name not in self._index:
                return None
            self._index.move_to_end(name)
        try:
            data = path.read_bytes()
            os.utime(path)
            return data
        except FileNotFoundError:  # removed behind our back (another process, a user)
            with self._lock:
                self._bytes -= self._index.pop(name, 0)
            return None

    def put(self, name: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self._path(name)
        if not path.parent.is_dir():
            _private_dir(path.parent)
        write_bytes_atomic(path, data, mode=_FILE_MODE)
        with self._lock:
            self._bytes -= self._index.pop(name, 0)
            self._index[name] = len(data)
            self._bytes += len(data)
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used files until within budget (lock held)."""
        while self._bytes > self.max_bytes and self._index:
            name, size = self._index.popitem(last=False)
            self._bytes -= size
            self._path(name).unlink(missing_ok=True)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._index)
