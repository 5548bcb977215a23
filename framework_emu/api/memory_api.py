"""WDFMEMORY entry points (fxmemorybufferapi.cpp, fxmemorybufferpreallocatedapi.cpp)."""

from __future__ import annotations

from typing import Any

from ..attributes import WDF_OBJECT_ATTRIBUTES, context_size
from ..callsite import caller_site, driver_site, format_site
from ..core import OUT
from ..errors import ArgumentError
from ..irql import APC_LEVEL, DISPATCH_LEVEL
from ..memory import PoolMemory, PreallocatedMemory
from ..ntstatus import NTSTATUS
from ..objects import FX_TYPE_MEMORY_PREALLOCATED, IFX_TYPE_MEMORY
from ..pool import _VALID_POOL_TYPES, check_pool_type, fx_is_paged_pool_type
from ..pooltag import tag_bytes
from .validation import check_size, validate_object_attributes

_SUCCESS = NTSTATUS.STATUS_SUCCESS
# Speed, measured with callgrind per WdfMemoryCreate + WdfObjectDelete pair (CPython 3.11,
# ~42,700 instructions a pair in all):
# - a pool type becomes a plain int by one dict lookup (any equal key, a PoolType member too)
#   instead of check_pool_type (which still names a bad value): ~800 instructions less;
# - WdfMemoryCreate's IRQL limit per pool type, as plain ints, classified by
#   fx_is_paged_pool_type once per type instead of on every call: ~840 instructions less.
_POOL_TYPE_VALUES = {value: value for value in _VALID_POOL_TYPES}
_MAX_IRQL_FOR_POOL_TYPE = {value: int(APC_LEVEL if fx_is_paged_pool_type(value) else DISPATCH_LEVEL)
                           for value in _VALID_POOL_TYPES}
_SIZE_T_MAX = 0xFFFFFFFFFFFFFFFF


def WDF_ALIGN_SIZE_DOWN(Length: int, AlignTo: int) -> int:
    """``Length & ~(AlignTo - 1)``; AlignTo must be a power of two."""
    _check_alignment(AlignTo)
    return Length & ~(AlignTo - 1) & _SIZE_T_MAX


def WDF_ALIGN_SIZE_UP(Length: int, AlignTo: int) -> int:
    """WDF_ALIGN_SIZE_DOWN(Length + AlignTo - 1); wraps at 2**64 as the size_t macro does."""
    _check_alignment(AlignTo)
    return WDF_ALIGN_SIZE_DOWN((Length + AlignTo - 1) & _SIZE_T_MAX, AlignTo)


def _check_alignment(align: int) -> None:
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ArgumentError("the alignment must be a power of two", field="AlignTo", value=align)


