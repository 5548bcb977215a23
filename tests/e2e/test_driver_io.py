"""End to end on a pc guest: a guest program's read/write/ioctl on /dev/wdfio0 reaches a
driver written against framework_emu (the samples, and small drivers below) through the
request ring and the guest I/O runtime, with the program's own pages or a kernel system
buffer as the driver's buffers, and comes back.

One boot for the module: the device's request endpoint is made once, and each test runs
its own GuestIoRuntime (fresh drivers, fresh IoManager over the same pool window). After
each test nothing stays pinned or in flight in the guest and on the host, and the runtime's
report is clean unless the test expects otherwise.
"""

from __future__ import annotations

import struct
import time

import pytest

from device_model.abi import NTSTATUS, IoType, TransferMethod
from device_model.request_echo import IOCTL_ECHO
from device_model.request_ring import RequestEndpoint
from orchestrator.agent_client import GuestBuffer, IoResult, Step, Verification, pattern_bytes
from orchestrator.dma_session import DmaSession
from orchestrator.guest_io_runtime import GuestIoRuntime, no_driver
from samples.echo import IOCTL_ECHO_REVERSE, EchoDriver
from samples.filter import IOCTL_FILTER_PROBE_ASYNC, IOCTL_FILTER_PROBE_SYNC, IOCTL_FILTER_STATS, \
    EchoFilterDriver
from samples.internal_ioctl import IOCTL_INTERNAL_SENSOR_READ, SensorDriver, SensorFilterDriver
from samples.neither import IOCTL_NEITHER_IN_PLACE, IOCTL_NEITHER_REVERSE, NeitherDriver
from wdfhil.errors import GuestError

from guest_helpers import agent_answer, guest_counter, start_agent, wait_guest_counter
from driver_io_drivers import (HoldingDriver, LeakyEchoDriver, MethodEchoDriver, OffsetStoreDriver,
                               UseAfterCompleteDriver)

pytestmark = pytest.mark.e2e

WAIT_S = 120.0
CANCELLED = NTSTATUS["STATUS_CANCELLED"]
INVALID_DEVICE_REQUEST = NTSTATUS["STATUS_INVALID_DEVICE_REQUEST"]


# ---- fixtures and helpers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def session(guest_image):
    with DmaSession("pc-256m", guest_image) as s:
        s.endpoint = RequestEndpoint(s.device, no_driver)
        yield s
        assert s.device.errors == []


@pytest.fixture
def drive(session):
    """``drive(*drivers, **runtime options)`` -> a started GuestIoRuntime on the session's
    endpoint; closed afterwards, its report clean unless the test took it (``runtime.close()``)
    and checked it; nothing left pinned or in flight on either side."""
    runtimes: list[GuestIoRuntime] = []

    def start(*drivers, **options) -> GuestIoRuntime:
        runtime = GuestIoRuntime(session.endpoint, session.ram, session.config.pool.window, drivers, **options)
        runtimes.append(runtime.start())
        return runtime

    yield start
    checked = [r.report is not None for r in runtimes]
    reports = [r.close() for r in runtimes]
    wait_guest_counter(session, "io_in_flight", 0)
    assert guest_counter(session, "io_pinned_pages") == 0
    session.endpoint.wait_for(lambda: not session.endpoint.in_flight and not session.endpoint.open_files,
                              WAIT_S, "nothing in flight, no file open")
    for was_checked, report in zip(checked, reports):
        assert was_checked or report.clean, str(report)
    session.endpoint.set_io_type(IoType.DIRECT)


def wait_until(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.1)


def hexdump(result: dict) -> bytes:
    return bytes.fromhex(result["hex"])


# ---- the tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
@pytest.mark.parametrize("size,offset", [(1, 4095), (4096 + 333, 4000), (100_000, 3), (1 << 20, 1)],
                         ids=["1-byte-last-in-page", "4k-odd-page-crossing", "100k-unaligned",
                              "1MiB-unaligned-257-pages"])
