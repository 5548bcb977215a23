"""WdfMemoryCreatePreallocated and WdfMemoryAssignBuffer."""

import pytest

from framework_emu import (IRP_MJ_WRITE, NTSTATUS, BugCheck, PoolType, WDF_OBJECT_ATTRIBUTES)
from framework_emu.errors import ArgumentError

S = NTSTATUS


def driver_buffer(fx, size=256, tag=b"Drv "):
    return fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, size, tag)


def test_wraps_the_buffer_and_stores_only_address_and_size(fx):
    va = driver_buffer(fx)
    status, mem = fx.WdfMemoryCreatePreallocated(None, va, 100)
    assert status == S.STATUS_SUCCESS and fx.WdfMemoryGetBuffer(mem) == (va, 100)
    fx.WdfMemoryCopyFromBuffer(mem, 0, b"xyz", 3)
    assert fx.read(va, 3) == b"xyz"


def test_deleting_never_frees_the_buffer(fx):
    va = driver_buffer(fx)
    _, mem = fx.WdfMemoryCreatePreallocated(None, va, 256)
    fx.WdfObjectDelete(mem)
    assert fx.pool.allocation(va) is not None  # still the driver's
    fx.ExFreePoolWithTag(va, b"Drv ")


def test_null_buffer_and_missing_output_bug_check(fx):
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCreatePreallocated(None, 0, 16)
    assert bc.value.params[0] == 0x4
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCreatePreallocated(None, driver_buffer(fx), 16, PMemory=None)
    assert bc.value.params[0] == 0x4


def test_zero_size_and_bad_attributes(fx):
    va = driver_buffer(fx)
    assert fx.WdfMemoryCreatePreallocated(None, va, 0) == (S.STATUS_INVALID_PARAMETER, None)
    bad = WDF_OBJECT_ATTRIBUTES()
    bad.ExecutionLevel = 2
    assert fx.WdfMemoryCreatePreallocated(bad, va, 8) == (S.STATUS_WDF_EXECUTION_LEVEL_INVALID, None)


def test_a_python_object_cannot_be_wrapped(fx):
    with pytest.raises(ArgumentError, match="Buffer"):
        fx.WdfMemoryCreatePreallocated(None, b"python bytes", 12)


def test_assign_buffer_replaces_address_and_size_without_freeing(fx):
    old, new = driver_buffer(fx), driver_buffer(fx)
    _, mem = fx.WdfMemoryCreatePreallocated(None, old, 256)
    assert fx.WdfMemoryAssignBuffer(mem, new, 32) == S.STATUS_SUCCESS
    assert fx.WdfMemoryGetBuffer(mem) == (new, 32)
    assert fx.pool.allocation(old) is not None


def test_assign_buffer_rejects_null_and_zero(fx):
    _, mem = fx.WdfMemoryCreatePreallocated(None, driver_buffer(fx), 16)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryAssignBuffer(mem, None, 16)
    assert bc.value.params[0] == 0x4
    assert fx.WdfMemoryAssignBuffer(mem, driver_buffer(fx), 0) == S.STATUS_INVALID_PARAMETER


def _assert_not_preallocated(fx, handle, buffer):
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryAssignBuffer(handle, buffer, 16)
    assert (bc.value.code, bc.value.params[0], bc.value.params[1], bc.value.params[2]) == (0x10D, 0x5, handle, 0x1022)


def test_assign_buffer_bug_checks_on_wdf_memory_create_memory(fx):
    _, mem, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    _assert_not_preallocated(fx, mem, va)


def test_assign_buffer_bug_checks_on_lookaside_memory(fx):
    _, lookaside = fx.WdfLookasideListCreate(None, 64, PoolType.NonPagedPool, None, 0)
    _, mem = fx.WdfMemoryCreateFromLookaside(lookaside)
    _assert_not_preallocated(fx, mem, driver_buffer(fx))


def test_assign_buffer_bug_checks_on_a_requests_own_buffer(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"data")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    _assert_not_preallocated(fx, mem, driver_buffer(fx))


def test_assign_buffer_accepts_request_memory(fx):
    from framework_emu.memory import RequestMemory

    obj = RequestMemory(fx, None, driver_buffer(fx), 16, b"Echo")
    fx._commit(obj, None, None)
    assert fx.WdfMemoryAssignBuffer(obj.handle, driver_buffer(fx), 8) == S.STATUS_SUCCESS


def test_no_irql_check_at_run_time(fx_off, fx_record):
    for fx in (fx_off, fx_record):
        va = driver_buffer(fx)
        with fx.irql(5):
            status, mem = fx.WdfMemoryCreatePreallocated(None, va, 16)
        assert status == S.STATUS_SUCCESS and mem
    assert fx_off.findings == []
    assert fx_record.findings[-1].rule == "KmdfIrql"  # the static rule still flags it
