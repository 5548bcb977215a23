"""Driver Verifier's pool checks on the driver's own ExAllocatePoolWithTag / ExFreePoolWithTag.

Bug check parameters as the references list them: DRIVER_VERIFIER_DETECTED_VIOLATION
(0xC4) and BAD_POOL_CALLER (0xC2). Without the verifier the kernel's own 0xC2 codes apply.
"""

import pytest

from framework_emu import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, BugCheck, PoolType
from framework_emu.pool import POOL_HEADER_SIZE
from framework_emu.pooltag import tag_value

C4, C2 = 0xC4, 0xC2


def _bugcheck(call, *args):
    with pytest.raises(BugCheck) as bc:
        call(*args)
    return bc.value.code, bc.value.params


def test_zero_byte_allocation_is_0xC4_0x00_under_the_verifier(fx):
    """0xC4 P1 0x00: P2 current IRQL, P3 pool type, P4 bytes (0)."""
    with fx.irql(APC_LEVEL):
        assert _bugcheck(fx.ExAllocatePoolWithTag, PoolType.PagedPool, 0, b"Zero") == (C4, (0x00, 1, 1, 0))


@pytest.mark.parametrize("pool_type,level,p1", [(PoolType.PagedPool, DISPATCH_LEVEL, 0x01),
                                                (PoolType.PagedPoolSession, DISPATCH_LEVEL, 0x01),
                                                (PoolType.NonPagedPool, HIGH_LEVEL, 0x02)])
def test_allocation_above_its_irql_is_0xC4_0x01_or_0x02(fx, pool_type, level, p1):
    """0xC4 P1 0x01 (paged above APC_LEVEL) / 0x02 (nonpaged above DISPATCH_LEVEL): P2 IRQL,
    P3 pool type, P4 bytes. Paged as the kernel classifies it (PagedPoolSession is paged)."""
    with fx.irql(level):
        assert _bugcheck(fx.ExAllocatePoolWithTag, pool_type, 40, b"Irql") == (C4, (p1, level, pool_type, 40))


def test_zero_tag_is_0xC2_0x9B_with_pool_type_and_bytes(fx):
    assert _bugcheck(fx.ExAllocatePoolWithTag, PoolType.NonPagedPool, 24, 0) == (C2, (0x9B, 0, 24, 0))


def test_double_free_is_0xC4_0x13_under_the_verifier_naming_the_first_free(fx):
    """0xC4 P1 0x13: P3 the pool header, P4 its contents (the tag here)."""
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 32, b"Dbl ")
    fx.ExFreePoolWithTag(va, b"Dbl ")
    with pytest.raises(BugCheck) as bc:
        fx.ExFreePoolWithTag(va, b"Dbl ")
    assert (bc.value.code, bc.value.params) == (C4, (0x13, 0, va - POOL_HEADER_SIZE, tag_value(b"Dbl ")))
    assert "first freed at" in str(bc.value) and "test_driver_verifier_pool.py" in str(bc.value)


def test_double_free_without_the_verifier_is_the_kernels_0xC2_0x07(fx_off):
    """0xC2 P1 0x07: P3 pool header contents (the tag), P4 the address being freed."""
    va = fx_off.ExAllocatePoolWithTag(PoolType.NonPagedPool, 32, b"Dbl ")
    fx_off.ExFreePool(va)
    assert _bugcheck(fx_off.ExFreePool, va) == (C2, (0x07, 0, tag_value(b"Dbl "), va))


def test_free_of_an_address_no_allocation_returned_is_0xC4_0x10(fx, fx_off):
    """0xC4 P1 0x10: P2 the bad address (verifier); the kernel alone: 0xC2 P1 0x42."""
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 32, b"Mid ")
    assert _bugcheck(fx.ExFreePool, va + 8) == (C4, (0x10, va + 8, 0, 0))
    va = fx_off.ExAllocatePoolWithTag(PoolType.NonPagedPool, 32, b"Mid ")
    assert _bugcheck(fx_off.ExFreePool, va + 8) == (C2, (0x42, va + 8, 0, 0))


@pytest.mark.parametrize("pool_type,level,p1", [(PoolType.PagedPool, DISPATCH_LEVEL, 0x11),
                                                (PoolType.NonPagedPool, HIGH_LEVEL, 0x12)])
def test_free_above_its_irql_is_0xC4_0x11_or_0x12(fx, pool_type, level, p1):
    """0xC4 P1 0x11 (paged freed above APC_LEVEL) / 0x12 (nonpaged above DISPATCH_LEVEL):
    P2 IRQL, P3 pool type, P4 the address; the block stays allocated."""
    va = fx.ExAllocatePoolWithTag(pool_type, 32, b"Irql")
    with fx.irql(level):
        assert _bugcheck(fx.ExFreePoolWithTag, va, b"Irql") == (C4, (p1, level, pool_type, va))
    assert fx.pool.allocation(va) is not None


def test_nonpaged_free_at_dispatch_and_paged_free_at_apc_are_fine(fx):
    nonpaged = fx.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 32, b"Ok  ")
    paged = fx.ExAllocatePoolWithTag(PoolType.PagedPool, 32, b"Ok  ")
    with fx.irql(DISPATCH_LEVEL):
        fx.ExFreePoolWithTag(nonpaged, b"Ok  ")
    with fx.irql(APC_LEVEL):
        fx.ExFreePoolWithTag(paged, b"Ok  ")
    assert fx.pool.tag_stats(b"Ok  ").bytes == 0
