"""Lookaside lists (WDFLOOKASIDE) and the memory objects they hand out.

Which list the framework builds, and what it zeroes, depends on the buffer
size (WdfLookasideListCreate, fxlookasidelistapi.cpp) [S]:

- nonpaged, BufferSize < PAGE_SIZE (FxNPagedLookasideList): one block holds
  the object header, the buffer and the context; every allocation zeroes the
  *whole* block (FxLookasideList::InitObjectAlloc), so such a list never
  hands out stale data;
- paged, BufferSize < PAGE_SIZE (FxPagedLookasideListFromPool): the buffer
  is a paged block of FX_POOL_HEADER_SIZE + BufferSize bytes, zeroed whole on
  every allocation (FxPagedLookasideListFromPool::InitPagedAlloc);
- BufferSize >= PAGE_SIZE, paged or not (FxNPagedLookasideListFromPool,
  FxPagedLookasideListFromPool): the buffer comes raw from a second
  lookaside of buffers and is NOT zeroed: the block freed last comes back
  with the previous user's bytes (the information-leak bug to reproduce).

Freed blocks go on a LIFO cache (up to ``LOOKASIDE_DEPTH`` blocks, the NT
maximum depth). Each memory object holds a reference on its list, so
deleting the list leaves outstanding memory objects working; the cached
blocks go back to the pool when the last reference on the list goes.
"""

from __future__ import annotations

from typing import Any

from .attributes import WDF_OBJECT_ATTRIBUTES, context_size
from .callsite import CallSite
from .memory import (FX_CONTEXT_HEADER_SIZE, MEMORY_ALLOCATION_ALIGNMENT, MEMORY_BUFFER_OBJECT_SIZE,
                     MemoryObject, align_up, allocate_object_storage)
from .objects import FX_TYPE_LOOKASIDE, FX_TYPE_OBJECT, FxObject
from wdfhil.physical_memory import PAGE_SIZE
from .pool import fx_is_paged_pool_type

LOOKASIDE_DEPTH = 256
FX_POOL_HEADER_SIZE = 16   # FX_POOL_HEADER up to AllocationStart (Base, FxDriverGlobals) on x64


class LookasideList(FxObject):
    """WdfLookasideListCreate's list."""

    WDF_TYPE = FX_TYPE_LOOKASIDE
    HANDLE_NAME = "WDFLOOKASIDE"
    DESCRIPTION = "lookaside list"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_LOOKASIDE})

    def __init__(self, fx: Any, site: CallSite | None, buffer_size: int, pool_type: int, tag: bytes,
                 memory_attributes: WDF_OBJECT_ATTRIBUTES | None) -> None:
        FxObject.__init__(self, fx, site)
        self.buffer_size = buffer_size
        self.pool_type = pool_type
        self.tag = tag
        self.memory_attributes = memory_attributes
        self.memory_context_bytes = context_size(memory_attributes)
        paged = fx_is_paged_pool_type(pool_type)
        # Below PAGE_SIZE every list zeroes its whole block on allocation (InitObjectAlloc /
        # InitPagedAlloc); from PAGE_SIZE up the buffers come back raw.
        self.zeroes_blocks = buffer_size < PAGE_SIZE
        self.whole_blocks = buffer_size < PAGE_SIZE and not paged   # FxNPagedLookasideList
        if self.whole_blocks:
            self.context_offset = align_up(MEMORY_BUFFER_OBJECT_SIZE + buffer_size, MEMORY_ALLOCATION_ALIGNMENT)
            self.block_size = (self.context_offset + FX_CONTEXT_HEADER_SIZE
                               + align_up(self.memory_context_bytes, 8))
            self.buffer_offset = MEMORY_BUFFER_OBJECT_SIZE
        elif self.zeroes_blocks:                                    # paged, below PAGE_SIZE
            self.block_size = FX_POOL_HEADER_SIZE + buffer_size
            self.buffer_offset = FX_POOL_HEADER_SIZE
        else:
            self.block_size = buffer_size
            self.buffer_offset = 0
        self.cache: list[int] = []   # LIFO of free blocks
        if paged:
            self.passive_dispose = True

    def allocate_memory(self, site: CallSite | None) -> "LookasideMemory | None":
        """A memory object on a reused or fresh block; None when the pool is out of memory."""
        fx = self.fx
        block = self.cache.pop() if self.cache else fx._pool.allocate(
            self.pool_type, self.block_size, self.tag, site)
        if not block:
            return None
        if self.zeroes_blocks:
            fx._memory.fill(fx.va_to_gpa(block), self.block_size, 0)
        mem = LookasideMemory(fx, site, self, block, block + self.buffer_offset)
        if self.whole_blocks:
            if self.memory_context_bytes:
                mem.context_va = block + self.context_offset + FX_CONTEXT_HEADER_SIZE
        elif self.memory_context_bytes and not allocate_object_storage(fx, mem, self.memory_context_bytes, site):
            self.reclaim(block)
            return None
        self.add_reference()
        return mem

    def reclaim(self, block: int) -> None:
        """A memory object is gone: its block goes back on the list (or to the pool if full)."""
        if len(self.cache) < LOOKASIDE_DEPTH:
            self.cache.append(block)
        else:
            self.fx._pool.free(block)

    def free_storage(self) -> None:
        pool = self.fx._pool
        for block in self.cache:
            pool.free(block)
        self.cache.clear()
        FxObject.free_storage(self)


class LookasideMemory(MemoryObject):
    """WdfMemoryCreateFromLookaside: holds a reference on its list until destroyed."""

    DESCRIPTION = "memory from WdfMemoryCreateFromLookaside"

    def __init__(self, fx: Any, site: CallSite | None, lookaside: LookasideList, block: int,
                 buffer: int) -> None:
        MemoryObject.__init__(self, fx, site, buffer, lookaside.buffer_size, lookaside.tag)
        self.lookaside = lookaside
        self.block = block
        self.passive_dispose = lookaside.passive_dispose

    def free_storage(self) -> None:
        if self.storage_va:
            self.fx._pool.free(self.storage_va)
        lookaside = self.lookaside
        lookaside.reclaim(self.block)
        lookaside.release()
