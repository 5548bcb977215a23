"""METHOD_NEITHER from user mode: EvtIoInCallerContext, the unsafe user buffers, probe and lock,
WdfDeviceEnqueueRequest. Statuses from fxrequestapi.cpp, fxrequestkm.cpp and fxpkgio.cpp
(named per test); data checked in the in-process guest's memory."""

import pytest

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, METHOD_BUFFERED, METHOD_NEITHER, NTSTATUS, WDF_DRIVER_CONFIG,
                           WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WdfIoQueueDispatchManual,
                           WdfIoQueueDispatchSequential, BugCheck)
from framework_emu.system_ptes import SYSTEM_PTE_BASE
from samples.guest import InProcessGuest
from samples.neither import IOCTL_NEITHER_IN_PLACE, IOCTL_NEITHER_REVERSE, NeitherDriver

S = NTSTATUS
IOCTL_OTHER_NEITHER = CTL_CODE(0x22, 0xA02, METHOD_NEITHER, FILE_ANY_ACCESS)
IOCTL_BUFFERED = CTL_CODE(0x22, 0xA03, METHOD_BUFFERED, FILE_ANY_ACCESS)
STATUS_INVALID_USER_BUFFER = 0xC00000E8


def machine(driver, **options):
    guest = InProcessGuest()
    fx = guest.iom.load_driver(driver, service_name="WDFNeither", **options)
    guest.iom.add_device(fx, "wdfio0")
    return guest, fx, guest.open("wdfio0")


def pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def test_the_sample_reverses_through_locked_caller_pages():
    """Input probed for read, output for write, in the caller's context; the queue's callback
    works on the memory objects later; they and their mappings go when the request completes."""
    driver = NeitherDriver()
    guest, fx, file = machine(driver)
    data = pattern(5000)                        # input and output both cross a page boundary
    mdls = len(fx._mdl_table.live)
    op, out = guest.ioctl(file, IOCTL_NEITHER_REVERSE, data, 6000)
    assert op.result() == (S.STATUS_SUCCESS, 5000)
    assert guest.read(out, 5000) == data[::-1]
    assert driver.locked == {} and fx.findings == []
    assert len(fx._mdl_table.live) == mdls      # both locked buffers' MDLs went with the request
    guest.iom.close(file)
    assert not guest.iom.remove_device("wdfio0")


def test_in_place_writes_the_callers_input_pages():
    """ProbeAndLockForWrite on Type3InputBuffer: the driver's writes land in the caller's input."""
    driver = NeitherDriver()
    guest, fx, file = machine(driver)
    inputs = guest.user_buffer(b"abcdef", offset=4093)          # crosses a page boundary
    op = guest.iom.submit(file, IRP_MJ_DEVICE_CONTROL, ioctl_code=IOCTL_NEITHER_IN_PLACE, input_length=6,
                          input_pages=inputs)
    assert op.result() == (S.STATUS_SUCCESS, 6)
    assert guest.read(inputs) == b"fedcba" and fx.findings == []


def test_without_the_callers_pages_the_probe_fails():
    """A METHOD_NEITHER request whose originator gave no pages (the framework knows no address):
    NULL unsafe buffers, and the sample completes with the probe's status."""
    driver = NeitherDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    op = guest.iom.submit(file, IRP_MJ_DEVICE_CONTROL, ioctl_code=IOCTL_NEITHER_REVERSE, input_length=3,
                          output_length=3)
    assert op.result() == (STATUS_INVALID_USER_BUFFER, 0) and driver.events == ["lock failed 0xc00000e8"]


class Probe:
    """EvtIoInCallerContext runs ``self.in_context(fx, request)``; the queue keeps requests
    (manual) so the test can call the APIs outside caller context too."""

    fx = None

    def __init__(self, in_context, *, queue_for_ioctls=True, enqueue=True):
        self.in_context = in_context
        self.queue_for_ioctls = queue_for_ioctls
        self.enqueue = enqueue
        self.results = []
        self.requests = []

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfDeviceInitSetIoInCallerContextCallback(DeviceInit, self.EvtIoInCallerContext)
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        if self.queue_for_ioctls:
            _, self.queue = fx.WdfIoQueueCreate(self.device, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(
                WdfIoQueueDispatchManual), None)
        return status

    def EvtIoInCallerContext(self, Device, Request):
        self.requests.append(Request)
        self.results.append(self.in_context(self.fx, Request))
        if self.enqueue:
            self.results.append(("enqueue", self.fx.WdfDeviceEnqueueRequest(Device, Request)))


