"""One thread-safe least-recently-used cache, bounded in bytes (cheap to import: no dependencies).

Used for decoded slide tiles (:mod:`wsiheat.wsi.tiff_tiles`, numpy arrays) and
for the viewer's encoded deep-zoom tiles (:mod:`wsiheat.viewer.tiles`, bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


def _size(value: Any) -> int:
    """Bytes of a cached value: ``nbytes`` of an array, ``len`` of bytes."""
    n = getattr(value, "nbytes", None)
    return int(n) if n is not None else len(value)


class TileCache:
    """A thread-safe least-recently-used cache, bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Total size of the cached values (``nbytes`` of arrays, ``len`` of
        bytes); the least recently used are dropped beyond it, and a value
        larger than the whole bound is not kept.
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        """The cached value of ``key`` (marked as recently used), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``; evict the least recently used entries beyond ``max_bytes``."""
        size = _size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= _size(old)
            self._data[key] = value
            self._size += size
            while self._size > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._size -= _size(dropped)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()
            self._size = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self._size
