"""The platform's low DMA region: a 32-bit device on a machine whose pool window is above 4 GiB
gets its map registers (bounce pages) and its common buffers from the region below 4 GiB, and
the region's pages go back when the enabler and the buffer go."""

from __future__ import annotations

import pytest

from framework_emu import PAGE_SIZE, InProcessMemory, IoManager, NTSTATUS
from framework_emu.dma_enabler import WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaProfileScatterGather
from framework_emu.low_dma import LowDmaRegion
from samples.dma_rig import FOUR_GIB, MIB, BareDriver, pattern
from samples.fake_busmaster import FakeBusMaster
from wdfhil.errors import ConfigError

LOW = (48 * MIB, 16 * PAGE_SIZE)          # the region: 16 pages below 4 GiB
HIGH_POOL = (FOUR_GIB + 8 * MIB, 8 * MIB)  # the pool window above 4 GiB


def high_pool_device(map_registers=8, low_dma=LOW):
    memory = InProcessMemory(ranges=[(0, 64 * MIB), (FOUR_GIB, FOUR_GIB + 16 * MIB)])
    iom = IoManager(memory, pool_window=HIGH_POOL)
    device = FakeBusMaster(memory, dma_address_bits=32, map_registers=map_registers)
    region = LowDmaRegion(*low_dma) if low_dma else None
    device.hardware.low_dma = region
    driver = BareDriver()
    fx = iom.load_driver(driver, service_name="WDFDmaLow")
    iom.add_device(fx, "dma0", hardware=device.hardware)
    return fx, driver, region


def enabler(fx, driver):
    return fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather, 64 << 10))


def in_low(address, length=1):
    return LOW[0] <= address and address + length <= LOW[0] + LOW[1]


def test_region_hands_out_contiguous_runs_first_fit_and_takes_them_back():
    region = LowDmaRegion(MIB, 8 * PAGE_SIZE)
    a, b = region.allocate(3), region.allocate(3)
    assert (a, b) == (MIB, MIB + 3 * PAGE_SIZE)
    assert region.allocate(3) is None and region.free_pages == 2
    region.free(a)
    assert region.allocate(2) == MIB                 # the first gap that fits
    assert region.allocate(2) == MIB + 6 * PAGE_SIZE
    with pytest.raises(ValueError, match="not the start of a run"):
        region.free(MIB + PAGE_SIZE)


@pytest.mark.parametrize("base,size,field", [(MIB + 1, PAGE_SIZE, "low_dma.base"), (MIB, 100, "low_dma.size"),
                                             (MIB, 0, "low_dma.size")])
def test_region_refuses_what_is_not_whole_pages(base, size, field):
    with pytest.raises(ConfigError) as caught:
        LowDmaRegion(base, size)
    assert caught.value.field == field


def test_map_registers_and_bounce_copies_come_from_the_low_region_not_the_pool():
    fx, driver, region = high_pool_device()
    status, en = enabler(fx, driver)
    assert status == 0
    assert region.free_pages == 8                           # eight map registers taken
    data = pattern(3 * PAGE_SIZE - 0x100)
    high = FOUR_GIB + 2 * MIB + 0x100
    fx.write(fx.gpa_to_va(high), data)
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(high), len(data))
    fx.MmBuildMdlForNonPagedPool(mdl)
    calls = []

    def program(Transaction, Device, Context, Direction, SgList):
        calls.append([(e.Address, e.Length) for e in SgList.Elements])
        return True

    status, t = fx.WdfDmaTransactionCreate(en)
    assert fx.WdfDmaTransactionInitialize(t, program, 1, mdl, mdl.virtual_address(), len(data)) == 0
    assert fx.WdfDmaTransactionExecute(t) == 0
    (elements,) = calls
    assert all(in_low(a, n) for a, n in elements)           # bounced into the region
    assert b"".join(fx.memory.read(a, n) for a, n in elements) == data
    assert fx.WdfDmaTransactionDmaCompleted(t) == (True, 0)
    fx.WdfObjectDelete(t)
    fx.WdfObjectDelete(en)
    assert region.free_pages == 16                          # PutDmaAdapter gave them back


def test_a_common_buffer_the_device_cannot_reach_in_the_pool_comes_from_the_low_region():
    fx, driver, region = high_pool_device(map_registers=4)
    status, en = enabler(fx, driver)
    status, buffer = fx.WdfCommonBufferCreate(en, 2 * PAGE_SIZE + 5)
    assert status == 0
    logical = fx.WdfCommonBufferGetAlignedLogicalAddress(buffer)
    va = fx.WdfCommonBufferGetAlignedVirtualAddress(buffer)
    assert in_low(logical, 2 * PAGE_SIZE + 5) and fx.va_to_gpa(va) == logical
    fx.write(va, b"ring")
    assert fx.memory.read(logical, 4) == b"ring"
    assert region.free_pages == 16 - 4 - 3
    fx.WdfObjectDelete(buffer)
    assert region.free_pages == 16 - 4


def test_without_a_low_region_a_high_pool_gives_a_32_bit_device_no_adapter():
    fx, driver, _region = high_pool_device(low_dma=None)
    status, _en = enabler(fx, driver)
    assert status == NTSTATUS.STATUS_UNSUCCESSFUL           # IoGetDmaAdapter returned NULL


def test_when_the_region_is_used_up_the_next_adapter_fails_until_one_is_released():
    fx, driver, region = high_pool_device(map_registers=8)
    first = enabler(fx, driver)
    second = enabler(fx, driver)
    assert first[0] == 0 and second[0] == 0 and region.free_pages == 0
    assert enabler(fx, driver)[0] == NTSTATUS.STATUS_UNSUCCESSFUL
    fx.WdfObjectDelete(first[1])
    assert enabler(fx, driver)[0] == 0
