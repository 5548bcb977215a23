"""Per-tag accounting (poolmon) and allocation-failure injection."""

import pytest

from framework_emu import NTSTATUS, PoolType
from framework_emu.errors import ArgumentError


def test_poolmon_counts_per_tag_and_pool_type(fx):
    a = fx.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 100, b"Aaaa")
    b = fx.ExAllocatePoolWithTag(PoolType.PagedPool, 50, b"Aaaa")
    fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 10, "Bbbb")
    fx.ExFreePoolWithTag(a, b"Aaaa")
    rows = {(r.tag, r.kind): r for r in fx.pool.poolmon()}
    assert (rows[(b"Aaaa", "Nonp")].allocs, rows[(b"Aaaa", "Nonp")].frees, rows[(b"Aaaa", "Nonp")].bytes) == (1, 1, 0)
    assert (rows[(b"Aaaa", "Paged")].allocs, rows[(b"Aaaa", "Paged")].bytes) == (1, 50)
    assert rows[(b"Bbbb", "Nonp")].bytes == 10
    assert "Aaaa" in fx.pool.format_poolmon() and "Paged" in fx.pool.format_poolmon()
    fx.ExFreePool(b)
    assert fx.pool.tag_stats(b"Aaaa").bytes == 0


def test_c_style_tag_constant_and_display_bytes_are_the_same_tag(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, 0x6F686345)  # 'ohcE' in C
    assert fx.pool.allocation(va).tag == b"Echo"
    fx.ExFreePoolWithTag(va, b"Echo")


def test_framework_buffers_are_accounted_under_the_driver_tag_and_return_to_zero(fx):
    before = fx.pool.tag_stats(b"Echo").bytes
    handles = [fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, n)[1] for n in (10, 5000, 100)]
    assert fx.pool.tag_stats(b"Echo").bytes == before + 5110
    for h in handles:
        fx.WdfObjectDelete(h)
    assert fx.pool.tag_stats(b"Echo").bytes == before


def test_allocation_records_the_driver_call_site(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Site")
    site = fx.pool.allocation(va).site
    assert site[0] == __file__ and site[1] > 0


def test_fail_the_nth_allocation_once(make_fx):
    fx = make_fx(seed=1)
    plan = fx.inject_allocation_failures(nth=3)
    got = [fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Nth ") for _ in range(5)]
    assert [bool(v) for v in got] == [True, True, False, True, True]
    assert len(plan.fired) == 1 and plan.fired[0][1] == b"Nth "


def test_fail_by_tag_only_touches_that_tag(make_fx):
    fx = make_fx()
    fx.inject_allocation_failures(tag=b"Bad ", count=2)
    assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Good")
    assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Bad ") is None
    assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Bad ") is None
    assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Bad ")  # count exhausted


def test_probability_is_seeded_and_repeatable(make_fx):
    def pattern(seed):
        fx = make_fx(seed=seed)
        fx.inject_allocation_failures(probability=0.5, tag=b"Prob")
        return [bool(fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Prob")) for _ in range(40)]

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 5 < sum(pattern(7)) < 35


def test_cancelled_injection_stops_failing(make_fx):
    fx = make_fx()
    plan = fx.inject_allocation_failures(tag=b"Stop")
    assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Stop") is None
    plan.cancel()
    assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8, b"Stop")


def test_injected_failure_makes_wdf_memory_create_fail_cleanly(make_fx):
    fx = make_fx()
    fx.inject_allocation_failures(tag=b"Echo", nth=1)
    assert fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64) == (NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None, None)
    status, handle, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    assert status == NTSTATUS.STATUS_SUCCESS and handle


def test_bad_injection_arguments_are_rejected(make_fx):
    fx = make_fx()
    with pytest.raises(ArgumentError):
        fx.inject_allocation_failures(nth=0)
    with pytest.raises(ArgumentError):
        fx.inject_allocation_failures(probability=1.5)
