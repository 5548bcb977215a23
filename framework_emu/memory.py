"""Memory objects (WDFMEMORY): one class per way the framework backs a buffer.

Placement is the real framework's (FxMemoryObject::_Create):

- :class:`PoolMemory` below PAGE_SIZE, nonpaged, verifier off: the object
  and its buffer are *one* pool allocation, the buffer right after the
  object header (``MEMORY_BUFFER_OBJECT_SIZE`` bytes) and the context
  header after the buffer. The buffer is 16-byte aligned and may cross a
  page (a 4092-byte buffer always does). Real behaviour; the documentation
  promised otherwise until 2020.
- otherwise (PAGE_SIZE or more, paged, or verifier on): the buffer is its
  own pool allocation, page aligned from PAGE_SIZE up, 16-byte aligned
  below it; so verifier and production runs lay small buffers out
  differently, as on a real machine.
- :class:`PreallocatedMemory` only records the driver's address and size.
- :class:`LookasideMemory` lives in a lookaside block (see lookaside.py).
- :class:`RequestBufferMemory` is a request's input or output buffer.

The emulator keeps the object's state in Python; pool memory is taken for
what the driver can see: buffers, and the object storage that holds a
context (the header bytes themselves are reserved, not written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .callsite import CallSite
from .objects import (DESTROYED, lazy_description, FX_TYPE_MEMORY_PREALLOCATED, FX_TYPE_OBJECT, FX_TYPE_REQUEST_MEMORY,
                      IFX_TYPE_MEMORY, FxObject)
from wdfhil.physical_memory import PAGE_SIZE
from .pool import PoolType, fx_is_paged_pool_type

if TYPE_CHECKING:
    from .request import Request

MEMORY_BUFFER_OBJECT_SIZE = 0x90   # FxMemoryBuffer header before an embedded buffer (x64-like)
OBJECT_HEADER_SIZE = 0x90          # a framework object's own storage, when it needs any
FX_CONTEXT_HEADER_SIZE = 0x28      # FxContextHeader up to its Context[] field
MEMORY_ALLOCATION_ALIGNMENT = 16
_NORMALISED_TO_NONPAGED = frozenset({int(PoolType.NonPagedPoolMustSucceed), int(PoolType.NonPagedPoolCacheAligned),
                                     int(PoolType.NonPagedPoolCacheAlignedMustS)})
_NON_PAGED_POOL = int(PoolType.NonPagedPool)  # pool types stay plain ints (an IntEnum hashes slowly)


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


class MemoryObject(FxObject):
    """IFxMemory: a buffer address and size behind a WDFMEMORY handle."""

    HANDLE_NAME = "WDFMEMORY"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, IFX_TYPE_MEMORY})
    read_only = False
    request: "Request | None" = None   # the request whose buffer this is, if any

    def __init__(self, fx: Any, site: CallSite | None, buffer: int, size: int, tag: bytes) -> None:
        FxObject.__init__(self, fx, site)
        self.buffer = buffer
        self.size = size
        self.tag = tag


class PoolMemory(MemoryObject):
    """WdfMemoryCreate: a buffer the framework allocated (and frees on destroy).

    :meth:`create` decides the placement (FxMemoryObject::_Create) and allocates."""

    DESCRIPTION = "memory from WdfMemoryCreate"

    def __init__(self, fx: Any, site: CallSite | None, buffer: int, size: int, tag: bytes, pool_type: int,
                 paged: bool, storage: int, separate_buffer: bool) -> None:
        MemoryObject.__init__(self, fx, site, buffer, size, tag)
        self.pool_type = pool_type
        self.storage_va = storage
        self.separate_buffer = separate_buffer  # the buffer is its own allocation (else inside storage_va)
        if paged:  # as FxIsPagedPoolType has it
            self.passive_dispose = True  # FxMemoryBufferFromPool::_Create: MarkPassiveCallbacks for paged

    @classmethod
    def create(cls, fx: Any, pool_type: int, tag: bytes, size: int, context_bytes: int,
               site: CallSite | None) -> "PoolMemory | None":
        """The object and buffer of WdfMemoryCreate, or None if the pool is out of memory.

        FxMemoryObject::_Create [S]: below PAGE_SIZE, not paged (FxIsPagedPoolType) and
        verifier off, the buffer follows the object header in one allocation
        (FxMemoryBuffer); otherwise it is its own allocation (FxMemoryBufferFromPool)."""
        pool = fx._pool
        paged = fx_is_paged_pool_type(pool_type)
        if size < PAGE_SIZE and not fx._verifier_on and not paged:
            if pool_type in _NORMALISED_TO_NONPAGED:
                pool_type = _NON_PAGED_POOL  # FxMemoryObject::_Create normalises these [S]
            context_offset = align_up(MEMORY_BUFFER_OBJECT_SIZE + size, MEMORY_ALLOCATION_ALIGNMENT)
            total = context_offset + FX_CONTEXT_HEADER_SIZE + (align_up(context_bytes, 8) if context_bytes else 0)
            storage = pool.allocate(pool_type, total, tag, site)
            if not storage:
                return None
            obj = cls(fx, site, storage + MEMORY_BUFFER_OBJECT_SIZE, size, tag, pool_type, False, storage, False)
            if context_bytes:
                obj.context_va = storage + context_offset + FX_CONTEXT_HEADER_SIZE
            return obj
        buffer = pool.allocate(pool_type, size, tag, site)
        if not buffer:
            return None
        obj = cls(fx, site, buffer, size, tag, pool_type, paged, 0, True)
        if context_bytes and not allocate_object_storage(fx, obj, context_bytes, site):
            pool.free(buffer)
            return None
        return obj

    def free_storage(self) -> None:
        pool = self.fx._pool
        if self.separate_buffer:
            pool.free(self.buffer)
        if self.storage_va:
            pool.free(self.storage_va)


def allocate_object_storage(fx: Any, obj: FxObject, context_bytes: int, site: CallSite | None) -> bool:
    """Pool storage (driver tag, nonpaged) for an object that carries a context."""
    total = OBJECT_HEADER_SIZE + FX_CONTEXT_HEADER_SIZE + align_up(context_bytes, 8)
    block = fx._pool.allocate(PoolType.NonPagedPool, total, fx._driver_tag, site)
    if not block:
        return False
    obj.storage_va = block
    obj.context_va = block + OBJECT_HEADER_SIZE + FX_CONTEXT_HEADER_SIZE
    return True


class PreallocatedMemory(MemoryObject):
    """WdfMemoryCreatePreallocated: the driver's buffer; deleting the object never frees it."""

    DESCRIPTION = "preallocated memory from WdfMemoryCreatePreallocated"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, IFX_TYPE_MEMORY, FX_TYPE_MEMORY_PREALLOCATED})

    def assign(self, buffer: int, size: int) -> None:
        """UpdateBuffer: replace address and size, without locking, freeing nothing."""
        self.buffer = buffer
        self.size = size


