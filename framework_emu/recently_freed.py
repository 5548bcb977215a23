"""One bounded memory of what was freed recently, for the three things that need it.

Handles (a stale handle names the object it was), MDLs (a freed MDL is a use
after free naming where it was freed) and pool blocks (a double free names
the first free) each keep the last ``capacity`` entries in a
:class:`RecentlyFreed`. Older entries are forgotten, so memory stays bounded
however long a run is.
"""

from __future__ import annotations

import collections
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentlyFreed(Generic[K, V]):
    """The last ``capacity`` (key, value) pairs remembered, oldest forgotten first.

    A key remembered again moves to the newest end; :meth:`forget` drops a key
    that is live again (an address reused by a new allocation)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: collections.OrderedDict[K, V] = collections.OrderedDict()

    def remember(self, key: K, value: V) -> None:
        entries = self._entries
        if key in entries:
            del entries[key]
        entries[key] = value
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._entries.get(key, default)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: K) -> V:
        return self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
