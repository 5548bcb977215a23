"""Memory descriptor lists: the pages behind a virtual range, as devices need them.

An MDL is a real structure in nonpaged pool (tag ``Mdl ``), laid out as the
x64 kernel's MDL: Next, Size, MdlFlags, ..., MappedSystemVa, StartVa,
ByteCount, ByteOffset, then the PFN array. The PFN array *is* that memory
(:meth:`Mdl.pfn_array` is a view of it), so the frame numbers a DMA engine
later reads are exactly the frames of the backing memory.
"""

from __future__ import annotations

import struct
from typing import Any

from .bugcheck import PAGE_FAULT_IN_NONPAGED_AREA, BugCheck
from .callsite import CallSite, driver_site, format_site
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE
from .pool import PoolType
from .recently_freed import RecentlyFreed

MDL_MAPPED_TO_SYSTEM_VA = 0x0001
MDL_PAGES_LOCKED = 0x0002
MDL_SOURCE_IS_NONPAGED_POOL = 0x0004
MDL_ALLOCATED_FIXED_SIZE = 0x0008
MDL_PARTIAL = 0x0010
MDL_PARTIAL_HAS_BEEN_MAPPED = 0x0020
MDL_IO_PAGE_READ = 0x0040
MDL_WRITE_OPERATION = 0x0080
MDL_IO_SPACE = 0x0800

MDL_FLAG_NAMES = {
    MDL_MAPPED_TO_SYSTEM_VA: "MAPPED_TO_SYSTEM_VA",
    MDL_PAGES_LOCKED: "PAGES_LOCKED",
    MDL_SOURCE_IS_NONPAGED_POOL: "SOURCE_IS_NONPAGED_POOL",
    MDL_ALLOCATED_FIXED_SIZE: "ALLOCATED_FIXED_SIZE",
    MDL_PARTIAL: "PARTIAL",
    MDL_PARTIAL_HAS_BEEN_MAPPED: "PARTIAL_HAS_BEEN_MAPPED",
    MDL_IO_PAGE_READ: "IO_PAGE_READ",
    MDL_WRITE_OPERATION: "WRITE_OPERATION",
    MDL_IO_SPACE: "IO_SPACE",
}

SIZEOF_MDL = 0x30
MDL_TAG = b"Mdl "
IOP_FIXED_SIZE_MDL_PFNS = 0x17   # IoAllocateMdl's fixed-size MDLs describe up to 23 pages [I]
MAX_MDL_LENGTH = (4 << 30) - PAGE_SIZE  # IoAllocateMdl's limit from Windows 7 on
FREED_MDLS_KEPT = 4096  # freed MDLs remembered to name a use after free

_HEADER = struct.Struct("<QHHHHQQQII")  # Next, Size, MdlFlags, AllocProc, Reserved, Process,
                                        # MappedSystemVa, StartVa, ByteCount, ByteOffset


def BYTE_OFFSET(va: int) -> int:
    return va & (PAGE_SIZE - 1)


def PAGE_ALIGN(va: int) -> int:
    return va & ~(PAGE_SIZE - 1)


def ADDRESS_AND_SIZE_TO_SPAN_PAGES(va: int, size: int) -> int:
    return (BYTE_OFFSET(va) + size + PAGE_SIZE - 1) >> PAGE_SHIFT


def MmSizeOfMdl(base: int, length: int) -> int:
    return SIZEOF_MDL + 8 * ADDRESS_AND_SIZE_TO_SPAN_PAGES(base, length)


