"""Files at the edges of the package: atomic writes, path identity, folders, leftovers.

Atomic writes: a temporary file next to the target (or in a given scratch folder on the same
file system), moved into place when complete. A reader never sees a half-written file, and a
failed or interrupted write leaves the target as it was (the temporary file is removed). The
result gets the permissions a normally created file would have (``0666 & ~umask``;
``mkstemp`` alone makes 0600), or ``mode`` when given (0600 for private files such as caches).
A full disk is reported as :class:`FileSystemError` (one line). Folders (a DICOM series) are
written the same way (:func:`write_dir_atomic`): a temporary folder beside the target,
exchanged with the old folder only when complete.

Temporaries are named ``.NAME.<random>.<pid>-<start>-<host>.tmp`` (``.partial``, ``.tmpdir``):
the writing process (its id and start time) and the system it runs on (:func:`_writer_tag`).
A process killed outright (``kill -9``, a crash) cannot remove its temporary; a later write
of the same target removes it (:func:`remove_stale_temps`) once the name proves the writer
gone: written on this system, and its process no longer runs (or the id is another process's
now). This holds on a shared or network folder as it does on a local one: a temporary written
on another machine is never taken for abandoned, nor one whose writer still runs, and the
test needs no file lock (locks on network folders may be missing, local to each machine, or
released when the server restarts). A temporary from another machine is left to a later write
there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import stat
import socket
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

__all__ = ["FileSystemError", "DiskFullError", "FileTooLargeError", "write_atomic",
           "write_bytes_atomic", "umask", "same_file", "file_key", "occupied", "link_note",
           "check_not_input", "ensure_dir", "folders_made_undone", "remove_stale_temps",
           "write_dir_atomic", "write_bytes_at", "try_lock", "writing_together",
           "check_writable", "check_not_special", "refusal", "check_output_file",
           "check_distinct_outputs", "is_refusal", "temp_dir_beside", "sha256_file",
           "temp_writer", "move_aside", "shown", "one_line", "message_line", "xml_text",
           "ascii_text"]

_FULL = (errno.ENOSPC, errno.EDQUOT)
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG)
# "not supported by this file system": one number on Linux, two on macOS, whose kernel
# answers ENOTSUP (45) for what a file system lacks (hard links on exFAT, locks on NFS
# mounted nolocks) and keeps EOPNOTSUPP (102) for sockets
_UNSUPPORTED = tuple({errno.EOPNOTSUPP, errno.ENOTSUP})
_TEMP_NAME_BYTES = 200  # of a target's name in its temporaries' (file names end at 255 bytes)


def shown(text: str) -> str:
    """``text`` as it can be written anywhere (a terminal, a UTF-8 file, a figure, an XML
    field): the bytes of a file name that were not UTF-8, which Python keeps as lone
    surrogates, as ``\\xNN`` escapes (``caf\\xe9.svs``). Written as they were, they raised
    UnicodeEncodeError (a log file lost the line, with a traceback on stderr) or showed as
    ``\\udce9``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (JSON's "\\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


# control characters (C0, DEL, C1) as Python writes them in a string's repr
_CONTROL = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160))}


def one_line(text: str) -> str:
    """``text`` with its control characters as Python escapes (``a\\nb.svs``, ``\\x01``):
    a file name's line break read as the start of another message or field, and XML 1.0 (an
    OME-XML Description, XMP) cannot hold the others at all."""
    return text.translate(_CONTROL)


def message_line(text: str) -> str:
    """``text`` as one line that can be written anywhere: :func:`shown`, then
    :func:`one_line` (a message, a log record, a recorded file name)."""
    return one_line(shown(text))


def ascii_text(text: str) -> str:
    """``text`` as a TIFF string (ImageDescription) and DICOM's default character set hold it
    whole: 7-bit ASCII, other characters as Python escapes (a source named Präparat.svs as
    ``Pr\\xe4parat.svs``: tifffile refused the page, after every tile was made), control
    characters too (:func:`one_line`: a NUL ends a TIFF string, and OpenSlide read the text
    up to it)."""
    return one_line(text).encode("ascii", "backslashreplace").decode("ascii")


# what else XML 1.0 cannot hold: the two non-characters (lone surrogates: :func:`shown`)
_NOT_XML = {**_CONTROL, 0xFFFE: "\\ufffe", 0xFFFF: "\\uffff"}


