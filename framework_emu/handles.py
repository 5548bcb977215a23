"""Handles: the opaque values a driver holds, and the memory of dead ones.

The real framework hands out a scrambled object pointer and never checks
it: a stale handle crashes "at random". Here every handle is unique for the
life of the framework (never reused), so a handle that is not live is
always recognised: either it belonged to an object that is gone (kept in a
bounded graveyard with its history: what it was, where it was created and
deleted) or it was never issued at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .recently_freed import RecentlyFreed

if TYPE_CHECKING:
    from .objects import FxObject

HANDLE_BASE = 0x0000_7FF2_0000_0000
HANDLE_STRIDE = 8  # real handles keep their low three bits for flags
GRAVEYARD_SIZE = 100_000


class HandleTable:
    """Live handles and a graveyard of the last ``graveyard_size`` destroyed objects."""

    def __init__(self, graveyard_size: int = GRAVEYARD_SIZE) -> None:
        self.live: dict[int, "FxObject"] = {}
        self.graveyard: RecentlyFreed[int, "FxObject"] = RecentlyFreed(graveyard_size)
        self._next = HANDLE_BASE + HANDLE_STRIDE

    _base = HANDLE_BASE

    def start_at(self, base: int) -> None:
        """Issue handles from ``base`` on, before the first is issued: each driver of one machine
        gets its own range (IoManager.load_driver), so a handle names one object machine-wide."""
        if self.live or self._next != self._base + HANDLE_STRIDE:
            raise ValueError("handles were issued already")
        self._base = base
        self._next = base + HANDLE_STRIDE

    def issue(self, obj: "FxObject") -> int:
        handle = self._next
        self._next = handle + HANDLE_STRIDE
        obj.handle = handle
        self.live[handle] = obj
        return handle

    def retire(self, obj: "FxObject") -> None:
        """Move a destroyed object's handle from the live table to the graveyard."""
        handle = obj.handle
        if self.live.pop(handle, None) is None:
            return
        self.graveyard.remember(handle, obj)

    def was_issued(self, handle: int) -> bool:
        """Whether ``handle`` is a value this table handed out at some point."""
        return (isinstance(handle, int) and self._base < handle < self._next
                and (handle - self._base) % HANDLE_STRIDE == 0)
