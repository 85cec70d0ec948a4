"""The sidecar work directory of a slide job: finished output tiles, so a job can resume.

Layout, next to the output ``OUT.tiff``::

    OUT.tiff.iste-work/      # mode 0700, owned by the user running the job
        manifest.json        # the job's parameters (incl. model hash and input identity)
        lock                 # flock()ed while a process works on the job
        tiles/<row>/<col>    # level-0 TIFF tile (row, col): a sha256 header, then the bytes
                             # encoded with the final codec; a tile filled for input that
                             # could not be read: another header, then a JSON line saying
                             # how (covered by the sha256), then the bytes
        scratch/             # temporary files of the final assembly (emptied on every open)

Trust: the folder is used only if it is a real folder (not a symlink) owned by the current
user and writable by no one else, checked on the opened folder; otherwise the job stops with
an error naming it. From then on everything inside is reached through that open folder, one
component at a time, never through a symlink: replacing the folder by its name later (a
race with whoever can write its parent) redirects nothing. Each tile carries the sha256 of
its bytes, recorded when it was written; a tile is read once, verified, and those bytes are
used; on resume a tile that does not verify (truncated, overwritten, damaged) is deleted and
recomputed, with a warning. A filled tile (``SlideJob.unreadable`` "fill") carries its note:
a job that fills resumes from it and records the note in its output; a job that does not
(``keep_filled`` False) takes it for missing and computes it again, so a filled tile is never
mistaken for a model tile whatever the job's options.

A tile file appears atomically (written to a temporary name, then renamed), so after Ctrl-C
or SIGKILL every tile present is complete. A restarted job with the same manifest skips the
tiles present; a different manifest (other scale, model, input...) discards them. The
directory is removed once the final file has been renamed into place: renamed aside first
(``.OUT.tiff.iste-work.<random>.<writer>.tmpdir``, one step), then deleted, so that a job
killed during the deletion leaves no half-emptied work folder under its name; the next job
on the output removes what it left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iste.files import umask, write_bytes_at
from iste.locks import try_lock
from iste.refusals import FileSystemError, refusal
from iste.temps import move_aside, remove_stale_temps

__all__ = ["WorkDir", "WorkDirBusyError", "wait_while_busy", "WorkDirTrustError",
           "WorkDirRemovedError", "TileDamagedError", "Finished", "finished_tiles",
           "holds_tiles", "work_dir_for", "remove_leftovers"]

SUFFIX = ".iste-work"
_VERSION = 2
_MAGIC = b"iste-tile-sha256\n"
_FILLED = b"iste-fill-sha256\n"  # a filled tile: sha256 of (its JSON note, "\n", its bytes)
_DIGEST = 32
_LOCK = "lock"  # the file a job holds (flock) while it works in the folder


class WorkDirBusyError(ValueError):
    """Another process holds the work directory of this output."""


class WorkDirTrustError(FileSystemError):
    """The work directory exists but was not made by this user for this job (a symlink,
    another owner, writable by others)."""


class WorkDirRemovedError(FileSystemError):
    """The work directory was removed while the job ran: by the user, or by another job on
    the same output that finished it, where the file system keeps no locks
    (:func:`iste.locks.try_lock`) and so the two were not kept apart."""


class TileDamagedError(ValueError):
    """A finished tile no longer matches the hash recorded when it was written."""


def work_dir_for(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


class WorkDir:
    """Finished tiles of one job, keyed by the job's parameters.

    Args:
        path: the directory (see :func:`work_dir_for`).
        params: JSON-serialisable parameters that determine the output's pixels.
        keep_filled: whether a tile stored with a fill note (:meth:`put`) counts as finished
            (:meth:`has`); False: it is computed again.

    Use as a context manager: it holds an exclusive lock while open. The folder is opened
    once and verified on that open (:func:`_open_trusted`); everything inside is then reached
    through the open folder (``dir_fd``), one component at a time and never through a link,
    so renaming or replacing the folder by its name afterwards changes nothing we read or
    write.
    """

    def __init__(self, path: Path, params: dict[str, Any], *, keep_filled: bool = False):
        self.path = Path(path)
        self.params = _normalised(params)
        self.keep_filled = keep_filled
        self.filled: dict[tuple[int, int], dict] = {}  # (row, col) -> note, of the tiles
        # :meth:`has`, :meth:`get` and :meth:`put` met that were filled
        self._fd: int | None = None  # the work folder, opened and verified
        self._tiles_fd: int | None = None  # its tiles/ folder
        self._lock_fd: int | None = None
        self.damaged = 0  # tiles found damaged (and deleted) by :meth:`has`
        self._removed: os.stat_result | None = None  # the folder :meth:`remove` emptied
        self._aside: Path | None = None  # the name :meth:`remove` moved it to

    @property
    def scratch(self) -> Path:
        """A private folder for temporary files of the final assembly (same file system as
        the output), named through the open work folder where the system allows it (Linux
        ``/proc/self/fd``), so that it stays inside the verified folder."""
        anchored = Path(f"/proc/self/fd/{self._fd}")
        return (anchored if self._fd is not None and anchored.is_dir() else self.path) / "scratch"

    def __enter__(self) -> "WorkDir":
        remove_stale_temps(self.path)  # what a job killed in :meth:`remove` left beside it
        self._fd = _open_trusted(self.path)
        try:
            self._lock()
            self._prepare()
        except WorkDirTrustError:
            self._close()
            raise
        except OSError as exc:  # a file where a folder belongs, a folder for a file...
            refused = refusal(exc, f"cannot make the work folder {self.path}")
            if refused is None:
                self._close()
                raise self._unusable(exc) from None
            self._remove_unless_tiles()  # a full disk: "remove it and rerun" did not help
            self._close()
            raise refused from None
        except BaseException:  # a full disk at the manifest (FileSystemError), Ctrl-C ...
            self._remove_unless_tiles()
            self._close()
            raise
        return self

    def _unusable(self, exc: OSError) -> "WorkDirTrustError":
        where = f" ({exc.filename})" if exc.filename else ""
        return WorkDirTrustError(f"work folder {self.path} cannot be used: "
                                 f"{(exc.strerror or str(exc)).lower()}{where}; remove it and "
                                 "rerun (its finished tiles are recomputed)")

    def _prepare(self) -> None:
        for name in ("tiles", "scratch"):
            _refuse_symlink(self._fd, name, self.path)
        _remove_at(self._fd, "scratch")  # a killed assembly's leftovers
        manifest = _read_json(self._fd, "manifest.json")
        if not _names_job(manifest, self.params):
            self._warn_discarded(manifest)
            _remove_at(self._fd, "tiles")
            write_bytes_at(self._fd, "manifest.json", json.dumps(
                {"version": _VERSION, "params": self.params}, indent=1).encode(),
                mode=0o666 & ~umask(), where=self.path)
        self._tiles_fd = _open_dir(self._fd, "tiles", create=True)
        os.mkdir("scratch", 0o700, dir_fd=self._fd)

    def _warn_discarded(self, manifest: dict | None) -> None:
        """Say that another job's finished tiles are discarded, and what differs: a rerun
        with another option (a different --stf-keys, --codec, model...) threw away a killed
        job's tiles without a word, where the same command would have resumed them."""
        count = _tile_count(self._fd)
        if not count:
            return
        old = (manifest or {}).get("params")
        if not isinstance(old, dict):  # every field would 'differ': say what is known
            warnings.warn(f"{count} tile(s) in {self.path} have no readable record of the job "
                          "that made them (manifest.json missing or damaged): discarded")
            return
        keys = {key for key in set(old) | set(self.params) if old.get(key) != self.params.get(key)}
        if "job" in keys:  # --tissue against --no-tissue: the job's options say it
            keys.discard("tissue")
        differ = sorted({_MANIFEST_WORDS.get(key, key) for key in keys})
        # an option tells them apart: the same command resumes them (not where the input, or
        # the iste or decoder that made them, differs)
        how = ("" if keys & {"input", "pixels", "iste", "tissue", "decoder"}
               else " (the command that made them resumes them)")
        warnings.warn(f"{count} finished tile(s) in {self.path} were made by a job with other "
                      f"{', '.join(differ) or 'parameters'}: discarded{how}")

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self._remove_unless_tiles()
        self._close()

    def _remove_unless_tiles(self) -> None:
        """Remove the folder where a job that failed (a full disk, Ctrl-C ...) left no
        finished tile: nothing in it would be resumed. A disk that filled before the first
        tile left the folder for good (its manifest, empty rows, or the lock file alone), a
        leftover no message named."""
        if self._lock_fd is not None and self._removed is None and _tile_count(self._fd) == 0:
            with contextlib.suppress(OSError):
                self.remove()

    def _close(self) -> None:
        self._unlock()
        if self._tiles_fd is not None:
            os.close(self._tiles_fd)
            self._tiles_fd = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def warn_damaged(self) -> None:
        """Warn about the tiles :meth:`has` found damaged since the last call."""
        if self.damaged:
            warnings.warn(f"{self.damaged} finished tile(s) in {self.path} did not match the "
                          "hash recorded when they were written: recomputing them", stacklevel=2)
            self.damaged = 0

    def _lock(self) -> None:
        fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=self._fd)
        try:
            taken = try_lock(fd)
        except OSError:
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            raise WorkDirBusyError(f"another process is working on {self.path}")
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def has(self, row: int, col: int) -> bool:
        """Whether tile (row, col) is present and verifies; a damaged one is deleted (and
        counted in :attr:`damaged`) so that it is recomputed; a filled one counts only with
        :attr:`keep_filled` (its note is then in :attr:`filled`)."""
        try:
            self.get(row, col)
            if (row, col) in self.filled and not self.keep_filled:
                del self.filled[row, col]
                return False
            return True
        except FileNotFoundError:
            return False
        except TileDamagedError:
            try:
                self._discard(row, col)
            except OSError as exc:
                raise self._unusable(exc) from None
            self.damaged += 1
            return False
        except OSError as exc:  # tiles/ROW a file, a tile a folder...
            raise self._unusable(exc) from None

    def put(self, row: int, col: int, data: bytes, note: dict | None = None) -> None:
        """Store tile (row, col): ``data``, the encoded tile; ``note``: how it was filled
        (JSON-serialisable), for a tile not made from its input (kept in :attr:`filled`)."""
        if note is None:
            blob = _MAGIC + hashlib.sha256(data).digest() + data
        else:
            payload = json.dumps(note, sort_keys=True).encode() + b"\n" + data
            blob = _FILLED + hashlib.sha256(payload).digest() + payload
        try:
            row_fd = _open_dir(self._tiles_fd, str(row), create=True)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                _refuse_symlink(self._tiles_fd, str(row), self.path / "tiles")
                raise WorkDirTrustError(f"{self.path / 'tiles' / str(row)} is not a folder; "
                                        "remove the work folder if you do not trust it") from None
            raise self._put_failed(exc, str(row)) from None
        try:
            write_bytes_at(row_fd, str(col), blob, mode=0o666 & ~umask(),
                           where=self.path / "tiles" / str(row))
        except FileNotFoundError as exc:
            raise self._put_failed(exc, f"{row}/{col}") from None
        finally:
            os.close(row_fd)
        self._note(row, col, note)

    def _note(self, row: int, col: int, note: dict | None) -> None:
        if note is None:
            self.filled.pop((row, col), None)
        else:
            self.filled[row, col] = note

    def _put_failed(self, exc: OSError, tile: str) -> OSError | FileSystemError:
        """The error for a tile that cannot be made: a folder deleted while the job runs (the
        work folder, or the output's with it: the open folder takes no new entries) and the
        file system's refusals (a full disk) in one line naming the work folder; any other
        failure as it is."""
        if exc.errno == errno.ENOENT:
            return WorkDirRemovedError(f"work folder {self.path} was removed while the job ran "
                                       "(its tiles with it); rerun the same command to start "
                                       "again")
        return refusal(exc, f"cannot write {self.path / 'tiles' / tile}") or exc

    def get(self, row: int, col: int) -> bytes:
        """The tile's bytes, verified against their recorded hash: the bytes of one read,
        verified and returned (never read again by name).

        Raises:
            FileNotFoundError: no such tile.
            TileDamagedError: the tile does not verify (a rerun of the same command finds it
                damaged in :meth:`has` and recomputes it).
        """
        found = _unpacked(_read_at(self._tiles_fd, (str(row), str(col)), self.path / "tiles"))
        if found is None:
            raise TileDamagedError(f"finished tile {row},{col} in {self.path} is damaged (its "
                                   "hash does not match); rerun the same command to recompute it")
        self._note(row, col, found[1])
        return found[0]

    def _discard(self, row: int, col: int) -> None:
        if _is_link(self._tiles_fd, str(row)):  # drop the link itself, never what it points to
            os.unlink(str(row), dir_fd=self._tiles_fd)
            return
        with contextlib.suppress(FileNotFoundError):
            row_fd = _open_dir(self._tiles_fd, str(row))
            try:
                _remove_at(row_fd, str(col))
            finally:
                os.close(row_fd)

    def remove(self) -> None:
        """Delete the directory (after success). It is first renamed aside in one step
        (:func:`iste.temps.move_aside`), so that a process killed while its contents are
        deleted (seconds for a whole slide's tiles) leaves no half-emptied work folder
        beside the finished output: a rerun found one there, took the output for another
        job's and refused it, and the folder stayed for good; what it leaves under the
        temporary name is removed by the next job on the output (:func:`remove_leftovers`).
        The contents are then deleted through the open folder, the lock file last (a job that
        opens the folder meanwhile finds it held), and the folder by name (``rmdir`` removes
        only an empty folder). Where it cannot be renamed it is emptied in place. A call
        stopped midway (Ctrl-C, SIGTERM) may be made again to finish."""
        if self._fd is not None:
            if self._aside is None:
                self._aside = _moved_aside(self.path, os.fstat(self._fd))
            for name in sorted(os.listdir(self._fd), key=lambda n: n == _LOCK):
                _remove_at(self._fd, name)
            self._removed = os.fstat(self._fd)
            self._close()
        with contextlib.suppress(OSError):
            folder = self._aside or self.path
            if self._removed is not None and os.path.samestat(
                    self._removed, os.stat(folder, follow_symlinks=False)):
                os.rmdir(folder)


