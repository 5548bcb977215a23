"""MDL routines of the kernel (IoAllocateMdl, MmBuildMdlForNonPagedPool, accessors)."""

from __future__ import annotations

from typing import Any

from ..bugcheck import DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL, PAGE_FAULT_IN_NONPAGED_AREA, BugCheck
from ..callsite import CallSite, driver_site, format_site
from ..errors import ArgumentError
from ..mdl import (MAX_MDL_LENGTH, MDL_MAPPED_TO_SYSTEM_VA, MDL_PARTIAL, MDL_PARTIAL_HAS_BEEN_MAPPED,
                   MDL_SOURCE_IS_NONPAGED_POOL, ADDRESS_AND_SIZE_TO_SPAN_PAGES, Mdl)
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE
from .validation import check_size

NormalPagePriority = 16
HighPagePriority = 32
LowPagePriority = 0
MdlMappingNoExecute = 0x40000000


class MdlApi:
    """MDLs whose PFNs are the real frames of the backing memory."""

    def IoAllocateMdl(self, VirtualAddress: int, Length: int, SecondaryBuffer: bool = False,
                      ChargeQuota: bool = False, Irp: Any = None) -> Mdl | None:
        """An MDL for ``Length`` bytes at ``VirtualAddress`` (nothing built yet), or None.
        Lengths above 4 GB - PAGE_SIZE are refused, as from Windows 7 on."""
        if not isinstance(VirtualAddress, int):
            raise ArgumentError("VirtualAddress is a kernel virtual address", field="VirtualAddress",
                                value=type(VirtualAddress).__name__)
        check_size(Length, "Length")
        if Irp is not None:
            raise ArgumentError("the emulator builds MDLs without an IRP; pass Irp=None", field="Irp", value=Irp)
        if Length > MAX_MDL_LENGTH:
            return None
        site = driver_site()
        if self._verifier_on and VirtualAddress:
            self._check_request_buffer(VirtualAddress, Length, "IoAllocateMdl describes", site)
        return self._mdl_table.allocate(VirtualAddress, Length, site)

    def _mdl(self, ref: Any) -> Mdl:
        """The live MDL for an Mdl object or its address; a freed one is a use after free."""
        if isinstance(ref, Mdl):
            mdl = ref
        elif not ref:
            raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (0, 0, 0, 0),
                           f"NULL MDL dereferenced (at {format_site(driver_site())})")
        elif isinstance(ref, int):
            mdl = self._mdl_table.lookup(ref)
            if mdl is None:
                raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (ref, 0, 0, 0),
                               f"0x{ref:x} is not an MDL (at {format_site(driver_site())})")
        else:
            raise ArgumentError("expected an MDL (or its address)", field="Mdl", value=type(ref).__name__)
        if mdl.freed_at is not None:
            raise BugCheck(DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL, (mdl.address, 0, 0, 0),
                           f"MDL 0x{mdl.address:x} used at {format_site(driver_site())} after IoFreeMdl at"
                           f" {format_site(mdl.freed_at)} (allocated at {format_site(mdl.allocated_at)})")
        return mdl

    def IoFreeMdl(self, Mdl: Any) -> None:
        self._mdl_table.free(self._mdl(Mdl), driver_site())

    def MmBuildMdlForNonPagedPool(self, MemoryDescriptorList: Any) -> None:
        """Fill the PFN array with the frames behind the MDL's range and map it (its own VA)."""
        self._mdl_table.build_for_nonpaged_pool(self._mdl(MemoryDescriptorList))

    def MmGetMdlPfnArray(self, Mdl: Any) -> memoryview:
        """The PFN array (64-bit entries) in the MDL's own memory."""
        return self._mdl(Mdl).pfn_array()

    def MmGetMdlByteCount(self, Mdl: Any) -> int:
        return self._mdl(Mdl).ByteCount

    def MmGetMdlByteOffset(self, Mdl: Any) -> int:
        return self._mdl(Mdl).ByteOffset

    def MmGetMdlVirtualAddress(self, Mdl: Any) -> int:
        return self._mdl(Mdl).virtual_address()

    def MmGetMdlBaseVa(self, Mdl: Any) -> int:
        return self._mdl(Mdl).StartVa

    def MmGetSystemAddressForMdlSafe(self, Mdl: Any, Priority: int = NormalPagePriority) -> int | None:
        """The MDL's system address: MappedSystemVa if mapped or from nonpaged pool, else a
        mapping of its pages. Physically contiguous pages of framework memory map through
        the direct map; scattered pages (and every MDL over a guest caller's frames) get a
        system-PTE mapping (system_ptes.py), as the memory manager gives one."""
        return self._system_address_for_mdl(self._mdl(Mdl), None)

    def _system_address_for_mdl(self, mdl: Any, site: CallSite | None) -> int | None:
        """MmGetSystemAddressForMdlSafe for the framework itself: ``site`` is the driver call the
        mapping is made for, when the caller knows it (None: looked up, only if one is made)."""
        if mdl.MdlFlags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL):
            return mdl.MappedSystemVa
        pfns = mdl.pfn_array()
        if mdl.pages == 0:
            return None
        first = pfns[0]
        if getattr(mdl, "caller_frames", False) or any(pfns[i] != first + i for i in range(1, mdl.pages)):
            base = self._system_ptes.map(pfns.tolist(), f"system mapping of MDL 0x{mdl.address:x}",
                                        site or driver_site())
            mdl.MappedSystemVa = base + mdl.ByteOffset
            mdl.MdlFlags |= MDL_MAPPED_TO_SYSTEM_VA
            mdl.store()
            return mdl.MappedSystemVa
        mdl.MappedSystemVa = self.gpa_to_va(first << PAGE_SHIFT) + mdl.ByteOffset
        mdl.MdlFlags |= MDL_MAPPED_TO_SYSTEM_VA
        mdl.store()
        return mdl.MappedSystemVa

    def IoBuildPartialMdl(self, SourceMdl: Any, TargetMdl: Any, VirtualAddress: int, Length: int) -> None:
        """Describe part of SourceMdl's range in TargetMdl (Length 0: to the source's end)."""
        source = self._mdl(SourceMdl)
        target = self._mdl(TargetMdl)
        start = source.virtual_address()
        end = start + source.ByteCount
        if Length == 0:
            Length = end - VirtualAddress
        if not (start <= VirtualAddress and VirtualAddress + Length <= end and Length >= 0):
            raise ArgumentError(f"the range 0x{VirtualAddress:x}+0x{Length:x} is not inside the source MDL"
                                f" (0x{start:x}-0x{end:x})", field="VirtualAddress", value=VirtualAddress)
        pages = ADDRESS_AND_SIZE_TO_SPAN_PAGES(VirtualAddress, Length)
        if pages > target.capacity:
            raise ArgumentError(f"the target MDL has room for {target.capacity} page(s), the range spans {pages}",
                                field="TargetMdl", value=target)
        first = ((VirtualAddress & ~(PAGE_SIZE - 1)) - source.StartVa) >> PAGE_SHIFT
        target.StartVa = VirtualAddress & ~(PAGE_SIZE - 1)
        target.ByteOffset = VirtualAddress & (PAGE_SIZE - 1)
        target.ByteCount = Length
        src = source.pfn_array()
        dst = target.pfn_array()
        for i in range(pages):
            dst[i] = src[first + i]
        target.MdlFlags = (target.MdlFlags & ~(MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL)) | MDL_PARTIAL
        if source.MdlFlags & MDL_SOURCE_IS_NONPAGED_POOL:
            target.MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL
            target.MappedSystemVa = source.MappedSystemVa + (VirtualAddress - start)
        elif source.MdlFlags & MDL_MAPPED_TO_SYSTEM_VA:
            target.MdlFlags |= MDL_PARTIAL_HAS_BEEN_MAPPED
            target.MappedSystemVa = source.MappedSystemVa + (VirtualAddress - start)
        target.store()
