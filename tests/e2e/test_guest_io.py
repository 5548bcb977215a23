"""End to end on a pc guest: a program's read/write/ioctl on /dev/wdfio0 crosses the
request ring to the host's endpoint and an echo handler, with the guest's own pages
(pinned, PFNs inline or in an indirect table) or a system buffer, and comes back.

One boot for the module; each test gets a fresh echo handler. The host checks
what it got (the validated requests: page counts, offsets, indirect tables) and
the guest checks what came back (patterns verified in the guest); the module's
sysfs counters show nothing stays pinned.
"""

from __future__ import annotations


import pytest

from device_model.abi import NTSTATUS, IoMajor, TransferMethod, ntstatus_errno
from device_model.request_echo import IOCTL_ECHO, IOCTL_STATUS, EchoIoHandler
from device_model.request_ring import GuestIoRequest, RequestEndpoint
from orchestrator.agent_client import IoResult, Step, Verification, pattern_bytes
from orchestrator.dma_session import DmaSession

from guest_helpers import SYSFS, agent_answer, guest_counter, start_agent, wait_guest_counter

pytestmark = pytest.mark.e2e

CANCELLED = NTSTATUS["STATUS_CANCELLED"]
WAIT_S = 120.0


class Recorder:
    """The endpoint's callbacks: records every request, then the test's echo handler."""

    def __init__(self) -> None:
        self.handler = EchoIoHandler()
        self.requests: list[GuestIoRequest] = []

    def on_request(self, request: GuestIoRequest) -> None:
        self.requests.append(request)
        self.handler.on_request(request)

    def on_cancel(self, request: GuestIoRequest) -> None:
        self.handler.on_cancel(request)

    def of(self, major: IoMajor) -> list[GuestIoRequest]:
        return [r for r in self.requests if r.major == major]


@pytest.fixture(scope="module")
def session(guest_image):
    with DmaSession("pc-256m", guest_image) as s:
        recorder = Recorder()
        s.endpoint = RequestEndpoint(s.device, recorder.on_request, on_cancel=recorder.on_cancel)
        s.recorder = recorder
        yield s
        assert s.device.errors == []


@pytest.fixture
def io(session):
    """The session with a fresh echo handler; afterwards nothing may stay pinned or in flight."""
    with session.endpoint.core.lock:
        session.recorder.handler = EchoIoHandler()
        session.recorder.requests = []
    yield session
    session.recorder.handler.release_held()
    wait_guest_counter(session, "io_in_flight", 0)
    assert guest_counter(session, "io_pinned_pages") == 0
    session.endpoint.wait_for(lambda: not session.endpoint.in_flight, WAIT_S, "nothing in flight")


def test_the_module_offers_a_guest_io_node(io):
    assert io.vm.run("test -c /dev/wdfio0").exit_code == 0
    assert int(io.vm.run(f"cat {SYSFS}/vectors").stdout) == 3
    assert guest_counter(io, "io_pinned_pages") == 0


@pytest.mark.parametrize("size,offset", [(1, 0), (1, 4095), (4096 + 333, 4000), (1 << 20, 1)],
                         ids=["1-byte", "1-byte-last-in-page", "4k-odd-page-crossing",
                              "1MiB-unaligned-257-pages"])
def test_write_then_read_round_trip(io, size, offset):
    results = io.agent.run(
        Step.alloc("src", size, offset=offset, merge=False), Step.fill("src", 9),
        Step.io_write("src", offset=64), Step.alloc("dst", size, offset=(offset + 1) % 4096),
        Step.memset("dst", 0), Step.io_read("dst", offset=64), Step.verify("dst", 9))
    write, read = IoResult.from_result(results[2]), IoResult.from_result(results[5])
    assert (write.result, write.errno) == (size, 0)
    assert (read.result, read.errno) == (size, 0)
    assert Verification.from_result(results[6]).match
    assert bytes(io.recorder.handler.store[64:64 + size]) == pattern_bytes(9, size)
    (w,) = io.recorder.of(IoMajor.WRITE)
    (r,) = io.recorder.of(IoMajor.READ)
    pages = (offset + size + 4095) // 4096
    assert (w.page_offset, w.page_length, len(w.pfns)) == (offset, size, pages)
    assert w.plan.indirect == (pages > 16)
    # The host got the very frames the guest's buffer lives in.
    frames = results[0]["frames"]
    assert [p << 12 for p in w.pfns] == frames
    assert r.page_offset == (offset + 1) % 4096 and r.page_length == size
    assert w.user_address == results[0]["va"] and r.user_address == results[3]["va"]


