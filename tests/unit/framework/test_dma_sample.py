"""The DMA echo sample end to end through IoManager.submit: EvtIoWrite/Read ->
WdfDmaTransactionInitializeUsingRequest -> EvtProgramDma -> the fake bus master -> interrupt ->
DPC -> WdfDmaTransactionDmaCompleted -> WdfRequestComplete."""

from __future__ import annotations

from framework_emu import NTSTATUS
from framework_emu.dma_enabler import WdfDmaProfilePacket, WdfDmaProfileScatterGather, WdfDmaProfileScatterGather64
from samples.dma_echo import STATUS_DEVICE_DATA_ERROR

from samples.dma_rig import FOUR_GIB, dma_echo, pattern


def roundtrip(guest, data):
    file = guest.open("dma0")
    assert guest.write_file(file, data).result() == (0, len(data))
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (0, len(data))
    assert guest.read(buffer) == data
    guest.iom.close(file)


def test_write_then_read_back_through_dma():
    guest, fx, driver, device = dma_echo()
    roundtrip(guest, pattern(10000))
    assert len(driver.program_calls) == 2                 # one fragment each way
    assert device.faults == [] and fx.findings == []
    assert all(r.allocations == [] for r in guest.iom.shutdown())


def test_transfer_above_maximum_length_is_staged_into_several_program_dma_calls():
    guest, fx, driver, device = dma_echo(maximum_length=8192)
    data = pattern(5 * 4096 + 100)
    file = guest.open("dma0")
    assert guest.write_file(file, data).result() == (0, len(data))
    assert len(driver.program_calls) == 3                 # 8 KiB, 8 KiB, the rest
    assert [sum(n for _a, n in call) for call in driver.program_calls] == [8192, 8192, len(data) - 16384]
    assert bytes(device.echo) == data
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (0, len(data)) and guest.read(buffer) == data
    assert len(driver.program_calls) == 6


def test_32_bit_profile_with_buffers_above_4_gib_uses_bounce_buffers_both_ways():
    guest, fx, driver, device = dma_echo(high=True, dma_address_bits=32, profile=WdfDmaProfileScatterGather)
    data = pattern(3 * 4096 + 77)
    file = guest.open("dma0")
    op = guest.write_file(file, data)
    assert op.result() == (0, len(data))
    # the device only ever saw low addresses, and got the data
    assert all(address + n <= FOUR_GIB for call in driver.program_calls for address, n in call)
    assert all(32 << 20 <= address < 64 << 20 for address, _n in driver.program_calls[0])  # bounce pages (pool)
    assert bytes(device.echo) == data
    op, buffer = guest.read_file(file, len(data))
    assert all(pfn << 12 >= FOUR_GIB for pfn in buffer.pfns)
    assert op.result() == (0, len(data))
    assert guest.read(buffer) == data                     # copied back out of the bounce pages
    assert device.faults == []
    assert all(r.allocations == [] for r in guest.iom.shutdown())


def test_64_bit_profile_on_a_32_bit_device_with_high_buffers_fails_as_the_device_would():
    guest, fx, driver, device = dma_echo(high=True, dma_address_bits=32, profile=WdfDmaProfileScatterGather64)
    file = guest.open("dma0")
    op = guest.write_file(file, pattern(4096))
    assert op.result() == (STATUS_DEVICE_DATA_ERROR, 0)
    assert device.faults and "32 address bits" in str(device.faults[0])


def test_driver_that_bypasses_the_dma_api_gets_the_real_failure():
    guest, fx, driver, device = dma_echo(high=True, dma_address_bits=32, profile=WdfDmaProfileScatterGather,
                                         bypass_dma_api=True)
    file = guest.open("dma0")
    op = guest.write_file(file, pattern(2000))
    assert op.result() == (STATUS_DEVICE_DATA_ERROR, 0)
    assert device.faults and device.faults[0].logical >= FOUR_GIB


def test_remapping_gives_iovas_and_a_physical_address_faults():
    guest, fx, driver, device = dma_echo(dma_remapping=True)
    data = pattern(6000)
    roundtrip(guest, data)
    assert [len(call) for call in driver.program_calls] == [1, 1]     # one IOVA range per transfer
    assert all(address < (1 << 32) and address != 0 for call in driver.program_calls for address, _n in call)
    stale = driver.program_calls[0][0]
    assert device.faults == []
    import pytest
    from framework_emu.dma_adapter import DmaTranslationFault
    with pytest.raises(DmaTranslationFault, match="not mapped"):       # the transfer is over: its IOVA is gone
        device.hardware.translate(*stale)
    guest2, fx2, driver2, device2 = dma_echo(dma_remapping=True, bypass_dma_api=True)
    file = guest2.open("dma0")
    assert guest2.write_file(file, data).result() == (STATUS_DEVICE_DATA_ERROR, 0)
    assert "not mapped" in str(device2.faults[0])


