"""MDLs: fields, PFNs that are the real frames, chains, flags, partial MDLs, freeing."""

import struct

import pytest

from framework_emu import (ADDRESS_AND_SIZE_TO_SPAN_PAGES, MDL_MAPPED_TO_SYSTEM_VA, MDL_PARTIAL,
                           MDL_SOURCE_IS_NONPAGED_POOL, PAGE_SIZE, BugCheck, Framework, InProcessMemory, MmSizeOfMdl,
                           PoolType, iter_mdl_chain)
from framework_emu.mdl import SIZEOF_MDL

GIB = 1 << 30


@pytest.fixture
def region(fx):
    return fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 5 * PAGE_SIZE, b"Dma ")


def test_allocate_sets_start_offset_and_count(fx, region):
    mdl = fx.IoAllocateMdl(region + 100, 9000)
    assert mdl.StartVa == region and mdl.ByteOffset == 100 and mdl.ByteCount == 9000
    assert fx.MmGetMdlByteOffset(mdl) == 100 and fx.MmGetMdlByteCount(mdl) == 9000
    assert fx.MmGetMdlVirtualAddress(mdl) == region + 100 and fx.MmGetMdlBaseVa(mdl) == region
    assert mdl.Size == MmSizeOfMdl(region + 100, 9000) == SIZEOF_MDL + 8 * 3
    assert fx.pool.allocation(mdl.address).tag == b"Mdl "


def test_span_pages_formula():
    assert ADDRESS_AND_SIZE_TO_SPAN_PAGES(0x1000, 0x1000) == 1
    assert ADDRESS_AND_SIZE_TO_SPAN_PAGES(0x1FFF, 2) == 2
    assert ADDRESS_AND_SIZE_TO_SPAN_PAGES(0x1000, 0) == 0
    assert ADDRESS_AND_SIZE_TO_SPAN_PAGES(0x1010, 0) == 1


def test_length_limit_from_windows_7_on(fx, region):
    assert fx.IoAllocateMdl(region, (4 << 30) - PAGE_SIZE) is not None
    assert fx.IoAllocateMdl(region, (4 << 30) - PAGE_SIZE + 1) is None


def test_build_for_nonpaged_pool_fills_the_real_frames(fx, region):
    mdl = fx.IoAllocateMdl(region + 100, 3 * PAGE_SIZE)
    fx.MmBuildMdlForNonPagedPool(mdl)
    first = fx.va_to_gpa(region) >> 12
    assert list(fx.MmGetMdlPfnArray(mdl)) == [first, first + 1, first + 2, first + 3]
    assert mdl.MdlFlags & MDL_SOURCE_IS_NONPAGED_POOL
    assert fx.MmGetSystemAddressForMdlSafe(mdl) == region + 100


def test_the_mdl_structure_is_in_memory_with_the_pfns(fx, region):
    mdl = fx.IoAllocateMdl(region + 8, 2 * PAGE_SIZE)
    fx.MmBuildMdlForNonPagedPool(mdl)
    raw = fx.read(mdl.address, mdl.Size)
    next_, size, flags = struct.unpack_from("<QHH", raw, 0)
    mapped, start, count, offset = struct.unpack_from("<QQII", raw, 0x18)
    assert (next_, size, start, count, offset, mapped) == (0, mdl.Size, region, 2 * PAGE_SIZE, 8, region + 8)
    assert flags & MDL_SOURCE_IS_NONPAGED_POOL
    pfns = struct.unpack_from("<3Q", raw, SIZEOF_MDL)
    assert list(pfns) == [(fx.va_to_gpa(region) >> 12) + i for i in range(3)]
    fx.MmGetMdlPfnArray(mdl)[0] = 0x1234  # the array is that memory
    assert struct.unpack_from("<Q", fx.read(mdl.address + SIZEOF_MDL, 8))[0] == 0x1234


def test_chains_through_next(fx, region):
    a = fx.IoAllocateMdl(region, 100)
    b = fx.IoAllocateMdl(region + PAGE_SIZE, 100)
    a.Next = b
    assert list(iter_mdl_chain(a)) == [a, b]
    assert struct.unpack_from("<Q", fx.read(a.address, 8))[0] == b.address


def test_mapping_an_unbuilt_mdl_maps_its_frames(fx, region):
    mdl = fx.IoAllocateMdl(region + 16, 100)
    fx.MmGetMdlPfnArray(mdl)[0] = fx.va_to_gpa(region) >> 12
    assert fx.MmGetSystemAddressForMdlSafe(mdl) == region + 16 and mdl.MdlFlags & MDL_MAPPED_TO_SYSTEM_VA


def test_partial_mdl_describes_part_of_the_source(fx, region):
    source = fx.IoAllocateMdl(region, 5 * PAGE_SIZE)
    fx.MmBuildMdlForNonPagedPool(source)
    target = fx.IoAllocateMdl(0, 3 * PAGE_SIZE)
    fx.IoBuildPartialMdl(source, target, region + PAGE_SIZE + 10, PAGE_SIZE)
    first = fx.va_to_gpa(region) >> 12
    assert list(fx.MmGetMdlPfnArray(target)) == [first + 1, first + 2]
    assert target.MdlFlags & MDL_PARTIAL and fx.MmGetSystemAddressForMdlSafe(target) == region + PAGE_SIZE + 10


def test_freed_mdl_is_a_use_after_free_naming_where_it_was_freed(fx, region):
    mdl = fx.IoAllocateMdl(region, 100)
    fx.IoFreeMdl(mdl)
    with pytest.raises(BugCheck) as bc:
        fx.MmGetMdlByteCount(mdl)
    assert bc.value.code == 0xD5 and "after IoFreeMdl at" in str(bc.value)
    assert fx.pool.allocation(mdl.address) is None


def test_pfns_above_4_gib(tmp_path):
    memory = InProcessMemory(ranges=[(0, 16 << 20), (4 * GIB, 4 * GIB + (16 << 20))])
    fx = Framework(memory, service_name="WDFHigh", pool_window=(4 * GIB, 16 << 20))
    _, mem, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 2 * PAGE_SIZE)
    mdl = fx.IoAllocateMdl(va, 2 * PAGE_SIZE)
    fx.MmBuildMdlForNonPagedPool(mdl)
    assert all(pfn >= 0x100000 for pfn in fx.MmGetMdlPfnArray(mdl))
    assert fx.va_to_gpa(va) >= 4 * GIB and fx.gpa_to_va(fx.va_to_gpa(va)) == va


def test_building_an_mdl_over_unmapped_memory_page_faults(fx):
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(1 << 40), 100)
    with pytest.raises(BugCheck) as bc:
        fx.MmBuildMdlForNonPagedPool(mdl)
    assert bc.value.code == 0x50
