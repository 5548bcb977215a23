"""Lookaside lists: creation, reuse (zeroed below PAGE_SIZE, stale from PAGE_SIZE up), parents, references."""

import pytest

from framework_emu import (DISPATCH_LEVEL, NTSTATUS, PAGE_SIZE, BugCheck, PoolType, WDF_DECLARE_CONTEXT_TYPE,
                           WDF_OBJECT_ATTRIBUTES)
from framework_emu.objects import ObjectState

S = NTSTATUS


attrs = WDF_OBJECT_ATTRIBUTES    # fields by keyword, as WDF_OBJECT_ATTRIBUTES_INIT then assignments


def test_zero_size_is_invalid_parameter(fx):
    assert fx.WdfLookasideListCreate(None, 0, PoolType.NonPagedPool, None, 0) == (S.STATUS_INVALID_PARAMETER, None)


def test_missing_output_bug_checks(fx):
    with pytest.raises(BugCheck) as bc:
        fx.WdfLookasideListCreate(None, 16, PoolType.NonPagedPool, None, 0, PLookaside=None)
    assert bc.value.params[0] == 0x4


def test_tag_zero_is_the_drivers_tag(fx):
    _, lookaside = fx.WdfLookasideListCreate(None, 5000, PoolType.NonPagedPool, None, 0)
    _, mem = fx.WdfMemoryCreateFromLookaside(lookaside)
    va, size = fx.WdfMemoryGetBuffer(mem)
    assert size == 5000 and fx.pool.allocation(va).tag == b"Echo" and va % PAGE_SIZE == 0


def test_paged_list_needs_passive_level_under_the_verifier(fx):
    with fx.irql(1):
        status, lookaside = fx.WdfLookasideListCreate(None, 64, PoolType.PagedPool, None, 0)
    assert status == S.STATUS_INVALID_DEVICE_REQUEST and lookaside is None
    assert fx.findings[-1].rule == "KmdfIrql"
    with fx.irql(DISPATCH_LEVEL):
        assert fx.WdfLookasideListCreate(None, 64, PoolType.NonPagedPool, None, 0)[0] == S.STATUS_SUCCESS


def test_paged_list_at_raised_irql_without_the_verifier_is_not_checked(fx_off):
    with fx_off.irql(1):
        assert fx_off.WdfLookasideListCreate(None, 64, PoolType.PagedPool, None, 0)[0] == S.STATUS_SUCCESS


def _reuse_after_writing(fx, size, pool_type, data=b"stale!"):
    """Write ``data`` into a list's memory, delete it, allocate again: (first va, second va, bytes there)."""
    _, lookaside = fx.WdfLookasideListCreate(None, size, pool_type, None, b"Look")
    _, first = fx.WdfMemoryCreateFromLookaside(lookaside)
    va1, _ = fx.WdfMemoryGetBuffer(first)
    fx.WdfMemoryCopyFromBuffer(first, 0, data, len(data))
    fx.WdfObjectDelete(first)
    _, second = fx.WdfMemoryCreateFromLookaside(lookaside)
    va2, _ = fx.WdfMemoryGetBuffer(second)
    assert second != first
    return va1, va2, fx.read(va2, len(data))


@pytest.mark.parametrize("size,pool_type", [(PAGE_SIZE, PoolType.NonPagedPool), (8000, PoolType.NonPagedPool),
                                            (PAGE_SIZE, PoolType.PagedPool), (8000, PoolType.PagedPool)])
def test_lists_of_page_size_or_more_return_stale_buffers_FxNPagedLookasideListFromPool(fx, size, pool_type):
    """FxNPagedLookasideListFromPool / FxPagedLookasideListFromPool::Allocate: from PAGE_SIZE up the
    buffer comes raw from a lookaside of buffers, not zeroed: the previous user's bytes come back."""
    va1, va2, data = _reuse_after_writing(fx, size, pool_type)
    assert va2 == va1 and data == b"stale!"


@pytest.mark.parametrize("size", [64, PAGE_SIZE - 1])
def test_nonpaged_lists_below_page_size_zero_the_whole_block_InitObjectAlloc(fx, size):
    """fxlookasidelist.cpp FxLookasideList::InitObjectAlloc: RtlZeroMemory over the whole block
    (object header, buffer, context) on every allocation: a small list never returns stale data."""
    va1, va2, data = _reuse_after_writing(fx, size, PoolType.NonPagedPool)
    assert va2 == va1 and data == b"\0" * 6
    block = fx._live[fx.WdfLookasideListCreate(None, size, PoolType.NonPagedPool, None, 0)[1]]
    assert block.block_size > size   # the zeroed block holds the header and the buffer