def _moved_aside(path: Path, opened: os.stat_result) -> Path | None:
    """The temporary name the work folder ``path`` was renamed to, if it is still the folder
    ``opened`` (another there now is not ours to move), else None (it stays where it is)."""
    try:
        if not os.path.samestat(opened, os.stat(path, follow_symlinks=False)):
            return None
        return move_aside(path)
    except OSError:  # gone, or a folder this user may not rename in: emptied in place
        return None


def remove_leftovers(output: Path) -> list[Path]:
    """Remove what jobs on ``output`` killed while they deleted their work folder left (the
    folder renamed aside, :meth:`WorkDir.remove`), once their process is provably gone
    (:func:`iste.temps.remove_stale_temps`); returns what was removed."""
    return remove_stale_temps(work_dir_for(output))


@dataclass(frozen=True)
class Finished:
    """What a job would resume from in its work folder: ``tiles``, the (row, col) of the
    level-0 TIFF tiles that verify, and their ``bytes`` on disk; ``busy``: another process
    holds the folder now (a run would refuse it until that process ends); ``stale``: the
    folder holds another job's tiles (other parameters), which a run discards."""

    tiles: frozenset[tuple[int, int]] = frozenset()
    bytes: int = 0
    busy: bool = False
    stale: bool = False


def finished_tiles(path: Path, params: dict[str, Any]) -> Finished:
    """The finished tiles a job with ``params`` would resume from in the work folder
    ``path``, read without changing anything: no lock is taken, nothing is created, and a
    damaged tile is left for the run to recompute (it is not counted). A tile is read and
    verified against its recorded hash, as the run would.

    Raises:
        WorkDirTrustError: the folder exists and the run would refuse it (see
            :func:`_open_trusted`).
    """
    if not os.path.lexists(path):
        return Finished()
    fd = _open_trusted(path, create=False)
    try:
        busy = _held_by_another(fd)
        if not _same_job(fd, _normalised(params)):
            return Finished(busy=busy, stale=_is_folder(fd, "tiles"))
        tiles, size = set(), 0
        for row, col, blob in _tile_blobs(fd, path / "tiles"):
            if _verified(blob) is not None:
                tiles.add((row, col))
                size += len(blob)
        return Finished(frozenset(tiles), size, busy)
    finally:
        os.close(fd)


