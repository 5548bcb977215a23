"""Guest RAM can always be unmapped after the device lets go of it.

A stale DMA keeps views of the request's buffers in a timer; neither a
timer that already ran nor one still pending may keep the RAM file mapped,
or tearing a VM down fails ("guest RAM is still in use")."""

from __future__ import annotations

import time

import pytest

from device_model.abi import CompletionStatus, Descriptor, Opcode, Segment
from device_model.device import EchoDevice
from device_model.faults import STALE_DMA_POISON, FaultKind, FaultPlan, FaultRule
from wdfhil.guest_ram import GuestRam, RamLayout, RamRange
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient

RAM_SIZE = 1 << 20


@pytest.fixture
def ram(tmp_path):
    path = tmp_path / "ram"
    with open(path, "wb") as f:
        f.truncate(RAM_SIZE)
    guest_ram = GuestRam.open(path, RamLayout(ranges=(RamRange(gpa=0, size=RAM_SIZE, file_offset=0),)))
    yield guest_ram
    guest_ram.close()


def read_into(rid: int, gpa: int, n: int):
    return Descriptor(Opcode.READ, 0, 1, rid, 0, n), [Segment(gpa, n)]


@pytest.mark.parametrize("delay_us,wait_for_stale", [(1_000, True), (60_000_000, False)],
                         ids=["stale-dma-ran", "stale-dma-pending"])
def test_guest_ram_unmaps_after_stale_dma(tmp_path, ram, delay_us, wait_for_stale):
    plan = FaultPlan([FaultRule(FaultKind.STALE_DMA, request_ids=frozenset({9}), delay_us=delay_us)])
    with EchoDevice(tmp_path, fault_plan=plan) as device:
        with IvshmemClient.connect(device.socket_path) as client:
            device.attach_guest_ram(ram)
            driver = HostDriver(client)
            try:
                done = driver.request(*read_into(9, 0x3000, 512))
                assert done.status == CompletionStatus.OK
                if wait_for_stale:
                    deadline = time.monotonic() + 10
                    while ram.read(0x3000, 4) != bytes([STALE_DMA_POISON]) * 4:
                        assert time.monotonic() < deadline, "the stale DMA never came"
                        time.sleep(0.005)
            finally:
                driver.close()
            device.detach_guest_ram()
            ram.close()          # raises DeviceProtocolError if any view were still held
            assert ram.closed
        assert device.errors == []
