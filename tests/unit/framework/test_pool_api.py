"""The driver's own pool calls and the Rtl memory routines."""

import pytest

from framework_emu import (DISPATCH_LEVEL, POOL_FLAG_NON_PAGED, POOL_FLAG_PAGED, POOL_FLAG_UNINITIALIZED, BugCheck,
                           PoolType)
from framework_emu.errors import ArgumentError


def test_allocate_with_tag_is_not_zeroed_and_allocate2_is(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 32, b"Old ")
    fx.write(va, b"\x77" * 32)
    fx.ExFreePoolWithTag(va, b"Old ")
    again = fx.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 32, b"Old ")
    assert again == va and fx.read(again, 32) == b"\x77" * 32
    fx.ExFreePool(again)
    zeroed = fx.ExAllocatePool2(POOL_FLAG_NON_PAGED, 32, b"Old ")  # NonPagedPoolNx, zeroed
    assert zeroed == va and fx.read(zeroed, 32) == b"\0" * 32
    fx.write(zeroed, b"\x77" * 32)
    fx.ExFreePool(zeroed)
    raw = fx.ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_UNINITIALIZED, 32, b"Old ")
    assert raw == va and fx.read(raw, 32) == b"\x77" * 32
    paged = fx.ExAllocatePool2(POOL_FLAG_PAGED, 16, b"Pg  ")
    assert fx.pool.allocation(paged).pool_type == PoolType.PagedPool
    with pytest.raises(ArgumentError):
        fx.ExAllocatePool2(0, 16, b"None")


def test_zero_tag_is_refused_under_the_verifier(fx, fx_off):
    with pytest.raises(BugCheck) as bc:
        fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, 0)
    assert (bc.value.code, bc.value.params[0]) == (0xC2, 0x9B)
    assert fx_off.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, 0)


def test_free_with_the_wrong_tag(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, b"Mine")
    with pytest.raises(BugCheck) as bc:
        fx.ExFreePoolWithTag(va, b"Your")
    assert bc.value.params[:2] == (0x0A, va) and "Mine" in str(bc.value)


def test_unknown_pool_type_is_an_argument_error(fx):
    with pytest.raises(ArgumentError, match="PoolType"):
        fx.ExAllocatePoolWithTag(3, 16, b"Bad ")


def test_rtl_routines(fx):
    a = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, b"Rtl ")
    b = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, b"Rtl ")
    fx.RtlFillMemory(a, 16, 0x41)
    fx.RtlCopyMemory(b, a, 16)
    assert fx.read(b, 16) == b"A" * 16
    fx.RtlZeroMemory(b + 8, 8)
    assert fx.RtlCompareMemory(a, b, 16) == 8
    out = bytearray(4)
    fx.RtlCopyMemory(out, a, 4)
    assert out == b"AAAA"


def test_small_helpers(fx):
    assert fx.WdfGetDriver() == fx.driver
    assert fx.KeRaiseIrqlToDpcLevel() == 0 and fx.KeGetCurrentIrql() == DISPATCH_LEVEL
    fx.KeLowerIrql(0)
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    assert fx.verifier.warnings() and not fx.verifier.errors()
    fx.verifier.clear()
    assert fx.findings == []
    fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    assert [f.rule for f in fx.findings] == ["ParentObjectCheck", "ParentObjectCheck"]  # two call sites
