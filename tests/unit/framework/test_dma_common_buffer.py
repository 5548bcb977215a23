"""WDFCOMMONBUFFER (fxcommonbufferapi.cpp, fxcommonbuffer.cpp): physically contiguous pages from
the guest's pool window, the logical address the adapter gives them, alignment."""

from __future__ import annotations

import pytest

from framework_emu import DISPATCH_LEVEL, PAGE_SIZE, BugCheck, NTSTATUS
from framework_emu.dma_enabler import (WDF_COMMON_BUFFER_CONFIG, WDF_COMMON_BUFFER_CONFIG_INIT,
                                       WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaProfileScatterGather64)
from samples.dma_rig import bare_device

S = NTSTATUS


def setup(**kw):
    guest, fx, driver, device = bare_device(**kw)
    status, en = fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64,
                                                                                   1 << 16))
    assert status == 0
    return guest, fx, driver, en


def test_create_gives_contiguous_pool_pages_whose_logical_address_is_physical():
    guest, fx, driver, en = setup()
    status, buffer = fx.WdfCommonBufferCreate(en, 3 * PAGE_SIZE + 5)
    assert status == 0
    va = fx.WdfCommonBufferGetAlignedVirtualAddress(buffer)
    la = fx.WdfCommonBufferGetAlignedLogicalAddress(buffer)
    assert fx.WdfCommonBufferGetLength(buffer) == 3 * PAGE_SIZE + 5
    assert va % PAGE_SIZE == 0 and la == fx.va_to_gpa(va)
    assert 32 << 20 <= la < 64 << 20                        # the pool window
    fx.write(va + 3 * PAGE_SIZE, b"tail")                   # contiguous: the whole length is usable
    assert fx.memory.read(la + 3 * PAGE_SIZE, 4) == b"tail"
    fx.WdfObjectDelete(buffer)
    assert all(r.allocations == [] for r in guest.iom.shutdown())


def test_statuses():
    guest, fx, driver, en = setup()
    assert fx.WdfCommonBufferCreate(en, 0) == (S.STATUS_INVALID_PARAMETER, None)
    assert fx.WdfCommonBufferCreateWithConfig(en, 10, WDF_COMMON_BUFFER_CONFIG(Size=4)) == (
        S.STATUS_INFO_LENGTH_MISMATCH, None)
    with pytest.raises(BugCheck):
        fx.WdfCommonBufferCreateWithConfig(en, 10, None)
    with pytest.raises(BugCheck):
        fx.WdfCommonBufferCreate(en, 10, CommonBuffer=None)
    with fx.irql(DISPATCH_LEVEL):
        assert fx.WdfCommonBufferCreate(en, 10) == (S.STATUS_INVALID_DEVICE_REQUEST, None)
    from framework_emu import WDF_OBJECT_ATTRIBUTES

    assert fx.WdfCommonBufferCreate(en, 10, WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))[0] == \
        S.STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED


def test_alignment_above_a_page_aligns_the_logical_address_and_moves_the_va_with_it():
    guest, fx, driver, en = setup()
    status, buffer = fx.WdfCommonBufferCreateWithConfig(en, 100, WDF_COMMON_BUFFER_CONFIG_INIT(0xFFFF))
    assert status == 0
    va = fx.WdfCommonBufferGetAlignedVirtualAddress(buffer)
    la = fx.WdfCommonBufferGetAlignedLogicalAddress(buffer)
    assert la % 0x10000 == 0 and fx.va_to_gpa(va) == la


def test_device_alignment_requirement_reaches_the_enabler():
    guest, fx, driver, device = bare_device()
    fx.WdfDeviceSetAlignmentRequirement(driver.device, 0x1FFF)   # 8 KiB boundaries
    _status, en = fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64,
                                                                                    4096))
    for _ in range(3):
        _status, buffer = fx.WdfCommonBufferCreate(en, 64)
        assert fx.WdfCommonBufferGetAlignedLogicalAddress(buffer) % 0x2000 == 0


def test_under_remapping_the_logical_address_is_an_iova():
    guest, fx, driver, en = setup(dma_remapping=True)
    _status, buffer = fx.WdfCommonBufferCreate(en, 64)
    va = fx.WdfCommonBufferGetAlignedVirtualAddress(buffer)
    la = fx.WdfCommonBufferGetAlignedLogicalAddress(buffer)
    assert la != fx.va_to_gpa(va)
    hardware = fx._live[driver.device].hardware
    assert hardware.translate(la, 64) == [(fx.va_to_gpa(va), 64)]
    fx.WdfObjectDelete(buffer)
    from framework_emu.dma_adapter import DmaTranslationFault

    with pytest.raises(DmaTranslationFault):
        hardware.translate(la, 64)
