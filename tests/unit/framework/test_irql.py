"""The current IRQL and the verifier's IRQL rules."""

import pytest

from framework_emu import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, PASSIVE_LEVEL, BugCheck, PoolType


def test_raise_returns_the_old_level_and_lower_restores_it(fx):
    assert fx.KeGetCurrentIrql() == PASSIVE_LEVEL
    old = fx.KeRaiseIrql(DISPATCH_LEVEL)
    assert old == PASSIVE_LEVEL and fx.KeGetCurrentIrql() == DISPATCH_LEVEL
    inner = fx.KeRaiseIrql(HIGH_LEVEL)
    assert inner == DISPATCH_LEVEL
    fx.KeLowerIrql(inner)
    fx.KeLowerIrql(old)
    assert fx.KeGetCurrentIrql() == PASSIVE_LEVEL


def test_context_manager_raises_and_lowers_even_on_error(fx):
    with pytest.raises(RuntimeError):
        with fx.irql(APC_LEVEL) as old:
            assert old == PASSIVE_LEVEL and fx.KeGetCurrentIrql() == APC_LEVEL
            raise RuntimeError
    assert fx.KeGetCurrentIrql() == PASSIVE_LEVEL


def test_raising_to_a_lower_level_bug_checks(fx):
    fx.KeRaiseIrql(DISPATCH_LEVEL)
    with pytest.raises(BugCheck) as bc:
        fx.KeRaiseIrql(APC_LEVEL)
    assert bc.value.code == 0x9


def test_lowering_to_a_higher_level_bug_checks(fx):
    with pytest.raises(BugCheck) as bc:
        fx.KeLowerIrql(DISPATCH_LEVEL)
    assert bc.value.code == 0xA


@pytest.mark.parametrize("call", [
    lambda fx, mem: fx.WdfMemoryGetBuffer(mem),
    lambda fx, mem: fx.WdfMemoryCopyFromBuffer(mem, 0, b"x", 1),
    lambda fx, mem: fx.WdfMemoryCopyToBuffer(mem, 0, bytearray(1), 1),
    lambda fx, mem: fx.WdfObjectDelete(mem),
    lambda fx, mem: fx.WdfObjectReference(mem),
    lambda fx, mem: fx.WdfMemoryCreatePreallocated(None, fx.WdfMemoryGetBuffer(mem)[0], 4),
])
def test_kmdf_irql_above_dispatch_level_is_fatal_in_bugcheck_mode(fx, call):
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    fx.KeRaiseIrql(DISPATCH_LEVEL + 1)
    with pytest.raises(BugCheck) as bc:
        call(fx, mem)
    assert bc.value.finding.rule == "KmdfIrql" and bc.value.finding.site[0] == __file__


def test_kmdf_irql_is_recorded_in_record_mode_and_the_call_goes_on(fx_record):
    fx = fx_record
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    with fx.irql(HIGH_LEVEL):
        assert fx.WdfMemoryGetBuffer(mem)[1] == 16
    assert fx.findings[-1].rule == "KmdfIrql" and "HIGH_LEVEL" in fx.findings[-1].message


def test_no_irql_rules_without_the_verifier(fx_off):
    _, mem, _ = fx_off.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    with fx_off.irql(HIGH_LEVEL):
        fx_off.WdfMemoryGetBuffer(mem)
    assert fx_off.findings == []


def test_driver_pool_allocations_check_the_irql_under_the_verifier(fx, fx_off):
    with fx.irql(DISPATCH_LEVEL):
        with pytest.raises(BugCheck) as bc:
            fx.ExAllocatePoolWithTag(PoolType.PagedPool, 16, b"Pgd ")
        assert (bc.value.code, bc.value.params[0]) == (0xC4, 0x1)
        assert fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, b"Npg ")
    with fx_off.irql(DISPATCH_LEVEL):
        assert fx_off.ExAllocatePoolWithTag(PoolType.PagedPool, 16, b"Pgd ")
