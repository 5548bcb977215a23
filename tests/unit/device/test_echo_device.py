"""The whole device (server, thread, rings, engine) driven through the real
ivshmem protocol by the host-side driver, with in-process guest RAM."""

from __future__ import annotations

import os
import time

import pytest

from device_model.abi import (
    ABI_VERSION, CQ_OFFSET, DATA_SIZE, MAGIC, RING_ENTRIES, RING_ERROR_REQUEST_ID, SQ_OFFSET, VECTOR_ADMIN,
    AdminCommand, CompletionStatus, Descriptor, DescriptorFlag, DeviceStatus, ErrorReason,
    Feature, Opcode, Segment, pack_segment,
)
from device_model.device import EchoDevice
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from wdfhil.errors import ConfigError

from device_helpers import GIB, HIGH, MIB, holey_memory

OK, ERROR = CompletionStatus.OK, CompletionStatus.ERROR


def write_desc(rid, length, segments, device_offset=0, flags=0, nseg=None, indirect_gpa=0):
    return Descriptor(Opcode.WRITE, flags, len(segments) if nseg is None else nseg, rid,
                      device_offset, length, indirect_gpa)


def read_desc(rid, length, segments, device_offset=0):
    return Descriptor(Opcode.READ, 0, len(segments), rid, device_offset, length)


def test_header_describes_the_device(device):
    h = device.header()
    assert h["magic"] == MAGIC and h["abi_version"] == ABI_VERSION
    assert h["status"] == DeviceStatus.READY
    assert h["ring_entries"] == RING_ENTRIES and h["sq_offset"] == SQ_OFFSET
    assert h["cq_offset"] == CQ_OFFSET and h["data_size"] == DATA_SIZE
    assert h["features"] & Feature.INDIRECT and not h["features"] & Feature.DMA_MASK


def test_write_then_read_echoes_through_both_ram_ranges(device, driver, memory):
    payload = bytes(range(256)) * 48                       # 12 KiB
    memory.write(0x3000, payload[:8192])
    memory.write(HIGH[0] + 0x100, payload[8192:])
    c = driver.request(write_desc(1, len(payload), [Segment(0x3000, 8192),
                                                    Segment(HIGH[0] + 0x100, 4096)]),
                       [Segment(0x3000, 8192), Segment(HIGH[0] + 0x100, 4096)])
    assert (c.request_id, c.status, c.transferred) == (1, OK, len(payload))
    assert device.read_data(0, len(payload)) == payload
    segs = [Segment(HIGH[1] - 4096, 4096), Segment(0x80000, 8192)]
    c = driver.request(read_desc(2, len(payload), segs), segs)
    assert (c.status, c.transferred) == (OK, len(payload))
    assert memory.read(HIGH[1] - 4096, 4096) + memory.read(0x80000, 8192) == payload


def test_indirect_list_of_many_pages(device, driver, memory):
    pages = [Segment(0x10000 + i * 0x2000, 0x1000) for i in range(100)]
    pages += [Segment(HIGH[0] + i * 0x2000, 0x1000) for i in range(100)]
    memory.write(0x8000, b"".join(pack_segment(s) for s in pages))
    for i, s in enumerate(pages):
        memory.write(s.gpa, bytes([i]) * s.length)
    d = write_desc(3, 200 * 0x1000, pages, device_offset=MIB, flags=DescriptorFlag.INDIRECT,
                   indirect_gpa=0x8000)
    c = driver.request(d)
    assert (c.status, c.transferred) == (OK, 200 * 0x1000)
    data = device.read_data(MIB, 200 * 0x1000)
    assert all(data[i * 0x1000] == i % 256 for i in range(200))


def test_refusal_completes_with_reason_and_sets_last_error(device, driver, memory):
    before = memory.read(0, MIB)
    c = driver.request(read_desc(9, 64, [Segment(2 * GIB, 64)]), [Segment(2 * GIB, 64)])
    assert (c.request_id, c.status, c.reason) == (9, ERROR, ErrorReason.SEGMENT_NOT_IN_RAM)
    assert device.header()["last_error"] == ErrorReason.SEGMENT_NOT_IN_RAM
    assert memory.read(0, MIB) == before
    # The device keeps working afterwards.
    c = driver.request(Descriptor(Opcode.NOP, 0, 0, 10, 0, 0))
    assert (c.request_id, c.status) == (10, OK)


