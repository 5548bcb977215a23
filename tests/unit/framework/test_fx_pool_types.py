"""Pool types as the framework classifies them (wdfpool.cpp FxIsPagedPoolType).

Only PagedPool and PagedPoolCacheAligned are paged to the framework; the session
types are not, although the kernel's pool (and poolmon) counts PagedPoolSession as paged.
"""

import pytest

from framework_emu import APC_LEVEL, DISPATCH_LEVEL, NTSTATUS, PoolType
from framework_emu.memory import MEMORY_BUFFER_OBJECT_SIZE
from framework_emu.pool import fx_is_paged_pool_type, is_paged_pool

S = NTSTATUS


@pytest.mark.parametrize("pool_type,paged", [(PoolType.PagedPool, True), (PoolType.PagedPoolCacheAligned, True),
                                             (PoolType.PagedPool | 0x100, True),   # POOL_COLD_ALLOCATION ignored
                                             (PoolType.PagedPoolSession, False),
                                             (PoolType.PagedPoolCacheAlignedSession, False),
                                             (PoolType.NonPagedPool, False), (PoolType.NonPagedPoolNx, False)])
def test_FxIsPagedPoolType_paged_and_cache_aligned_paged_only(pool_type, paged):
    assert fx_is_paged_pool_type(pool_type) is paged


def test_the_kernels_classification_still_counts_session_paged_pool_as_paged():
    assert is_paged_pool(PoolType.PagedPoolSession) and not fx_is_paged_pool_type(PoolType.PagedPoolSession)


def test_WdfMemoryCreate_irql_check_follows_FxIsPagedPoolType(fx):
    """fxmemorybufferapi.cpp WdfMemoryCreate: FxVerifierCheckIrqlLevel(FxIsPagedPoolType(PoolType) ?
    APC_LEVEL : DISPATCH_LEVEL): PagedPoolSession is allowed at DISPATCH_LEVEL, PagedPool is not."""
    with fx.irql(DISPATCH_LEVEL):
        assert fx.WdfMemoryCreate(None, PoolType.PagedPoolSession, 0, 64)[0] == S.STATUS_SUCCESS
        assert fx.WdfMemoryCreate(None, PoolType.PagedPool, 0, 64)[0] == S.STATUS_INVALID_DEVICE_REQUEST
    with fx.irql(APC_LEVEL):
        assert fx.WdfMemoryCreate(None, PoolType.PagedPoolCacheAligned, 0, 64)[0] == S.STATUS_SUCCESS


def test_FxMemoryObject_Create_embeds_a_small_session_paged_buffer_like_nonpaged(fx_off):
    """FxMemoryObject::_Create separates the buffer only for PAGE_SIZE+, verifier, or
    FxIsPagedPoolType: a small PagedPoolSession buffer follows its object header."""
    _, mem, buffer = fx_off.WdfMemoryCreate(None, PoolType.PagedPoolSession, 0, 64)
    assert fx_off.pool.allocation(buffer) is None
    assert fx_off.pool.allocation(buffer - MEMORY_BUFFER_OBJECT_SIZE).pool_type == PoolType.PagedPoolSession
    _, mem, buffer = fx_off.WdfMemoryCreate(None, PoolType.PagedPool, 0, 64)
    assert fx_off.pool.allocation(buffer).size == 64


def test_session_paged_memory_deleted_at_dispatch_is_disposed_at_once_MarkPassiveCallbacks(fx):
    """FxMemoryBufferFromPool::_Create marks passive dispose only when FxIsPagedPoolType."""
    _, session, _ = fx.WdfMemoryCreate(None, PoolType.PagedPoolSession, 0, 64)
    _, paged, _ = fx.WdfMemoryCreate(None, PoolType.PagedPool, 0, 64)
    with fx.irql(DISPATCH_LEVEL):
        fx.WdfObjectDelete(session)
        fx.WdfObjectDelete(paged)
        assert session not in fx._live and paged in fx._live   # paged waits for PASSIVE_LEVEL
    assert paged not in fx._live


def test_WdfLookasideListCreate_passive_check_follows_FxIsPagedPoolType(fx):
    """fxlookasidelistapi.cpp: only an FxIsPagedPoolType list needs PASSIVE_LEVEL (verifier)."""
    with fx.irql(DISPATCH_LEVEL):
        assert fx.WdfLookasideListCreate(None, 64, PoolType.PagedPoolSession, None, 0)[0] == S.STATUS_SUCCESS
    with fx.irql(APC_LEVEL):
        assert fx.WdfLookasideListCreate(None, 64, PoolType.PagedPool, None, 0)[0] == S.STATUS_INVALID_DEVICE_REQUEST
