"""WdfMemoryCreate: the order of checks, placement, default tag and parent."""

import pytest

from framework_emu import (APC_LEVEL, DISPATCH_LEVEL, NTSTATUS, OUT, PAGE_SIZE, BugCheck, PoolType,
                           WDF_DECLARE_CONTEXT_TYPE, WDF_OBJECT_ATTRIBUTES)
from framework_emu.memory import MEMORY_BUFFER_OBJECT_SIZE

S = NTSTATUS


attrs = WDF_OBJECT_ATTRIBUTES    # fields by keyword, as WDF_OBJECT_ATTRIBUTES_INIT then assignments


# -- order of checks [S] ---------------------------------------------------------------

def test_1_bad_parent_handle_is_checked_first(fx):
    with pytest.raises(BugCheck) as bc:
        # even with a zero size and a NULL output, the parent is resolved first
        fx.WdfMemoryCreate(attrs(ParentObject=0x1234), PoolType.NonPagedPool, 0, 0, Memory=None)
    assert bc.value.params[:3] == (0x5, 0x1234, 0x1000)


def test_2_missing_output_handle_bug_checks_before_the_size(fx):
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 0, Memory=None)
    assert bc.value.code == 0x10D and bc.value.params[0] == 0x4


@pytest.mark.parametrize("pool_type,level,fails", [
    (PoolType.PagedPool, APC_LEVEL, False),
    (PoolType.PagedPool, DISPATCH_LEVEL, True),
    (PoolType.NonPagedPool, DISPATCH_LEVEL, False),
    (PoolType.NonPagedPool, DISPATCH_LEVEL + 1, True),
    (PoolType.NonPagedPoolNx, DISPATCH_LEVEL + 1, True),
])
def test_3_irql_check_with_the_verifier_returns_a_status(fx, pool_type, level, fails):
    with fx.irql(level):
        status, handle, _ = fx.WdfMemoryCreate(None, pool_type, 0, 0)  # size 0 comes later
    if fails:
        assert status == S.STATUS_INVALID_DEVICE_REQUEST and handle is None
        assert fx.findings[-1].rule == "KmdfIrql" and fx.findings[-1].status == S.STATUS_INVALID_DEVICE_REQUEST
    else:
        assert status == S.STATUS_INVALID_PARAMETER


def test_3_no_irql_check_at_run_time_without_the_verifier(fx_off):
    with fx_off.irql(DISPATCH_LEVEL + 3):
        status, handle, _ = fx_off.WdfMemoryCreate(None, PoolType.PagedPool, 0, 64)
    assert status == S.STATUS_SUCCESS and handle
    assert fx_off.findings == []


def test_4_zero_size_is_invalid_parameter_before_attributes(fx):
    assert fx.WdfMemoryCreate(attrs(Size=3), PoolType.NonPagedPool, 0, 0) == (S.STATUS_INVALID_PARAMETER, None, None)


@pytest.mark.parametrize("fields,status", [
    ({"Size": 0x30}, S.STATUS_INFO_LENGTH_MISMATCH),
    ({"ExecutionLevel": 2}, S.STATUS_WDF_EXECUTION_LEVEL_INVALID),           # Passive
    ({"ExecutionLevel": 3}, S.STATUS_WDF_EXECUTION_LEVEL_INVALID),           # Dispatch
    ({"SynchronizationScope": 2}, S.STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID),  # Device
    ({"SynchronizationScope": 3}, S.STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID),  # Queue
    ({"SynchronizationScope": 4}, S.STATUS_SUCCESS),                         # None is allowed
    ({"ExecutionLevel": 0}, S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID),
    ({"ExecutionLevel": 9}, S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID),
    ({"SynchronizationScope": 0}, S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID),
    ({"SynchronizationScope": 7}, S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID),
    ({"ContextSizeOverride": 16}, S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID),   # override without a type
    # the framework checks the enum ranges, then the scope, then the level [S]
    ({"ExecutionLevel": 2, "SynchronizationScope": 2}, S.STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID),
    ({"ExecutionLevel": 9, "SynchronizationScope": 2}, S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID),
])
def test_5_attribute_errors(fx, fields, status):
    got, handle, buffer = fx.WdfMemoryCreate(attrs(**fields), PoolType.NonPagedPool, 0, 64)
    assert got == status
    assert (handle is None) == (status != S.STATUS_SUCCESS)


def test_5_context_type_checks(fx):
    nameless = WDF_DECLARE_CONTEXT_TYPE(None, 8)
    assert fx.WdfMemoryCreate(attrs(ContextTypeInfo=nameless), PoolType.NonPagedPool, 0, 8)[0] == \
        S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    small = WDF_DECLARE_CONTEXT_TYPE("CTX", 32)
    assert fx.WdfMemoryCreate(attrs(ContextTypeInfo=small, ContextSizeOverride=16), PoolType.NonPagedPool, 0, 8)[0] \
        == S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    bad_size = WDF_DECLARE_CONTEXT_TYPE("CTX", 8)
    bad_size.Size = 12
    assert fx.WdfMemoryCreate(attrs(ContextTypeInfo=bad_size), PoolType.NonPagedPool, 0, 8)[0] == \
        S.STATUS_INFO_LENGTH_MISMATCH


