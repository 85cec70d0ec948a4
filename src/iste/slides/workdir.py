"""The sidecar work directory of a slide job: finished output tiles, so a job can resume.

Layout, next to the output ``OUT.tiff``::

    OUT.tiff.iste-work/      # mode 0700, owned by the user running the job
        manifest.json        # the job's parameters (incl. model hash and input identity)
        lock                 # flock()ed while a process works on the job
        tiles/<row>/<col>    # level-0 TIFF tile (row, col): a sha256 header, then the bytes
                             # encoded with the final codec
        scratch/             # temporary files of the final assembly (emptied on every open)

Trust: the folder is used only if this process created it, or if it is a real folder (not a
symlink) owned by the current user and writable by no one else; otherwise the job stops
with an error naming it. Nothing inside is followed through a symlink. Each tile carries the
sha256 of its bytes, recorded when it was written; on resume a tile that does not verify
(truncated, overwritten, damaged) is deleted and recomputed, with a warning.

A tile file appears atomically (written to a temporary name, then renamed), so after Ctrl-C
or SIGKILL every tile present is complete. A restarted job with the same manifest skips the
tiles present; a different manifest (other scale, model, input...) discards them. The
directory is removed once the final file has been renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import warnings
from pathlib import Path
from typing import Any

from iste.files import FileSystemError, write_bytes_atomic

__all__ = ["WorkDir", "WorkDirBusyError", "WorkDirTrustError", "TileDamagedError",
           "work_dir_for"]

SUFFIX = ".iste-work"
_VERSION = 2
_MAGIC = b"iste-tile-sha256\n"
_DIGEST = 32


class WorkDirBusyError(ValueError):
    """Another process holds the work directory of this output."""


class WorkDirTrustError(FileSystemError):
    """The work directory exists but was not made by this user for this job (a symlink,
    another owner, writable by others)."""


class TileDamagedError(ValueError):
    """A finished tile no longer matches the hash recorded when it was written."""


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
        self.damaged = 0  # tiles found damaged (and deleted) by :meth:`has`

    @property
    def scratch(self) -> Path:
        """A private folder for temporary files of the final assembly (same file system as
        the output)."""
        return self.path / "scratch"

    def __enter__(self) -> "WorkDir":
        _open_trusted(self.path)
        self._lock()
        try:
            self._prepare()
        except BaseException:
            self._unlock()
            raise
        return self

    def _prepare(self) -> None:
        for name in ("tiles", "scratch"):
            _refuse_symlink(self.path / name)
        shutil.rmtree(self.scratch, ignore_errors=True)  # a killed assembly's leftovers
        manifest = self.path / "manifest.json"
        old = _read_json(manifest)
        if old is None or old.get("version") != _VERSION or old.get("params") != self.params:
            shutil.rmtree(self.path / "tiles", ignore_errors=True)
            write_bytes_atomic(manifest, json.dumps({"version": _VERSION, "params": self.params},
                                                    indent=1).encode())
        (self.path / "tiles").mkdir(mode=0o700, exist_ok=True)
        self.scratch.mkdir(mode=0o700)

    def __exit__(self, *exc) -> None:
        self._unlock()

    def warn_damaged(self) -> None:
        """Warn about the tiles :meth:`has` found damaged since the last call."""
        if self.damaged:
            warnings.warn(f"{self.damaged} finished tile(s) in {self.path} did not match the "
                          "hash recorded when they were written: recomputing them", stacklevel=2)
            self.damaged = 0

    def _lock(self) -> None:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
        """Whether tile (row, col) is present and verifies; a damaged one is deleted (and
        counted in :attr:`damaged`) so that it is recomputed."""
        try:
            self.get(row, col)
            return True
        except FileNotFoundError:
            return False
        except TileDamagedError:
            self._discard(row, col)
            self.damaged += 1
            return False

    def put(self, row: int, col: int, data: bytes) -> None:
        p = self._tile_path(row, col)
        _refuse_symlink(p.parent)
        p.parent.mkdir(mode=0o700, exist_ok=True)
        write_bytes_atomic(p, _MAGIC + hashlib.sha256(data).digest() + data)

    def get(self, row: int, col: int) -> bytes:
        """The tile's bytes, verified against their recorded hash.

        Raises:
            FileNotFoundError: no such tile.
            TileDamagedError: the tile does not verify (a rerun of the same command finds it
                damaged in :meth:`has` and recomputes it).
        """
        p = self._tile_path(row, col)
        blob = _read_no_follow(p)
        head = len(_MAGIC) + _DIGEST
        data = blob[head:]
        if blob[:len(_MAGIC)] != _MAGIC or blob[len(_MAGIC):head] != hashlib.sha256(data).digest():
            raise TileDamagedError(f"finished tile {row},{col} in {self.path} is damaged (its "
                                   "hash does not match); rerun the same command to recompute it")
        return data

    def _discard(self, row: int, col: int) -> None:
        p = self._tile_path(row, col)
        if p.parent.is_symlink():  # drop the link itself, never what it points to
            p.parent.unlink()
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the directory (after success)."""
        self._unlock()
        shutil.rmtree(self.path, ignore_errors=True)


def _open_trusted(path: Path) -> None:
    """Create ``path`` (mode 0700), or accept an existing one only if it is a real folder owned
    by this user and writable by no one else.

    Raises:
        WorkDirTrustError: naming the folder and what is wrong with it.
    """
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    fix = "remove it (or choose another output) if you do not trust it"
    if stat.S_ISLNK(st.st_mode):
        raise WorkDirTrustError(f"work folder {path} is a symlink: not following it; {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise WorkDirTrustError(f"work folder {path} exists and is not a folder; {fix}")
    if st.st_uid != os.geteuid():
        raise WorkDirTrustError(f"work folder {path} belongs to another user (uid {st.st_uid}): "
                                f"not using it; {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WorkDirTrustError(f"work folder {path} is writable by other users (mode "
                                f"{stat.S_IMODE(st.st_mode):o}): not using it; {fix}")


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise WorkDirTrustError(f"{path} is a symlink inside a work folder: not following it; "
                                "remove the work folder if you do not trust it")


def _read_no_follow(path: Path) -> bytes:
    """Read a file, refusing a symlink as the file or as its row folder (ELOOP -> damaged)."""
    if path.parent.is_symlink():
        raise TileDamagedError(f"{path.parent} is a symlink")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(str(path)) from None
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise TileDamagedError(f"{path} is not a regular file") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise TileDamagedError(f"{path} is not a regular file")
        return f.read()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(_read_no_follow(path))
    except (OSError, ValueError):
        return None