def test_doorbell_before_guest_ram_is_refused_not_a_crash(tmp_path):
    with EchoDevice(tmp_path) as dev:
        with IvshmemClient.connect(dev.socket_path) as client:
            drv = HostDriver(client)
            try:
                assert dev.header()["status"] == DeviceStatus.NO_GUEST_RAM
                c = drv.request(Descriptor(Opcode.NOP, 0, 0, 5, 0, 0))
                assert (c.status, c.reason) == (ERROR, ErrorReason.DEVICE_NOT_READY)
                memory = holey_memory()
                dev.attach_guest_ram(memory)
                assert dev.header()["status"] == DeviceStatus.READY
                assert drv.request(Descriptor(Opcode.NOP, 0, 0, 6, 0, 0)).status == OK
                dev.detach_guest_ram()
                assert dev.header()["status"] == DeviceStatus.NO_GUEST_RAM
                c = drv.request(read_desc(7, 16, [Segment(0, 16)]), [Segment(0, 16)])
                assert c.reason == ErrorReason.DEVICE_NOT_READY
            finally:
                drv.close()
        assert dev.errors == []


def test_many_submissions_with_one_doorbell(device, driver):
    for rid in range(100):
        driver.submit(Descriptor(Opcode.NOP, 0, 0, rid, 0, 0))
    driver.ring()
    done = driver.wait_completions(100)
    assert [c.request_id for c in done] == list(range(100))
    assert [c.sequence for c in done] == list(range(1, 101))
    h = device.header()
    assert h["sq_head"] == h["sq_tail"] == 100


def test_full_completion_ring_stalls_until_the_guest_consumes(device, driver):
    for rid in range(RING_ENTRIES):
        driver.submit(Descriptor(Opcode.NOP, 0, 0, rid, 0, 0))
    driver.ring()
    first = driver.wait_completions(RING_ENTRIES)     # the CQ is now free again
    assert len(first) == RING_ENTRIES
    # Fill the CQ without consuming, then submit more: the device must wait.
    for rid in range(RING_ENTRIES):
        driver.submit(Descriptor(Opcode.NOP, 0, 0, 1000 + rid, 0, 0))
    driver.ring()
    driver.client.wait_interrupt(0, 10)
    while device.header()["cq_tail"] - device.header()["cq_head"] < RING_ENTRIES:
        driver.client.wait_interrupt(0, 10)
    for rid in range(10):
        driver.submit(Descriptor(Opcode.NOP, 0, 0, 5000 + rid, 0, 0))
    driver.ring()
    assert device.header()["cq_tail"] - device.header()["cq_head"] == RING_ENTRIES
    got = driver.take_completions()                   # the guest consumes ...
    assert len(got) == RING_ENTRIES
    driver.ring()                                     # ... and rings again
    rest = driver.wait_completions(10)
    assert [c.request_id for c in rest] == [5000 + i for i in range(10)]


def test_corrupted_sq_tail_fails_the_device_until_reset(device, driver):
    driver.header.set("sq_tail", RING_ENTRIES + 5)
    driver.ring()
    (c,) = driver.wait_completions(1)
    assert (c.request_id, c.status, c.reason) == (RING_ERROR_REQUEST_ID, ERROR, ErrorReason.RING_INDEX)
    h = device.header()
    assert h["status"] == DeviceStatus.FAILED and h["last_error"] == ErrorReason.RING_INDEX
    assert h["sq_head"] == 0
    driver.reset()
    h = device.header()
    assert h["status"] == DeviceStatus.READY
    assert (h["sq_tail"], h["sq_head"], h["cq_tail"], h["cq_head"]) == (0, 0, 0, 0)
    assert h["admin_cmd"] == AdminCommand.NONE and h["admin_done"] == 1
    assert driver.request(Descriptor(Opcode.NOP, 0, 0, 1, 0, 0)).status == OK