def xml_text(text: str) -> str:
    """``text`` as any XML 1.0 document holds it (an OME-XML Description, an XMP field):
    control characters, lone surrogates and U+FFFE / U+FFFF as Python escapes
    (:func:`one_line`, :func:`shown`). Written raw, ``\\x01`` or ``\\x1b`` made the
    whole document no XML: Bio-Formats read the OME layout without its metadata."""
    return shown(text).translate(_NOT_XML)


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


def _temp_prefix(name: str) -> str:
    """``.NAME.``, the prefix of a temporary beside ``NAME`` (:func:`remove_stale_temps`
    finds them by it), with a long name cut so that the temporary's name still fits."""
    raw = os.fsencode(name)
    return f".{os.fsdecode(raw[:_TEMP_NAME_BYTES]) if len(raw) > _TEMP_NAME_BYTES else name}."


def _temp_suffix(suffix: str) -> str:
    """``.<writer tag><suffix>``: the end of this process's temporaries' names."""
    return f".{_writer_tag()}{suffix}"


_TAG_TEXT = r"\.(\d+)-(\d+)-([0-9a-f]{8})"  # what _temp_suffix writes before the suffix
_TAG = re.compile(_TAG_TEXT + "$")
# what follows a target's prefix in its temporary's name (before the suffix): the random part
# (no dot, so ".a.png.<random>..." is not "a.png.b.png"'s temporary), then the tag if any
_TEMP_MIDDLE = re.compile(rf"[^.]+(?:{_TAG_TEXT})?")


def _writer_tag() -> str:
    """``<pid>-<start>-<host>``: this process's id, its start time (clock ticks after boot;
    0 where unknown) and :func:`_host_id`. Read once per process (``/proc``: 7 us a
    temporary); keyed by the id, read each time: a forked child writes under its own."""
    global _WRITER_TAG
    pid = os.getpid()
    known = _WRITER_TAG
    if known is None or known[0] != pid:
        known = _WRITER_TAG = pid, f"{pid}-{_start_time(pid) or 0}-{_host_id()}"
    return known[1]


_WRITER_TAG: tuple[int, str] | None = None  # (pid, its tag): a child's pid differs


