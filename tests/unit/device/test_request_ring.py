"""The request ring's host endpoint through the real device thread and ivshmem protocol:
requests in, GuestIoRequest objects out, completions back; refusals name their field;
cancellation completes a request exactly once; a reset abandons what was in flight."""

from __future__ import annotations

import threading

import pytest

from device_model.abi import (
    IO_INLINE_PFNS, IO_MAX_SYSTEM_BUFFER, NTSTATUS, ErrorReason, Feature, IoFlag, IoMajor,
    IoType, RequestEntry, TransferMethod, ntstatus_errno, ntstatus_for,
)
from device_model.request_echo import IOCTL_ECHO, IOCTL_STATUS, EchoIoHandler
from device_model.request_ring import RequestStateError
from wdfhil.physical_memory import PAGE_SIZE, InProcessMemory

from device_helpers import HIGH, holey_memory
from request_ring_helpers import io_device, page_entry

OK = NTSTATUS["STATUS_SUCCESS"]
CANCELLED = NTSTATUS["STATUS_CANCELLED"]
INVALID = NTSTATUS["STATUS_INVALID_PARAMETER"]
FILE = 7


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


@pytest.fixture
def memory() -> InProcessMemory:
    return holey_memory()


def create(driver, file_id: int = FILE, rid: int = 1) -> None:
    c = driver.request(RequestEntry(rid, file_id, IoMajor.CREATE))
    assert (c.request_id, c.status, c.reason) == (rid, OK, 0)


def test_header_advertises_the_request_ring(tmp_path, memory):
    with io_device(tmp_path, memory, io_type=IoType.BUFFERED) as (device, _ep, _h, driver):
        header = device.header()
        assert header["features"] & Feature.REQUEST_RING
        assert header["abi_version"] == 2
        assert header["io_type"] == IoType.BUFFERED
        assert (header["rq_offset"], header["rcq_offset"]) == (0x20000, 0x30000)


def test_direct_write_then_read_round_trip_unaligned_page_crossing(tmp_path, memory):
    with io_device(tmp_path, memory) as (_device, endpoint, handler, driver):
        create(driver)
        data = pattern(4096 + 777)
        memory.write(0x10123, data)
        c = driver.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x10123, len(data),
                                      input_length=len(data), file_offset=100))
        assert (c.status, c.information) == (OK, len(data))
        assert bytes(handler.store[100:100 + len(data)]) == data
        c = driver.request(page_entry(memory, 3, FILE, IoMajor.READ, HIGH[0] + 0xFFF,
                                      len(data), output_length=len(data), file_offset=100))
        assert (c.status, c.information) == (OK, len(data))
        assert memory.read(HIGH[0] + 0xFFF, len(data)) == data
        assert endpoint.in_flight == []


def test_one_mib_unaligned_is_257_pages_through_an_indirect_table(tmp_path):
    memory = InProcessMemory(ranges=[(0, 4 << 20)])
    with io_device(tmp_path, memory, handler=EchoIoHandler(store_size=2 << 20)) as (
            _device, _endpoint, handler, driver):
        create(driver)
        size, gpa = 1 << 20, 0x130001
        memory.write(gpa, pattern(size, 3))
        entry = page_entry(memory, 2, FILE, IoMajor.WRITE, gpa, size, input_length=size,
                           table_gpa=0x8000)
        assert entry.page_count == 257 and entry.flags == IoFlag.INDIRECT
        c = driver.request(entry)
        assert (c.status, c.information) == (OK, size)
        assert bytes(handler.store[:size]) == pattern(size, 3)
        entry = page_entry(memory, 3, FILE, IoMajor.READ, 0x250FFF, size, output_length=size,
                           table_gpa=0x9000)
        c = driver.request(entry)
        assert (c.status, c.information) == (OK, size)
        assert memory.read(0x250FFF, size) == pattern(size, 3)


