"""Atomic writes: a reader never sees a half-written file, and a failed write changes nothing.

A temporary file next to the target (or in a given scratch folder on the same file system),
moved into place when complete. A failed or interrupted write leaves the target as it was (the
temporary file is removed; one a killed process left beside the target is removed by the next
write of it, whoever writes it: :func:`iste.temps.remove_stale_temps`). The result gets the
permissions a normally created file would have (``0666 & ~umask``; ``mkstemp`` alone makes
0600), or ``mode`` when given (0600 for private files such as caches). A full disk is
reported as :class:`~iste.refusals.FileSystemError` (one line). Folders (a DICOM series) are
written the same way (:func:`write_dir_atomic`): a temporary folder beside the target,
exchanged with the old folder only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

from iste.paths import check_not_special
from iste.refusals import UNSUPPORTED, FileSystemError, folder_removed, refusal
from iste.temps import mkdtemp_beside, remove_stale_temps, temp_prefix, temp_suffix

__all__ = ["write_atomic", "write_bytes_atomic", "write_bytes_at", "write_dir_atomic", "umask"]


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *,
                 suffix: str = ".tmp", mode: int | None = None,
                 tmp_dir: str | os.PathLike | None = None, replace: bool = True,
                 then: Callable[[], None] | None = None) -> Path:
    """Call ``write(tmp_name)`` on a new temp file, then rename it to ``path`` with permissions
    ``mode`` (default ``0666 & ~umask``).

    ``then``, when given, is called once the temp file is complete, before it is moved into
    place: a file that goes with this one (a provenance sidecar) is written there, and if it
    fails, ``path`` is left as it was, never one of the pair without the other.

    The temp file is made in ``tmp_dir`` (best on ``path``'s file system: one on another is
    copied beside ``path`` once complete, :func:`_put_in_place`), by default in ``path``'s
    folder; the folder must exist. ``replace`` False: a file that appeared at
    ``path`` meanwhile (another process's) is kept and FileExistsError raised; the temp file
    is linked to ``path``, which fails where a file is, in one step. Returns ``path``.

    Raises:
        FileSystemError: the file system refuses the write (full: :class:`DiskFullError`;
            read-only, not permitted, a name too long), or a folder, a device, a pipe or a
            socket is at ``path``; the temp file is removed.
        FileExistsError: ``replace`` False and ``path`` exists.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():  # before any work, and ``then``'s file
        raise FileSystemError(_A_FOLDER_THERE.format(path))
    check_not_special(path)
    # a killed earlier write's temporary (as large as the file: a model, a training state)
    # was kept for good by the writers that did not look for it (convert-official,
    # iste downstream's checkpoints, metrics.jsonl)
    remove_stale_temps(path)
    folder = path.parent if tmp_dir is None else Path(tmp_dir)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=temp_suffix(suffix),
                                   dir=folder)
    except NotADirectoryError:
        raise FileSystemError(f"cannot write {path}: {folder} is not a folder") from None
    except OSError as exc:
        raise (_refused(exc, path, folder) or exc) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
        _sync(tmp)
        if then is not None:
            then()
        _put_in_place(tmp, path, replace, suffix)
        _sync(path.parent, required=False)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, IsADirectoryError):  # os.replace's raw "[Errno 21] tmp -> path"
            raise FileSystemError(_A_FOLDER_THERE.format(path)) from None
        refused = _refused(exc, path, folder)
        if refused is not None:
            raise refused from None
        raise
    return path


def _refused(exc: BaseException, path: Path, folder: Path) -> Exception | None:
    """The one-line error of a write of ``path`` (its temporary in ``folder``) that the file
    system refused (FileSystemError) or whose folder is gone (FolderGoneError, a
    FileNotFoundError); None for other failures."""
    what, tail = f"cannot write {path}", " (nothing was written)"
    return (refusal(exc, what, tail) or folder_removed(exc, folder / path.name, what, tail)
            or folder_removed(exc, path, what, tail))


_A_FOLDER_THERE = "cannot write {}: a folder is in its place; move it away (nothing was written)"


def _put_in_place(tmp: str, path: Path, replace: bool, suffix: str) -> None:
    """Move the complete temp file ``tmp`` to ``path`` (replacing what is there, or with
    ``replace`` False only where nothing is: :func:`_link_new`). A ``tmp`` on another file
    system than ``path`` (a scratch folder that is a mount point of its own: a slide job's
    work folder mounted on a local disk) cannot be renamed there (EXDEV, which ended the job
    in a traceback once its output was complete): it is copied to a temp file beside
    ``path`` first, which is then moved."""
    try:
        _put(tmp, path, replace)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, near = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=temp_suffix(suffix),
                                dir=path.parent)
    os.close(fd)
    try:
        shutil.copyfile(tmp, near)
        shutil.copymode(tmp, near)
        _sync(near)
        _put(near, path, replace)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(near)
    os.unlink(tmp)


