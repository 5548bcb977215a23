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

from .callsite import CallSite
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE

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
                 site: CallSite | None) -> None:
        self._fx = fx
        self.address = address
        self.allocated_at = site
        self.freed_at: CallSite | None = None
        self._next: "Mdl | None" = None
        self.capacity = ADDRESS_AND_SIZE_TO_SPAN_PAGES(virtual_address, length)  # PFN slots
        self.Size = SIZEOF_MDL + 8 * self.capacity  # a CSHORT in C: stored truncated, as MmInitializeMdl does
        self.MdlFlags = MDL_ALLOCATED_FIXED_SIZE if self.capacity <= IOP_FIXED_SIZE_MDL_PFNS else 0
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
        return min(ADDRESS_AND_SIZE_TO_SPAN_PAGES(self.virtual_address(), self.ByteCount), self.capacity)

    @property
    def freed(self) -> bool:
        return self.freed_at is not None

    def store(self) -> None:
        """Write the header fields into the MDL's memory."""
        header = _HEADER.pack(self._next.address if self._next else 0, self.Size & 0xFFFF, self.MdlFlags, 0, 0, 0,
                              self.MappedSystemVa & 0xFFFFFFFFFFFFFFFF, self.StartVa & 0xFFFFFFFFFFFFFFFF,
                              self.ByteCount & 0xFFFFFFFF, self.ByteOffset)
        self._fx._memory.write(self.address - self._fx.kva_base, header)

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