@pytest.mark.parametrize("method", list(TransferMethod))
def test_echo_ioctl_every_transfer_method(tmp_path, memory, method):
    with io_device(tmp_path, memory) as (_device, endpoint, handler, driver):
        create(driver)
        data = pattern(300, 5)
        handler.store[:PAGE_SIZE] = pattern(PAGE_SIZE, 9)
        if method == TransferMethod.BUFFERED:
            memory.write(0x20000, data)
            entry = RequestEntry(2, FILE, IoMajor.DEVICE_CONTROL, ioctl_code=IOCTL_ECHO[method],
                                 input_length=300, output_length=500, system_gpa=0x20000,
                                 system_length=500)
            c = driver.request(entry)
            assert (c.status, c.information) == (OK, 500)
            assert memory.read(0x20000, 500) == data + pattern(PAGE_SIZE, 9)[300:500]
            return
        memory.write(0x20000, data)
        memory.write(0x40FF0, pattern(500, 11))
        entry = page_entry(memory, 2, FILE, IoMajor.DEVICE_CONTROL, 0x40FF0, 500,
                           ioctl_code=IOCTL_ECHO[method], input_length=300, output_length=500,
                           system_gpa=0x20000, system_length=300,
                           user_input=0x7F0000 if method == TransferMethod.NEITHER else 0,
                           user_address=0x7F1FF0)
        c = driver.request(entry)
        assert (c.status, c.information) == (OK, 500)
        if method == TransferMethod.IN_DIRECT:   # the device read the pages
            assert bytes(handler.store[:500]) == pattern(500, 11)
            assert memory.read(0x40FF0, 500) == pattern(500, 11)
        else:
            assert memory.read(0x40FF0, 500) == data + pattern(PAGE_SIZE, 9)[300:500]


def test_buffered_read_write(tmp_path, memory):
    with io_device(tmp_path, memory, io_type=IoType.BUFFERED) as (_d, _e, handler, driver):
        create(driver)
        memory.write(0x50000, b"hello")
        c = driver.request(RequestEntry(2, FILE, IoMajor.WRITE, input_length=5,
                                        system_gpa=0x50000, system_length=5))
        assert (c.status, c.information) == (OK, 5)
        c = driver.request(RequestEntry(3, FILE, IoMajor.READ, output_length=3, file_offset=1,
                                        system_gpa=0x60000, system_length=3))
        assert (c.status, c.information) == (OK, 3)
        assert memory.read(0x60000, 3) == b"ell"
        # direct pages are refused when the device is buffered
        c = driver.request(page_entry(memory, 4, FILE, IoMajor.READ, 0x60000, 3,
                                      output_length=3))
        assert c.reason == ErrorReason.LENGTH_MISMATCH


def test_status_ioctl_completes_with_the_given_ntstatus(tmp_path, memory):
    with io_device(tmp_path, memory) as (_d, _e, _h, driver):
        create(driver)
        for rid, status in enumerate(NTSTATUS.values(), 10):
            memory.write(0x20000, status.to_bytes(4, "little"))
            c = driver.request(RequestEntry(rid, FILE, IoMajor.DEVICE_CONTROL,
                                            ioctl_code=IOCTL_STATUS, input_length=4,
                                            system_gpa=0x20000, system_length=4))
            assert c.status == status


def _entry(**fields) -> RequestEntry:
    base = dict(request_id=5, file_id=FILE, major=IoMajor.DEVICE_CONTROL,
                ioctl_code=IOCTL_ECHO[TransferMethod.BUFFERED], input_length=8, output_length=8,
                system_gpa=0x20000, system_length=8)
    base.update(fields)
    return RequestEntry(**base)