@pytest.mark.parametrize("method", list(TransferMethod), ids=lambda m: m.name)
def test_echo_ioctl_each_transfer_method(io, method):
    results = io.agent.run(
        Step.alloc("in", 3000, offset=4000), Step.fill("in", 4),
        Step.alloc("out", 3000, offset=123), Step.memset("out", 0),
        Step.io_call("ioctl", IOCTL_ECHO[method], input="in", output="out"),
        Step.verify("out", 4) if method != TransferMethod.IN_DIRECT else Step.verify("in", 4))
    call = IoResult.from_result(results[4])
    assert (call.result, call.status, call.information) == (0, 0, 3000)
    assert Verification.from_result(results[5]).match
    (request,) = io.recorder.of(IoMajor.DEVICE_CONTROL)
    assert request.method == method
    if method == TransferMethod.BUFFERED:
        assert request.system_length == 3000 and request.pfns == ()
    else:
        assert request.system_length == 3000 and request.page_length == 3000
        assert request.page_offset == 123
    assert (request.user_input != 0) == (method == TransferMethod.NEITHER)


def test_many_requests_from_many_threads(io):
    answer = io.agent.command(Step.io_stress(8, 100, 700, page_offset=4000))
    assert (answer["done"], answer["failed"], answer["mismatches"]) == (800, 0, 0), answer
    answer = io.agent.command(Step.io_stress(4, 2500, 1, mode="ioctl",
                                             code=IOCTL_ECHO[TransferMethod.BUFFERED]))
    assert (answer["done"], answer["failed"]) == (10_000, 0), answer


def test_several_in_flight_at_once_from_threads_and_processes(io):
    handler = io.recorder.handler
    handler.hold = {IoMajor.WRITE}
    pids = [start_agent(io, Step.io_stress(3, 1, 10_000, page_offset=7 + k, offset=k << 20),
                        output=f"/tmp/inflight{k}.json") for k in range(2)]
    io.endpoint.wait_for(lambda: len(handler.held) == 6, WAIT_S, "six WRITEs held")
    assert guest_counter(io, "io_in_flight") == 6
    assert guest_counter(io, "io_pinned_pages") == 6 * 3
    handler.hold = set()
    assert handler.release_held() == 6
    for k, _pid in enumerate(pids):
        answer = agent_answer(io, f"/tmp/inflight{k}.json")
        assert (answer["done"], answer["failed"]) == (3, 0), answer


def test_a_killed_program_leaves_nothing_pinned_and_every_request_ends_on_the_host(io):
    handler = io.recorder.handler
    handler.hold = {IoMajor.WRITE, IoMajor.DEVICE_CONTROL}
    handler.complete_on_cancel = False        # a slow driver: completion comes later
    pids = [
        start_agent(io, Step.io_stress(4, 1, 70_000, page_offset=5), output="/tmp/kill-rw.json"),
        start_agent(io, Step.io_stress(4, 1, 70_000, page_offset=9, mode="ioctl",
                                       code=IOCTL_ECHO[TransferMethod.OUT_DIRECT]),
                    output="/tmp/kill-ioctl.json"),
    ]
    io.endpoint.wait_for(lambda: len(handler.held) == 8, WAIT_S, "eight requests held")
    held = list(handler.held)
    pinned = guest_counter(io, "io_pinned_pages")
    assert pinned == 8 * 18                   # 70,000 bytes at offset 5 or 9: 18 pages each
    io.vm.run(f"kill -9 {' '.join(map(str, pids))}").check()
    io.endpoint.wait_for(lambda: len(handler.cancelled) == 8, WAIT_S, "eight cancels")
    assert sorted(handler.cancelled) == sorted(r.request_id for r in held)
    # The program is gone, the host still has the requests: the pages stay pinned.
    wait_guest_counter(io, "io_orphans", 8)
    assert guest_counter(io, "io_pinned_pages") == pinned
    assert all(not r.completed for r in held)
    assert handler.release_held(CANCELLED) == 8
    wait_guest_counter(io, "io_orphans", 0)
    wait_guest_counter(io, "io_pinned_pages", 0)
    wait_guest_counter(io, "io_in_flight", 0)
    io.endpoint.wait_for(lambda: not io.endpoint.in_flight and not io.endpoint.open_files,
                         WAIT_S, "every request completed and every file closed")
    assert all(r.completed and r.status == CANCELLED for r in held)
    # each file got its CLEANUP and CLOSE; each request completed exactly once
    assert len(io.recorder.of(IoMajor.CLEANUP)) == len(io.recorder.of(IoMajor.CLOSE)) == 2
    ids = [rid for rid, _major, _status in handler.log]
    assert len(ids) == len(set(ids))


def test_ntstatus_to_errno_table(io):
    steps = [Step.io_status(status, IOCTL_STATUS) for status in NTSTATUS.values()]
    results = io.agent.run(*steps)
    for (name, status), answer in zip(NTSTATUS.items(), results):
        assert answer["status"] == status, name
        expected = ntstatus_errno(status) or ""
        assert answer["errno_name"] == expected, (name, answer)


def test_read_past_the_end_is_eof_and_a_bad_write_is_einval(io):
    size = len(io.recorder.handler.store)
    results = io.agent.run(Step.alloc("b", 100), Step.io_read("b", offset=size),
                           Step.io_write("b", offset=size - 50))
    eof, bad = IoResult.from_result(results[1]), IoResult.from_result(results[2])
    assert (eof.result, eof.errno) == (0, 0)
    assert (bad.result, bad.errno_name) == (-1, "EINVAL")


