"""Bounded least-recently-used tile caches: one in memory, one on disk.

Both are bounded in bytes and safe to use from several threads. The disk cache keeps its
recency in file modification times (touched on every hit), so it survives restarts; files are
written to a temporary name and renamed into place, so a crash never leaves a half-written
tile under a valid name. It is private to the user who runs the server: its folders are 0700
and its files 0600 (tiles show patient tissue), and a cache folder owned by someone else is
refused.

A disk tile is never served on trust: each file is sealed (a header with the sha256 of its
name and its bytes; the name itself is a digest of everything the tile depends on: model,
render options, slide, position). A file that does not verify (truncated, altered, copied under
another tile's name, or written by an older version) is removed and reported as a miss, so the
tile is rendered again. The seal detects damage and mix-ups, not a forger who can write the
user's private folder (and who could then also change the code that checks it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path

from iste.files import write_bytes_atomic
from iste.refusals import DiskFullError, refusal
from iste.temps import temp_writer
from iste.lru import SizedLRU

__all__ = ["MemoryCache", "DiskCache", "seal", "unseal"]

_NAME = re.compile(r"^[0-9a-f]{16,64}$")
_FOLDER = re.compile(r"^[0-9a-f]{2}\Z")  # what the cache's root holds: <name[:2]>/
_SUFFIX = ".tile"
_DIR_MODE, _FILE_MODE = 0o700, 0o600
_STALE_TMP_S = 600  # a temporary this old whose writer is unknown is a killed write
_RESCAN_SHARE = 16  # the folder is indexed again each time 1/16 of the budget was written
_MAGIC = b"iste-tile 1\n"
_HEADER = len(_MAGIC) + hashlib.sha256().digest_size

log = logging.getLogger("iste")


def _digest(name: str, data: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\0" + data).digest()


def seal(name: str, data: bytes) -> bytes:
    """The file content of the tile ``data`` stored as ``name``: header (magic + sha256 of
    name and data), then the data."""
    return _MAGIC + _digest(name, data) + data


def unseal(name: str, blob: bytes) -> bytes | None:
    """The tile in ``blob`` if it is a sealed tile of ``name``, else None."""
    if len(blob) < _HEADER or not blob.startswith(_MAGIC):
        return None
    data = blob[_HEADER:]
    return data if hmac.compare_digest(blob[len(_MAGIC):_HEADER], _digest(name, data)) else None


def _own_root(path: Path) -> None:
    """Refuse a cache root that holds anything but the cache's folders (``<name[:2]>/``) and
    dot files: a folder of the user's or shared (slides, a home, /tmp), which making the
    cache private would close to everyone else (mode 0700, the sticky bit gone).

    Raises:
        ValueError: one line naming the folder and an entry that is not the cache's.
    """
    def ours(entry: os.DirEntry) -> bool:  # or a file browser's (.DS_Store), a dot file
        return bool(_FOLDER.match(entry.name)) or (
            entry.name.startswith(".") and entry.is_file(follow_symlinks=False))

    # not there yet, a file, another user's: said by _private_dir
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
        with os.scandir(path) as entries:
            other = next((e.name for e in entries if not ours(e)), None)
        if other is not None:
            raise ValueError(f"tile cache {path} holds other things than tiles ({other!r}): "
                             "give --cache-dir a folder of its own (it is made private to "
                             "you: 0700)")


def _private_dir(path: Path) -> None:
    """Create ``path`` (parents as usual) as a folder only its owner can enter, or make an
    existing one so; refuse one that belongs to another user.

    Raises:
        DiskFullError: the disk (or quota) is full: no folder can be made there.
        ValueError: ``path`` is not a folder, cannot be created, or is not owned by this user.
    """
    try:
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"tile cache {path} is not a folder") from None
    except OSError as err:  # a read-only disk, a parent of another user's
        full = refusal(err, f"cannot create the tile cache {path}")
        if isinstance(full, DiskFullError):  # the server runs without it (serve.app)
            raise full from None
        raise ValueError(f"cannot create the tile cache {path} ({err.strerror}): choose "
                         "another --cache-dir, or --disk-cache-mb 0 for none") from None
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ValueError(f"tile cache {path} belongs to another user: choose another "
                         "--cache-dir")
    if st.st_mode & 0o777 != _DIR_MODE:
        _unless_read_only(path.chmod, _DIR_MODE)


def _unless_read_only(change, *args) -> None:
    """``change(*args)`` (a chmod, an unlink, a touch) of a file or folder of the cache,
    left undone where the cache lies on a read-only disk: its tiles are still served (and
    none is written there, so none is exposed or kept past the budget by it); a file that is
    gone already needs no change either."""
    try:
        change(*args)
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.EROFS:
            raise


class MemoryCache(SizedLRU):
    """An LRU map key -> bytes holding at most ``max_bytes`` of values
    (:class:`iste.lru.SizedLRU`; :meth:`put` stores no value larger than the whole cache:
    counted in ``refused``, said once in the log)."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, len, what="memory cache")

    def _refused(self, size: int, first: bool) -> None:
        if first and self.max_bytes > 0:  # 0 MB: no memory cache, as asked
            log.warning("tile cache: a tile of %.3g kB is larger than the whole memory cache "
                        "(--memory-cache-mb %.3g): tiles that large are rendered again each "
                        "time, not kept in memory; raise --memory-cache-mb", size / 1e3,
                        self.max_bytes / 2**20)


