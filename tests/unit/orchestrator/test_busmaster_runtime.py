"""The DMA sample driver over the real bus-master device, on in-process RAM: request entries in
through the real request ring, the guest I/O runtime, the driver's DMA transactions programmed
into the device's descriptor ring, the device's DMA and interrupt, completions back."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

from device_model import busmaster_abi as abi
from device_model.abi import NTSTATUS, IoMajor, RequestEntry
from device_model.busmaster import BusMasterDevice
from framework_emu.dma_adapter import IOVA_BASE
from orchestrator.busmaster_runtime import BusMasterHardware
from orchestrator.guest_io_runtime import GuestIoRuntime, no_driver
from samples import dma_busmaster as sample
from samples.dma_busmaster import DmaBusMasterDriver
from wdfhil.physical_memory import InProcessMemory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "device"))
from request_ring_helpers import io_device, page_entry  # noqa: E402

MIB = 1 << 20
FOUR_GIB = 1 << 32
OK = NTSTATUS["STATUS_SUCCESS"]
POOL = (32 * MIB, 32 * MIB)
FILE = 5


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


@pytest.fixture
def memory() -> InProcessMemory:
    """64 MiB low (the pools in the top half) and 16 MiB above 4 GiB."""
    return InProcessMemory(ranges=[(0, 64 * MIB), (FOUR_GIB, FOUR_GIB + 16 * MIB)])


@contextlib.contextmanager
def busmaster_run(tmp_path, memory, driver, *, address_bits: int = 64, remapping: bool = False,
                  segment_align: int = 1):
    """(ring driver, runtime, bus-master device, hardware): the echo device carries the request
    ring, the bus-master device (host-only, same RAM) is the driver's hardware."""
    with io_device(tmp_path, memory) as (_device, endpoint, _echo, ring):
        endpoint.set_handler(no_driver)
        bm_dir = tmp_path / "bm"
        bm_dir.mkdir(mode=0o700)
        with BusMasterDevice(bm_dir, address_bits=address_bits, segment_align=segment_align) as bm:
            bm.attach_guest_ram(memory)
            hw = BusMasterHardware(bm, remapping=remapping)
            runtime = GuestIoRuntime(endpoint, memory, POOL, [driver], hardware=hw.hardware)
            hw.connect(runtime.post)
            runtime.start()
            try:
                yield ring, runtime, bm, hw
            finally:
                runtime.close()
                hw.disconnect()
                bm.detach_guest_ram()
            assert bm.errors == []


def write_then_read(ring, memory, rid: int, src: int, dst: int, data: bytes, file_offset: int = 0) -> None:
    n = len(data)
    memory.write(src, data)
    memory.write(dst, bytes(n))
    c = ring.request(page_entry(memory, rid, FILE, IoMajor.WRITE, src, n, table_gpa=0x0F_0000,
                                input_length=n, file_offset=file_offset))
    assert (c.status, c.information) == (OK, n)
    c = ring.request(page_entry(memory, rid + 1, FILE, IoMajor.READ, dst, n, table_gpa=0x0F_0000,
                                output_length=n, file_offset=file_offset))
    assert (c.status, c.information) == (OK, n)
    assert memory.read(dst, n) == data


def test_the_sample_speaks_the_device_abi():
    for name, (offset, _access) in abi.BM_REGISTERS.items():
        mine = getattr(sample, f"REG_{name.upper()}", None)
        assert mine is None or mine == offset, name
    assert (sample.BM_ID, sample.DESCRIPTOR.format, sample.DESCRIPTOR_SIZE) == (
        abi.BM_ID, abi.BM_DESCRIPTOR_FORMAT, abi.BM_DESCRIPTOR_SIZE)
    assert (sample.COMPLETION_OFFSET, sample.COMPLETION.format) == (abi.BM_COMPLETION_OFFSET,
                                                                    abi.BM_COMPLETION_FORMAT)
    assert (sample.CONTROL_ENABLE, sample.CONTROL_RESET) == (abi.BmControl.ENABLE, abi.BmControl.RESET)
    assert (sample.INT_COMPLETION, sample.INT_ERROR) == (abi.BmInterrupt.COMPLETION, abi.BmInterrupt.ERROR)
    assert (sample.OP_TO_DEVICE, sample.OP_FROM_DEVICE) == (abi.BmOpcode.TO_DEVICE, abi.BmOpcode.FROM_DEVICE)
    assert sample.DESC_SEGMENT_TABLE == abi.BmDescriptorFlag.SEGMENT_TABLE
    assert (sample.RING_ALIGN, sample.CAPS_ADDRESS_BITS) == (abi.BM_RING_ALIGN, abi.BM_CAPS_ADDRESS_BITS)


