"""The driver's own pool buffers (ExAllocatePoolWithTag ...) and Rtl memory routines."""

from __future__ import annotations

from typing import Any

from ..bugcheck import BAD_POOL_CALLER, DRIVER_VERIFIER_DETECTED_VIOLATION, BugCheck
from ..callsite import driver_site, format_site
from ..errors import ArgumentError
from ..irql import APC_LEVEL, DISPATCH_LEVEL, irql_name
from ..pool import _VALID_POOL_TYPES, PoolType, check_pool_type, is_paged_pool
from ..pooltag import tag_bytes
from .validation import check_size

POOL_FLAG_UNINITIALIZED = 0x0002
POOL_FLAG_CACHE_ALIGNED = 0x0004
POOL_FLAG_RAISE_ON_FAILURE = 0x0020
POOL_FLAG_NON_PAGED = 0x0040
POOL_FLAG_NON_PAGED_EXECUTE = 0x0080
POOL_FLAG_PAGED = 0x0100


class PoolApi:
    """ExAllocatePoolWithTag / ExAllocatePool2 / ExFreePoolWithTag / ExFreePool, Rtl*Memory."""

    def ExAllocatePoolWithTag(self, PoolType: int, NumberOfBytes: int, Tag: int | bytes) -> int | None:
        """Kernel virtual address of the new (not zeroed) buffer, or None.

        With the verifier on (Driver Verifier's IRQL and pool checks): paged pool above
        APC_LEVEL or any pool above DISPATCH_LEVEL is 0xC4 with P1 0x1 / 0x2, a zero tag is
        0xC2 with P1 0x9B [I: parameter layout from the bug check reference]."""
        if type(PoolType) is not int or PoolType not in _VALID_POOL_TYPES:
            PoolType = check_pool_type(PoolType)  # a plain int from here on (IntEnum hashes slowly)
        check_size(NumberOfBytes, "NumberOfBytes")
        tag = tag_bytes(Tag, field="Tag")
        site = driver_site()
        if self._verifier_on:
            self._check_pool_call(PoolType, NumberOfBytes, tag, site)
        return self._pool.allocate(int(PoolType), NumberOfBytes, tag, site) or None

    def _check_pool_call(self, pool_type: int, size: int, tag: bytes, site: Any) -> None:
        level = self._irql.current
        paged = is_paged_pool(pool_type)
        if level > (APC_LEVEL if paged else DISPATCH_LEVEL):
            raise BugCheck(DRIVER_VERIFIER_DETECTED_VIOLATION, (0x1 if paged else 0x2, level, pool_type, size),
                           f"{'paged' if paged else 'nonpaged'} pool allocation at {irql_name(level)}"
                           f" (at {format_site(site)})")
        if tag == b"\0\0\0\0":
            raise BugCheck(BAD_POOL_CALLER, (0x9B, pool_type, size, 0),
                           f"pool allocation with a zero tag (at {format_site(site)})")

    def ExAllocatePool2(self, Flags: int, NumberOfBytes: int, Tag: int | bytes) -> int | None:
        """The newer allocator: zeroed unless POOL_FLAG_UNINITIALIZED."""
        if Flags & POOL_FLAG_PAGED:
            pool_type = PoolType.PagedPoolCacheAligned if Flags & POOL_FLAG_CACHE_ALIGNED else PoolType.PagedPool
        elif Flags & POOL_FLAG_NON_PAGED_EXECUTE:
            pool_type = PoolType.NonPagedPoolCacheAligned if Flags & POOL_FLAG_CACHE_ALIGNED else PoolType.NonPagedPool
        elif Flags & POOL_FLAG_NON_PAGED:
            pool_type = (PoolType.NonPagedPoolNxCacheAligned if Flags & POOL_FLAG_CACHE_ALIGNED
                         else PoolType.NonPagedPoolNx)
        else:
            raise ArgumentError("ExAllocatePool2 needs POOL_FLAG_PAGED or POOL_FLAG_NON_PAGED", field="Flags",
                                value=Flags)
        check_size(NumberOfBytes, "NumberOfBytes")
        tag = tag_bytes(Tag, field="Tag")
        site = driver_site()
        if self._verifier_on:
            self._check_pool_call(pool_type, NumberOfBytes, tag, site)
        va = self._pool.allocate(int(pool_type), NumberOfBytes, tag, site)
        if va and not Flags & POOL_FLAG_UNINITIALIZED:
            self._memory.fill(va - self.kva_base, NumberOfBytes, 0)
        return va or None

    def ExFreePoolWithTag(self, P: int, Tag: int | bytes) -> None:
        """Free with the allocation's tag; another tag is BAD_POOL_CALLER 0xC2/0x0A."""
        self._pool.free(P or 0, tag_bytes(Tag, field="Tag") if Tag else None, driver_site())

    def ExFreePool(self, P: int) -> None:
        self._pool.free(P or 0, None, driver_site())

    # -- Rtl memory routines (driver code touching memory) ------------------------------------

    def RtlCopyMemory(self, Destination: Any, Source: Any, Length: int) -> None:
        check_size(Length, "Length")
        if self._verifier_on:
            for arg, what in ((Destination, "RtlCopyMemory writes"), (Source, "RtlCopyMemory reads")):
                if isinstance(arg, int):
                    self._check_request_buffer(arg, Length, what)
        self._sink(Destination, bytes(self._source(Source, Length, "Source")), "Destination")

    RtlMoveMemory = RtlCopyMemory

    def RtlFillMemory(self, Destination: Any, Length: int, Fill: int) -> None:
        check_size(Length, "Length")
        if self._verifier_on and isinstance(Destination, int):
            self._check_request_buffer(Destination, Length, "RtlFillMemory writes")
        self._sink(Destination, bytes([Fill & 0xFF]) * Length, "Destination")

    def RtlZeroMemory(self, Destination: Any, Length: int) -> None:
        self.RtlFillMemory(Destination, Length, 0)

    def RtlCompareMemory(self, Source1: Any, Source2: Any, Length: int) -> int:
        """Number of leading bytes that match."""
        a = bytes(self._source(Source1, Length, "Source1"))
        b = bytes(self._source(Source2, Length, "Source2"))
        for i in range(Length):
            if a[i] != b[i]:
                return i
        return Length