def test_nonblocking_open_and_poll(io):
    results = io.agent.run(Step.io_open(nonblock=True), Step.io_poll(),
                           Step.alloc("b", 10), Step.fill("b", 1), Step.io_write("b"))
    assert results[0]["nonblock"] and results[1]["pollout"] and results[1]["pollin"]
    assert IoResult.from_result(results[4]).result == 10


def test_a_signal_sends_a_cancel_and_the_call_still_waits_for_the_completion(io):
    handler = io.recorder.handler
    handler.hold = {IoMajor.DEVICE_CONTROL}   # completed only when the cancel arrives
    results = io.agent.run(
        Step.alloc("in", 100), Step.alloc("out", 8000, offset=100),
        Step.io_call("ioctl", IOCTL_ECHO[TransferMethod.OUT_DIRECT], input="in", output="out",
                     alarm_ms=300))
    call = IoResult.from_result(results[2])
    assert (call.result, call.status, call.information) == (0, CANCELLED, 0)
    (request,) = io.recorder.of(IoMajor.DEVICE_CONTROL)
    assert request.cancel_requested and handler.cancelled == [request.request_id]
    assert guest_counter(io, "io_cancels") >= 1


def test_buffered_read_write_through_a_system_buffer(io):
    from device_model.abi import IoType
    io.endpoint.set_io_type(IoType.BUFFERED)
    try:
        results = io.agent.run(
            Step.alloc("src", 100_000, offset=3), Step.fill("src", 2),
            Step.io_write("src", offset=5), Step.alloc("dst", 100_000, offset=4094),
            Step.io_read("dst", offset=5), Step.verify("dst", 2))
    finally:
        io.endpoint.set_io_type(IoType.DIRECT)
    assert IoResult.from_result(results[2]).result == 100_000
    assert IoResult.from_result(results[4]).result == 100_000
    assert Verification.from_result(results[5]).match
    (w,) = io.recorder.of(IoMajor.WRITE)
    assert w.system_length == 100_000 and w.pfns == ()


def test_guest_io_follows_a_device_reset_with_nothing_in_flight(io):
    answer = io.agent.command(Step.io_stress(1, 3, 100))
    assert answer["done"] == 3
    io.agent.command("reset")                 # admin RESET: the request ring's indices too
    assert io.device.header()["rq_tail"] == 0
    answer = io.agent.command(Step.io_stress(2, 3, 100))
    assert (answer["done"], answer["failed"]) == (6, 0), answer
    assert "no more guest I/O" not in io.vm.run("dmesg").stdout


def test_with_every_slot_taken_nonblocking_calls_say_eagain_and_poll_waits(io):
    handler = io.recorder.handler
    handler.hold = {IoMajor.WRITE}
    start_agent(io, Step.io_stress(256, 1, 1), output="/tmp/full.json")
    io.endpoint.wait_for(lambda: len(handler.held) == 256, WAIT_S, "256 WRITEs held")
    results = io.agent.run(Step.io_open(nonblock=True), Step.io_poll(timeout_ms=10),
                           Step.alloc("b", 10), Step.io_write("b"))
    assert results[1]["result"] == 0 and not results[1]["pollout"]
    assert IoResult.from_result(results[3]).errno_name == "EAGAIN"
    handler.hold = set()
    assert handler.release_held() == 256
    answer = agent_answer(io, "/tmp/full.json")
    assert (answer["done"], answer["failed"]) == (256, 0), answer
    results = io.agent.run(Step.io_open(nonblock=True), Step.io_poll(timeout_ms=10))
    assert results[1]["pollout"]


def test_a_host_claiming_more_than_the_buffer_is_clamped(io):
    from device_model.abi import IoType

    def liar(request):
        if request.major == IoMajor.READ:
            request.write_output(b"\x5a" * 10)         # writes 10 bytes, claims a terabyte
            request.complete(0, 1 << 40)
        else:
            request.complete(0, 0)
    io.endpoint.set_handler(liar)
    try:
        for io_type in (IoType.DIRECT, IoType.BUFFERED):
            io.endpoint.set_io_type(io_type)
            results = io.agent.run(Step.alloc("b", 100, offset=4090), Step.memset("b", 1),
                                   Step.io_read("b"), "hexdump b length=100")
            assert IoResult.from_result(results[2]).result == 100, io_type
            data = bytes.fromhex(results[3]["hex"])
            # buffered: the zeroed system buffer's 100 bytes; direct: the caller's own bytes
            rest = b"\0" * 90 if io_type == IoType.BUFFERED else b"\1" * 90
            assert data == b"\x5a" * 10 + rest, io_type
    finally:
        io.endpoint.set_io_type(IoType.DIRECT)
        io.endpoint.set_handler(io.recorder.on_request, io.recorder.on_cancel)
