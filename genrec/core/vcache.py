"""A least-recently-used cache of item vectors, bounded in bytes (torch-free; the serving models use it).

Keys are content hashes of everything that determines a vector (id, text, category, subcategory), so an id
that arrives with new text is a new key and is encoded again. Values are *copies* of the vector rows: a
row view would keep the whole encoder output batch it came from alive, and the byte bound would lie.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict

import numpy as np

ENTRY_OVERHEAD = 200   # bytes per entry besides the vector: key, tuple, OrderedDict node (measured ~180)


@dataclasses.dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class VectorLRU:
    """Bounded map key -> (vector copy, category id, subcategory id, truncated), at most ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = int(capacity_bytes)
        self.nbytes = 0
        self.counters = CacheCounters()
        self._data: OrderedDict[bytes, tuple[np.ndarray, int, int, bool]] = OrderedDict()

    @staticmethod
    def key(item_id: str, text: str, category: str, subcategory: str) -> bytes:
        return hashlib.blake2b("\x1f".join((item_id, text, category, subcategory)).encode(), digest_size=16).digest()

    @staticmethod
    def _cost(vector: np.ndarray) -> int:
        return int(vector.nbytes) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> tuple[np.ndarray, int, int, bool] | None:
        hit = self._data.get(key)
        if hit is None:
            self.counters.misses += 1
            return None
        self._data.move_to_end(key)
        self.counters.hits += 1
        return hit

    def put(self, key: bytes, vector: np.ndarray, category: int, subcategory: int,
            truncated: bool = False) -> tuple[np.ndarray, int, int, bool]:
        """Store a copy of ``vector`` (and whether its text was cut); returns the stored value. Evicts least
        recently used entries to fit."""
        value = (np.array(vector, dtype=np.float32, copy=True), int(category), int(subcategory), bool(truncated))
        cost = self._cost(value[0])
        if cost > self.capacity_bytes:
            return value                                   # cannot fit (or caching is off): not stored
        old = self._data.pop(key, None)
        if old is not None:
            self.nbytes -= self._cost(old[0])
        self._data[key] = value
        self.nbytes += cost
        while self.nbytes > self.capacity_bytes:
            _, evicted = self._data.popitem(last=False)
            self.nbytes -= self._cost(evicted[0])
            self.counters.evictions += 1
        return value
