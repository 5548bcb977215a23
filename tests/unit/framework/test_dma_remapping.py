"""DMA remapping (Kernel DMA Protection): the adapter hands out IOVAs and the device reaches
memory only through translate(); physical addresses and stale IOVAs fault."""

from __future__ import annotations

import pytest

from framework_emu import PAGE_SIZE
from framework_emu.dma_adapter import DmaCapabilities, DmaTranslationFault, IdentityDmaAdapter, RemappingDmaAdapter
from framework_emu.dma_enabler import WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaProfileScatterGather64
from samples.dma_rig import MIB, bare_device


def test_one_iova_range_per_transfer_translating_to_the_scattered_frames():
    adapter = RemappingDmaAdapter(DmaCapabilities())
    spans = [(0x500, 0x100, PAGE_SIZE - 0x100), (0x200, 0, PAGE_SIZE), (0x900, 0, 10)]
    sg = adapter.map(spans, to_device=True)
    (element,) = sg.elements
    assert element.length == 2 * PAGE_SIZE - 0x100 + 10 and element.address % PAGE_SIZE == 0x100
    assert adapter.translate(element.address, element.length) == [
        (0x500100, PAGE_SIZE - 0x100), (0x200000, PAGE_SIZE), (0x900000, 10)]
    with pytest.raises(DmaTranslationFault, match="not mapped"):
        adapter.translate(0x500100, 4)                       # the physical address is not an IOVA
    with pytest.raises(DmaTranslationFault, match="read only"):
        adapter.translate(element.address, 4, device_writes=True)   # mapped for the device to read
    adapter.unmap(sg)
    with pytest.raises(DmaTranslationFault, match="already completed"):
        adapter.translate(element.address, 4)                # stale after the transfer completed
    assert len(adapter.faults) == 3


def test_iovas_are_never_reused_and_guarded():
    adapter = RemappingDmaAdapter(DmaCapabilities())
    a = adapter.map([(1, 0, PAGE_SIZE)], to_device=False)
    adapter.unmap(a)
    b = adapter.map([(1, 0, PAGE_SIZE)], to_device=False)
    assert b.elements[0].address != a.elements[0].address
    with pytest.raises(DmaTranslationFault):
        adapter.translate(b.elements[0].address + PAGE_SIZE - 1, 2)   # runs into the guard page


def test_off_by_default_and_identity_adapters_translate_within_the_mask():
    guest, fx, driver, device = bare_device()
    _status, en = fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64,
                                                                                    4096))
    adapter = fx.WdfDmaEnablerWdmGetDmaAdapter(en, 0)
    assert not isinstance(adapter, RemappingDmaAdapter)
    assert adapter.translate(2 * MIB, 16) == [(2 * MIB, 16)]
    identity = IdentityDmaAdapter(DmaCapabilities(dma_mask=(1 << 32) - 1))
    with pytest.raises(DmaTranslationFault, match="32 address bits"):
        identity.translate(1 << 32, 4)


def test_remapping_mode_per_device():
    guest, fx, driver, device = bare_device(dma_remapping=True)
    _status, en = fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64,
                                                                                    4096))
    assert isinstance(fx.WdfDmaEnablerWdmGetDmaAdapter(en, 0), RemappingDmaAdapter)
    with pytest.raises(DmaTranslationFault, match="not mapped"):
        device.hardware.translate(2 * MIB, 4)