def test_unsafe_buffers_give_the_callers_addresses_and_check_the_length():
    """WdfRequestRetrieveUnsafeUserInputBuffer: Type3InputBuffer and InputBufferLength; shorter
    than RequiredLength: STATUS_BUFFER_TOO_SMALL. The output variant: Irp->UserBuffer."""
    def in_context(fx, r):
        return (fx.WdfRequestRetrieveUnsafeUserInputBuffer(r, 10),
                fx.WdfRequestRetrieveUnsafeUserInputBuffer(r, 11),
                fx.WdfRequestRetrieveUnsafeUserOutputBuffer(r, 20),
                fx.WdfRequestRetrieveUnsafeUserOutputBuffer(r, 21),
                fx.WdfRequestGetParameters(r).Type3InputBuffer)
    driver = Probe(in_context)
    guest, fx, file = machine(driver)
    guest.ioctl(file, IOCTL_OTHER_NEITHER, pattern(10), 20)
    (inp, inp_short, out, out_short, type3), enqueue = driver.results
    assert inp[0] == S.STATUS_SUCCESS and inp[2] == 10 and inp[1] == type3 != 0
    assert inp[1] & 0xFFF == 0x234                      # the caller's address, its offset in the page
    assert inp_short == (S.STATUS_BUFFER_TOO_SMALL, None, 0)
    assert out[0] == S.STATUS_SUCCESS and out[2] == 20 and out[1] not in (0, None, inp[1])
    assert out_short == (S.STATUS_BUFFER_TOO_SMALL, None, 0)
    assert enqueue == ("enqueue", S.STATUS_SUCCESS)
    # back in the (manual) queue: retrieved from there, the request is no longer in caller context
    status, request = fx.WdfIoQueueRetrieveNextRequest(driver.queue)
    assert status == S.STATUS_SUCCESS and request == driver.requests[0]
    assert fx.WdfRequestRetrieveUnsafeUserInputBuffer(request, 1) == (S.STATUS_INVALID_DEVICE_REQUEST, None, 0)
    assert [f.rule for f in fx.findings] == ["UnsafeBufferOutsideInCallerContext"]
    fx.WdfRequestComplete(request, S.STATUS_SUCCESS)


def test_unsafe_buffers_refuse_the_wrong_kind_of_request():
    """A non-NEITHER IOCTL: STATUS_INVALID_DEVICE_REQUEST (the input variant breaks into the
    debugger: a finding); the queue's callbacks see a NEITHER request's input as no buffer."""
    def in_context(fx, r):
        return (fx.WdfRequestRetrieveUnsafeUserInputBuffer(r, 1), fx.WdfRequestRetrieveUnsafeUserOutputBuffer(r, 1))
    driver = Probe(in_context)
    guest, fx, file = machine(driver, verifier_mode="record")
    guest.ioctl(file, IOCTL_BUFFERED, b"xyz", 3)
    assert driver.results[0] == ((S.STATUS_INVALID_DEVICE_REQUEST, None, 0),
                                 (S.STATUS_INVALID_DEVICE_REQUEST, None, 0))
    assert [f.rule for f in fx.findings] == ["UnsafeBufferNotNeither"]


def test_without_the_verifier_the_caller_context_is_not_checked():
    """VerifyRequestIsInCallerContext and the enqueue flags are verifier-only (FX_VF_METHOD)."""
    driver = Probe(lambda fx, r: None)
    guest, fx, file = machine(driver, verifier=False)
    guest.ioctl(file, IOCTL_OTHER_NEITHER, b"12", 2)
    status, request = fx.WdfIoQueueRetrieveNextRequest(driver.queue)
    assert fx.WdfRequestRetrieveUnsafeUserInputBuffer(request, 2)[0] == S.STATUS_SUCCESS
    fx.WdfRequestComplete(request, S.STATUS_SUCCESS)


