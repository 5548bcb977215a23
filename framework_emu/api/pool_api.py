"""The driver's own pool buffers (ExAllocatePoolWithTag ...) and Rtl memory routines."""

from __future__ import annotations

from typing import Any

from ..bugcheck import (BAD_POOL_CALLER, BPC_ZERO_TAG, DRIVER_VERIFIER_DETECTED_VIOLATION, DV_DOUBLE_FREE,
                        DV_FREE_BAD_ADDRESS, DV_NONPAGED_ALLOCATION_IRQL, DV_NONPAGED_FREE_IRQL,
                        DV_PAGED_ALLOCATION_IRQL, DV_PAGED_FREE_IRQL, DV_ZERO_BYTE_ALLOCATION, BugCheck)
from ..callsite import driver_site, format_site
from ..errors import ArgumentError
from ..irql import APC_LEVEL, DISPATCH_LEVEL, irql_name
from ..pool import POOL_HEADER_SIZE, _VALID_POOL_TYPES, PoolType, check_pool_type, is_paged_pool, pool_kind_name
from ..pooltag import format_tag, tag_bytes, tag_value
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

        With the verifier on, Driver Verifier's checks (see :meth:`_verify_allocation`)."""
        if type(PoolType) is not int or PoolType not in _VALID_POOL_TYPES:
            PoolType = check_pool_type(PoolType)  # a plain int from here on (IntEnum hashes slowly)
        check_size(NumberOfBytes, "NumberOfBytes")
        tag = tag_bytes(Tag, field="Tag")
        site = driver_site()
        if self._verifier_on:
            self._verify_allocation(PoolType, NumberOfBytes, tag, site)
        return self._pool.allocate(int(PoolType), NumberOfBytes, tag, site) or None

    def _verify_allocation(self, pool_type: int, size: int, tag: bytes, site: Any) -> None:
        """Driver Verifier on the driver's pool allocation, in the order of the bug check
        reference [D; the order among them is I]: a zero-byte request 0xC4/0x00; paged
        pool above APC_LEVEL 0xC4/0x01, any pool above DISPATCH_LEVEL 0xC4/0x02 (P2 IRQL,
        P3 pool type, P4 bytes; paged as the kernel classifies it); a zero tag 0xC2/0x9B
        (P2 pool type, P3 bytes, P4 the caller's address: 0 here)."""
        level = self._irql.current
        if size == 0:
            raise BugCheck(DRIVER_VERIFIER_DETECTED_VIOLATION, (DV_ZERO_BYTE_ALLOCATION, level, pool_type, 0),
                           f"zero-byte pool allocation (at {format_site(site)})")
        paged = is_paged_pool(pool_type)
        if level > (APC_LEVEL if paged else DISPATCH_LEVEL):
            raise BugCheck(DRIVER_VERIFIER_DETECTED_VIOLATION,
                           (DV_PAGED_ALLOCATION_IRQL if paged else DV_NONPAGED_ALLOCATION_IRQL, level, pool_type, size),
                           f"{pool_kind_name(pool_type)} pool allocation at {irql_name(level)}"
                           f" (at {format_site(site)})")
        if tag == b"\0\0\0\0":
            raise BugCheck(BAD_POOL_CALLER, (BPC_ZERO_TAG, pool_type, size, 0),
                           f"pool allocation with a zero tag (at {format_site(site)})")

    def _verify_free(self, va: int, site: Any) -> None:
        """Driver Verifier on the driver's ExFreePool(WithTag) [D: 0xC4 reference]: an address
        no allocation returned 0xC4/0x10 (P2 the address); one already freed 0xC4/0x13 (P3
        the pool header's address, P4 its contents: the tag here [I]); paged pool freed above
        APC_LEVEL 0xC4/0x11, nonpaged above DISPATCH_LEVEL 0xC4/0x12 (P2 IRQL, P3 pool type,
        P4 address). A wrong tag is still the kernel's 0xC2/0x0A."""
        allocation = self._pool.allocation(va)
        if allocation is None:
            freed = self._pool.recently_freed.get(va)
            if freed is not None:
                raise BugCheck(DRIVER_VERIFIER_DETECTED_VIOLATION,
                               (DV_DOUBLE_FREE, 0, va - POOL_HEADER_SIZE, tag_value(freed[0])),
                               f"double free of pool block 0x{va:x} (tag {format_tag(freed[0])}), first freed at"
                               f" {format_site(freed[1])}, again at {format_site(site)}")
            raise BugCheck(DRIVER_VERIFIER_DETECTED_VIOLATION, (DV_FREE_BAD_ADDRESS, va, 0, 0),
                           f"free of 0x{va:x}, which no pool allocation returned (at {format_site(site)})")
        level = self._irql.current
        paged = is_paged_pool(allocation.pool_type)
        if level > (APC_LEVEL if paged else DISPATCH_LEVEL):
            raise BugCheck(DRIVER_VERIFIER_DETECTED_VIOLATION,
                           (DV_PAGED_FREE_IRQL if paged else DV_NONPAGED_FREE_IRQL, level, allocation.pool_type, va),
                           f"{pool_kind_name(allocation.pool_type)} pool freed at {irql_name(level)}"
                           f" (at {format_site(site)})")

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
            self._verify_allocation(pool_type, NumberOfBytes, tag, site)
        va = self._pool.allocate(int(pool_type), NumberOfBytes, tag, site)
        if va and not Flags & POOL_FLAG_UNINITIALIZED:
            self._memory.fill(va - self.kva_base, NumberOfBytes, 0)
        return va or None

    def ExFreePoolWithTag(self, P: int, Tag: int | bytes) -> None:
        """Free with the allocation's tag; another tag is BAD_POOL_CALLER 0xC2/0x0A."""
        self._free_pool(P, tag_bytes(Tag, field="Tag") if Tag else None)

    def ExFreePool(self, P: int) -> None:
        self._free_pool(P, None)

    def _free_pool(self, va: int, tag: bytes | None) -> None:
        site = driver_site()
        va = va or 0
        if self._verifier_on:
            self._verify_free(va, site)
        self._pool.free(va, tag, site)

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
