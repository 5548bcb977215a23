"""The guest I/O runtime on in-process RAM, through the real device thread and request ring:
entries in, the sample drivers' callbacks, completions back (the e2e tests do it from a guest)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from device_model.abi import NTSTATUS, IoMajor, IoType, RequestEntry
from orchestrator.guest_io_runtime import GuestIoRuntime, no_driver
from samples.echo import IOCTL_ECHO_REVERSE, EchoDriver
from wdfhil.physical_memory import InProcessMemory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "device"))
from request_ring_helpers import io_device, page_entry  # noqa: E402

from driver_io_drivers import HoldingDriver  # noqa: E402  (tests/: shared with the e2e tests)

MIB = 1 << 20
OK = NTSTATUS["STATUS_SUCCESS"]
CANCELLED = NTSTATUS["STATUS_CANCELLED"]
REMOVED = NTSTATUS["STATUS_DEVICE_REMOVED"]
NO_DEVICE = NTSTATUS["STATUS_NO_SUCH_DEVICE"]
POOL = (32 * MIB, 32 * MIB)
FILE = 5


@pytest.fixture
def memory() -> InProcessMemory:
    return InProcessMemory(64 * MIB)


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def run(tmp_path, memory, drivers, **options):
    """(device, endpoint, ring driver, runtime) as a context manager."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        with io_device(tmp_path, memory) as (device, endpoint, _echo, ring):
            endpoint.set_handler(no_driver)
            runtime = GuestIoRuntime(endpoint, memory, POOL, drivers, **options).start()
            try:
                yield device, endpoint, ring, runtime
            finally:
                runtime.close()
    return cm()


def test_direct_write_then_read_through_the_echo_driver(tmp_path, memory):
    with run(tmp_path, memory, [EchoDriver(direct_io=True)]) as (device, endpoint, ring, runtime):
        assert ring.request(RequestEntry(1, FILE, IoMajor.CREATE)).status == OK
        assert device.header()["io_type"] == IoType.DIRECT
        data = pattern(6000)
        memory.write(0x10_0123, data)
        c = ring.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10_0123, 6000, input_length=6000))
        assert (c.status, c.information) == (OK, 6000)
        c = ring.request(page_entry(memory, 3, FILE, IoMajor.READ, 0x20_0ff0, 6000, output_length=6000))
        assert (c.status, c.information) == (OK, 6000)
        assert memory.read(0x20_0ff0, 6000) == data
        assert ring.request(RequestEntry(4, FILE, IoMajor.CLEANUP)).status == OK
        assert ring.request(RequestEntry(5, FILE, IoMajor.CLOSE)).status == OK
        driver = runtime.drivers[0]
    assert runtime.report.clean, runtime.report
    assert "FileClose" in driver.events