@functools.lru_cache(maxsize=None)
def _host_id() -> str:
    """8 hex digits naming the process ids this process can see: the host name, the
    machine id and the pid namespace (containers on one host share its name but see other
    processes; two machines sharing a folder differ by name)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/etc/machine-id").read_text().strip(),
                 lambda: str(os.stat("/proc/self/ns/pid").st_ino)):
        try:
            parts.append(read())
        except (OSError, ValueError):
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot (Linux ``/proc``), 0 where
    the system does not say, None when no such process runs (or it is a zombie: killed,
    not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else _alive_by_signal(pid)
    except (OSError, IndexError):
        return _alive_by_signal(pid)
    if fields[0] in (b"Z", b"X"):  # state: dead, not yet reaped by its parent
        return None
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


def _alive_by_signal(pid: int) -> int | None:
    """0 when process ``pid`` exists (another user's too), None when it does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass  # EPERM: it runs, under another user
    return 0


def _writer_state(name: str, suffix: str) -> str | None:
    """What became of the process that wrote the temporary ``name`` (ending in ``suffix``):
    "gone" when it ran on this system and no longer runs (its id is free, or another
    process's: a start time that differs), "alive", "elsewhere" (another system: unknown),
    or None for a name without a writer tag (an older iste's)."""
    found = _TAG.search(name[:-len(suffix)])
    if found is None:
        return None
    pid, start, host = int(found[1]), int(found[2]), found[3]
    if host != _host_id():
        return "elsewhere"
    now = _start_time(pid)
    return "gone" if now is None or (start and now and now != start) else "alive"


def check_name_fits(path: Path, what: str) -> None:
    """FileSystemError ``what: its name is longer than the N bytes the file system allows``
    when ``path``'s name exceeds its folder's name limit (255 bytes where unknown)."""
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    if len(os.fsencode(path.name)) > limit:
        raise FileSystemError(f"{what}: its name is longer than the {limit} bytes the file "
                              "system allows")


def check_writable(path: str | os.PathLike, *, replaced: bool = True) -> None:
    """FileSystemError, before any work, when a file ``path`` in an existing folder could not
    be written: a read-only or full file system, no permission, a name too long, or, when
    the file is ``replaced`` by a rename (:func:`write_atomic`), a device, pipe or socket in
    its place (:func:`check_not_special`; a log appended to may be one). Makes and removes an
    empty temporary beside it."""
    path = Path(path)
    check_name_fits(path, f"cannot write {path}")
    if replaced:
        check_not_special(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=_temp_suffix(".tmp"),
                                   dir=path.parent)
    except OSError as exc:
        raise (refusal(exc, f"cannot write {path}") or exc) from None
    os.close(fd)
    os.unlink(tmp)


def check_not_special(path: str | os.PathLike) -> None:
    """FileSystemError when ``path`` (its links followed) is a device, a pipe or a socket: an
    atomic write would rename a file over that name (``/dev/null`` replaced by a file, for
    root), and writing into it is not what a file output means."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else None)
    if kind is not None:
        raise FileSystemError(f"cannot write {path}: it is {kind}, not a file; give a file "
                              "name (nothing was written)")


def check_distinct_outputs(outputs: dict[str, str | os.PathLike | None]) -> None:
    """FileSystemError, before any work, where two of a command's outputs (option -> path;
    None: not given) name the same file: the one written last would replace the other."""
    given = [(what, path) for what, path in outputs.items() if path is not None]
    for k, (what, path) in enumerate(given):
        for other, other_path in given[k + 1:]:
            if same_file(path, other_path):
                raise FileSystemError(f"{what} and {other} are the same file ({path}): the "
                                      "one written last would replace the other; give each "
                                      "its own")


def check_output_file(path: str | os.PathLike, what: str, *, replaced: bool = True) -> Path:
    """FileSystemError, before any work, unless a file can be written at ``path`` (its
    folders are made): a folder there, or :func:`check_writable`'s refusals (``replaced``
    as there). ``what`` names it in the message (an option such as ``--json``)."""
    path = Path(path)
    if path.is_dir():
        raise FileSystemError(f"{what} {path} is a folder; give a file name")
    ensure_dir(path.parent, what=f"{what} folder")
    check_writable(path, replaced=replaced)
    return path


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
    folder = path.parent if tmp_dir is None else Path(tmp_dir)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=_temp_suffix(suffix),
                                   dir=folder)
    except NotADirectoryError:
        raise FileSystemError(f"cannot write {path}: {folder} is not a folder") from None
    except OSError as exc:
        raise (refusal(exc, f"cannot write {path}", " (nothing was written)") or exc) from None
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
        refused = refusal(exc, f"cannot write {path}", " (nothing was written)")
        if refused is not None:
            raise refused from None
        raise
    return path


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
    fd, near = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=_temp_suffix(suffix),
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
        if required and exc.errno not in (errno.EINVAL, errno.EROFS, *_UNSUPPORTED):
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
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, *_UNSUPPORTED):
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

    tmp = f"{_temp_prefix(name)}{secrets.token_hex(6)}{_temp_suffix('.tmp')}"
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
        tmp = _mkdtemp_beside(path)
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


def _mkdtemp_beside(path: Path) -> Path:
    """A new empty folder ``.NAME.<random>.<writer tag>.tmpdir`` beside ``path``: on its file
    system, and found by :func:`remove_stale_temps` if the process is killed."""
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=_temp_suffix(".tmpdir"),
                                 dir=path.parent))


def move_aside(path: str | os.PathLike) -> Path:
    """Rename the folder ``path`` to a temporary name beside it (``.NAME.<random>.<writer
    tag>.tmpdir``, in one step) and return that name: a folder being deleted there is gone
    from ``path`` at once, and what a process killed during the deletion leaves is removed by
    :func:`remove_stale_temps` (``path``) once the name proves the process gone.

    Raises:
        OSError: the rename is refused (``path`` gone, its folder not writable...).
    """
    import secrets

    path = Path(path)
    aside = path.with_name(f"{_temp_prefix(path.name)}{secrets.token_hex(6)}"
                           f"{_temp_suffix('.tmpdir')}")
    os.rename(path, aside)
    return aside


@contextlib.contextmanager
def temp_dir_beside(path: str | os.PathLike):
    """A new empty scratch folder beside ``path`` (``.NAME.*.tmpdir``: on its file system,
    and found by :func:`remove_stale_temps` if the process is killed), removed with what it
    holds when the block ends."""
    path = Path(path)
    try:
        tmp = _mkdtemp_beside(path)
    except OSError as exc:
        raise (refusal(exc, f"cannot write {path}", " (nothing was written)") or exc) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap the names of two entries of one folder: atomically where the system can; else
    ``b`` is moved aside (into a ``.tmpdir`` folder) for the moment ``a`` takes its name."""
    if _renameat2_exchange(a, b):
        return
    aside = _mkdtemp_beside(b)
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder: the same inode when both exist (hard
    links, symlinks, other spellings), else the same fully resolved path (a link loop
    resolved as far as it goes: Path.resolve raised RuntimeError on one, a traceback)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def occupied(path: str | os.PathLike) -> bool:
    """Whether something is at ``path`` that a write there replaces: a file, a folder or a
    link, one to nothing too. ``Path.exists`` follows a link and takes a dangling one for a
    free name: an output named by one was found taken only by the last step of its write,
    after all the work ('exists (written by another process meanwhile)'), or the link was
    replaced without --overwrite."""
    return os.path.lexists(path)


