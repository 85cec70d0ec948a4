"""The sidecar work directory of a slide job: finished output tiles, so a job can resume.

Layout, next to the output ``OUT.tiff``::

    OUT.tiff.iste-work/
        manifest.json        # the job's parameters (incl. model hash and input identity)
        lock                 # flock()ed while a process works on the job
        tiles/<row>/<col>    # level-0 TIFF tile (row, col), encoded with the final codec

A tile file appears atomically (written to a temporary name, then renamed), so after Ctrl-C
or SIGKILL every tile present is complete. A restarted job with the same manifest skips the
tiles present; a different manifest (other scale, model, input...) discards them. The
directory is removed once the final file has been renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from iste.files import write_bytes_atomic

__all__ = ["WorkDir", "WorkDirBusyError", "work_dir_for"]

SUFFIX = ".iste-work"
_VERSION = 1


class WorkDirBusyError(ValueError):
    """Another process holds the work directory of this output."""


def work_dir_for(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


class WorkDir:
    """Finished tiles of one job, keyed by the job's parameters.

    Args:
        path: the directory (see :func:`work_dir_for`).
        params: JSON-serialisable parameters that determine the output's pixels.

    Use as a context manager: it holds an exclusive lock while open.
    """

    def __init__(self, path: Path, params: dict[str, Any]):
        self.path = Path(path)
        self.params = json.loads(json.dumps(params))  # normalised (tuples -> lists)
        self._lock_fd: int | None = None

    def __enter__(self) -> "WorkDir":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        manifest = self.path / "manifest.json"
        old = _read_json(manifest)
        if old is None or old.get("params") != self.params:  # else: resume its tiles
            shutil.rmtree(self.path / "tiles", ignore_errors=True)
            write_bytes_atomic(manifest, json.dumps({"version": _VERSION, "params": self.params},
                                               indent=1).encode())
        (self.path / "tiles").mkdir(exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()

    def _lock(self) -> None:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise WorkDirBusyError(f"another process is working on {self.path}") from None
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _tile_path(self, row: int, col: int) -> Path:
        return self.path / "tiles" / str(row) / str(col)

    def has(self, row: int, col: int) -> bool:
        p = self._tile_path(row, col)
        try:
            return p.stat().st_size > 0
        except FileNotFoundError:
            return False

    def put(self, row: int, col: int, data: bytes) -> None:
        p = self._tile_path(row, col)
        p.parent.mkdir(exist_ok=True)
        write_bytes_atomic(p, data)

    def get(self, row: int, col: int) -> bytes:
        return self._tile_path(row, col).read_bytes()

    def remove(self) -> None:
        """Delete the directory (after success)."""
        self._unlock()
        shutil.rmtree(self.path, ignore_errors=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

