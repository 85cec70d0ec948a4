"""Paths checked before any work: whether an output can be written where it is asked for
(its name fits, its folder can be made and written, no device or folder in its place, not
one of the inputs nor another output), and whether two paths are the same file."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from iste.refusals import FileSystemError, refusal
from iste.temps import temp_prefix, temp_suffix

__all__ = ["check_name_fits", "check_writable", "check_not_special", "check_distinct_outputs",
           "check_output_file", "check_not_input", "same_file", "occupied", "link_note",
           "file_key", "ensure_dir", "folders_made_undone"]


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
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=temp_suffix(".tmp"),
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
    try:
        folder = path.is_dir()
    except OSError as exc:  # a name too long: pathlib's is_dir raises that one, a traceback
        raise (refusal(exc, f"{what} {path}") or exc) from None
    if folder:
        raise FileSystemError(f"{what} {path} is a folder; give a file name")
    ensure_dir(path.parent, what=f"{what} folder")
    check_writable(path, replaced=replaced)
    return path


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
        # os.path.isdir: False for a name too long, where Path.is_dir raised (a bare 'File
        # name too long' before the output's own check could say which name, and why)
        if os.path.isdir(output) and Path(os.path.realpath(output)) in Path(
                os.path.realpath(inp)).parents:
            raise FileSystemError(f"{what} folder {output} holds the input {inp}: replacing "
                                  "it would delete the source; choose another output")
        if os.path.isdir(inp) and Path(os.path.realpath(inp)) in Path(
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
    # lexists: Path.exists raised on a name too long (a traceback-like 'File name too long'
    # before the command's own check could name it), and a link is not a folder made here
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # deepest first
    try:
        yield missing
    except BaseException:
        for folder in missing:
            with contextlib.suppress(OSError):  # not empty, or not made after all
                folder.rmdir()
        raise