REFUSALS = [
    (dict(major=0x55), ErrorReason.BAD_OPCODE, "major"),
    (dict(flags=4), ErrorReason.BAD_FLAGS, "flags"),
    (dict(reserved=(0, 0, 1, 0)), ErrorReason.RESERVED_FIELD, "reserved[2]"),
    (dict(target_id=3), ErrorReason.RESERVED_FIELD, "target_id"),
    (dict(user_input=0x1000), ErrorReason.RESERVED_FIELD, "user_input"),
    (dict(user_address=0x1000), ErrorReason.RESERVED_FIELD, "user_address"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_offset=8, page_length=100, page_count=1, pfns=(1,),
          user_address=0x7000009), ErrorReason.SEGMENT_ALIGNMENT, "user_address"),
    (dict(system_length=9), ErrorReason.LENGTH_MISMATCH, "system_length"),
    (dict(input_length=IO_MAX_SYSTEM_BUFFER + 1, system_length=IO_MAX_SYSTEM_BUFFER + 1),
     ErrorReason.TRANSFER_TOO_LARGE, "system_length"),
    (dict(system_gpa=0x100000 - 4), ErrorReason.SEGMENT_NOT_IN_RAM, "system_gpa"),
    (dict(system_gpa=(1 << 64) - 4), ErrorReason.SEGMENT_NOT_IN_RAM, "system_gpa"),
    (dict(page_length=4), ErrorReason.LENGTH_MISMATCH, "page_length"),
    (dict(pfns=(1,)), ErrorReason.RESERVED_FIELD, "pfn[0]"),
    (dict(page_count=1), ErrorReason.RESERVED_FIELD, "page_count"),
    (dict(file_id=8), ErrorReason.BAD_FILE, "file_id"),
    (dict(major=IoMajor.CREATE, ioctl_code=0, input_length=0, output_length=0, system_gpa=0,
          system_length=0, file_id=FILE), ErrorReason.BAD_FILE, "file_id"),
    (dict(major=IoMajor.CLOSE, ioctl_code=0, input_length=0, output_length=0, system_gpa=0,
          system_length=0, file_offset=1), ErrorReason.RESERVED_FIELD, "file_offset"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_offset=4096, page_length=100, page_count=1, pfns=(1,)),
     ErrorReason.SEGMENT_ALIGNMENT, "page_offset"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_offset=4000, page_length=100, page_count=1, pfns=(1,)),
     ErrorReason.BAD_SEGMENT_COUNT, "page_count"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_length=100, page_count=1, pfns=(0x100,)),
     ErrorReason.SEGMENT_NOT_IN_RAM, "pfn[0]"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_length=100, page_count=1, pfns=(1, 2)),
     ErrorReason.RESERVED_FIELD, "pfn[1]"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=17 * PAGE_SIZE,
          system_gpa=0, system_length=0, page_length=17 * PAGE_SIZE, page_count=17),
     ErrorReason.BAD_SEGMENT_COUNT, "page_count"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_length=100, page_count=1, flags=int(IoFlag.INDIRECT),
          table_gpa=0xFFFF8 + 8), ErrorReason.INDIRECT_TABLE, "table_gpa"),
    (dict(major=IoMajor.READ, ioctl_code=0, input_length=0, output_length=100, system_gpa=0,
          system_length=0, page_length=100, page_count=1, flags=int(IoFlag.INDIRECT),
          table_gpa=0x1004), ErrorReason.INDIRECT_TABLE, "table_gpa"),
    (dict(major=IoMajor.WRITE, ioctl_code=0, input_length=10, output_length=10,
          system_gpa=0, system_length=0), ErrorReason.LENGTH_MISMATCH, "output_length"),
    (dict(major=IoMajor.WRITE, ioctl_code=5, input_length=10, output_length=0,
          system_gpa=0, system_length=0), ErrorReason.RESERVED_FIELD, "ioctl_code"),
]


@pytest.mark.parametrize("fields,reason,field", REFUSALS)
def test_refusals_name_the_field(tmp_path, memory, fields, reason, field):
    with io_device(tmp_path, memory) as (device, endpoint, handler, driver):
        create(driver)
        before = after_bytes(memory)
        c = driver.request(_entry(**fields))
        assert (c.request_id, c.reason) == (5, reason), c
        assert c.status == ntstatus_for(reason)
        assert device.header()["last_error"] == reason
        assert after_bytes(memory) == before
        assert endpoint.stats.refused == 1 and endpoint.in_flight == []
        assert handler.log[1:] == []
        # the refusal's field, as the trace would say it
        from device_model.request_descriptors import RequestValidator
        if reason not in (ErrorReason.BAD_FILE,):
            refusal = RequestValidator(device.ram_windows).validate(_entry(**fields).pack())
            assert refusal.field == field, refusal


