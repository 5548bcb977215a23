"""Properties of the pools under random allocate/free sequences (hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from framework_emu import PAGE_SIZE, InProcessMemory, PoolType
from framework_emu.core import KVA_DIRECT_MAP_BASE
from framework_emu.pool import SMALL_BLOCK_LIMIT, Pool, is_cache_aligned

WINDOW = (1 << 20, 3 << 20)
POOL_TYPES = [PoolType.NonPagedPool, PoolType.PagedPool, PoolType.NonPagedPoolNx,
              PoolType.NonPagedPoolCacheAligned, PoolType.PagedPoolCacheAligned]

operation = st.one_of(
    st.tuples(st.just("alloc"), st.sampled_from(POOL_TYPES),
              st.one_of(st.integers(1, 256), st.integers(1, SMALL_BLOCK_LIMIT + 64), st.integers(1, 5 * PAGE_SIZE)),
              st.sampled_from([b"Aaaa", b"Bbbb"])),
    st.tuples(st.just("free"), st.integers(0, 10_000)),
)


def check_invariants(pool, live):
    spans = sorted((va, va + max(size, 1)) for va, (size, _ptype) in live.items())
    for (a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        assert a1 <= b0, "two live allocations overlap"
    base, size = WINDOW
    for va, (nbytes, ptype) in live.items():
        gpa = va - KVA_DIRECT_MAP_BASE
        assert base <= gpa and gpa + nbytes <= base + size
        if nbytes > SMALL_BLOCK_LIMIT:
            assert va % PAGE_SIZE == 0
        else:
            assert va % (64 if is_cache_aligned(ptype) else 16) == 0
            assert va // PAGE_SIZE == (va + nbytes - 1) // PAGE_SIZE
    assert pool.bytes_in_use() == sum(n for n, _ in live.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=120))
def test_no_overlap_alignment_and_exact_accounting(ops):
    memory = InProcessMemory(size=4 << 20)
    pool = Pool(memory, WINDOW, KVA_DIRECT_MAP_BASE)
    live = {}
    for op in ops:
        if op[0] == "alloc":
            _, ptype, nbytes, tag = op
            va = pool.allocate(ptype, nbytes, tag)
            if va:
                assert va not in live
                live[va] = (nbytes, ptype)
        elif live:
            va = sorted(live)[op[1] % len(live)]
            assert pool.free(va) == live.pop(va)[0]
        check_invariants(pool, live)
    for va in list(live):
        pool.free(va)
    assert pool.bytes_in_use() == 0
    assert all(row.allocs == row.frees for row in pool.poolmon())
    pool.trim()
    assert pool.pages.free_pages == pool.pages.total_pages
    assert pool.pages.extents() == [(WINDOW[0], WINDOW[0] + WINDOW[1])]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([PoolType.NonPagedPool, PoolType.PagedPool]),
                          st.integers(1, 3 * PAGE_SIZE)), min_size=1, max_size=40))
def test_framework_memory_accounting_returns_to_zero_after_deletes(sizes):
    from framework_emu import Framework

    for verifier in (True, False):
        fx = Framework(InProcessMemory(size=8 << 20), service_name="WDFTest", verifier=verifier)
        baseline = fx.pool.bytes_in_use()
        handles = []
        for ptype, nbytes in sizes:
            status, handle, va = fx.WdfMemoryCreate(None, ptype, b"Prop", nbytes)
            assert status == 0
            if nbytes >= PAGE_SIZE:
                assert va % PAGE_SIZE == 0
            else:
                assert va % 16 == 0
            handles.append(handle)
        assert fx.pool.tag_stats(b"Prop").bytes >= sum(n for _, n in sizes)
        for handle in handles:
            fx.WdfObjectDelete(handle)
        assert fx.pool.tag_stats(b"Prop").bytes == 0
        assert fx.pool.bytes_in_use() == baseline


def test_recently_freed_keeps_at_least_its_capacity_newest_first():
    from framework_emu.recently_freed import RecentlyFreed

    history = RecentlyFreed(4)
    for key in range(20):
        history.remember(key, f"v{key}")
        assert len(history) < 8 and all(k in history for k in range(max(0, key - 3), key + 1))
    history.remember(16, "again")                 # remembered again: now the newest
    for key in range(20, 23):
        history.remember(key, key)
    assert history.get(16) == "again" and history.get(0) is None
