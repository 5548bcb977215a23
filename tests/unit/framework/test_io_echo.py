"""The echo sample through the I/O manager's entry point, data checked in guest memory."""

import pytest

from framework_emu import (IRP_MJ_READ, IRP_MJ_WRITE, MDL_MAPPED_TO_SYSTEM_VA, NTSTATUS, PAGE_SIZE, ArgumentError,
                           STATUS_CANCELLED, SystemBuffer, UserPages)
from framework_emu.system_ptes import SYSTEM_PTE_BASE
from samples.echo import GUID_DEVINTERFACE_ECHO, IOCTL_ECHO_REVERSE, EchoDriver
from samples.guest import InProcessGuest

S = NTSTATUS


def echo_machine(**driver_options):
    guest = InProcessGuest()
    driver = EchoDriver(**driver_options)
    fx = guest.iom.load_driver(driver, service_name="WDFEcho")
    guest.iom.add_device(fx, "wdfio0")
    return guest, driver, fx


@pytest.mark.parametrize("direct", [False, True])
def test_what_the_guest_writes_it_reads_back(direct):
    guest, driver, fx = echo_machine(direct_io=direct)
    file = guest.open(GUID_DEVINTERFACE_ECHO)  # the interface names the stack, as the guest node maps it
    assert file.status == S.STATUS_SUCCESS and driver.events == ["SelfManagedIoInit", "FileCreate"]
    data = bytes(range(256)) * 37 + b"tail"  # crosses three pages
    assert guest.write_file(file, data).result() == (S.STATUS_SUCCESS, len(data))
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (S.STATUS_SUCCESS, len(data))
    assert guest.read(buffer) == data
    assert guest.iom.transfer_type(file, IRP_MJ_READ) == ("direct" if direct else "buffered")
    guest.iom.close(file)
    assert not guest.iom.remove_device("wdfio0")
    assert [str(f) for f in fx.findings if f.severity == "error"] == []


def test_direct_read_lands_in_scattered_caller_frames_through_one_system_mapping():
    """MmGetSystemAddressForMdlSafe maps the caller's frames (reverse order, with gaps) into one
    system-PTE range; the driver's copy through it lands page by page in the right frames."""
    guest, driver, fx = echo_machine(direct_io=True)
    file = guest.open("wdfio0")
    data = bytes((i * 7) & 0xFF for i in range(3 * PAGE_SIZE))
    guest.write_file(file, data).result()
    seen = {}
    original = driver.EvtIoRead

    def spy(Queue, Request, Length):
        status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(Request)
        seen["pfns"] = list(fx.MmGetMdlPfnArray(mdl))
        seen["va"] = fx.MmGetSystemAddressForMdlSafe(mdl)
        seen["flags"] = mdl.MdlFlags
        original(Queue, Request, Length)
    driver.EvtIoRead = spy
    fx.driver_instance = driver
    queue = fx._object(driver.queue, 0x1003)
    queue.config.EvtIoRead = spy
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (S.STATUS_SUCCESS, len(data))
    assert seen["pfns"] == list(buffer.pfns) and seen["pfns"] != sorted(seen["pfns"])
    assert seen["va"] >= SYSTEM_PTE_BASE and seen["va"] & (PAGE_SIZE - 1) == buffer.offset
    assert seen["flags"] & MDL_MAPPED_TO_SYSTEM_VA
    assert guest.read(buffer) == data


def test_buffered_ioctl_shares_the_guest_kernel_buffer():
    guest, driver, fx = echo_machine()
    file = guest.open("wdfio0")
    op, buffer = guest.ioctl(file, IOCTL_ECHO_REVERSE, b"framework", 9)
    assert op.result() == (S.STATUS_SUCCESS, 9)
    assert guest.read(buffer, 9) == b"krowemarf"


def test_unknown_ioctl_and_zero_length_write():
    """A zero-length write never reaches EvtIoWrite: FxIoQueue::DispatchRequestToDriver completes
    it with STATUS_SUCCESS (AllowZeroLengthRequests is FALSE)."""
    guest, driver, fx = echo_machine()
    file = guest.open("wdfio0")
    op, _ = guest.ioctl(file, IOCTL_ECHO_REVERSE + 4, b"x", 1)
    assert op.result() == (S.STATUS_INVALID_DEVICE_REQUEST, 0)
    assert guest.iom.submit(file, IRP_MJ_WRITE, length=0).result() == (S.STATUS_SUCCESS, 0)
    assert driver.buffer is None


def test_delayed_completion_runs_on_the_emulated_clock_and_cancel_reaches_the_driver():
    guest, driver, fx = echo_machine(delay_ms=10)
    file = guest.open("wdfio0")
    first = guest.write_file(file, b"abc")
    assert not first.done
    guest.iom.advance_time(9)
    assert not first.done
    guest.iom.advance_time(1)
    assert first.result() == (S.STATUS_SUCCESS, 3)
    held = guest.write_file(file, b"xyz")
    queued = guest.write_file(file, b"second")   # sequential queue: waits behind the held one
    assert not held.done and not queued.done
    guest.iom.cancel(held)
    assert held.result() == (STATUS_CANCELLED, 0) and "RequestCancel" in driver.events
    assert queued.result() == (S.STATUS_SUCCESS, 6)  # presented once the first left, completed by the timer
    op, buffer = guest.read_file(file, 6)
    assert op.result() == (S.STATUS_SUCCESS, 6) and guest.read(buffer) == b"second"


def test_submit_checks_the_buffers_against_the_transfer_type():
    guest, driver, fx = echo_machine(direct_io=True)
    file = guest.open("wdfio0")
    with pytest.raises(ArgumentError, match="user_pages"):
        guest.iom.submit(file, IRP_MJ_READ, length=16, system_buffer=SystemBuffer(1 << 20, 16))
    with pytest.raises(ArgumentError, match="span 2 pages"):
        guest.iom.submit(file, IRP_MJ_READ, length=PAGE_SIZE, user_pages=UserPages((300,), 8, PAGE_SIZE))
    with pytest.raises(ArgumentError, match="not guest RAM"):
        guest.iom.submit(file, IRP_MJ_READ, length=8, user_pages=UserPages((1 << 30,), 0, 8))


def test_open_of_an_unknown_name_fails_and_the_driver_unloads_clean():
    guest, driver, fx = echo_machine()
    assert guest.open("nosuch").status == S.STATUS_OBJECT_NAME_NOT_FOUND
    file = guest.open("wdfio0")
    guest.write_file(file, b"data").result()
    guest.iom.close(file)
    reports = guest.iom.shutdown()
    assert len(reports) == 1 and not reports[0], str(reports[0])


def test_a_done_callback_may_submit_the_next_request():
    """As the runtime does: completion posted to the ring, the guest's next request submitted from
    the done callback (inside the driver's timer callback here); it runs once that returns."""
    guest, driver, fx = echo_machine(delay_ms=1)
    file = guest.open("wdfio0")
    chain = []

    def next_one(op):
        chain.append(op.result())
        if len(chain) < 3:
            guest.write_file(file, b"n" * len(chain)).add_done_callback(next_one)
    guest.write_file(file, b"").add_done_callback(next_one)   # zero length: completes at once
    guest.iom.advance_time(10)
    assert chain == [(0, 0), (0, 1), (0, 2)]