def holds_tiles(path: Path) -> bool:
    """Whether the work folder ``path`` holds any tile file, read without checking them (a
    rerun resumes from those that verify: :func:`finished_tiles`): a job stopped before its
    first tile has none to name. Counted as :meth:`WorkDir.__exit__` counts them before it
    removes a folder with none, so a message never names a folder that was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        with contextlib.closing(_tile_names(fd)) as names:
            return next(names, None) is not None
    finally:
        os.close(fd)


def _normalised(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as the manifest's JSON reads back (tuples become lists)."""
    return json.loads(json.dumps(params))


def _same_job(dir_fd: int, params: dict[str, Any]) -> bool:
    """Whether the folder's manifest names the job ``params`` (normalised through JSON)."""
    return _names_job(_read_json(dir_fd, "manifest.json"), params)


def _names_job(manifest: dict | None, params: dict[str, Any]) -> bool:
    """Whether ``manifest`` (a work folder's, as read) names the job ``params``."""
    return (manifest is not None and manifest.get("version") == _VERSION
            and manifest.get("params") == params)


def _verified(blob: bytes) -> bytes | None:
    """A stored tile's bytes if they match the hash recorded when they were written."""
    found = _unpacked(blob)
    return None if found is None else found[0]


def _unpacked(blob: bytes) -> tuple[bytes, dict | None] | None:
    """(bytes, fill note or None) of a stored tile that matches the hash recorded when it was
    written (:meth:`WorkDir.put`), else None."""
    head = len(_MAGIC) + _DIGEST
    magic, payload = blob[:len(_MAGIC)], blob[head:]
    if magic not in (_MAGIC, _FILLED) \
            or blob[len(_MAGIC):head] != hashlib.sha256(payload).digest():
        return None
    if magic == _MAGIC:
        return payload, None
    line, sep, data = payload.partition(b"\n")
    try:
        note = json.loads(line)
    except ValueError:
        return None
    return (data, note) if sep and isinstance(note, dict) else None