def _put(tmp: str, path: Path, replace: bool) -> None:
    if replace:
        os.replace(tmp, path)
    else:
        _link_new(tmp, path)


def _sync(path: str | os.PathLike, *, required: bool = True) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk. A file is flushed before
    it is renamed into place: renamed first, a power cut could leave its name on a file of
    no bytes, and a network file system (NFS, SMB) may report a full disk or quota only
    here, past every write. A file system that cannot flush (some FUSE mounts) says EINVAL;
    a folder that cannot is passed over (``required`` False)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if required:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if required and exc.errno not in (errno.EINVAL, errno.EROFS, *UNSUPPORTED):
            raise
    finally:
        os.close(fd)


def _link_new(tmp: str, path: Path) -> None:
    """Put ``tmp`` at ``path`` unless a file is there (FileExistsError): a hard link, which
    fails where a file is, in one step; where the file system has no hard links, a check
    then a rename (a short window)."""
    taken = f"{path} exists (written by another process meanwhile); pass --overwrite to " \
            "replace it"
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(taken) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, *UNSUPPORTED):
            raise
        if os.path.lexists(path):
            raise FileExistsError(taken) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview, *,
                       mode: int | None = None, tmp_dir: str | os.PathLike | None = None,
                       replace: bool = True) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return write_atomic(path, write, mode=mode, tmp_dir=tmp_dir, replace=replace)


def write_bytes_at(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600,
                   where: str | os.PathLike = "") -> None:
    """Write ``data`` atomically as ``name`` in the folder open as ``dir_fd`` (a temp file
    there, created exclusively and never through a link, then renamed), whatever that folder's
    name is now. ``where`` names the folder in error messages.

    Raises:
        FileSystemError: the file system refuses the write (full: :class:`DiskFullError`;
            read-only, not permitted, a name too long); the temp file is removed.
    """
    import secrets

    tmp = f"{temp_prefix(name)}{secrets.token_hex(6)}{temp_suffix('.tmp')}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        refused = refusal(exc, f"cannot write {Path(where) / name}", " (nothing was written)")
        if refused is not None:
            raise refused from None
        raise


def write_dir_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a new empty folder beside ``path``, then put it in ``path``'s
    place: an existing folder at ``path`` is exchanged with it in one step (Linux
    ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, the old folder moved aside first)
    and removed afterwards. If ``write`` fails or the process is killed, ``path`` is as it was
    and the temporary folder (``.NAME.*.tmpdir``) is removed now, or by
    :func:`remove_stale_temps` on the next run. Returns ``path``.

    Raises:
        FileSystemError: the disk (or quota) is full, or ``path`` exists and is not a folder.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileSystemError(f"cannot write the folder {path}: it exists and is not a folder")
    try:
        tmp = mkdtemp_beside(path)
    except OSError as exc:
        raise (refusal(exc, f"cannot write {path}", " (nothing was replaced)") or exc) from None
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~umask())
        for name in sorted(os.listdir(tmp)):  # as write_atomic's one file (a series is flat)
            if os.path.isfile(tmp / name):
                _sync(tmp / name)
        _sync(tmp, required=False)
        if path.exists():
            _exchange(tmp, path)  # tmp now holds the old folder
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, path)
        _sync(path.parent, required=False)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        refused = refusal(exc, f"cannot write {path}", " (nothing was replaced)")
        if refused is not None:
            raise refused from None
        raise
    return path


def _exchange(a: Path, b: Path) -> None:
    """Swap the names of two entries of one folder: atomically where the system can; else
    ``b`` is moved aside (into a ``.tmpdir`` folder) for the moment ``a`` takes its name."""
    if _renameat2_exchange(a, b):
        return
    aside = mkdtemp_beside(b)
    os.rename(b, aside / "old")
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(aside / "old", b)
        aside.rmdir()
        raise
    os.rename(aside / "old", a)
    aside.rmdir()


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE); False where the C library or file system lacks it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` would race with threads):
    Linux's ``/proc``, else (macOS, older Linux) the permissions of a file made for it."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:  # its Umask line: Linux 4.7 and later
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return _umask_of_a_new_file()


def _umask_of_a_new_file() -> int:
    """The umask as the system applies it: the bits it cleared from a new file made with
    mode 0777 (an empty file of the temporary folder, removed at once; 35 us); 022 where none
    can be made. Where 022 was assumed, a umask of 077 gave world-readable outputs (0644)
    and a lab group's 002 outputs its members could not replace."""
    probe = os.path.join(tempfile.gettempdir(), f".iste-umask-{os.urandom(8).hex()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o777)
    except OSError:
        return 0o022
    try:
        return 0o777 & ~stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