def test_6_tag_zero_is_the_drivers_tag_and_a_given_tag_is_kept(fx):
    _, _, a = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 5000)
    _, _, b = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, b"Mine", 5000)
    _, _, c = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0x656E694D, 5000)  # 'eniM'
    assert fx.pool.allocation(a).tag == b"Echo"
    assert fx.pool.allocation(b).tag == b"Mine" and fx.pool.allocation(c).tag == b"Mine"


def test_7_allocation_failure(fx):
    too_big = fx.pool.pages.total_pages * PAGE_SIZE + PAGE_SIZE
    assert fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, too_big) == (S.STATUS_INSUFFICIENT_RESOURCES, None, None)


def test_8_parent_being_deleted_gives_delete_pending(fx):
    seen = {}
    status, parent = fx.WdfObjectCreate(attrs(EvtCleanupCallback=lambda h: seen.update(
        late=fx.WdfMemoryCreate(attrs(ParentObject=h), PoolType.NonPagedPool, 0, 64))))
    before = fx.pool.tag_stats(b"Echo").bytes
    fx.WdfObjectDelete(parent)
    assert seen["late"] == (S.STATUS_DELETE_PENDING, None, None)
    assert fx.pool.tag_stats(b"Echo").bytes == before  # nothing leaked by the failed create


def test_buffer_output_is_optional(fx):
    status, handle, buffer = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64, Buffer=None)
    assert status == S.STATUS_SUCCESS and handle and buffer is None
    assert fx.WdfMemoryGetBuffer(handle)[1] == 64


# -- placement -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [PAGE_SIZE, PAGE_SIZE + 1, 5 * PAGE_SIZE + 7])
@pytest.mark.parametrize("verifier", [True, False])
def test_page_size_and_up_is_page_aligned(make_fx, size, verifier):
    fx = make_fx(verifier=verifier)
    for ptype in (PoolType.NonPagedPool, PoolType.PagedPool):
        _, handle, va = fx.WdfMemoryCreate(None, ptype, 0, size)
        assert va % PAGE_SIZE == 0 and fx.WdfMemoryGetBuffer(handle) == (va, size)


@pytest.mark.parametrize("size", [1, 16, 17, 100, 4000, 4092, 4095])
@pytest.mark.parametrize("verifier", [True, False])
def test_small_buffers_are_16_byte_aligned(make_fx, size, verifier):
    fx = make_fx(verifier=verifier)
    for _ in range(3):
        assert fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, size)[2] % 16 == 0


def test_4092_bytes_cross_a_page_in_production(fx_off):
    _, handle, va = fx_off.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 4092)
    assert va // PAGE_SIZE != (va + 4091) // PAGE_SIZE
    assert va % PAGE_SIZE == MEMORY_BUFFER_OBJECT_SIZE  # right after the object header


def test_4092_bytes_own_allocation_under_the_verifier(fx):
    _, handle, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 4092)
    assert va // PAGE_SIZE == (va + 4091) // PAGE_SIZE


def test_small_buffer_follows_its_object_header_in_one_allocation(fx_off):
    _, handle, va = fx_off.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 100)
    block = fx_off.pool.allocation(va - MEMORY_BUFFER_OBJECT_SIZE)
    assert block is not None and block.size >= MEMORY_BUFFER_OBJECT_SIZE + 100 and block.tag == b"Echo"


def test_small_paged_buffer_is_its_own_allocation_even_in_production(fx_off):
    _, handle, va = fx_off.WdfMemoryCreate(None, PoolType.PagedPool, 0, 100)
    assert fx_off.pool.allocation(va).size == 100


def test_buffers_are_not_zeroed(fx_off):
    _, handle, va = fx_off.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    fx_off.write(va, b"\xAA" * 64)
    fx_off.WdfObjectDelete(handle)
    _, handle, va2 = fx_off.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    assert va2 == va and fx_off.read(va2, 64) == b"\xAA" * 64


def test_default_parent_is_the_driver_and_a_warning_says_so(fx):
    _, handle, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    assert fx._live[handle].parent is fx._live[fx.driver]
    warning = fx.findings[-1]
    assert warning.rule == "ParentObjectCheck" and warning.severity == "warning"
    assert warning.site == (__file__, warning.site[1]) and warning.handle == handle and warning.tag == b"Echo"


def test_parent_object_check_counts_repeats_per_call_site(fx):
    for _ in range(5):
        fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    checks = [f for f in fx.findings if f.rule == "ParentObjectCheck"]
    assert len(checks) == 1 and checks[0].count == 5


def test_explicit_parent_raises_no_warning(fx):
    _, parent = fx.WdfObjectCreate(None)
    fx.WdfMemoryCreate(attrs(ParentObject=parent), PoolType.NonPagedPool, 0, 64)
    assert not [f for f in fx.findings if f.rule == "ParentObjectCheck"]


def test_default_out_parameter_marker_is_exported():
    assert repr(OUT) == "OUT"