def after_bytes(memory: InProcessMemory) -> bytes:
    return b"".join(memory.read(a, b - a) for a, b in memory.ram_ranges())


def test_duplicate_request_id_is_refused_while_in_flight(tmp_path, memory):
    handler = EchoIoHandler(store_size=1 << 16, hold={IoMajor.READ})
    with io_device(tmp_path, memory, handler=handler) as (_d, endpoint, _h, driver):
        create(driver)
        read = page_entry(memory, 9, FILE, IoMajor.READ, 0x3000, 10, output_length=10)
        driver.post_raw(read.pack())
        driver.ring()
        endpoint.wait_for(lambda: len(handler.held) == 1, what="the READ held")
        c = driver.request(read)
        assert (c.request_id, c.reason) == (9, ErrorReason.DUPLICATE_REQUEST)
        assert handler.release_held() == 1
        c = driver.wait(1)[0]
        assert (c.request_id, c.status, c.information) == (9, OK, 10)


def test_cancel_completes_exactly_once(tmp_path, memory):
    handler = EchoIoHandler(store_size=1 << 16, hold={IoMajor.READ}, complete_on_cancel=False)
    with io_device(tmp_path, memory, handler=handler) as (_d, endpoint, _h, driver):
        create(driver)
        for rid in (20, 21):
            driver.post_raw(page_entry(memory, rid, FILE, IoMajor.READ, 0x3000 + rid * 64, 10,
                                       output_length=10).pack())
        driver.ring()
        endpoint.wait_for(lambda: len(handler.held) == 2, what="two READs held")
        driver.post_raw(RequestEntry(22, FILE, IoMajor.CANCEL, target_id=20).pack())
        driver.post_raw(RequestEntry(23, FILE, IoMajor.CANCEL, target_id=20).pack())  # twice
        driver.post_raw(RequestEntry(24, FILE, IoMajor.CANCEL, target_id=999).pack())  # unknown
        driver.ring()
        endpoint.wait_for(lambda: endpoint.stats.entries == 6, what="the CANCELs taken")
        assert handler.cancelled == [20]          # the callback once per request
        assert endpoint.stats.cancels == 2 and endpoint.stats.cancels_unknown == 1
        assert driver.take() == []                # CANCEL never completes itself
        request = next(r for r in endpoint.in_flight if r.request_id == 20)
        assert request.cancel_requested
        # completed later, from another thread, exactly once
        worker = threading.Thread(target=request.complete, args=(CANCELLED, 0))
        worker.start()
        worker.join()
        c = driver.wait(1)[0]
        assert (c.request_id, c.status) == (20, CANCELLED)
        with pytest.raises(RequestStateError):
            request.complete(OK, 0)
        with pytest.raises(RequestStateError):
            request.write_pages(b"late")          # buffers are gone with the completion
        assert ntstatus_errno(CANCELLED) == "ECANCELED"
        handler.release_held()
        assert [c.request_id for c in driver.wait(1)] == [21]
        assert endpoint.in_flight == []


def test_reset_abandons_requests_in_flight(tmp_path, memory):
    handler = EchoIoHandler(store_size=1 << 16, hold={IoMajor.WRITE})
    with io_device(tmp_path, memory, handler=handler) as (device, endpoint, _h, driver):
        create(driver)
        driver.post_raw(page_entry(memory, 30, FILE, IoMajor.WRITE, 0x3000, 10,
                                   input_length=10).pack())
        driver.ring()
        endpoint.wait_for(lambda: len(handler.held) == 1, what="WRITE held")
        request = handler.held[0]
        from device_model.host_driver import HostDriver
        HostDriver(driver.client).reset()
        endpoint.wait_for(lambda: request.abandoned, what="abandoned")
        assert handler.cancelled == [30] and handler.held == []
        request.complete(OK, 10)                  # accepted, posts nothing
        assert driver.take() == [] and endpoint.open_files == set()
        c = driver.request(RequestEntry(31, FILE, IoMajor.READ))   # the file is gone too
        assert c.reason == ErrorReason.BAD_FILE