def test_write_then_read_round_trips_through_the_echo_driver(session, drive, direct, size, offset):
    runtime = drive(MethodEchoDriver(direct_io=direct))      # the echo sample, recording its MDLs
    results = session.agent.run(
        Step.alloc("src", size, offset=offset, merge=False), Step.fill("src", 9),
        Step.io_write("src", offset=64), Step.alloc("dst", size, offset=(offset + 1) % 4096),
        Step.memset("dst", 0), Step.io_read("dst", offset=64), Step.verify("dst", 9))
    write, read = IoResult.from_result(results[2]), IoResult.from_result(results[5])
    assert (write.result, write.errno) == (size, 0)
    assert (read.result, read.errno) == (size, 0)
    assert Verification.from_result(results[6]).match
    assert session.endpoint.io_type == (IoType.DIRECT if direct else IoType.BUFFERED)
    driver = runtime.drivers[0]
    assert runtime.call(lambda: (driver.length, driver.events[:2])) == (size, ["SelfManagedIoInit", "FileCreate"])
    assert runtime.findings() == []
    mdls = runtime.call(lambda: list(driver.mdls))
    if not direct:
        assert mdls == []
        return
    # The driver's MDLs list the very frames of the guest program's buffers.
    src, dst = GuestBuffer.from_result(results[0]), GuestBuffer.from_result(results[3])
    for (what, pfns, byte_offset, count, va), buffer in zip(mdls, (src, dst)):
        assert [p << 12 for p in pfns] == list(buffer.frames), what
        assert (byte_offset, count, va % 4096) == (buffer.offset, size, buffer.offset), what


@pytest.mark.parametrize("direct", [False, True], ids=["buffered-device", "direct-device"])
@pytest.mark.parametrize("method", list(TransferMethod), ids=lambda m: m.name)
def test_each_ioctl_transfer_method_reaches_the_driver(session, drive, direct, method):
    runtime = drive(MethodEchoDriver(direct_io=direct))
    driver = runtime.drivers[0]
    results = session.agent.run(
        Step.alloc("in", 3000, offset=4000), Step.fill("in", 4),
        Step.alloc("out", 3000, offset=123), Step.fill("out", 5) if method == TransferMethod.IN_DIRECT
        else Step.memset("out", 0),
        Step.io_call("ioctl", IOCTL_ECHO[method], input="in", output="out"),
        Step.verify("out", 4))
    call = IoResult.from_result(results[4])
    if method == TransferMethod.NEITHER:
        # The framework hands no user-mode pointer to a driver (no EvtIoInCallerContext here):
        # retrieving the input fails, as on Windows, and the driver says so.
        assert (call.result, call.status, call.information) == (0, INVALID_DEVICE_REQUEST, 0)
        return
    assert (call.result, call.status, call.information) == (0, 0, 3000)
    if method == TransferMethod.IN_DIRECT:
        assert runtime.call(lambda: driver.in_direct) == pattern_bytes(5, 3000)
    else:
        assert Verification.from_result(results[5]).match
    if method in (TransferMethod.IN_DIRECT, TransferMethod.OUT_DIRECT):
        ((_what, pfns, byte_offset, count, _va),) = runtime.call(lambda: list(driver.mdls))
        assert [p << 12 for p in pfns] == results[2]["frames"] and (byte_offset, count) == (123, 3000)
    assert runtime.findings() == []


def test_a_method_neither_ioctl_round_trips_through_the_callers_locked_pages(session, drive):
    """The sample probes and locks the program's own buffers in EvtIoInCallerContext (input for
    read, output for write), enqueues the request, and its queue reverses input into output; a
    second IOCTL reverses the input in place (locked for write: the program sees its input
    changed). The locked memory goes with each request: nothing pinned or leaked after."""
    runtime = drive(NeitherDriver())
    driver = runtime.drivers[0]
    results = session.agent.run(
        Step.alloc("in", 3000, offset=4000), Step.fill("in", 4),      # input crosses a page boundary
        Step.alloc("out", 3000, offset=123), Step.memset("out", 0),
        Step.io_call("ioctl", IOCTL_NEITHER_REVERSE, input="in", output="out"),
        "hexdump out length=1024", "hexdump out start=1976 length=1024",
        Step.io_call("ioctl", IOCTL_NEITHER_IN_PLACE, input="in"),
        "hexdump in length=1024", "hexdump in start=1976 length=1024")
    reverse, in_place = IoResult.from_result(results[4]), IoResult.from_result(results[7])
    assert (reverse.result, reverse.status, reverse.information) == (0, 0, 3000)
    expected = pattern_bytes(4, 3000)[::-1]
    assert hexdump(results[5]) == expected[:1024] and hexdump(results[6]) == expected[1976:]
    assert (in_place.result, in_place.status, in_place.information) == (0, 0, 3000)
    assert hexdump(results[8]) == expected[:1024] and hexdump(results[9]) == expected[1976:]
    assert runtime.call(lambda: (driver.locked, driver.events)) == ({}, [])
    assert runtime.findings() == []