class MemoryApi:
    """WdfMemoryCreate and friends."""

    def WdfMemoryCreate(self, Attributes: WDF_OBJECT_ATTRIBUTES | None, PoolType: int, PoolTag: int | bytes,
                        BufferSize: int, *, Memory: Any = OUT, Buffer: Any = OUT) -> tuple[int, int | None, int | None]:
        """-> (status, memory, buffer). Checks in the framework's order [S]:
        parent handle, NULL output, IRQL (verifier only: a status, not a bug check),
        BufferSize 0, attributes, default tag, allocation, parent being deleted."""
        self._driver_obj or self._require_driver()
        try:
            pool_type = _POOL_TYPE_VALUES.get(PoolType)  # a plain int from here on (IntEnum compares slowly)
        except TypeError:
            pool_type = None
        if pool_type is None:
            pool_type = check_pool_type(PoolType)
        parent = self._resolve_parent(Attributes)
        if Memory is None:
            raise self._null("Memory")
        max_level = _MAX_IRQL_FOR_POOL_TYPE[pool_type]   # FxIsPagedPoolType ? APC_LEVEL : DISPATCH_LEVEL
        if self._verifier_on and self._irql.current > max_level:
            self._irql_violation("WdfMemoryCreate", max_level, driver_site(), fatal=False,
                                 status=NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None, None
        if type(BufferSize) is not int or BufferSize <= 0:
            if BufferSize == 0:
                return NTSTATUS.STATUS_INVALID_PARAMETER, None, None
            check_size(BufferSize, "BufferSize")
        if Attributes is not None:
            status = validate_object_attributes(Attributes)
            if status:
                return status, None, None
        if not PoolTag:
            tag = self._driver_tag
        elif type(PoolTag) is bytes and len(PoolTag) == 4:
            tag = PoolTag
        else:
            tag = tag_bytes(PoolTag)
        site = caller_site()
        obj = PoolMemory.create(self, pool_type, tag, BufferSize,
                                context_size(Attributes) if Attributes is not None else 0, site)
        if obj is None:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None, None
        status = self._commit(obj, Attributes, parent)
        if status:
            return status, None, None
        if parent is None and self._verifier_on:
            self._verifier.parent_object_check(site, obj)
        return _SUCCESS, obj.handle, (obj.buffer if Buffer is not None else None)

    def WdfMemoryCreatePreallocated(self, Attributes: WDF_OBJECT_ATTRIBUTES | None, Buffer: int, BufferSize: int,
                                    *, PMemory: Any = OUT) -> tuple[int, int | None]:
        """-> (status, memory). Wraps the driver's buffer: stores address and size only,
        never frees it. No IRQL check at run time (KmdfIrql still applies)."""
        self._driver_obj or self._require_driver()
        parent = self._resolve_parent(Attributes)
        if not Buffer:
            raise self._null("Buffer")
        if PMemory is None:
            raise self._null("PMemory")
        if not isinstance(Buffer, int):
            raise ArgumentError("WdfMemoryCreatePreallocated keeps an address: pass a kernel virtual address",
                                field="Buffer", value=type(Buffer).__name__)
        if BufferSize == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        check_size(BufferSize, "BufferSize")
        status = validate_object_attributes(Attributes)
        if status:
            return status, None
        site = driver_site()
        self._check_dispatch("WdfMemoryCreatePreallocated")
        if self._verifier_on:
            self._check_request_buffer(Buffer, BufferSize, "WdfMemoryCreatePreallocated wraps", site)
        obj = PreallocatedMemory(self, site, Buffer, BufferSize, self._driver_tag)
        status = self._commit_new(obj, Attributes, parent, site)
        if status:
            return status, None
        return _SUCCESS, obj.handle

    def WdfMemoryAssignBuffer(self, Memory: int, Buffer: int, BufferSize: int) -> int:
        """Only preallocated memory (and request memory) takes a new buffer: any other
        memory bug-checks 0x10D/0x5 with P3 = 0x1022 [S]. Never frees the old buffer."""
        obj = self._object(Memory, FX_TYPE_MEMORY_PREALLOCATED)
        if not Buffer:
            raise self._null("Buffer")
        if not isinstance(Buffer, int):
            raise ArgumentError("WdfMemoryAssignBuffer keeps an address: pass a kernel virtual address",
                                field="Buffer", value=type(Buffer).__name__)
        if BufferSize == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        check_size(BufferSize, "BufferSize")
        self._check_dispatch("WdfMemoryAssignBuffer")
        if self._verifier_on:
            self._check_request_buffer(Buffer, BufferSize, "WdfMemoryAssignBuffer wraps")
        obj.assign(Buffer, BufferSize)
        return _SUCCESS

    def WdfMemoryGetBuffer(self, Memory: int) -> tuple[int, int]:
        """-> (address, size)."""
        obj = self._object(Memory, IFX_TYPE_MEMORY)
        self._check_dispatch("WdfMemoryGetBuffer")
        return obj.buffer, obj.size

    def _copy_arguments(self, handle: int, offset: int, buffer: Any, count: int, call: str) -> tuple[Any, int]:
        """The checks both copy directions share, in order: handle, NULL buffer, zero count."""
        mem = self._object(handle, IFX_TYPE_MEMORY)
        if buffer is None or buffer == 0:
            raise self._null("Buffer")
        if count == 0:
            return mem, NTSTATUS.STATUS_INVALID_PARAMETER
        check_size(count, "NumBytes")
        check_size(offset, "Offset")
        self._check_dispatch(call)
        return mem, _SUCCESS

    def WdfMemoryCopyToBuffer(self, SourceMemory: int, SourceOffset: int, Buffer: Any,
                              NumBytesToCopyTo: int) -> int:
        """Copy out of the memory object. Out of bounds (offset != 0 and offset >= size,
        or count > size - offset): STATUS_BUFFER_TOO_SMALL."""
        src, status = self._copy_arguments(SourceMemory, SourceOffset, Buffer, NumBytesToCopyTo,
                                           "WdfMemoryCopyToBuffer")
        if status:
            return status
        size = src.size
        if (SourceOffset != 0 and SourceOffset >= size) or NumBytesToCopyTo > size - SourceOffset:
            return NTSTATUS.STATUS_BUFFER_TOO_SMALL
        if self._verifier_on:
            self._check_memory_and_buffer(src, SourceOffset, Buffer, NumBytesToCopyTo, "WdfMemoryCopyToBuffer")
        data = self._read(src.buffer + SourceOffset, NumBytesToCopyTo)
        self._sink(Buffer, data, "Buffer")
        return _SUCCESS

    def WdfMemoryCopyFromBuffer(self, DestinationMemory: int, DestinationOffset: int, Buffer: Any,
                                NumBytesToCopyFrom: int) -> int:
        """Copy into the memory object. Read-only memory (a request's input):
        STATUS_ACCESS_VIOLATION. Out of bounds: STATUS_INVALID_BUFFER_SIZE -- the real
        framework's status; the documentation says STATUS_BUFFER_TOO_SMALL."""
        dst, status = self._copy_arguments(DestinationMemory, DestinationOffset, Buffer, NumBytesToCopyFrom,
                                           "WdfMemoryCopyFromBuffer")
        if status:
            return status
        if dst.read_only:
            return NTSTATUS.STATUS_ACCESS_VIOLATION
        size = dst.size
        if (DestinationOffset != 0 and DestinationOffset >= size) or NumBytesToCopyFrom > size - DestinationOffset:
            return NTSTATUS.STATUS_INVALID_BUFFER_SIZE
        if self._verifier_on:
            self._check_memory_and_buffer(dst, DestinationOffset, Buffer, NumBytesToCopyFrom,
                                          "WdfMemoryCopyFromBuffer")
        data = bytes(self._source(Buffer, NumBytesToCopyFrom, "Buffer"))
        self._write(dst.buffer + DestinationOffset, data)
        return _SUCCESS

    def _check_memory_and_buffer(self, mem: Any, offset: int, buffer: Any, length: int, call: str) -> None:
        """BufAfterReqCompleted for a copy: the raw buffer, and a wrapper of a request's buffer."""
        if isinstance(buffer, int) and self._verifier.quarantined(buffer, length) is not None:
            self._check_request_buffer(buffer, length, f"{call} copies")   # the message only for a finding
        if mem.request is None or getattr(mem.request, "borrowed_buffers", False):
            va = mem.buffer + offset
            if self._verifier.quarantined(va, length) is not None:   # the message only for a finding
                self._check_request_buffer(va, length, f"{call} through {mem.describe()} (created at"
                                           f" {format_site(mem.created_at)}) touches")