def _abandoned(name: str, age_s: float) -> bool:
    """Whether the temporary ``name`` (``age_s`` seconds since it was last written) is a
    killed write's, by the rule of :mod:`iste.temps`: its writer ran on this system and no
    longer runs (removed at once: a server killed mid-write, restarted); a live writer's
    never. One whose writer cannot be told (another machine on a shared cache folder, an
    older iste's name without a writer tag) after :data:`_STALE_TMP_S`: a tile is written in
    milliseconds, and temporaries count in no budget, so they are not left to pile up."""
    writer = temp_writer(name)
    if writer in ("gone", "alive"):
        return writer == "gone"
    return age_s > _STALE_TMP_S


class DiskCache:
    """Files ``root/<name[:2]>/<name>.tile`` holding at most ``max_bytes`` in total.

    ``name`` is a hex digest chosen by the caller (it must capture everything the tile
    depends on). Files left by an earlier run are adopted, oldest first in the LRU order, and
    verified when read (:func:`unseal`); ``rejected`` counts the files that did not verify.
    Sizes count whole files (header included).

    The budget is the folder's, whatever number of servers share it: each time a server has
    written 1/16 of the budget it indexes the folder again (every server's files, in the
    order of their modification times, which every server touches on a hit) and evicts the
    oldest, another server's too. N servers on one folder hold at most the budget plus
    N/16 of it between two scans (they held N times the budget, each counting only its own
    files). A scan of 10 000 tiles took 0.09-0.12 s (a shared 2-core machine), once per
    1/16 of the budget (625 tiles there), not per tile: ~0.2 ms a tile written. The folder is
    read without the lock (a network folder's scan may take seconds), so tiles are served
    from the cache meanwhile; one written or found in between that the scan missed is indexed
    again at the next scan.

    ``background``: the first index of the folder is made on a thread of its own (a server's
    start does not wait for it: 100 000 tiles took 2.3-2.8 s here, a network folder longer);
    until it is done (:attr:`indexed`) tiles are served from the folder as they are found
    (each verified, as always), tiles written are indexed as the most recent, and nothing is
    evicted (the budget is counted once the folder is). Default: indexed before the
    constructor returns.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, *, background: bool = False):
        if max_bytes < 0:
            raise ValueError(f"disk cache size must be >= 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        _own_root(self.root)
        _private_dir(self.root)
        self._index: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.rejected = 0
        self._written = 0  # bytes put since the last scan
        self._said_too_small = False  # whether a tile larger than the budget was warned of
        self._counted = False  # whether the index holds the folder's tiles (lock held)
        self.indexed = threading.Event()  # set once they are counted and the budget kept
        if background:
            threading.Thread(target=self._index_in_background, name="iste-cache-index",
                             daemon=True).start()
        else:
            self._first_index(self._scan())

    def _index_in_background(self) -> None:
        try:
            found = self._scan()
        except Exception as err:  # unreadable, another user's folder inside...: whatever it
            # is, the budget is kept for the tiles written from now on (a thread that died
            # here would leave the cache growing without eviction)
            log.warning("tile cache: cannot index %s (%s); only the tiles written from now on "
                        "count in its budget", self.root, err)
            found = []
        self._first_index(found)

    def _first_index(self, found: list[tuple[int, str, int]]) -> None:
        """Index the tiles ``found`` in the folder, then those put or found while it was read
        that the scan missed, as the most recent; evict what is over the budget."""
        with self._lock:
            seen = {name for _, name, _ in found}
            meanwhile = [(name, size) for name, size in self._index.items() if name not in seen]
            self._reindex(found)
            self._index.update(meanwhile)
            self._bytes = sum(self._index.values())
            self._counted = True
            self._evict()
        self.indexed.set()

    def _reindex(self, found: list[tuple[int, str, int]]) -> None:
        """Index the tiles ``found`` in the folder (:meth:`_scan`), least recently used first
        (lock held): those of an earlier run and of other servers on the folder, without those
        they removed. Equal times (the file system's clock ticks in milliseconds) keep this
        server's order."""
        rank = {name: i for i, name in enumerate(self._index)}
        found = sorted(found, key=lambda f: (f[0], rank.get(f[1], -1), f[1]))
        self._index = OrderedDict((name, size) for _, name, size in found)
        self._bytes = sum(self._index.values())

    def _scan(self) -> list[tuple[int, str, int]]:
        """(mtime_ns, name, size) of the tiles in the folder; removes the temporaries of
        writes interrupted long ago."""
        found = []
        for folder in self.root.glob("??"):
            if folder.is_dir() and not folder.is_symlink():
                _private_dir(folder)
        now = time.time()
        for path in self.root.glob("??/*"):
            try:  # another server on this folder may remove a file at any moment
                st = path.lstat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):  # links, folders, FIFOs: never ours to read
                continue
            if path.name.endswith(".tmp"):
                if _abandoned(path.name, now - st.st_mtime):
                    _unless_read_only(path.unlink)
                continue
            name = path.name[:-len(_SUFFIX)]
            if path.name.endswith(_SUFFIX) and _NAME.match(name):
                if st.st_mode & 0o777 != _FILE_MODE:  # an older version's file
                    _unless_read_only(path.chmod, _FILE_MODE)
                found.append((st.st_mtime_ns, name, st.st_size))
        return found

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid cache name {name!r}")
        return self.root / name[:2] / (name + _SUFFIX)

    def get(self, name: str) -> bytes | None:
        """The tile stored as ``name``, or None (absent, or a file that does not verify: it is
        removed, so the caller renders the tile again). A tile another server on the folder
        wrote since this one's last scan is found too (one failed open per miss otherwise),
        and indexed."""
        path = self._path(name)
        with self._lock:
            known = name in self._index
            if known:
                self._index.move_to_end(name)
        try:  # never blocks: a FIFO put in its place opens at once, and is refused below
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # absent, removed behind our back, or replaced by a link
            if known:
                self._forget(name)
            return None
        with os.fdopen(fd, "rb") as f:  # verify and serve the bytes of this one open
            st = os.fstat(f.fileno())
            data = None
            if stat.S_ISREG(st.st_mode):
                if st.st_size > self.max_bytes:  # a server's with a larger budget: not read,
                    self._too_large(st.st_size)  # nor taken for damaged (warned of as such
                    if known:  # and removed at once); left to the budgets' eviction
                        self._forget(name)
                    return None
                data = unseal(name, f.read())
            if data is not None:
                _unless_read_only(os.utime, f.fileno())
                if not known:
                    self._adopt(name, st.st_size)
                return data
        log.warning("tile cache: %s did not verify (damaged or altered); rendering it again",
                    path.name)
        with self._lock:
            self.rejected += 1
        self._forget(name)
        _unless_read_only(path.unlink)
        return None

    def _adopt(self, name: str, size: int) -> None:
        """Index another server's verified file as the most recently used."""
        with self._lock:
            self._bytes += size - self._index.pop(name, 0)
            self._index[name] = size
            self._evict()

    def _forget(self, name: str) -> None:
        with self._lock:
            self._bytes -= self._index.pop(name, 0)

    def _too_large(self, size: int) -> None:
        """Say once that a tile of ``size`` bytes does not fit the whole budget: no tile of
        that size is ever cached (each is rendered again), where nothing said so."""
        if not self._said_too_small:
            self._said_too_small = True
            log.warning("tile cache: a tile of %.3g kB is larger than the whole disk cache "
                        "(--disk-cache-mb %.3g): tiles that large are rendered again each time, "
                        "not cached; raise --disk-cache-mb", size / 1e3,
                        self.max_bytes / 2**20)

    def put(self, name: str, data: bytes) -> None:
        blob = seal(name, data)
        if len(blob) > self.max_bytes:
            self._too_large(len(blob))
            return
        path = self._path(name)
        if not path.parent.is_dir():
            # the root first: deleted while the server runs, mkdir -p of the subfolder made it
            # again with the umask's mode (0755), open to every user, not 0700
            _private_dir(self.root)
            _private_dir(path.parent)
        write_bytes_atomic(path, blob, mode=_FILE_MODE)
        with self._lock:
            self._bytes -= self._index.pop(name, 0)
            self._index[name] = len(blob)
            self._bytes += len(blob)
            self._written += len(blob)
            rescan = (self._written * _RESCAN_SHARE >= self.max_bytes  # others' files too
                      and self._counted)  # not beside the first index
            if rescan:
                self._written = 0
            self._evict()
        if rescan:  # the folder read without the lock: tiles are served from it meanwhile
            found = self._scan()
            with self._lock:
                self._reindex(found)
                self._evict()

    def _evict(self) -> None:
        """Drop the least recently used files until within budget (lock held); not before
        the folder is indexed (the index then holds the newest tiles only)."""
        while self._counted and self._bytes > self.max_bytes and self._index:
            name, size = self._index.popitem(last=False)
            self._bytes -= size
            _unless_read_only(self._path(name).unlink)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._index)
