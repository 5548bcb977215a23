"""What a hostile guest can do to the device's state and to host resources, and how
the device holds: a scribbled header page comes back on RESET, a FAILED device stays
failed whatever the guest writes, the trace has a ceiling and refused records a rate."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from device_model.abi import (
    HEADER_SIZE, SQ_OFFSET, VECTOR_ADMIN, AdminCommand, CompletionStatus, Descriptor, DeviceStatus,
    ErrorReason, Opcode, Segment, RING_ENTRIES,
)
from device_model.device import EchoDevice
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from device_model.trace import read_trace
from wdfhil.errors import DeviceProtocolError

from device_helpers import holey_memory

NOP = Descriptor(Opcode.NOP, 0, 0, 1, 0, 0)


def settle(device, doorbells: int, timeout: float = 10.0) -> None:
    """Wait until the device has handled ``doorbells`` submit doorbells (a snapshot
    taken under the device lock counts a doorbell only once it is fully handled)."""
    deadline = time.monotonic() + timeout
    while device.stats_snapshot().doorbells < doorbells:
        assert time.monotonic() < deadline, "doorbell not handled"
        time.sleep(0.001)


def test_reset_restores_a_header_page_the_guest_scribbled_over(device, driver):
    before = device.header()
    driver.bar2[0:SQ_OFFSET] = b"\xff" * SQ_OFFSET        # the whole header page
    driver.header.set("admin_cmd", AdminCommand.RESET)
    done = device.stats_snapshot().admin_doorbells
    driver.ring(VECTOR_ADMIN)
    deadline = time.monotonic() + 10
    while device.stats_snapshot().admin_doorbells <= done:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    after = device.header()
    for name in ("magic", "abi_version", "features", "device_peer", "ring_entries", "sq_offset",
                 "cq_offset", "data_offset", "data_size", "dma_mask", "max_segments",
                 "max_transfer", "segment_align", "guest_peer", "rq_offset", "rcq_offset",
                 "io_max_pages", "io_max_length", "io_max_system"):
        assert after[name] == before[name], name
    assert after["status"] == DeviceStatus.READY and after["admin_done"] == 1
    assert (after["sq_tail"], after["sq_head"], after["cq_tail"], after["cq_head"]) == (0, 0, 0, 0)
    assert bytes(driver.bar2[HEADER_SIZE:SQ_OFFSET]) == bytes(SQ_OFFSET - HEADER_SIZE)  # reserved: zero
    assert driver.request(NOP).status == CompletionStatus.OK


def test_a_failed_device_ignores_a_guest_writing_ready_until_reset(device, driver):
    driver.header.set("sq_tail", RING_ENTRIES + 5)
    driver.ring()
    (c,) = driver.wait_completions(1)
    assert c.reason == ErrorReason.RING_INDEX and device.status == DeviceStatus.FAILED
    executed = device.stats_snapshot().executed
    # The guest "repairs" the header itself and submits: still FAILED, nothing runs.
    driver.header.set("status", DeviceStatus.READY)
    driver.header.set("sq_tail", driver.header.get("sq_head"))
    driver.submit(NOP)
    driver.ring()
    settle(device, 2)
    assert device.stats_snapshot().executed == executed
    assert driver.take_completions() == []
    assert device.status == DeviceStatus.FAILED
    assert device.header()["status"] == DeviceStatus.FAILED      # written back over the guest's
    driver.reset()
    assert driver.request(NOP).status == CompletionStatus.OK


def test_the_trace_has_a_ceiling_and_says_what_it_dropped(tmp_path):
    memory = holey_memory()
    trace = tmp_path / "trace.jsonl"
    with EchoDevice(tmp_path, trace_path=trace, trace_max_bytes=8192) as dev, \
            IvshmemClient.connect(dev.socket_path) as client:
        dev.attach_guest_ram(memory)
        drv = HostDriver(client)
        try:
            for rid in range(300):
                drv.submit(Descriptor(Opcode.READ, 0, 1, rid, 0, 64))
                if rid % 100 == 99:
                    drv.ring()
                    drv.wait_completions(100)
        finally:
            drv.close()
    assert dev.trace is not None and dev.trace.dropped > 0
    assert trace.stat().st_size <= 8192
    records = list(read_trace(trace))
    kinds = [r["type"] for r in records]
    assert kinds.count("trace_limit") == 1
    assert records[-1] == {**records[-1], "type": "trace_dropped", "dropped": dev.trace.dropped}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refused_records_are_rate_limited_and_every_refusal_still_completes(tmp_path):
    from device_model.trace import RateLimit

    memory = holey_memory()
    trace = tmp_path / "trace.jsonl"
    clock = FakeClock()
    with EchoDevice(tmp_path, trace_path=trace) as dev, \
            IvshmemClient.connect(dev.socket_path) as client:
        dev.attach_guest_ram(memory)
        dev.refused_records = RateLimit(per_second=5, burst=10, clock=clock)
        drv = HostDriver(client)
        bad = Descriptor(Opcode.READ, 0, 1, 7, 0, 16), [Segment(3 << 30, 16)]   # in the PCI hole
        try:
            for _ in range(2):
                for _ in range(100):
                    drv.submit(*bad)
                drv.ring()
                done = drv.wait_completions(100)
                assert {(c.status, c.reason) for c in done} == {
                    (CompletionStatus.ERROR, ErrorReason.SEGMENT_NOT_IN_RAM)}
                clock.now += 1.0                       # one second: 5 more records allowed
        finally:
            drv.close()
        assert dev.stats.refused == 200 and dev.stats.refusals_not_traced == 200 - 15
    records = list(read_trace(trace))
    assert sum(r["type"] == "refused" for r in records) == 15
    notes = [r["count"] for r in records if r["type"] == "refused_suppressed"]
    assert sum(notes) == 200 - 15      # said once the limit lets a record through, and at close


def test_the_driver_bound_marker_is_seen_and_outlives_a_reset(device, driver):
    """What a hot-plug waits for: the guest driver's probe writes driver_minor (N + 1)
    and nothing else; a reset keeps it, a new peer starts at 0."""
    with pytest.raises(DeviceProtocolError, match="did not bind"):
        device.wait_for_driver(timeout=0.05)
    waiter = concurrent.futures.ThreadPoolExecutor(1)
    try:
        bound = waiter.submit(device.wait_for_driver, 10.0)
        driver.header.set("driver_minor", 3 + 1)
        assert bound.result(timeout=10) == 3
    finally:
        waiter.shutdown()
    driver.header.set("admin_cmd", AdminCommand.RESET)
    driver.ring(VECTOR_ADMIN)
    deadline = time.monotonic() + 10
    while device.header()["admin_done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert device.wait_for_driver(timeout=0.05) == 3     # the guest's binding stayed
    other = IvshmemClient.connect(device.socket_path)    # a new PCI function
    try:
        device.wait_for_peer(other_than=driver.client.peer_id)
        assert device.header()["driver_minor"] == 0
    finally:
        other.close()