def _tile_names(dir_fd: int):
    """(the row's folder descriptor, row, col) of every entry ``tiles/<row>/<col>`` whose
    names are numbers, never through a link: a write's temporary (``.COL.…``) is no tile.
    The row's descriptor is open until the next item."""
    try:
        tiles_fd = _open_dir(dir_fd, "tiles")
    except OSError:  # missing, a link or a file: nothing a run would resume from
        return
    try:
        for row in filter(str.isdigit, os.listdir(tiles_fd)):
            try:
                row_fd = _open_dir(tiles_fd, row)
            except OSError:
                continue
            try:
                for col in filter(str.isdigit, os.listdir(row_fd)):
                    yield row_fd, row, col
            finally:
                os.close(row_fd)
    finally:
        os.close(tiles_fd)


def _tile_blobs(dir_fd: int, where: Path):
    """(row, col, stored bytes) of every tile file under ``tiles/`` (:func:`_tile_names`);
    entries that are not regular files or cannot be read are skipped."""
    for row_fd, row, col in _tile_names(dir_fd):
        try:
            yield int(row), int(col), _read_at(row_fd, (col,), where / row)
        except (OSError, TileDamagedError):
            continue


def wait_while_busy(output: Path) -> None:
    """Return once no process holds the lock of ``output``'s work folder: at once where
    there is none, else when the job that holds it ends (finished, failed or killed: the
    kernel releases a dead process's lock)."""
    import fcntl

    try:
        fd = os.open(work_dir_for(output) / _LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no work folder (the job finished), or no lock in it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits for the holder; ours is released below
    except OSError:  # no lock to be had on this file system: nothing to wait for
        pass
    finally:
        os.close(fd)


def _held_by_another(dir_fd: int) -> bool:
    """Whether a process holds the folder's lock now (tested, then released at once)."""
    try:
        fd = os.open(_LOCK, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return not try_lock(fd, shared=True)
    except OSError:  # no lock to be had at all: nothing says a process holds it
        return False
    finally:
        os.close(fd)  # closing releases a lock we took


# what each entry of a job's manifest (iste.slides.pipeline.job_manifest) stands for
_MANIFEST_WORDS = {
    "iste": "iste version", "input": "input file", "model": "model", "job": "job options",
    "codec": "tile codec or quality", "kind": "output kind", "lr_box": "region",
    "out_hw": "output size", "geometry": "tile geometry", "options": "query options",
    "pixels": "input pixels (deblocking)",
    "decoder": "decoder (--backend, or its library's version)",
    "tissue": "tissue rule (an older iste's: model or bicubic per tile)",
}


def _tile_count(dir_fd: int) -> int:
    """Tiles under ``tiles/<row>/`` (:func:`_tile_names`), counted by name, not read."""
    return sum(1 for _ in _tile_names(dir_fd))


def _is_folder(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _open_trusted(path: Path, *, create: bool = True) -> int:
    """Create ``path`` (mode 0700; with ``create``), or accept an existing one only if it is a
    real folder owned by this user and writable by no one else; checked on the opened folder
    (fstat), whose descriptor is returned.

    Raises:
        WorkDirTrustError: naming the folder and what is wrong with it.
        FileSystemError: the file system refuses to make it (read-only, full, not permitted).
    """
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:  # a read-only or full file system: "[Errno 30] ..." raw
            raise (refusal(exc, f"cannot create the work folder {path}") or exc) from None
    fix = "remove it (or choose another output) if you do not trust it"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):  # Linux: ENOTDIR for a link
            raise WorkDirTrustError(f"work folder {path} is a symlink: not following it; "
                                    f"{fix}") from None
        if exc.errno == errno.ENOTDIR:
            raise WorkDirTrustError(f"work folder {path} exists and is not a folder; "
                                    f"{fix}") from None
        raise
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {st.st_uid}): not using it"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): not using it"
    if problem is not None:
        os.close(fd)
        raise WorkDirTrustError(f"work folder {path} {problem}; {fix}")
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _refuse_symlink(dir_fd: int, name: str, where: Path) -> None:
    if _is_link(dir_fd, name):
        raise WorkDirTrustError(f"{where / name} is a symlink inside a work folder: not "
                                "following it; remove the work folder if you do not trust it")


def _open_dir(dir_fd: int, name: str, *, create: bool = False) -> int:
    """The folder ``name`` inside ``dir_fd`` (made 0700 if ``create``), opened without
    following a link (OSError ELOOP / ENOTDIR otherwise)."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove the entry ``name`` of ``dir_fd``: a folder with its contents (never following a
    link), or a file or link itself; nothing if absent."""
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _read_at(dir_fd: int, parts: tuple[str, ...], where: Path) -> bytes:
    """Read the regular file ``parts`` below ``dir_fd``, opening one component at a time and
    never through a link (a link or a non-file anywhere -> TileDamagedError)."""
    fds = []
    try:
        try:
            for name in parts[:-1]:
                fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                   dir_fd=fds[-1] if fds else dir_fd))
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW,
                         dir_fd=fds[-1] if fds else dir_fd)
        except OSError as exc:
            path = where.joinpath(*parts)
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(str(path)) from None
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                raise TileDamagedError(f"{path} is not a regular file in a folder") from None
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise TileDamagedError(f"{where.joinpath(*parts)} is not a regular file")
            return f.read()
    finally:
        for fd in fds:
            os.close(fd)


def _read_json(dir_fd: int, name: str) -> dict | None:
    """The JSON object in file ``name`` of the folder, or None where it cannot be read or holds
    another JSON value (a manifest.json of '[1, 2]' ended the job in an AttributeError)."""
    try:
        found = json.loads(_read_at(dir_fd, (name,), Path(name)))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
