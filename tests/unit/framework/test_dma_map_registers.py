"""Map registers and bounce buffers: a 32-bit profile meeting pages above 4 GiB, as the
platform's DMA layer handles it (copy in before a write to the device, out after a read),
and what happens when the map registers run out (the transfer waits, or fails with
STATUS_INSUFFICIENT_RESOURCES when marked for immediate execution)."""

from __future__ import annotations

from framework_emu import PAGE_SIZE, NTSTATUS
from framework_emu.dma_adapter import DmaCapabilities, HalDmaAdapter, MapRegistersBusy
from framework_emu.dma_enabler import WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaProfileScatterGather
from samples.dma_rig import FOUR_GIB, MIB, bare_device, pattern

import pytest


class Programs:
    def __init__(self):
        self.calls = []

    def __call__(self, Transaction, Device, Context, Direction, SgList):
        self.calls.append([(e.Address, e.Length) for e in SgList.Elements])
        return True


def setup(map_registers=4, v3=False):
    guest, fx, driver, device = bare_device(map_registers=map_registers)
    config = WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather, 64 << 10)
    if v3:
        config.WdmDmaVersionOverride = 3
    status, en = fx.WdfDmaEnablerCreate(driver.device, config)
    assert status == 0
    return guest, fx, en


def high_mdl(fx, offset, length, page=0):
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(FOUR_GIB + page * PAGE_SIZE + offset), length)
    fx.MmBuildMdlForNonPagedPool(mdl)
    return mdl


def start(fx, en, mdl, direction, program):
    status, t = fx.WdfDmaTransactionCreate(en)
    assert fx.WdfDmaTransactionInitialize(t, program, direction, mdl, mdl.virtual_address(), mdl.ByteCount) == 0
    return t


def test_write_to_device_copies_into_low_bounce_pages_before_program_dma():
    guest, fx, en = setup()
    data = pattern(2 * PAGE_SIZE)
    fx.write(fx.gpa_to_va(FOUR_GIB + 0x300), data)
    program = Programs()
    t = start(fx, en, high_mdl(fx, 0x300, len(data)), 1, program)
    assert fx.WdfDmaTransactionExecute(t) == 0
    (elements,) = program.calls
    assert len(elements) == 1                                # consecutive map registers: one range
    assert all(a + n <= FOUR_GIB for a, n in elements)
    assert elements[0][0] % PAGE_SIZE == 0x300             # the bounce page keeps the byte offset
    assert b"".join(fx.memory.read(a, n) for a, n in elements) == data
    adapter = fx.WdfDmaEnablerWdmGetDmaAdapter(en, 1)
    assert adapter.free_map_registers == 1                  # three pages, three map registers
    assert fx.WdfDmaTransactionDmaCompleted(t) == (True, 0)
    assert adapter.free_map_registers == 4


def test_read_from_device_is_copied_out_of_the_bounce_pages_at_completion():
    guest, fx, en = setup()
    program = Programs()
    mdl = high_mdl(fx, 0x10, 5000)
    t = start(fx, en, mdl, 0, program)
    fx.WdfDmaTransactionExecute(t)
    data = pattern(5000, seed=3)
    done = 0
    for address, n in program.calls[0]:                    # the device writes where it was told
        fx.memory.write(address, data[done:done + n])
        done += n
    assert fx.memory.read(FOUR_GIB + 0x10, 5000) != data   # not yet: still in the bounce pages
    assert fx.WdfDmaTransactionDmaCompleted(t) == (True, 0)
    assert fx.memory.read(FOUR_GIB + 0x10, 5000) == data


def test_low_pages_need_no_map_registers():
    guest, fx, en = setup()
    program = Programs()
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(2 * MIB), 3 * PAGE_SIZE)
    fx.MmBuildMdlForNonPagedPool(mdl)
    t = start(fx, en, mdl, 1, program)
    fx.WdfDmaTransactionExecute(t)
    assert program.calls == [[(2 * MIB, 3 * PAGE_SIZE)]]
    assert fx.WdfDmaEnablerWdmGetDmaAdapter(en, 1).free_map_registers == 4