def test_probe_and_lock_statuses():
    """FxRequest::ProbeAndLockForRead/Write: zero length STATUS_INVALID_USER_BUFFER; an address
    the request did not bring STATUS_ACCESS_VIOLATION; ForRead memory is read-only (a copy into
    it: STATUS_ACCESS_VIOLATION); outside the caller's thread STATUS_ACCESS_VIOLATION."""
    def in_context(fx, r):
        _, in_va, in_len = fx.WdfRequestRetrieveUnsafeUserInputBuffer(r, 1)
        _, out_va, out_len = fx.WdfRequestRetrieveUnsafeUserOutputBuffer(r, 1)
        zero = fx.WdfRequestProbeAndLockUserBufferForRead(r, in_va, 0)
        beyond = fx.WdfRequestProbeAndLockUserBufferForRead(r, in_va, in_len + 1)
        elsewhere = fx.WdfRequestProbeAndLockUserBufferForWrite(r, 0x1000, 4)
        status, read_mem = fx.WdfRequestProbeAndLockUserBufferForRead(r, in_va + 1, in_len - 1)
        copy_in = fx.WdfMemoryCopyFromBuffer(read_mem, 0, b"z", 1)
        address, size = fx.WdfMemoryGetBuffer(read_mem)
        seen = fx.read(address, size)
        status_w, write_mem = fx.WdfRequestProbeAndLockUserBufferForWrite(r, out_va, out_len)
        written = fx.WdfMemoryCopyFromBuffer(write_mem, 0, b"OUT!", 4)
        return (zero, beyond, elsewhere, status, copy_in, seen, address >= SYSTEM_PTE_BASE, status_w, written)
    driver = Probe(in_context)
    guest, fx, file = machine(driver)
    op, out = guest.ioctl(file, IOCTL_OTHER_NEITHER, b"input-bytes", 4)
    (zero, beyond, elsewhere, status, copy_in, seen, mapped, status_w, written), _ = driver.results
    assert zero == (STATUS_INVALID_USER_BUFFER, None)
    assert beyond == (S.STATUS_ACCESS_VIOLATION, None) and elsewhere == (S.STATUS_ACCESS_VIOLATION, None)
    assert status == S.STATUS_SUCCESS and copy_in == S.STATUS_ACCESS_VIOLATION and seen == b"nput-bytes"
    assert mapped and status_w == S.STATUS_SUCCESS and written == S.STATUS_SUCCESS
    assert guest.read(out, 4) == b"OUT!"               # the write went to the caller's own frames
    status, request = fx.WdfIoQueueRetrieveNextRequest(driver.queue)     # now in an arbitrary thread
    in_va = fx.WdfRequestGetParameters(request).Type3InputBuffer
    assert fx.WdfRequestProbeAndLockUserBufferForRead(request, in_va, 11) == (S.STATUS_ACCESS_VIOLATION, None)
    fx.WdfRequestCompleteWithInformation(request, S.STATUS_SUCCESS, 4)
    assert op.result() == (S.STATUS_SUCCESS, 4)
    assert fx.findings == []


def test_the_locked_memory_goes_with_the_request():
    """The memory objects (and their MDLs) are freed at completion: a later use of the handle is
    a stale handle, the buffer's range is quarantined (BufAfterReqCompleted)."""
    kept = []

    def in_context(fx, r):
        _, in_va, in_len = fx.WdfRequestRetrieveUnsafeUserInputBuffer(r, 1)
        status, memory = fx.WdfRequestProbeAndLockUserBufferForRead(r, in_va, in_len)
        kept.append((memory, fx.WdfMemoryGetBuffer(memory)))
        fx.WdfRequestComplete(r, S.STATUS_SUCCESS)
    driver = Probe(in_context, enqueue=False)
    guest, fx, file = machine(driver)
    mdls_before = len(fx._mdl_table.live)
    op, _ = guest.ioctl(file, IOCTL_OTHER_NEITHER, b"abc", 0)
    assert op.result() == (S.STATUS_SUCCESS, 0)
    assert len(fx._mdl_table.live) == mdls_before
    (memory, (address, size)), = kept
    assert fx._verifier.quarantined(address, size) is not None
    with pytest.raises(BugCheck, match="MemAfterReqCompleted"):
        fx.WdfMemoryGetBuffer(memory)


def test_enqueue_statuses():
    """FxPkgIo::EnqueueRequest: outside caller context (verifier) STATUS_INVALID_DEVICE_REQUEST;
    no queue for the request: STATUS_INVALID_DEVICE_REQUEST and the driver still owns it."""
    driver = Probe(lambda fx, r: None, queue_for_ioctls=False)
    guest, fx, file = machine(driver, verifier_mode="record")
    op, _ = guest.ioctl(file, IOCTL_OTHER_NEITHER, b"a", 0)
    ((_none, (_, status)),) = [tuple(driver.results)]
    assert status == S.STATUS_INVALID_DEVICE_REQUEST and not op.done
    assert "EnqueueWithoutQueue" in [f.rule for f in fx.findings]
    request = driver.requests[0]
    assert fx.WdfDeviceEnqueueRequest(driver.device, request) == S.STATUS_INVALID_DEVICE_REQUEST   # flag kept
    fx.WdfRequestComplete(request, S.STATUS_CANCELLED)
    assert op.result() == (S.STATUS_CANCELLED, 0)


def test_every_request_type_goes_through_the_callback_first():
    """Reads and writes too; WdfDeviceEnqueueRequest then presents them to the queue."""
    seen = []

    class Echoish(Probe):
        def EvtDriverDeviceAdd(self, Driver, DeviceInit):
            fx = self.fx
            fx.WdfDeviceInitSetIoInCallerContextCallback(DeviceInit, self.EvtIoInCallerContext)
            status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
            config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
            config.EvtIoWrite = lambda q, r, n: (seen.append(("write", n)),
                                                 fx.WdfRequestCompleteWithInformation(r, S.STATUS_SUCCESS, n))
            fx.WdfIoQueueCreate(self.device, config, None)
            return status

    driver = Echoish(lambda fx, r: fx.WdfRequestGetParameters(r).Type)
    guest, fx, file = machine(driver)
    assert guest.write_file(file, b"hello").result() == (S.STATUS_SUCCESS, 5)
    assert driver.results == [0x04, ("enqueue", S.STATUS_SUCCESS)] and seen == [("write", 5)]
    assert fx.findings == []