def format_mdl_flags(flags: int) -> str:
    names = [name for bit, name in MDL_FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(MDL_FLAG_NAMES)
    if rest:
        names.append(f"0x{rest:x}")
    return "|".join(names) or "0"


class Mdl:
    """One MDL. Header fields are Python attributes mirrored into the structure on change."""

    def __init__(self, fx: Any, address: int, virtual_address: int, length: int,
                 site: CallSite | None, flags: int = 0) -> None:
        self._fx = fx
        self.address = address
        self.allocated_at = site
        self.freed_at: CallSite | None = None
        self._next: "Mdl | None" = None
        self.capacity = ADDRESS_AND_SIZE_TO_SPAN_PAGES(virtual_address, length)  # PFN slots
        self.Size = SIZEOF_MDL + 8 * self.capacity  # a CSHORT in C: stored truncated, as MmInitializeMdl does
        self.MdlFlags = (MDL_ALLOCATED_FIXED_SIZE if self.capacity <= IOP_FIXED_SIZE_MDL_PFNS else 0) | flags
        self.StartVa = PAGE_ALIGN(virtual_address)
        self.ByteOffset = BYTE_OFFSET(virtual_address)
        self.ByteCount = length
        self.MappedSystemVa = 0
        self.store()

    @property
    def Next(self) -> "Mdl | None":
        return self._next

    @Next.setter
    def Next(self, mdl: "Mdl | None") -> None:
        self._next = mdl
        self.store()

    @property
    def pages(self) -> int:
        """Pages the described range spans (ADDRESS_AND_SIZE_TO_SPAN_PAGES)."""
        # ADDRESS_AND_SIZE_TO_SPAN_PAGES(virtual_address(), ByteCount), spelled out: read per access
        span = (((self.StartVa + self.ByteOffset) & (PAGE_SIZE - 1)) + self.ByteCount + PAGE_SIZE - 1) >> PAGE_SHIFT
        return span if span < self.capacity else self.capacity

    @property
    def freed(self) -> bool:
        return self.freed_at is not None

    def store(self) -> None:
        """Write the header fields into the MDL's memory."""
        fx = self._fx
        _HEADER.pack_into(fx._memory.view(self.address - fx.kva_base, _HEADER.size), 0,
                          self._next.address if self._next else 0, self.Size & 0xFFFF, self.MdlFlags, 0, 0, 0,
                          self.MappedSystemVa & 0xFFFFFFFFFFFFFFFF, self.StartVa & 0xFFFFFFFFFFFFFFFF,
                          self.ByteCount & 0xFFFFFFFF, self.ByteOffset)

    def pfn_array(self) -> memoryview:
        """The PFN array in the MDL's own memory, as 64-bit entries (writable)."""
        gpa = self.address - self._fx.kva_base + SIZEOF_MDL
        return self._fx._memory.view(gpa, 8 * self.pages).cast("Q")

    def virtual_address(self) -> int:
        return self.StartVa + self.ByteOffset

    def __repr__(self) -> str:
        state = " FREED" if self.freed else ""
        return (f"<MDL 0x{self.address:x} va=0x{self.virtual_address():x} count=0x{self.ByteCount:x}"
                f" flags={format_mdl_flags(self.MdlFlags)}{state}>")


def iter_mdl_chain(mdl: Mdl | None):
    """The MDL and the ones chained after it through Next."""
    while mdl is not None:
        yield mdl
        mdl = mdl.Next


class MdlTable:
    """Every MDL of the emulated kernel: allocation in nonpaged pool, PFNs, free.

    The kernel routines (api/mdl_api.py) and the I/O manager's and the
    framework's own MDLs (requests) all go through this table; freed MDLs are
    remembered for a while so that a use after free names where it was freed."""

    def __init__(self, fx: Any) -> None:
        self.fx = fx
        self.live: dict[int, Mdl] = {}
        self.freed: RecentlyFreed[int, Mdl] = RecentlyFreed(FREED_MDLS_KEPT)

    def lookup(self, address: int) -> Mdl | None:
        """The MDL at ``address``, live or recently freed."""
        return self.live.get(address) or self.freed.get(address)

    def allocate(self, va: int, length: int, site: CallSite | None, flags: int = 0) -> Mdl | None:
        """IoAllocateMdl: an MDL for the range (nothing built yet), or None when out of pool.
        ``flags``: MdlFlags to start with (the I/O manager's locked caller pages: one header store)."""
        fx = self.fx
        block = fx._pool.allocate(PoolType.NonPagedPool, MmSizeOfMdl(va, length), MDL_TAG, site)
        if not block:
            return None
        mdl = Mdl(fx, block, va, length, site, flags)
        self.live[block] = mdl
        return mdl

    def free(self, mdl: Mdl, site: CallSite | None) -> None:
        """IoFreeMdl."""
        self.fx._pool.free(mdl.address, None, site)
        mdl.freed_at = site or ("<framework>", 0)
        del self.live[mdl.address]
        self.freed.remember(mdl.address, mdl)

    def fill_pfns(self, mdl: Mdl) -> None:
        """The frames behind the MDL's range into its PFN array (the direct map's frames)."""
        fx = self.fx
        pfns = mdl.pfn_array()
        base = mdl.StartVa - fx.kva_base
        for i in range(mdl.pages):
            gpa = base + (i << PAGE_SHIFT)
            if gpa < 0 or not fx._memory.contains(gpa, PAGE_SIZE):
                raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (mdl.StartVa + (i << PAGE_SHIFT), 0, 0, 0),
                               f"MDL 0x{mdl.address:x} describes 0x{mdl.StartVa + (i << PAGE_SHIFT):x},"
                               f" which is not mapped memory (at {format_site(driver_site())})")
            pfns[i] = gpa >> PAGE_SHIFT

    def build_for_nonpaged_pool(self, mdl: Mdl) -> None:
        """MmBuildMdlForNonPagedPool: fill the PFNs, map the MDL at its own address."""
        self.fill_pfns(mdl)
        mdl.MappedSystemVa = mdl.virtual_address()
        mdl.MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL
        mdl.store()

    def nonpaged_pool_mdl(self, va: int, length: int, site: CallSite | None) -> Mdl | None:
        """IoAllocateMdl + MmBuildMdlForNonPagedPool over a nonpaged buffer (FxMdlAllocate's use)."""
        mdl = self.allocate(va, length, site)
        if mdl is not None:
            self.build_for_nonpaged_pool(mdl)
        return mdl

    def locked(self, va: int, length: int, write: bool, site: CallSite | None) -> Mdl | None:
        """The MDL the I/O manager builds for direct I/O (pages probed and locked)."""
        mdl = self.allocate(va, length, site)
        if mdl is None:
            return None
        self.fill_pfns(mdl)
        mdl.MdlFlags |= MDL_PAGES_LOCKED | (MDL_WRITE_OPERATION if write else 0)
        mdl.store()
        return mdl