def link_note(path: str | os.PathLike) -> str:
    """What follows 'no such file' for a ``path`` that cannot be opened: where a link is
    there (``ls`` lists it), where it leads, `` (it is a link to T, which does not exist)``
    (a slide linked from storage no longer mounted) or `` (it is a link in a loop)``; else
    nothing. Said as 'no such file' alone, the user looked at a name that was there."""
    link = _broken_link(path)
    return "" if link is None else f" (it is {link})"


def _broken_link(path: str | os.PathLike) -> str | None:
    """``a link to T, which does not exist`` or ``a link in a loop, to T`` where ``path`` is
    a link that leads to nothing; else None."""
    try:
        target = os.readlink(path)
    except (OSError, ValueError):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a link in a loop, to {target}"
        return f"a link to {target}, which does not exist"
    return None  # a link made meanwhile, to something


def file_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file (following symlinks), else None: equal keys are the
    same file, whatever the spelling of the paths."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_input(output: str | os.PathLike, inputs, *, what: str = "output") -> None:
    """Refuse an output that is one of the inputs, a folder holding one (it would be
    overwritten or replaced), or a path inside an input that is a folder (a DICOM slide's:
    its files would mix with the output).

    Raises:
        FileSystemError: naming both paths.
    """
    for inp in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs):
        if same_file(output, inp):
            raise FileSystemError(f"{what} {output} is the input {inp}: refusing to overwrite "
                                  "the source; choose another output")
        if Path(output).is_dir() and Path(os.path.realpath(output)) in Path(
                os.path.realpath(inp)).parents:
            raise FileSystemError(f"{what} folder {output} holds the input {inp}: replacing "
                                  "it would delete the source; choose another output")
        if Path(inp).is_dir() and Path(os.path.realpath(inp)) in Path(
                os.path.realpath(output)).parents:  # a DICOM slide's folder
            raise FileSystemError(f"{what} {output} is inside the input {inp}: it would mix "
                                  "with the source's files; choose another output")


def ensure_dir(path: str | os.PathLike, *, what: str = "folder") -> Path:
    """Create folder ``path`` (and its parents) unless it exists.

    Raises:
        FileSystemError: ``path`` or one of its parents is a file, or the disk is full.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # a link to nothing blocks too (mkdir does not follow it): named as such, it was
        # 'runs/a: runs/a is a file, not a folder' while no file was there
        blocker = next((p for p in (path, *path.parents) if os.path.lexists(p)
                        and not p.is_dir()), path)
        link = _broken_link(blocker)
        raise FileSystemError(f"{what} {path}: {blocker} is " + (
            "a file, not a folder" if link is None else f"{link}: no folder can be made there")
        ) from None
    except OSError as exc:
        raise (refusal(exc, f"{what} {path}: cannot create it") or exc) from None
    return path


@contextlib.contextmanager
def folders_made_undone(path: str | os.PathLike):
    """The folders of ``path`` (and ``path``) that do not exist yet and that the block creates
    are removed again, where still empty, when the block raises: a failed job leaves no empty
    output folders behind (a folder another process filled meanwhile is kept). Yields those
    folders (deepest first; empty when ``path`` exists)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield missing
    except BaseException:
        for folder in missing:
            with contextlib.suppress(OSError):  # not empty, or not made after all
                folder.rmdir()
        raise


