"""poolmon's rows equal counters kept the obvious way, whatever the sequence of calls.

The pool counts only frees as they happen and reads allocations and bytes off
its live allocations when asked; this property holds it to a model that counts
everything eagerly (allocations, frees, bytes per tag and poolmon Type),
including frees with a wrong tag (a bug check that must change nothing) and
allocations that were made to fail.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework_emu import PAGE_SIZE, InProcessMemory, PoolType
from framework_emu.bugcheck import BugCheck
from framework_emu.core import KVA_DIRECT_MAP_BASE
from framework_emu.pool import SMALL_BLOCK_LIMIT, Pool, pool_kind

WINDOW = (1 << 20, 3 << 20)
TAGS = [b"Aaaa", b"Bbbb", b"Cc\x00\x00"]
POOL_TYPES = [PoolType.NonPagedPool, PoolType.PagedPool, PoolType.NonPagedPoolNx,
              PoolType.NonPagedPoolCacheAligned, PoolType.PagedPoolCacheAligned]

operation = st.one_of(
    st.tuples(st.just("alloc"), st.sampled_from(POOL_TYPES),
              st.one_of(st.integers(1, 256), st.integers(1, SMALL_BLOCK_LIMIT + 64), st.integers(1, 3 * PAGE_SIZE)),
              st.sampled_from(TAGS)),
    st.tuples(st.just("free"), st.integers(0, 10_000), st.booleans()),
    st.tuples(st.just("fail_next")),
)


def model_rows(model: dict) -> list[tuple]:
    return sorted(((-c[2], tag, kind, c[0], c[1], c[2]) for (tag, kind), c in model.items()))


@settings(max_examples=120, deadline=None)
@given(st.lists(operation, max_size=80))
def test_poolmon_tag_stats_and_bytes_match_an_eager_model(ops):
    pool = Pool(InProcessMemory(size=4 << 20), WINDOW, KVA_DIRECT_MAP_BASE)
    live: dict[int, tuple[int, bytes, str]] = {}
    model: dict[tuple[bytes, str], list[int]] = {}
    for op in ops:
        if op[0] == "alloc":
            _, ptype, nbytes, tag = op
            va = pool.allocate(ptype, nbytes, tag)
            if va:
                kind = pool_kind(ptype)
                live[va] = (nbytes, tag, kind)
                row = model.setdefault((tag, kind), [0, 0, 0])
                row[0] += 1
                row[2] += nbytes
        elif op[0] == "fail_next":
            pool.inject_failures(nth=1)
        elif live:
            _, pick, wrong_tag = op
            va = sorted(live)[pick % len(live)]
            nbytes, tag, kind = live[va]
            if wrong_tag:
                with pytest.raises(BugCheck):
                    pool.free(va, b"Zzzz")
                continue
            pool.free(va, tag)
            del live[va]
            row = model[(tag, kind)]
            row[1] += 1
            row[2] -= nbytes
        got = [(-r.bytes, r.tag, r.kind, r.allocs, r.frees, r.bytes) for r in pool.poolmon()]
        assert got == model_rows(model)
        for tag in TAGS:
            stats = pool.tag_stats(tag)
            mine = [c for (t, _kind), c in model.items() if t == tag]
            assert (stats.allocs, stats.frees, stats.bytes) == tuple(sum(c[i] for c in mine) for i in range(3))
            assert pool.bytes_in_use(tag) == stats.bytes
        assert pool.bytes_in_use() == sum(n for n, _t, _k in live.values())