def test_many_requests_more_than_the_ring_holds(tmp_path, memory):
    with io_device(tmp_path, memory) as (_d, endpoint, _h, driver):
        create(driver)
        done = []
        for batch in range(4):
            for i in range(200):
                rid = 1000 + batch * 200 + i
                driver.post_raw(page_entry(memory, rid, FILE, IoMajor.WRITE, 0x3000 + i, 1,
                                           input_length=1, file_offset=i).pack())
            driver.ring()
            done += driver.wait(200)
        assert len(done) == 800 and {c.status for c in done} == {OK}
        assert len({c.request_id for c in done}) == 800
        assert endpoint.stats.completed == 801


def test_no_guest_ram_refuses_with_device_not_ready(tmp_path, memory):
    with io_device(tmp_path, memory) as (device, endpoint, _h, driver):
        device.detach_guest_ram()
        c = driver.request(RequestEntry(1, FILE, IoMajor.CREATE))
        assert c.reason == ErrorReason.DEVICE_NOT_READY
        assert c.status == NTSTATUS["STATUS_DEVICE_NOT_READY"]


def test_runaway_rq_tail_fails_the_ring_until_reset(tmp_path, memory):
    with io_device(tmp_path, memory) as (device, endpoint, _h, driver):
        driver.header.set("rq_tail", 5000)
        driver.ring()
        c = driver.wait(1)[0]
        assert c.reason == ErrorReason.RING_INDEX and c.request_id == (1 << 64) - 1
        from device_model.host_driver import HostDriver
        HostDriver(driver.client).reset()
        create(driver)


def test_inline_capacity_constant():
    assert IO_INLINE_PFNS == 16


def test_closing_the_device_abandons_requests_in_flight(tmp_path, memory):
    handler = EchoIoHandler(store_size=1 << 16, hold={IoMajor.READ})
    with io_device(tmp_path, memory, handler=handler) as (device, endpoint, _h, driver):
        create(driver)
        driver.post_raw(page_entry(memory, 40, FILE, IoMajor.READ, 0x3000, 10,
                                   output_length=10).pack())
        driver.ring()
        endpoint.wait_for(lambda: len(handler.held) == 1, what="READ held")
        request = handler.held[0]
    assert request.abandoned and handler.cancelled == [40]
    request.complete(OK, 10)             # after the device closed: accepted, posts nothing
    with pytest.raises(RequestStateError):
        request.read_pages()


def test_accepted_requests_and_completions_are_traced(tmp_path, memory):
    from device_model.device import EchoDevice
    from device_model.ivshmem_client import IvshmemClient
    from device_model.request_ring import RequestEndpoint
    from device_model.trace import read_trace
    from request_ring_helpers import RequestRingDriver
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    trace = tmp_path / "trace.jsonl"
    handler = EchoIoHandler(store_size=1 << 16)
    with EchoDevice(run_dir, trace_path=trace) as device:
        device.attach_guest_ram(memory)
        RequestEndpoint(device, handler.on_request, on_cancel=handler.on_cancel)
        client = IvshmemClient.connect(device.socket_path)
        driver = RequestRingDriver(client)
        try:
            create(driver)
            driver.request(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x3001, 5000,
                                      input_length=5000))
            driver.request(RequestEntry(3, 99, IoMajor.READ))
        finally:
            driver.close()
            client.close()
    records = list(read_trace(trace))
    kinds = [(r["type"], r.get("request_id")) for r in records
             if r["type"] in ("io_request", "io_completion", "refused")]
    assert kinds == [("io_request", 1), ("io_completion", 1), ("io_request", 2),
                     ("io_completion", 2), ("refused", 3)]
    write = next(r for r in records if r["type"] == "io_request" and r["request_id"] == 2)
    assert write["pages"] == [1, 5000, 2] and write["major"] == "WRITE"
    refused = next(r for r in records if r["type"] == "refused")
    assert (refused["reason"], refused["field"]) == ("BAD_FILE", "file_id")