def test_an_internal_ioctl_through_a_filter_with_a_preallocated_memory_object(session, drive):
    lower, upper = SensorDriver(), SensorFilterDriver()
    runtime = drive(lower, upper)
    results = session.agent.run(
        Step.alloc("in", 8, offset=4092), Step.memset("in", 0), Step.memset("in", 7, length=1),
        Step.alloc("out", 8), Step.memset("out", 0xEE),
        Step.io_call("internal", IOCTL_INTERNAL_SENSOR_READ, input="in", output="out"),
        "hexdump out")
    call = IoResult.from_result(results[5])
    assert (call.result, call.status, call.information) == (0, 0, 8)
    assert struct.unpack("<II", hexdump(results[6])) == (7, 700)
    assert runtime.call(lambda: upper.answers) == [700]


def test_64_requests_in_flight_from_64_guest_threads_on_a_parallel_queue(session, drive):
    driver = OffsetStoreDriver(parallel=True, gate=64)
    drive(driver)
    # 4 agent processes x 16 threads: the 64 first writes are all held by the driver at once.
    outputs = [f"/tmp/parallel{k}.json" for k in range(4)]
    for k, output in enumerate(outputs):
        start_agent(session, Step.io_stress(16, 3, 5000, page_offset=100 * k + 1, offset=k << 20),
                    output=output)
    for output in outputs:
        answer = agent_answer(session, output)
        assert (answer["done"], answer["failed"], answer["mismatches"]) == (48, 0, 0), answer
    assert driver.max_held == 64
    assert driver.presented == 4 * 16 * 3 * 2


def test_a_sequential_queue_never_presents_two_requests_at_once(session, drive):
    driver = OffsetStoreDriver(parallel=False, delay_ms=3)   # each completed by a timer
    drive(driver)
    answer = session.agent.command(Step.io_stress(8, 4, 300, page_offset=4000))
    assert (answer["done"], answer["failed"], answer["mismatches"]) == (32, 0, 0), answer
    assert driver.presented == 64
    assert driver.max_held == 1


def test_a_killed_program_gets_every_request_cancelled_and_nothing_stays_pinned(session, drive):
    driver = EchoDriver(direct_io=True, delay_ms=10 ** 7)   # the first write waits on its timer
    runtime = drive(driver)
    pid = start_agent(session, Step.io_stress(4, 1, 70_000, page_offset=5), output="/tmp/killed.json")
    wait_until(lambda: runtime.in_flight() == 4, "four writes in the framework")
    assert guest_counter(session, "io_pinned_pages") == 4 * 18
    assert runtime.call(lambda: driver.pending) is not None    # one held by the driver, three queued
    session.vm.run(f"kill -9 {pid}").check()
    wait_guest_counter(session, "io_orphans", 0)
    wait_guest_counter(session, "io_pinned_pages", 0)
    wait_guest_counter(session, "io_in_flight", 0)
    wait_until(lambda: runtime.in_flight() == 0, "nothing left in the framework")
    session.endpoint.wait_for(lambda: not session.endpoint.open_files, WAIT_S, "the file closed")
    assert "RequestCancel" in runtime.call(lambda: list(driver.events))
    assert "FileClose" in runtime.call(lambda: list(driver.events))
    assert guest_counter(session, "io_cancels") >= 4


def test_a_request_never_completed_is_reported_with_where_it_was_presented(session, drive):
    driver = HoldingDriver()
    runtime = drive(driver)
    start_agent(session, Step.alloc("b", 100), Step.io_read("b"), output="/tmp/never.json")
    wait_until(lambda: runtime.call(lambda: len(driver.held)) == 1, "the read held")
    report = runtime.close()
    (never,) = report.never_completed
    assert never.major == "READ"
    assert "EvtIoRead" in never.presented_in and "driver_io_drivers.py" in never.presented_in
    assert any(f.rule == "RequestNeverCompleted" for f in report.findings)
    # the guest is let go with STATUS_DEVICE_REMOVED (ENODEV) and unpins the buffer
    answer = agent_answer(session, "/tmp/never.json")
    read = IoResult.from_result(answer["results"][1])
    assert (read.result, read.errno_name) == (-1, "ENODEV")
    # with no driver attached, opening the node says ENODEV
    with pytest.raises(GuestError, match="ENODEV"):
        session.agent.run(Step.io_open())