def test_buffered_io_and_a_buffered_ioctl(tmp_path, memory):
    with run(tmp_path, memory, [EchoDriver()]) as (device, endpoint, ring, runtime):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        assert device.header()["io_type"] == IoType.BUFFERED
        memory.write(0x30_0000, b"hello, driver")
        c = ring.request(RequestEntry(2, FILE, IoMajor.WRITE, input_length=13, system_gpa=0x30_0000,
                                      system_length=13))
        assert (c.status, c.information) == (OK, 13)
        c = ring.request(RequestEntry(3, FILE, IoMajor.READ, output_length=13, system_gpa=0x31_0000,
                                      system_length=13))
        assert (c.status, c.information) == (OK, 13) and memory.read(0x31_0000, 13) == b"hello, driver"
        memory.write(0x32_0000, b"abc")
        c = ring.request(RequestEntry(4, FILE, IoMajor.DEVICE_CONTROL, ioctl_code=IOCTL_ECHO_REVERSE,
                                      input_length=3, output_length=3, system_gpa=0x32_0000,
                                      system_length=3))
        assert (c.status, c.information) == (OK, 3) and memory.read(0x32_0000, 3) == b"cba"
        ring.request(RequestEntry(5, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_a_timer_completes_the_write_as_wall_time_passes(tmp_path, memory):
    with run(tmp_path, memory, [EchoDriver(direct_io=True, delay_ms=30)]) as (_d, _e, ring, runtime):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        memory.write(0x10_0000, b"x" * 100)
        start = time.monotonic()
        c = ring.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10_0000, 100, input_length=100))
        assert (c.status, c.information) == (OK, 100)
        assert time.monotonic() - start >= 0.02
        ring.request(RequestEntry(3, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_a_cancel_reaches_the_driver(tmp_path, memory):
    with run(tmp_path, memory, [EchoDriver(direct_io=True, delay_ms=10 ** 7)]) as (_d, endpoint, ring, runtime):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        ring.post_raw(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10_0000, 100, input_length=100).pack())
        ring.ring()
        wait_until(lambda: runtime.served >= 2)
        assert ring.take() == []
        ring.post_raw(RequestEntry(3, FILE, IoMajor.CANCEL, target_id=2).pack())
        ring.ring()
        (c,) = ring.wait(1)
        assert (c.request_id, c.status) == (2, CANCELLED)
        assert "RequestCancel" in runtime.drivers[0].events
        ring.request(RequestEntry(4, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_a_request_never_completed_is_reported_and_the_guest_let_go(tmp_path, memory):
    driver = HoldingDriver()
    with run(tmp_path, memory, [driver], time_rate=0) as (_d, endpoint, ring, runtime):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        ring.post_raw(RequestEntry(2, FILE, IoMajor.READ, output_length=100, system_gpa=0x10_0000,
                                   system_length=100).pack())
        ring.ring()
        wait_until(lambda: runtime.served >= 2)
        assert runtime.call(lambda: len(driver.held)) == 1
        report = runtime.close()
        (c,) = ring.wait(1)
        assert (c.request_id, c.status) == (2, REMOVED)
        # With no driver, opening fails (ENODEV) and the guest's CLOSE still succeeds.
        assert ring.request(RequestEntry(3, FILE + 1, IoMajor.CREATE)).status == NO_DEVICE
        assert ring.request(RequestEntry(4, FILE, IoMajor.CLOSE)).status == OK
    (never,) = report.never_completed
    assert never.request_id == 2 and never.major == "READ"
    assert "EvtIoRead" in never.presented_in and "driver_io_drivers.py" in never.presented_in
    assert report.files_left_open == 1
    assert any(f.rule == "RequestNeverCompleted" for f in report.findings)


def test_an_idle_runtime_serves_inline_a_busy_one_queues_in_order(tmp_path, memory):
    """Requests that find the runtime idle run on the device thread (no handoff); while the
    runtime thread owns the IoManager (here: a call that waits), they queue, and run after it
    in the order they came, none of them inline."""
    import threading

    with run(tmp_path, memory, [EchoDriver(direct_io=True)]) as (_d, endpoint, ring, runtime):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        memory.write(0x10_0000, pattern(512))
        ring.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10_0000, 512, input_length=512))
        assert (runtime.served, runtime.served_inline) == (2, 2)
        entered, release = threading.Event(), threading.Event()
        runtime.post(lambda: (entered.set(), release.wait(30)))
        assert entered.wait(30)
        for rid, gpa in ((3, 0x20_0000), (4, 0x21_0000), (5, 0x22_0000)):
            ring.post_raw(page_entry(memory, rid, FILE, IoMajor.READ, gpa, 512, output_length=512).pack())
        ring.ring()
        endpoint.wait_for(lambda: endpoint.stats.accepted == 5, 30, "the three reads handed over")
        assert ring.take() == [] and runtime.served == 2
        release.set()
        done = ring.wait(3)
        assert [c.request_id for c in done] == [3, 4, 5] and all(c.status == OK for c in done)
        assert (runtime.served, runtime.served_inline) == (5, 2)
        for gpa in (0x20_0000, 0x21_0000, 0x22_0000):
            assert memory.read(gpa, 512) == pattern(512)
        ring.request(RequestEntry(6, FILE, IoMajor.CLOSE))
    assert runtime.report.clean, runtime.report


def test_inline_false_serves_every_request_on_the_runtime_thread(tmp_path, memory):
    with run(tmp_path, memory, [EchoDriver()], inline=False) as (_d, _e, ring, runtime):
        ring.request(RequestEntry(1, FILE, IoMajor.CREATE))
        ring.request(RequestEntry(2, FILE, IoMajor.CLOSE))
        assert (runtime.served, runtime.served_inline) == (2, 0)
    assert runtime.report.clean, runtime.report
