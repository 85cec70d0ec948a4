"""Temporaries beside a target: named after their writer, and removed once it is gone.

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
import functools
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from iste.refusals import refusal
from iste.text import cut_to_bytes

__all__ = ["temp_prefix", "temp_suffix", "temp_writer", "is_temp_name", "remove_stale_temps",
           "mkdtemp_beside", "move_aside", "temp_dir_beside"]


_TEMP_NAME_BYTES = 200  # of a target's name in its temporaries' (file names end at 255 bytes)


def temp_prefix(name: str) -> str:
    """``.NAME.``, the prefix of a temporary beside ``NAME`` (:func:`remove_stale_temps`
    finds them by it), with a long name cut so that the temporary's name still fits, at the
    end of a character (:func:`iste.text.cut_to_bytes`)."""
    return f".{cut_to_bytes(name, _TEMP_NAME_BYTES)}."


def temp_suffix(suffix: str) -> str:
    """``.<writer tag><suffix>``: the end of this process's temporaries' names."""
    return f".{_writer_tag()}{suffix}"


_TAG_TEXT = r"\.(\d+)-(\d+)-([0-9a-f]{8})"  # what temp_suffix writes before the suffix
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


def mkdtemp_beside(path: Path) -> Path:
    """A new empty folder ``.NAME.<random>.<writer tag>.tmpdir`` beside ``path``: on its file
    system, and found by :func:`remove_stale_temps` if the process is killed."""
    return Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=temp_suffix(".tmpdir"),
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
    aside = path.with_name(f"{temp_prefix(path.name)}{secrets.token_hex(6)}"
                           f"{temp_suffix('.tmpdir')}")
    os.rename(path, aside)
    return aside


@contextlib.contextmanager
def temp_dir_beside(path: str | os.PathLike):
    """A new empty scratch folder beside ``path`` (``.NAME.*.tmpdir``: on its file system,
    and found by :func:`remove_stale_temps` if the process is killed), removed with what it
    holds when the block ends."""
    path = Path(path)
    try:
        tmp = mkdtemp_beside(path)
    except OSError as exc:
        raise (refusal(exc, f"cannot write {path}", " (nothing was written)") or exc) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary's as this module's writes name them (``.NAME.….tmp``,
    ``.partial``, ``.tmpdir``): a file or folder another process is still writing, or one a
    killed write left. A listing of a folder's inputs passes over it: a DICOM series being
    written (``.NAME.….tmpdir``, :func:`iste.files.write_dir_atomic`) was listed as a slide,
    and its files read half-written."""
    return name.startswith(".") and name.endswith(_TEMP_SUFFIXES)


def remove_stale_temps(path: str | os.PathLike, *, locked: bool = False) -> list[Path]:
    """Remove the temporaries :func:`write_atomic` and :func:`write_dir_atomic` left beside
    ``path`` when a process writing it was killed (``.NAME.*.tmp`` / ``.partial`` files,
    ``.NAME.*.tmpdir`` folders; this user's only, never through a link): those whose writer
    is provably gone (the module's docstring), never a live writer's. ``locked``: the caller
    holds a lock every writer of ``path`` holds (a job's work folder), so the temporaries of
    an older iste and of another machine are abandoned too. Returns what was removed; what
    cannot be (a folder that may be written but not listed) is left, never an error."""
    path = Path(path)
    prefix = temp_prefix(path.name)
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