def test_mmmapiospace_fallback_when_mmmapiospaceex_is_missing(monkeypatch):
    from framework_emu.api.hw_api import HardwareApi

    monkeypatch.setattr(HardwareApi, "missing_system_routines", frozenset({"MmMapIoSpaceEx"}))
    guest, fx, driver, device = dma_echo()
    assert fx.MmGetSystemRoutineAddress("MmMapIoSpaceEx") is None
    roundtrip(guest, pattern(100))


def test_interrupt_runs_isr_at_dirql_then_dpc_at_dispatch():
    guest, fx, driver, device = dma_echo(profile=WdfDmaProfileScatterGather64)
    seen = []
    isr, dpc = driver.EvtInterruptIsr, driver.EvtInterruptDpc
    driver.EvtInterruptIsr = lambda i, m: seen.append(("isr", fx.KeGetCurrentIrql())) or isr(i, m)
    driver.EvtInterruptDpc = lambda i, d: seen.append(("dpc", fx.KeGetCurrentIrql())) or dpc(i, d)
    interrupt = fx._live[driver.interrupt]
    interrupt.config.EvtInterruptIsr, interrupt.config.EvtInterruptDpc = driver.EvtInterruptIsr, driver.EvtInterruptDpc
    file = guest.open("dma0")
    assert guest.write_file(file, b"x" * 100).result() == (NTSTATUS.STATUS_SUCCESS, 100)
    assert seen == [("isr", 9), ("dpc", 2)]
    assert fx.WdfInterruptGetDevice(driver.interrupt) == driver.device


def test_initialize_from_the_request_input_mdl_and_its_accessors():
    guest, fx, driver, device = dma_echo(initialize_from_mdl=True, maximum_length=4096)
    roundtrip(guest, pattern(9000))
    assert len(driver.program_calls) == 3 + 3     # 4 KiB fragments each way
    assert device.faults == []


def test_completing_the_request_while_its_dma_is_in_flight_stops_the_machine():
    """ReferenceRequest takes an IRP reference at Execute "to catch completion of request when
    there is a pending DMA transaction": completing it then is 0x10D/0x3 (P3 the references)."""
    import pytest
    from framework_emu import BugCheck

    guest, fx, driver, device = dma_echo()
    program = driver.EvtProgramDma

    def complete_too_early(Transaction, Device, Context, Direction, SgList):
        program(Transaction, Device, Context, Direction, SgList)
        fx.WdfRequestComplete(fx.WdfDmaTransactionGetRequest(Transaction), 0)

    driver.EvtProgramDma = complete_too_early
    file = guest.open("dma0")
    with pytest.raises(BugCheck) as stop:
        guest.write_file(file, pattern(100))
    assert stop.value.params[:3] == (3, stop.value.params[1], 1)
    assert "still hold 1 reference" in str(stop.value)


def test_32_bit_packet_profile_with_scattered_high_pages_gets_one_bounced_range_per_fragment():
    guest, fx, driver, device = dma_echo(high=True, dma_address_bits=32, profile=WdfDmaProfilePacket,
                                         maximum_length=16 << 10)
    data = pattern(3 * 4096 + 5)
    roundtrip(guest, data)      # the caller's pages are scattered and reversed; the bounce pages are not
    assert [len(call) for call in driver.program_calls] == [1, 1]
    assert device.faults == []


def test_the_documented_example_runs_as_written():
    """docs/writing-a-driver.md, "DMA, interrupts and registers"."""
    from framework_emu import WdfDmaProfileScatterGather  # noqa: F811 (the doc star-imports it)

    guest, fx, driver, device = dma_echo(high=True, dma_address_bits=32,
                                         profile=WdfDmaProfileScatterGather)   # buffers above 4 GiB
    file = guest.open("dma0")
    assert guest.write_file(file, b"x" * 20000).result() == (0, 20000)        # bounced through low pages


def test_a_device_that_completes_later_interrupts_from_the_runtime_loop():
    """The runtime raises the interrupt from its event loop: the ISR, the DPC, the next
    fragment's EvtProgramDma and the request's completion all run inside trigger()."""
    guest, fx, driver, device = dma_echo(complete_later=True, maximum_length=4096)
    file = guest.open("dma0")
    data = pattern(6000)
    op = guest.write_file(file, data)
    assert not op.done and device.started == 1
    device.finish()                       # first fragment done: the DPC stages the second
    assert not op.done and device.started == 1
    device.finish()
    assert op.done and (op.status, op.information) == (0, 6000)
    assert bytes(device.echo) == data