def test_a_handler_that_raises_completes_the_request_with_internal(tmp_path, memory):
    def broken(request):
        raise RuntimeError("driver bug")
    with io_device(tmp_path, memory) as (device, endpoint, handler, driver):
        create(driver)
        endpoint.set_handler(broken)
        c = driver.request(RequestEntry(2, FILE, IoMajor.CLEANUP))
        assert (c.request_id, c.reason, c.status) == (2, ErrorReason.INTERNAL,
                                                      NTSTATUS["STATUS_UNSUCCESSFUL"])
        assert endpoint.in_flight == [] and len(device.errors) == 1
        device.errors.clear()
        endpoint.set_handler(handler.on_request, handler.on_cancel)
        assert driver.request(RequestEntry(3, FILE, IoMajor.CLEANUP)).status == OK


def test_buffers_are_read_only_where_the_guest_pinned_them_so(tmp_path, memory):
    handler = EchoIoHandler(store_size=1 << 16, hold={IoMajor.WRITE, IoMajor.DEVICE_CONTROL})
    with io_device(tmp_path, memory, handler=handler) as (_d, endpoint, _h, driver):
        create(driver)
        memory.write(0x20000, b"abc")
        driver.post_raw(page_entry(memory, 2, FILE, IoMajor.WRITE, 0x3000, 10,
                                   input_length=10).pack())
        driver.post_raw(page_entry(memory, 3, FILE, IoMajor.DEVICE_CONTROL, 0x5000, 20,
                                   ioctl_code=IOCTL_ECHO[TransferMethod.IN_DIRECT],
                                   input_length=3, output_length=20, system_gpa=0x20000,
                                   system_length=3).pack())
        driver.ring()
        endpoint.wait_for(lambda: len(handler.held) == 2, what="both held")
        write, ioctl = handler.held
        for request in (write, ioctl):
            with pytest.raises(RequestStateError, match="read-only"):
                request.write_pages(b"x")
        assert ioctl.input_bytes() == b"abc" and len(ioctl.read_pages()) == 20
        with pytest.raises(RequestStateError, match="outside"):
            write.read_pages(5, 6)
        handler.release_held()
        assert sorted(c.request_id for c in driver.wait(2)) == [2, 3]


def test_one_request_endpoint_per_device(tmp_path, memory):
    from device_model.request_ring import RequestEndpoint
    from wdfhil.errors import ConfigError
    with io_device(tmp_path, memory) as (device, _endpoint, handler, _driver):
        with pytest.raises(ConfigError, match="already has a request endpoint"):
            RequestEndpoint(device, handler.on_request)


def test_a_nonsense_rcq_head_withholds_completions_until_the_guest_fixes_it(tmp_path, memory):
    with io_device(tmp_path, memory) as (device, endpoint, _h, driver):
        create(driver)
        tail = driver.header.get("rcq_tail")
        driver.header.set("rcq_head", tail + 1000)       # the guest "consumed" the future
        driver.post_raw(RequestEntry(2, FILE, IoMajor.CLEANUP).pack())
        doorbells = endpoint.stats.doorbells
        driver.ring()
        endpoint.wait_for(lambda: endpoint.stats.doorbells == doorbells + 1, what="doorbell")
        # no room in a completion ring it cannot trust: the entry waits, nothing is posted
        assert endpoint.stats.entries == 1 and driver.header.get("rq_head") == 1
        assert driver.header.get("rcq_tail") == tail
        driver.header.set("rcq_head", tail)
        driver.ring()
        (c,) = driver.wait(1)
        assert (c.request_id, c.status) == (2, OK)
        assert device.errors == []