def test_the_filter_sample_over_the_echo_driver(session, drive):
    echo, filt = EchoDriver(direct_io=True), EchoFilterDriver()
    runtime = drive(echo, filt)
    results = session.agent.run(
        Step.alloc("src", 5000, offset=4000), Step.fill("src", 3), Step.io_write("src", offset=7),
        Step.alloc("dst", 5000, offset=17), Step.memset("dst", 0), Step.io_read("dst", offset=7),
        Step.verify("dst", 3),
        Step.alloc("stats", 8), Step.io_call("ioctl", IOCTL_FILTER_STATS, output="stats"), "hexdump stats",
        Step.alloc("pin", 3000, offset=2000), Step.fill("pin", 8), Step.alloc("pout", 3000),
        Step.io_call("ioctl", IOCTL_FILTER_PROBE_SYNC, input="pin", output="pout"), Step.verify("pout", 8),
        Step.memset("pout", 0),
        Step.io_call("ioctl", IOCTL_FILTER_PROBE_ASYNC, input="pin", output="pout"), Step.verify("pout", 8),
        Step.alloc("rin", 64), Step.fill("rin", 11), Step.alloc("rout", 64),
        Step.io_call("ioctl", IOCTL_ECHO_REVERSE, input="rin", output="rout"), "hexdump rin", "hexdump rout")
    assert IoResult.from_result(results[2]).result == 5000
    assert IoResult.from_result(results[5]).result == 5000
    assert Verification.from_result(results[6]).match
    stats = IoResult.from_result(results[8])
    assert (stats.status, stats.information) == (0, 8)
    assert struct.unpack("<Q", hexdump(results[9])) == (5000,)
    for index in (13, 16):
        probe = IoResult.from_result(results[index])
        assert (probe.status, probe.information) == (0, 3000), index
        assert Verification.from_result(results[index + 1]).match, index
    assert IoResult.from_result(results[21]).information == 64
    assert hexdump(results[23]) == hexdump(results[22])[::-1]
    assert runtime.call(lambda: filt.bytes_written) == 5000   # the probes send below the filter


@pytest.mark.parametrize("mode", ["record", "bugcheck"])
def test_a_leak_is_reported_when_the_runtime_closes(session, drive, mode):
    runtime = drive(LeakyEchoDriver(direct_io=True), framework_options={"verifier_mode": mode})
    results = session.agent.run(Step.alloc("b", 100), Step.io_write("b"), Step.io_write("b"))
    assert IoResult.from_result(results[2]).result == 100
    report = runtime.close()
    assert report.never_completed == []
    (finding,) = [f for f in report.findings if f.rule == "PoolLeakOnUnload"]
    assert finding.message.count("driver_io_drivers.py") == 2      # where each allocation was made
    if mode == "record":
        (leak,) = report.leaks
        assert len(leak.allocations) == 2 and report.bugcheck is None
    else:   # as Driver Verifier does: unloading with pool allocations left is bug check 0xC4/0x62
        assert (report.bugcheck.code, report.bugcheck.params[0]) == (0xC4, 0x62)


def test_a_bug_check_stops_the_driver_and_the_guest_gets_enodev(session, drive):
    runtime = drive(UseAfterCompleteDriver(direct_io=True))
    results = session.agent.run(Step.alloc("b", 100), Step.io_write("b"), Step.io_write("b"))
    # the emulated machine stopped inside the first write's callback: both end with ENODEV
    for result in results[1:]:
        call = IoResult.from_result(result)
        assert (call.result, call.errno_name) == (-1, "ENODEV")
    report = runtime.close()
    assert report.bugcheck is not None and report.bugcheck.code == 0x10D
    assert "driver_io_drivers.py" in str(report.bugcheck.finding)


def test_the_timer_driven_echo_sample_completes_as_time_passes(session, drive):
    driver = EchoDriver(direct_io=True, delay_ms=20)        # the WDK sample's timer path
    runtime = drive(driver)
    results = session.agent.run(
        Step.alloc("src", 3000, offset=4090), Step.fill("src", 2), Step.io_write("src"),
        Step.alloc("dst", 3000, offset=5), Step.io_read("dst"), Step.verify("dst", 2))
    assert IoResult.from_result(results[2]).result == 3000
    assert IoResult.from_result(results[4]).result == 3000
    assert Verification.from_result(results[5]).match
    assert "RequestCancel" not in runtime.call(lambda: list(driver.events))


def test_a_signal_mid_call_cancels_through_the_drivers_cancel_routine(session, drive):
    driver = EchoDriver(direct_io=True, delay_ms=10 ** 7)   # the write waits on its timer
    runtime = drive(driver)
    results = session.agent.run(Step.alloc("in", 100, offset=4000), Step.fill("in", 1),
                                Step.io_call("write", 0, input="in", alarm_ms=300))
    call = IoResult.from_result(results[2])
    assert (call.result, call.status, call.information) == (0, CANCELLED, 0)
    assert "RequestCancel" in runtime.call(lambda: list(driver.events))