def temp_writer(name: str) -> str | None:
    """What became of the process that wrote the temporary named ``name`` (a file or folder
    name this module's writes make: ``...<tag>.tmp``, ``.partial``, ``.tmpdir``): "gone"
    (it ran on this system and no longer runs: the temporary is abandoned), "alive",
    "elsewhere" (another system: unknown), or None for a name without a writer tag (an older
    iste's). For callers that find temporaries by their own listing (the viewer's tile
    cache); :func:`remove_stale_temps` applies the same test beside a target."""
    suffix = next((s for s in _TEMP_SUFFIXES if name.endswith(s)), None)
    return None if suffix is None else _writer_state(name, suffix)


_TEMP_SUFFIXES = (".tmp", ".partial", ".tmpdir")


def remove_stale_temps(path: str | os.PathLike, *, locked: bool = False) -> list[Path]:
    """Remove the temporaries :func:`write_atomic` and :func:`write_dir_atomic` left beside
    ``path`` when a process writing it was killed (``.NAME.*.tmp`` / ``.partial`` files,
    ``.NAME.*.tmpdir`` folders; this user's only, never through a link): those whose writer
    is provably gone (the module's docstring), never a live writer's. ``locked``: the caller
    holds a lock every writer of ``path`` holds (a job's work folder), so the temporaries of
    an older iste and of another machine are abandoned too. Returns what was removed; what
    cannot be (a folder that may be written but not listed) is left, never an error."""
    path = Path(path)
    prefix = _temp_prefix(path.name)
    removed = []
    try:  # names only, filtered by their prefix first: this runs before each image's write
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except OSError:  # no such folder, or one that may be written but not listed (mode -wx)
        return removed
    for name in names:
        suffix = next((s for s in _TEMP_SUFFIXES if name.endswith(s)), None)
        if suffix is None or not _TEMP_MIDDLE.fullmatch(name[len(prefix):-len(suffix)]):
            continue
        state = _writer_state(name, suffix)
        if not (state == "gone" or (locked and state != "alive")):
            continue
        kind = stat.S_ISDIR if suffix == ".tmpdir" else stat.S_ISREG
        p = path.parent / name
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: kept
            st = p.lstat()
            if kind(st.st_mode) and st.st_uid == os.geteuid():  # ours, not a link
                shutil.rmtree(p) if kind is stat.S_ISDIR else p.unlink()
                removed.append(p)
    return removed


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


class FolderBusyError(FileSystemError):
    """Another process holds the folder's lock (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, busy: str, *, held: bool = True,
                error: type[Exception] = FolderBusyError, what: str = "folder"):
    """An exclusive lock on ``folder`` (its ``.lock`` file, made with the folder) while one
    process writes into it; a second is refused at once with ``error(busy)``. ``held``: False
    for a process that does not write (a rank other than 0): nothing is locked. The kernel
    releases the lock when the process ends, however it ends, so none is ever left stale.
    When the block fails having written nothing there, the folders the lock made go again
    (a run refused for its data left an ``--out`` holding only ``.lock``). ``what``: the
    folder's name in the error when it cannot be made ("run folder")."""
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
            except PermissionError:
                raise FileSystemError(
                    f"{what} {path}: its lock file .lock cannot be opened for writing "
                    "(permission denied): another user's run made it; they can allow it "
                    "(chmod g+w) or remove it") from None
            if not try_lock(fd):
                os.close(fd)
                raise error(busy)
            if os.fstat(fd).st_nlink:
                break
            os.close(fd)  # a failed run undid the folder under us (below): lock it anew
        try:
            yield
        except BaseException:
            # unlinked while still held, so that folders_made_undone can remove the folders:
            # a process that opened it meanwhile finds it unlinked once it has the lock
            with contextlib.suppress(OSError):  # the folder gone too: the block's error stands
                if made and [e.name for e in os.scandir(path)] == [".lock"]:
                    (path / ".lock").unlink()
            raise
        finally:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def writing_together(folder: str | os.PathLike):
    """Hold ``folder`` (``flock`` on the folder itself, waiting for another holder) while
    files that belong together are written into it (an image and its provenance): two
    processes replacing the same outputs then write them one pair after the other, never one
    job's image beside the other's provenance. Where the file system locks no folders (some
    network mounts), nothing is held."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, *_UNSUPPORTED)  # flock unsupported
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