def test_writes_and_reads_are_dma_transactions_through_the_device(tmp_path, memory):
    driver = DmaBusMasterDriver(maximum_length=64 << 10)
    with busmaster_run(tmp_path, memory, driver) as (ring, runtime, bm, hw):
        assert ring.request(RequestEntry(1, FILE, IoMajor.CREATE)).status == OK
        assert hw.address_bits == 64 and driver.address_bits == 64
        write_then_read(ring, memory, 2, 0x10_0000, 0x20_0000, b"\x5a")                  # 1 byte
        write_then_read(ring, memory, 4, 0x10_0ffd, 0x20_0123, pattern(4099), 17)         # page-crossing
        calls = len(driver.program_calls)
        write_then_read(ring, memory, 6, 0x40_0007, 0x60_0ff1, pattern(200_000, 3), 5000)  # > maximum length
        staged = driver.program_calls[calls:]
        assert len(staged) == 2 * 4                                   # 200000 bytes in 64 KiB fragments
        assert all(sum(n for _a, n in call) <= 64 << 10 for call in staged)
        assert bm.read_data(5000, 200_000) == pattern(200_000, 3)    # the device's data memory has it
        assert ring.request(RequestEntry(8, FILE, IoMajor.CLOSE)).status == OK
        assert hw.interrupts >= 2 + 2 + 8 and bm.bus_master.doorbells == len(driver.program_calls)
    assert runtime.report.clean, runtime.report