@pytest.mark.parametrize("size", [64, PAGE_SIZE - 1])
def test_paged_lists_below_page_size_zero_the_buffer_block_InitPagedAlloc(fx, size):
    """fxpagedlookasidelist.cpp FxPagedLookasideListFromPool::InitPagedAlloc: the paged buffer block
    (FX_POOL_HEADER + buffer) is zeroed on every allocation; the buffer follows the header."""
    va1, va2, data = _reuse_after_writing(fx, size, PoolType.PagedPool)
    assert va2 == va1 and data == b"\0" * 6
    assert fx.pool.allocation(va2 - 16).size == size + 16


def test_the_zeroing_does_not_touch_neighbouring_pool_memory_InitObjectAlloc(fx):
    """InitObjectAlloc zeroes m_MemoryObjectSize bytes, the list's own block and nothing more."""
    _, lookaside = fx.WdfLookasideListCreate(None, 64, PoolType.NonPagedPool, None, b"Look")
    _, first = fx.WdfMemoryCreateFromLookaside(lookaside)
    block = fx._live[first].block
    size = fx._live[lookaside].block_size
    neighbour = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 64, b"Next")
    fx.write(neighbour, b"\x77" * 64)
    fx.WdfObjectDelete(first)
    fx.WdfMemoryCreateFromLookaside(lookaside)
    assert fx.read(block, size) == b"\0" * size and fx.read(neighbour, 64) == b"\x77" * 64


def test_memory_parent_comes_from_memory_attributes_not_the_list(fx):
    _, list_parent = fx.WdfObjectCreate(None)
    _, memory_parent = fx.WdfObjectCreate(None)
    _, lookaside = fx.WdfLookasideListCreate(attrs(ParentObject=list_parent), 64, PoolType.NonPagedPool,
                                             attrs(ParentObject=memory_parent), 0)
    _, mem = fx.WdfMemoryCreateFromLookaside(lookaside)
    assert fx._live[mem].parent is fx._live[memory_parent]
    _, lookaside2 = fx.WdfLookasideListCreate(attrs(ParentObject=list_parent), 64, PoolType.NonPagedPool, None, 0)
    _, mem2 = fx.WdfMemoryCreateFromLookaside(lookaside2)
    assert fx._live[mem2].parent is fx._live[fx.driver]  # default: the driver, not the list


def test_deleting_the_list_leaves_outstanding_memory_working(fx):
    _, lookaside = fx.WdfLookasideListCreate(None, 64, PoolType.NonPagedPool, None, b"Look")
    _, mem = fx.WdfMemoryCreateFromLookaside(lookaside)
    fx.WdfObjectDelete(lookaside)
    assert fx._live[lookaside].state is ObjectState.DELETED  # kept alive by the memory's reference
    assert fx.WdfMemoryCopyFromBuffer(mem, 0, b"still fine", 10) == S.STATUS_SUCCESS
    assert fx.pool.tag_stats(b"Look").bytes > 0
    fx.WdfObjectDelete(mem)
    assert lookaside not in fx._live                       # last reference gone: the storage too
    assert fx.pool.tag_stats(b"Look").bytes == 0


def test_memory_attributes_callbacks_and_context_apply_to_each_memory(fx):
    cleaned = []
    ctx = WDF_DECLARE_CONTEXT_TYPE("LOOKASIDE_CTX", 24)
    _, lookaside = fx.WdfLookasideListCreate(
        None, 64, PoolType.NonPagedPool, attrs(EvtCleanupCallback=cleaned.append, ContextTypeInfo=ctx), 0)
    _, mem = fx.WdfMemoryCreateFromLookaside(lookaside)
    context = fx.WdfObjectGetTypedContext(mem, ctx)
    assert context and fx.read(context, 24) == b"\0" * 24
    fx.write(context, b"\x55" * 24)
    fx.WdfObjectDelete(mem)
    assert cleaned == [mem]
    _, mem2 = fx.WdfMemoryCreateFromLookaside(lookaside)
    assert fx.read(fx.WdfObjectGetTypedContext(mem2, ctx), 24) == b"\0" * 24  # contexts are zeroed


def test_allocation_failure(fx):
    _, lookaside = fx.WdfLookasideListCreate(None, 64, PoolType.NonPagedPool, None, b"Fail")
    fx.inject_allocation_failures(tag=b"Fail", nth=1)
    assert fx.WdfMemoryCreateFromLookaside(lookaside) == (S.STATUS_INSUFFICIENT_RESOURCES, None)


def test_wrong_handle_type_bug_checks_with_the_lookaside_type(fx):
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCreateFromLookaside(mem)
    assert bc.value.params[0] == 0x5 and bc.value.params[2] == 0x1009
