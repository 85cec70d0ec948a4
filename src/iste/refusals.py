"""The file system's refusals as one-line errors: a full disk or quota, a file too large for
the file system, a read-only one, no permission, a name too long (:func:`refusal`), told
apart from faults of the program (:func:`is_refusal`)."""

from __future__ import annotations

import errno
import os

__all__ = ["FileSystemError", "DiskFullError", "FileTooLargeError", "is_refusal", "refusal",
           "FolderGoneError", "folder_removed", "UNSUPPORTED"]


_FULL = (errno.ENOSPC, errno.EDQUOT)
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG)
# "not supported by this file system": one number on Linux, two on macOS, whose kernel
# answers ENOTSUP (45) for what a file system lacks (hard links on exFAT, locks on NFS
# mounted nolocks) and keeps EOPNOTSUPP (102) for sockets
UNSUPPORTED = tuple({errno.EOPNOTSUPP, errno.ENOTSUP})


class FileSystemError(ValueError):
    """The file system refuses a write or a folder (full disk, a file where a folder is
    expected, output == input): a user-facing one-line error."""


class DiskFullError(FileSystemError):
    """A write failed for want of space (disk full, quota)."""


class FileTooLargeError(FileSystemError):
    """A file grew past the largest this file system holds (4 GB on FAT32) or the process's
    file size limit (``ulimit -f``): freeing space does not help, other items may still fit."""


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the file system refusing a write or a name (full, read-only, not
    permitted, a name too long): the environment, not a fault of the program."""
    return isinstance(exc, OSError) and exc.errno in (*_FULL, errno.EFBIG, *_REFUSED)


def refusal(exc: BaseException, what: str, tail: str = "") -> FileSystemError | None:
    """The one-line error for a write the file system refused (:func:`is_refusal`), or None
    for any other failure."""
    if not is_refusal(exc):
        return None
    if exc.errno == errno.EFBIG:  # strerror's "file too large" alone read as a full disk
        return FileTooLargeError(f"{what}: file too large for this file system (FAT32 holds "
                                 f"at most 4 GB a file) or the file size limit (ulimit -f)"
                                 f"{tail}")
    kind = DiskFullError if exc.errno in _FULL else FileSystemError
    return kind(f"{what}: {os.strerror(exc.errno).lower()}{tail}")


class FolderGoneError(FileNotFoundError):
    """A file cannot be written because its folder does not exist (removed while the command
    ran): a FileNotFoundError, as writing into a missing folder has always raised, whose text
    is one line naming the file and the folder (:func:`folder_removed`)."""

    def __str__(self) -> str:
        return str(self.strerror)


def folder_removed(exc: BaseException, path: str | os.PathLike, what: str,
                   tail: str = "") -> FolderGoneError | None:
    """The error for a write of ``path`` that failed because its folder is gone (removed
    while the command ran: a cleanup of runs/ or of a scratch disk under a running job), or
    None where ``exc`` is not that. ``os.open`` says only '[Errno 2] No such file or
    directory' and names the file (or the temporary) being written, which reads as if a file
    to be read were missing."""
    folder = os.path.dirname(os.fspath(path)) or "."
    if not isinstance(exc, FileNotFoundError) or os.path.isdir(folder):
        return None
    return FolderGoneError(errno.ENOENT, f"{what}: its folder {folder} does not exist (removed "
                                         f"while the command ran?){tail}", os.fspath(path))
