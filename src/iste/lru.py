"""A map bounded in bytes that drops its least recently used values first, thread-safe: the
viewer's encoded tiles (:class:`iste.serve.cache.MemoryCache`) and the shared features of an
image (:class:`iste.engine.shared.TensorLRU`) are each one, with their own measure of a
value's size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

__all__ = ["SizedLRU"]


class SizedLRU:
    """key -> value holding at most ``max_bytes`` of values, each of ``size(value)`` bytes; the
    least recently used go first, and a value larger than the whole map is not stored
    (``refused`` counts them; :meth:`_refused` is told each, for an owner to say so).
    Thread-safe; :meth:`get_or_compute` computes outside the lock (a value asked for by two
    threads at once may be computed twice). ``hits`` and ``misses`` count the lookups.

    Raises:
        ValueError: ``max_bytes`` < 0, as "``what`` size must be >= 0".
    """

    def __init__(self, max_bytes: int, size: Callable[[Any], int], *, what: str = "cache"):
        if max_bytes < 0:
            raise ValueError(f"{what} size must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._size = size
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.refused = 0

    def get(self, key: Hashable) -> Any:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value under ``key``, else ``compute()``, stored."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        value = compute()
        self.put(key, value)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` (not where it is larger than the whole map), dropping
        the least recently used values until the rest fits."""
        size = self._size(value)
        if size > self.max_bytes:
            with self._lock:
                self.refused += 1
                first = self.refused == 1
            self._refused(size, first)
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += size - (old[1] if old else 0)
            self._items[key] = (value, size)
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def _refused(self, size: int, first: bool) -> None:
        """A value of ``size`` bytes was not stored, being larger than the whole map
        (``first``: the first such value); nothing by default."""

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is held (not counted as a use)."""
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
