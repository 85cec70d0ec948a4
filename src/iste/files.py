"""Atomic file writes: a temporary file next to the target, moved into place when complete.

A reader never sees a half-written file, and a failed or interrupted write leaves the target
as it was (the temporary file is removed). The result gets the permissions a normally
created file would have (``0666 & ~umask``; ``mkstemp`` alone makes 0600), or ``mode`` when
given (0600 for private files such as caches).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["write_atomic", "write_bytes_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *,
                 suffix: str = ".tmp", mode: int | None = None) -> Path:
    """Call ``write(tmp_name)`` on a new temp file in ``path``'s folder, then rename it to
    ``path`` with permissions ``mode`` (default ``0666 & ~umask``). The folder must exist.
    Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return write_atomic(path, write, mode=mode)


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` would race with threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022
