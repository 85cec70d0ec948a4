"""Locks on folders shared by processes: one writer of a folder at a time
(:func:`folder_lock`), files that belong together written one set after another
(:func:`writing_together`), and file systems that keep no locks said once
(:func:`try_lock`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import warnings

from iste.paths import ensure_dir, folders_made_undone
from iste.refusals import UNSUPPORTED, FileSystemError, refusal
from iste.text import message_line

__all__ = ["FolderBusyError", "folder_lock", "writing_together", "try_lock"]


class FolderBusyError(FileSystemError):
    """Another process holds the folder's lock (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, busy: str, *, held: bool = True,
                error: type[Exception] = FolderBusyError, what: str = "folder",
                remove: bool = False):
    """An exclusive lock on ``folder`` (its ``.lock`` file, made with the folder) while one
    process writes into it; a second is refused at once with ``error(busy)``. ``held``: False
    for a process that does not write (a rank other than 0): nothing is locked. The kernel
    releases the lock when the process ends, however it ends, so none is ever left stale.
    When the block fails having written nothing there, the folders the lock made go again
    (a run refused for its data left an ``--out`` holding only ``.lock``). ``what``: the
    folder's name in the error when it cannot be made ("run folder"). ``remove``: the lock
    file goes when the block ends, however it ends (a folder of files a user publishes as
    they are, figures: a ``.lock`` among them would be copied along); one a killed process
    left is taken over by the next."""
    if not held:
        yield
        return
    with folders_made_undone(folder) as made:
        while True:
            path = ensure_dir(folder, what=what)
            try:
                # the umask's mode, as the folder's other files: 0600 kept a lab group's member
                # from resuming a run the umask had left group-writable (O_RDWR: NFS locks
                # exclusively only a file open for writing)
                fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except FileNotFoundError:  # a failed run undid the folder since ensure_dir: anew
                continue
            except OSError as exc:
                if isinstance(exc, PermissionError) and os.path.lexists(path / ".lock"):
                    raise FileSystemError(
                        f"{what} {path}: its lock file .lock cannot be opened for writing "
                        "(permission denied): another user's run made it; they can allow it "
                        "(chmod g+w) or remove it") from None
                # no .lock there: the folder itself takes no new file (another user's, a
                # read-only mount), which was blamed on another user's lock
                raise refusal(exc, f"cannot write {what} {path}") or exc from None
            if not try_lock(fd):
                os.close(fd)
                raise error(busy)
            if os.fstat(fd).st_nlink:
                break
            os.close(fd)  # a failed run undid the folder under us (below): lock it anew
        failed = True
        try:
            yield
            failed = False
        finally:
            # unlinked while still held, so that folders_made_undone can remove the folders:
            # a process that opened it meanwhile finds it unlinked once it has the lock
            with contextlib.suppress(OSError):  # the folder gone too: the block's error stands
                if remove or (failed and made and [e.name for e in os.scandir(path)]
                              == [".lock"]):
                    (path / ".lock").unlink()
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def writing_together(folder: str | os.PathLike):
    """Hold ``folder`` (``flock`` on the folder itself, waiting for another holder) while
    files that belong together are written into it (an image and its provenance): two
    processes replacing the same outputs then write them one pair after the other, never one
    job's image beside the other's provenance. Where the file system locks no folders (some
    network mounts), or the folder cannot be opened to be locked (a drop folder one may write
    into but not list, mode -wx: its outputs failed with '[Errno 13] Permission denied'),
    nothing is held."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, *UNSUPPORTED)  # flock unsupported
_warned_no_locks: set[int] = set()  # the file systems (st_dev) said to keep no locks


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """``flock`` the open file ``fd`` without waiting (exclusive, or ``shared``): True when
    taken (closing ``fd`` releases it), False when another process holds it. On a file
    system that keeps no locks (NFS mounted ``nolock`` or without its lock daemon: ENOLCK;
    some FUSE and SMB mounts) True as well, with a warning, once per file system, that a
    second process there goes unnoticed: its jobs ended in 'no locks available' with advice
    to remove the folder and rerun, which failed the same way. Writes stay atomic there.

    Raises:
        OSError: any other failure of ``flock``.
    """
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno not in _NO_LOCKS:
            raise
        device = os.fstat(fd).st_dev
        if device not in _warned_no_locks:
            _warned_no_locks.add(device)
            warnings.warn(f"the file system of {_fd_folder(fd)} keeps no file locks "
                          f"({os.strerror(exc.errno).lower()}): another process working on "
                          "the same files there is not noticed", stacklevel=2)
        return True


def _fd_folder(fd: int) -> str:
    """The folder of the open file ``fd`` as the kernel names it (Linux), else ``fd N``."""
    try:
        return message_line(os.path.dirname(os.readlink(f"/proc/self/fd/{fd}")))
    except OSError:
        return f"fd {fd}"