def test_unknown_admin_command_is_acknowledged_with_an_error(device, driver):
    driver.header.set("admin_cmd", 77)
    driver.ring(VECTOR_ADMIN)
    driver.client.wait_interrupt(0, 10)
    h = device.header()
    assert h["admin_done"] == 1 and h["admin_cmd"] == 0
    assert h["last_error"] == ErrorReason.BAD_OPCODE


def test_a_new_guest_gets_fresh_rings(device, driver):
    driver.request(Descriptor(Opcode.NOP, 0, 0, 1, 0, 0))
    assert device.header()["cq_tail"] == 1
    with IvshmemClient.connect(device.socket_path) as second:
        device.wait_for_peer(10, other_than=driver.client.peer_id)
        h = device.header()
        assert (h["sq_tail"], h["sq_head"], h["cq_tail"], h["cq_head"]) == (0, 0, 0, 0)
        assert h["guest_peer"] == second.peer_id


def test_dma_mask_is_advertised_and_enforced(tmp_path):
    memory = holey_memory()
    with EchoDevice(tmp_path, dma_mask=0xFFFFFFFF) as dev, \
            IvshmemClient.connect(dev.socket_path) as client:
        dev.attach_guest_ram(memory)
        drv = HostDriver(client)
        try:
            assert dev.header()["dma_mask"] == 0xFFFFFFFF
            assert dev.header()["features"] & Feature.DMA_MASK
            segs = [Segment(HIGH[0], 64)]
            c = drv.request(read_desc(1, 64, segs), segs)
            assert c.reason == ErrorReason.SEGMENT_ABOVE_DMA_MASK
        finally:
            drv.close()


@pytest.mark.parametrize("kwargs,field", [({"dma_mask": 0x1234}, "dma_mask"),
                                          ({"dma_mask": 0}, "dma_mask"),
                                          ({"segment_align": 3}, "segment_align")])
def test_bad_arguments_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as info:
        EchoDevice(tmp_path, **kwargs)
    assert info.value.field == field
    assert os.listdir(tmp_path) == []


def test_a_device_bug_is_reported_and_the_request_still_completes(device, driver, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated engine bug")
    monkeypatch.setattr(device.engine, "execute", broken)
    c = driver.request(read_desc(3, 16, [Segment(0, 16)]), [Segment(0, 16)])
    assert (c.request_id, c.status, c.reason) == (3, ERROR, ErrorReason.INTERNAL)
    assert len(device.errors) == 1 and "simulated engine bug" in device.errors[0]
    monkeypatch.undo()
    device.errors.clear()
    assert driver.request(Descriptor(Opcode.NOP, 0, 0, 4, 0, 0)).status == OK


def test_guest_scribbling_on_device_indices_changes_nothing(device, driver):
    """sq_head/cq_tail live in guest-writable BAR2; the device keeps its own copies."""
    for rid in range(3):
        driver.request(Descriptor(Opcode.NOP, 0, 0, rid, 0, 0))
    executed = device.stats.executed
    driver.header.set("sq_head", 0)          # "please run them again"
    driver.header.set("cq_tail", 200)        # "there are 200 completions"
    driver.header.set("cq_head", 3)
    driver.submit(Descriptor(Opcode.NOP, 0, 0, 99, 0, 0))
    driver.ring()
    deadline = time.monotonic() + 10
    while device.stats.completions < 4:
        assert time.monotonic() < deadline
        driver.client.wait_interrupt(0, 1.0)
    assert [c.request_id for c in driver.take_completions()] == [99]
    assert device.stats.executed == executed + 1
    h = device.header()
    assert (h["sq_head"], h["cq_tail"], h["completions"]) == (4, 4, 4)


def test_run_dir_must_exist_and_be_private(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    for bad in (tmp_path / "missing", shared):
        with pytest.raises(ConfigError) as info:
            EchoDevice(bad)
        assert info.value.field == "run_dir"