class RequestMemory(PreallocatedMemory):
    """FxRequestMemory (a probed and locked request buffer): preallocated, so assignable."""

    DESCRIPTION = "request memory"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, IFX_TYPE_MEMORY, FX_TYPE_MEMORY_PREALLOCATED,
                          FX_TYPE_REQUEST_MEMORY})


class RequestBufferMemory(MemoryObject):
    """A request's input or output buffer (embedded in the request, owned by it).

    References taken on it are references on the request's IRP: the request
    cannot be completed while they are held. The driver may not delete it;
    the framework does, when the request completes.
    """

    NO_DELETE_DDI = True

    def __init__(self, fx: Any, site: CallSite | None, request: "Request", which: str,
                 buffer: int, size: int, read_only: bool) -> None:
        MemoryObject.__init__(self, fx, site, buffer, size, request.tag)
        self.request = request
        self.which = which
        self.read_only = read_only

    DESCRIPTION = lazy_description(  # type: ignore[assignment]
        lambda self: f"{self.which} buffer of WDFREQUEST 0x{self.request.handle:x}")

    def history(self) -> list:
        """The request's story around this buffer: presented, retrieved, completed."""
        request = self.request
        out = [("request presented", request.created_at), ("retrieved", self.created_at)]
        out += [(f"request {event}", site) for event, site in (request.events or ())]
        return out

    def add_reference(self) -> None:
        self.request.irp_references += 1

    def release(self) -> None:
        self.request.irp_references -= 1

    def retire_with_request(self, site: CallSite | None) -> None:
        """The request completed: this object is gone with it."""
        self.deleted_at = site
        self.state = DESTROYED
        self.destroyed_at = site
        self.fx._handles.retire(self)
