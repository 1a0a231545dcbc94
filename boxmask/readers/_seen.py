"""A compact set of strings seen so far: 8 bytes per entry, for millions of image ids."""

from __future__ import annotations

import hashlib

import numpy as np


def _key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class SeenIds:
    """Membership of strings by 64-bit hash (BLAKE2b, deterministic across runs).

    New entries gather in a small Python set; every ``flush_at`` entries they are merged into one
    sorted ``uint64`` array, searched by bisection. A false "seen" needs a 64-bit collision
    (about 1e-7 for two million ids).
    """

    def __init__(self, flush_at: int = 4096) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._pending: set[int] = set()
        self._flush_at = flush_at

    def add(self, text: str) -> None:
        self._pending.add(_key(text))
        if len(self._pending) >= self._flush_at:
            fresh = np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending))
            fresh.sort()
            merged = np.concatenate([self._sorted, fresh])
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self._sorted = merged
            self._pending.clear()

    def __contains__(self, text: str) -> bool:
        key = _key(text)
        if key in self._pending:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(key)))
        return i < self._sorted.size and int(self._sorted[i]) == key

    def __len__(self) -> int:
        return self._sorted.size + len(self._pending)