def test_fragments_are_limited_by_the_map_registers():
    guest, fx, en = setup(map_registers=4)
    assert fx.WdfDmaEnablerGetFragmentLength(en, 1) == 3 * PAGE_SIZE
    program = Programs()
    t = start(fx, en, high_mdl(fx, 0, 8 * PAGE_SIZE), 1, program)
    fx.WdfDmaTransactionExecute(t)
    while not fx.WdfDmaTransactionDmaCompleted(t)[0]:
        pass
    assert [sum(n for _a, n in call) for call in program.calls] == [3 * PAGE_SIZE, 3 * PAGE_SIZE, 2 * PAGE_SIZE]


def test_when_map_registers_run_out_the_transfer_waits_for_them():
    guest, fx, en = setup(map_registers=4)
    first, second = Programs(), Programs()
    a = start(fx, en, high_mdl(fx, 0, 3 * PAGE_SIZE), 1, first)
    b = start(fx, en, high_mdl(fx, 0, 2 * PAGE_SIZE, page=8), 1, second)
    assert fx.WdfDmaTransactionExecute(a) == 0 and len(first.calls) == 1
    assert fx.WdfDmaTransactionExecute(b) == 0            # queued: EvtProgramDma not called yet
    assert second.calls == []
    assert fx.WdfDmaTransactionDmaCompleted(a) == (True, 0)
    guest.iom.run()                                       # the adapter's queued request runs (a DPC)
    assert len(second.calls) == 1
    assert fx.WdfDmaTransactionDmaCompleted(b) == (True, 0)


def test_immediate_execution_fails_with_insufficient_resources_instead_of_waiting():
    guest, fx, en = setup(map_registers=4, v3=True)
    first, second = Programs(), Programs()
    a = start(fx, en, high_mdl(fx, 0, 3 * PAGE_SIZE), 1, first)
    b = start(fx, en, high_mdl(fx, 0, 2 * PAGE_SIZE, page=8), 1, second)
    fx.WdfDmaTransactionSetImmediateExecution(b, True)
    assert fx.WdfDmaTransactionExecute(a) == 0
    assert fx.WdfDmaTransactionExecute(b) == NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
    assert second.calls == []
    fx.WdfDmaTransactionRelease(b)                        # TransferFailed: released for reuse
    assert fx.WdfDmaTransactionDmaCompleted(a) == (True, 0)


def test_immediate_execution_needs_dma_v3():
    guest, fx, en = setup()
    status, t = fx.WdfDmaTransactionCreate(en)
    fx.WdfDmaTransactionSetImmediateExecution(t, True)
    assert fx.findings[-1].rule == "DmaVersion3Required"


def test_hal_adapter_directly():
    from framework_emu import InProcessMemory

    memory = InProcessMemory(ranges=[(0, 4 * MIB), (FOUR_GIB, FOUR_GIB + MIB)])
    adapter = HalDmaAdapter(memory, DmaCapabilities(dma_mask=FOUR_GIB - 1), bounce_pages=[MIB])
    memory.write(FOUR_GIB, b"abc")
    sg = adapter.map([(FOUR_GIB >> 12, 0, 3)], to_device=True)
    assert sg.pairs() == [(MIB, 3)] and memory.read(MIB, 3) == b"abc"
    with pytest.raises(MapRegistersBusy):
        adapter.map([(FOUR_GIB >> 12, 0, 3)], to_device=True)
    woken = []
    adapter.when_map_registers_free(lambda: woken.append(1))
    adapter.unmap(sg)
    assert woken == [1] and adapter.free_map_registers == 1
    with pytest.raises(Exception, match="twice"):
        adapter.unmap(sg)


def test_single_transfer_needing_more_map_registers_than_the_adapter_has():
    guest, fx, en = setup(map_registers=4, v3=True)
    status, t = fx.WdfDmaTransactionCreate(en)
    fx.WdfDmaTransactionSetSingleTransferRequirement(t, True)
    mdl = high_mdl(fx, 0, 6 * PAGE_SIZE)
    # PrepareForSingleTransfer: the fragment may be the enabler's MaximumLength, but 6 pages need
    # 6 map registers and the adapter has 4
    assert fx.WdfDmaTransactionInitialize(t, Programs(), 1, mdl, mdl.virtual_address(), 6 * PAGE_SIZE) == \
        NTSTATUS.STATUS_WDF_NOT_ENOUGH_MAP_REGISTERS