def test_a_32_bit_device_gets_bounce_buffers_for_pages_above_4_gib(tmp_path, memory):
    driver = DmaBusMasterDriver()
    with busmaster_run(tmp_path, memory, driver, address_bits=32) as (ring, runtime, bm, hw):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        assert hw.address_bits == 32 and hw.dma_mask == FOUR_GIB - 1
        write_then_read(ring, memory, 2, FOUR_GIB + 0x1_0ff0, FOUR_GIB + 0x40_0001, pattern(150_000, 5), 64)
        write_then_read(ring, memory, 4, FOUR_GIB + 0x80_0fff, FOUR_GIB + 0x90_0000, b"\x01\x02")
        assert driver.program_calls
        assert all(a + n <= FOUR_GIB for call in driver.program_calls for a, n in call)   # bounced low
        ring.request(RequestEntry(6, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_with_dma_remapping_the_device_translates_through_the_framework(tmp_path, memory):
    driver = DmaBusMasterDriver()
    with busmaster_run(tmp_path, memory, driver, remapping=True) as (ring, runtime, bm, hw):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        write_then_read(ring, memory, 2, FOUR_GIB + 0x123, 0x20_0abc, pattern(70_000, 9), 1)
        assert all(a >= IOVA_BASE for call in driver.program_calls for a, _n in call)   # IOVAs
        assert driver.ring_logical >= IOVA_BASE
        ring.request(RequestEntry(4, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_a_transfer_past_the_device_memory_is_refused_by_the_driver(tmp_path, memory):
    driver = DmaBusMasterDriver()
    with busmaster_run(tmp_path, memory, driver) as (ring, runtime, bm, hw):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        c = ring.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10_0000, 100, input_length=100,
                                    file_offset=driver.data_size - 50))
        assert c.status == NTSTATUS["STATUS_INVALID_PARAMETER"]
        ring.request(RequestEntry(3, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_a_descriptor_the_device_refuses_fails_the_request_and_the_next_one_goes_through(tmp_path, memory):
    """A device that needs 4 KiB-aligned segments refuses an unaligned buffer (an ERROR
    completion record): the driver ends the transaction and fails the request with
    STATUS_DEVICE_DATA_ERROR; an aligned request after it is served."""
    driver = DmaBusMasterDriver()
    with busmaster_run(tmp_path, memory, driver, segment_align=4096) as (ring, runtime, bm, hw):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        c = ring.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10_0001, 100, input_length=100))
        assert (c.status, c.information) == (sample.STATUS_DEVICE_DATA_ERROR, 0)
        assert driver.errors and driver.errors[0][0] == sample.COMPLETION_ERROR
        write_then_read(ring, memory, 3, 0x10_0000, 0x20_0000, pattern(8192, 4))
        ring.request(RequestEntry(5, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_post_runs_on_the_runtime_thread_and_reports_a_failure(tmp_path, memory):
    import threading

    with busmaster_run(tmp_path, memory, DmaBusMasterDriver()) as (ring, runtime, bm, hw):
        seen = []
        runtime.post(lambda: seen.append(threading.current_thread().name))
        runtime.post(lambda: 1 // 0)
        runtime.call(lambda: None)                    # after both posted calls
        assert seen == [f"wdfhil-guest-io-{runtime.stack}"]
        assert any("ZeroDivisionError" in e for e in runtime.errors)
        runtime.errors.clear()
    assert runtime.report.clean, runtime.report


def test_several_requests_are_in_the_ring_at_once_each_with_its_transaction(tmp_path, memory):
    """Six writes reach the runtime together (its thread held until the endpoint has them all):
    the parallel queue presents each, each gets its own transaction, and their first fragments
    sit in the device's ring at the same time; every staged write lands, and reads it back."""
    import threading

    driver = DmaBusMasterDriver(maximum_length=64 << 10)
    size, count = 200_000, 6
    with busmaster_run(tmp_path, memory, driver) as (ring, runtime, bm, hw):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        hold = threading.Event()
        runtime.post(hold.wait)
        for k in range(count):
            src = 0x10_0000 + k * 0x40_000 + k
            memory.write(src, pattern(size, k + 1))
            ring.post_raw(page_entry(memory, 10 + k, FILE, IoMajor.WRITE, src, size, table_gpa=0x0F_0000 + k * 0x400,
                                     input_length=size, file_offset=k * size).pack())
        ring.ring()
        runtime.endpoint.wait_for(lambda: len(runtime.endpoint.in_flight) == count)
        hold.set()
        completions = ring.wait(count)
        assert sorted((c.request_id, c.status, c.information) for c in completions) == [
            (10 + k, OK, size) for k in range(count)]
        assert driver.most_in_flight == count                # one slot each, all at once
        assert len(driver.program_calls) == count * 4        # each staged in 64 KiB fragments
        for k in range(count):
            assert bm.read_data(k * size, size) == pattern(size, k + 1)
        ring.request(RequestEntry(99, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_interrupts_are_unmasked_in_evt_interrupt_enable_and_masked_in_disable(tmp_path, memory):
    driver = DmaBusMasterDriver()
    calls = []
    enable, disable = driver.EvtInterruptEnable, driver.EvtInterruptDisable
    driver.EvtInterruptEnable = lambda *a: calls.append(("enable", driver._read(sample.REG_INT_MASK))) or enable(*a)
    driver.EvtInterruptDisable = lambda *a: calls.append(("disable", driver._read(sample.REG_INT_MASK))) or disable(*a)
    with busmaster_run(tmp_path, memory, driver) as (ring, runtime, bm, hw):
        assert bm.register_read(abi.register_offset("int_mask"), 4) == 0       # unmasked, running
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        write_then_read(ring, memory, 2, 0x10_0000, 0x20_0000, pattern(5000, 2))
        ring.request(RequestEntry(4, FILE, IoMajor.CLOSE))
    all_masked = int(abi.BmInterrupt.COMPLETION | abi.BmInterrupt.ERROR)
    assert calls == [("enable", all_masked), ("disable", 0)]   # masked until enabled, unmasked until disabled
    assert runtime.report.clean, runtime.report
