"""Pool placement: whole pages from PAGE_SIZE up, 16-byte blocks below, never zeroed."""

import pytest

from framework_emu import PAGE_SIZE, InProcessMemory, PoolType
from framework_emu.bugcheck import BugCheck
from framework_emu.core import KVA_DIRECT_MAP_BASE
from framework_emu.errors import ArgumentError
from framework_emu.pool import POOL_HEADER_SIZE, SMALL_BLOCK_LIMIT, Pool

GIB = 1 << 30


def make_pool(size=8 << 20, window=None, memory=None):
    memory = memory or InProcessMemory(size=size)
    return Pool(memory, window or (1 << 20, size - (1 << 20)), KVA_DIRECT_MAP_BASE)


@pytest.mark.parametrize("size", [PAGE_SIZE, PAGE_SIZE + 1, 3 * PAGE_SIZE, SMALL_BLOCK_LIMIT + 1])
def test_big_requests_are_page_aligned_whole_pages(size):
    pool = make_pool()
    va = pool.allocate(PoolType.NonPagedPool, size, b"Test")
    assert va % PAGE_SIZE == 0
    other = pool.allocate(PoolType.NonPagedPool, 16, b"Test")
    pages = -(-size // PAGE_SIZE)
    assert not va <= other < va + pages * PAGE_SIZE


@pytest.mark.parametrize("size", [1, 15, 16, 17, 100, 1000, SMALL_BLOCK_LIMIT])
def test_small_requests_are_16_byte_aligned_and_stay_in_one_page(size):
    pool = make_pool()
    for _ in range(50):
        va = pool.allocate(PoolType.NonPagedPool, size, b"Test")
        assert va % 16 == 0
        assert va // PAGE_SIZE == (va + size - 1) // PAGE_SIZE
        assert va % PAGE_SIZE >= POOL_HEADER_SIZE  # the pool header sits before the block


def test_cache_aligned_pool_types_align_to_a_cache_line():
    pool = make_pool()
    for _ in range(20):
        assert pool.allocate(PoolType.NonPagedPoolCacheAligned, 40, b"Test") % 64 == 0


def test_freed_block_comes_back_first_with_its_data():
    memory = InProcessMemory(size=8 << 20)
    pool = make_pool(memory=memory)
    a = pool.allocate(PoolType.NonPagedPool, 100, b"Test")
    memory.write(a - KVA_DIRECT_MAP_BASE, b"old secret")
    pool.free(a)
    b = pool.allocate(PoolType.NonPagedPool, 100, b"Test")
    assert b == a
    assert memory.read(b - KVA_DIRECT_MAP_BASE, 10) == b"old secret"  # not zeroed


def test_paged_and_nonpaged_pools_use_different_pages():
    pool = make_pool()
    a = pool.allocate(PoolType.NonPagedPool, 64, b"Test")
    b = pool.allocate(PoolType.PagedPool, 64, b"Test")
    assert a // PAGE_SIZE != b // PAGE_SIZE


def test_exhausted_window_returns_zero_and_counts():
    pool = make_pool(size=4 << 20, window=(1 << 20, 4 * PAGE_SIZE))
    assert pool.allocate(PoolType.NonPagedPool, 4 * PAGE_SIZE, b"Test")
    assert pool.allocate(PoolType.NonPagedPool, PAGE_SIZE, b"Test") == 0
    assert pool.failed == 1


def test_empty_pool_pages_are_returned_when_big_allocations_need_them():
    pool = make_pool(size=4 << 20, window=(1 << 20, 8 * PAGE_SIZE))
    small = [pool.allocate(PoolType.NonPagedPool, 3000, b"Test") for _ in range(8)]  # one per page
    assert all(small)
    assert pool.allocate(PoolType.NonPagedPool, 4 * PAGE_SIZE, b"Big ") == 0
    for va in small:
        pool.free(va)
    assert pool.allocate(PoolType.NonPagedPool, 4 * PAGE_SIZE, b"Big ")


def test_window_above_4_gib_gives_addresses_and_frames_above_4_gib():
    memory = InProcessMemory(ranges=[(0, 16 << 20), (4 * GIB, 4 * GIB + (16 << 20))])
    pool = Pool(memory, (4 * GIB, 16 << 20), KVA_DIRECT_MAP_BASE)
    va = pool.allocate(PoolType.NonPagedPool, 3 * PAGE_SIZE, b"High")
    gpa = va - KVA_DIRECT_MAP_BASE
    assert gpa >= 4 * GIB and gpa >> 12 >= 0x100000
    memory.write(gpa, b"x" * 3 * PAGE_SIZE)  # really backed


def test_window_over_a_ram_hole_never_hands_out_the_hole():
    memory = InProcessMemory(ranges=[(0, 8 << 20), (16 << 20, 24 << 20)])
    pool = Pool(memory, (4 << 20, 20 << 20), KVA_DIRECT_MAP_BASE)
    got = []
    while True:
        va = pool.allocate(PoolType.NonPagedPool, 2 * PAGE_SIZE, b"Test")
        if not va:
            break
        got.append(va - KVA_DIRECT_MAP_BASE)
    assert got
    for gpa in got:
        assert memory.contains(gpa, 2 * PAGE_SIZE)


def test_window_without_ram_is_a_clear_error():
    memory = InProcessMemory(size=4 << 20)
    with pytest.raises(ArgumentError, match="pool_window"):
        Pool(memory, (64 << 20, 1 << 20), KVA_DIRECT_MAP_BASE)


def test_bad_frees_bug_check_bad_pool_caller():
    pool = make_pool()
    va = pool.allocate(PoolType.NonPagedPool, 64, b"Test")
    with pytest.raises(BugCheck) as wrong_tag:
        pool.free(va, b"Nope")
    assert wrong_tag.value.code == 0xC2 and wrong_tag.value.params[0] == 0x0A
    pool.free(va, b"Test")
    with pytest.raises(BugCheck) as double:
        pool.free(va)
    assert double.value.code == 0xC2 and double.value.params[0] == 0x07
    with pytest.raises(BugCheck) as garbage:
        pool.free(va + 8)
    assert garbage.value.params[0] == 0x42


def test_hooks_and_poisoning_see_every_allocation_and_free():
    memory = InProcessMemory(size=8 << 20)
    pool = make_pool(memory=memory)
    seen = []
    pool.on_allocate.append(lambda rec: seen.append(("alloc", rec.va, rec.size, rec.tag)))
    pool.on_free.append(lambda rec: seen.append(("free", rec.va, rec.size, rec.tag)))
    pool.free_fill = 0xDD
    va = pool.allocate(PoolType.NonPagedPool, 32, b"Hook")
    pool.free(va)
    assert seen == [("alloc", va, 32, b"Hook"), ("free", va, 32, b"Hook")]
    assert memory.read(va - KVA_DIRECT_MAP_BASE, 32) == b"\xdd" * 32


@pytest.mark.parametrize("size", [4016, 4017, 4080])
def test_cache_aligned_blocks_never_spill_out_of_their_page(size):
    pool = make_pool()
    va = pool.allocate(PoolType.NonPagedPoolCacheAligned, size, b"Test")
    assert va % 64 == 0 and va // PAGE_SIZE == (va + size - 1) // PAGE_SIZE
    other = pool.allocate(PoolType.NonPagedPoolCacheAligned, 1, b"Test")
    assert not va <= other < va + size
