"""Queues and request dispatch: dispatch types, IRQL per callback, cancel, ownership rules,
never-completed requests. Statuses and rules from fxioqueue.cpp / fxrequest.cpp (named per test)."""

import pytest

from framework_emu import (DISPATCH_LEVEL, IRP_MJ_READ, IRP_MJ_WRITE, NTSTATUS, PASSIVE_LEVEL, BugCheck,
                           FrameworkStateError, STATUS_CANCELLED, WDF_DRIVER_CONFIG, WDF_EXECUTION_LEVEL,
                           WDF_IO_QUEUE_CONFIG, WDF_IO_QUEUE_CONFIG_INIT, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE,
                           WDF_OBJECT_ATTRIBUTES, WDF_PNPPOWER_EVENT_CALLBACKS, WDF_SYNCHRONIZATION_SCOPE,
                           WDF_REQUEST_PARAMETERS, WDF_REL_TIMEOUT_IN_MS, WDF_TIMER_CONFIG_INIT,
                           WdfIoQueueDispatchManual, WdfIoQueueDispatchParallel, WdfIoQueueDispatchSequential)
from samples.guest import InProcessGuest

S = NTSTATUS


class HoldingDriver:
    """Keeps every request it is given (the test completes them), recording IRQL and order."""

    fx = None

    def __init__(self, dispatch=WdfIoQueueDispatchSequential, *, device_attributes=None, queue_attributes=None,
                 manual_reads=False, parallel_limit=0, pnp=True):
        self.dispatch = dispatch
        self.device_attributes = device_attributes
        self.queue_attributes = queue_attributes
        self.manual_reads = manual_reads
        self.parallel_limit = parallel_limit
        self.pnp = pnp
        self.held = []
        self.irql = []
        self.log = []
        self.stop_flags = []

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def _pnp(self, name, result=0):
        def callback(Device, *args):
            self.log.append((name, self.fx.KeGetCurrentIrql()))
            return result
        return callback

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        if self.pnp:
            names = ["EvtDevicePrepareHardware", "EvtDeviceReleaseHardware", "EvtDeviceD0Entry", "EvtDeviceD0Exit",
                     "EvtDeviceSelfManagedIoInit", "EvtDeviceSelfManagedIoSuspend", "EvtDeviceSelfManagedIoFlush",
                     "EvtDeviceSelfManagedIoCleanup", "EvtDeviceD0EntryPostInterruptsEnabled",
                     "EvtDeviceD0ExitPreInterruptsDisabled"]
            fx.WdfDeviceInitSetPnpPowerEventCallbacks(
                DeviceInit, WDF_PNPPOWER_EVENT_CALLBACKS(**{n: self._pnp(n) for n in names}))
        status, self.device = fx.WdfDeviceCreate(DeviceInit, self.device_attributes)
        assert status == 0
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(self.dispatch)
        if self.dispatch != WdfIoQueueDispatchManual:
            config.EvtIoRead = self.EvtIoRead
            config.EvtIoWrite = self.EvtIoWrite
            config.EvtIoStop = self.EvtIoStop
        config.NumberOfPresentedRequests = self.parallel_limit
        status, self.queue = fx.WdfIoQueueCreate(self.device, config, self.queue_attributes)
        assert status == 0, hex(status)
        if self.manual_reads:
            status, self.manual = fx.WdfIoQueueCreate(self.device, WDF_IO_QUEUE_CONFIG_INIT(WdfIoQueueDispatchManual))
            assert status == 0
            assert fx.WdfDeviceConfigureRequestDispatching(self.device, self.manual, IRP_MJ_READ) == 0
        return 0

    def EvtIoRead(self, Queue, Request, Length):
        self.held.append(Request)
        self.irql.append(self.fx.KeGetCurrentIrql())

    EvtIoWrite = EvtIoRead

    def EvtIoStop(self, Queue, Request, ActionFlags):
        self.stop_flags.append(ActionFlags)


def machine(driver, **options):
    guest = InProcessGuest()
    fx = guest.iom.load_driver(driver, service_name="WDFHold", **options)
    guest.iom.add_device(fx, "wdfio0")
    return guest, fx, guest.open("wdfio0")


def test_sequential_queue_presents_the_next_request_only_after_the_first_completes():
    """FxIoQueue (sequential): one request presented at a time."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    ops = [guest.write_file(file, b"a" * (i + 1)) for i in range(3)]
    assert len(driver.held) == 1
    fx.WdfRequestCompleteWithInformation(driver.held[0], S.STATUS_SUCCESS, 1)
    assert ops[0].result() == (0, 1) and len(driver.held) == 2 and not ops[1].done
    fx.WdfRequestComplete(driver.held[1], S.STATUS_SUCCESS)
    fx.WdfRequestComplete(driver.held[2], S.STATUS_SUCCESS)
    assert all(op.done for op in ops)


def test_parallel_queue_presents_all_and_honours_number_of_presented_requests():
    driver = HoldingDriver(WdfIoQueueDispatchParallel)
    guest, fx, file = machine(driver)
    for _ in range(4):
        guest.write_file(file, b"x")
    assert len(driver.held) == 4
    limited = HoldingDriver(WdfIoQueueDispatchParallel, parallel_limit=2)
    guest, fx, file = machine(limited)
    ops = [guest.write_file(file, b"x") for _ in range(3)]
    assert len(limited.held) == 2
    fx.WdfRequestComplete(limited.held[0], 0)
    assert len(limited.held) == 3 and ops[0].done


def test_manual_queue_retrieve_next_request_and_requeue():
    """WdfIoQueueRetrieveNextRequest: STATUS_NO_MORE_ENTRIES when empty; requeue puts the request at
    the head (FxIoQueue::Requeue, manual queues only)."""
    driver = HoldingDriver(manual_reads=True)
    guest, fx, file = machine(driver)
    assert fx.WdfIoQueueRetrieveNextRequest(driver.manual) == (S.STATUS_NO_MORE_ENTRIES, None)
    first, _ = guest.read_file(file, 4)
    second, _ = guest.read_file(file, 8)
    assert driver.held == []  # reads go to the manual queue, never presented
    status, request = fx.WdfIoQueueRetrieveNextRequest(driver.manual)
    assert status == 0 and fx.WdfRequestGetParameters(request).Length == 4
    assert fx.WdfRequestGetIoQueue(request) == driver.manual
    assert fx.WdfRequestRequeue(request) == 0
    status, again = fx.WdfIoQueueRetrieveNextRequest(driver.manual)
    assert again == request
    fx.WdfRequestComplete(again, 0)
    assert first.done and not second.done
    # parallel queues refuse retrieval: STATUS_INVALID_DEVICE_STATE (FxIoQueue::GetRequest)
    par = HoldingDriver(WdfIoQueueDispatchParallel)
    _, pfx, _ = machine(par)
    assert pfx.WdfIoQueueRetrieveNextRequest(par.queue)[0] == S.STATUS_INVALID_DEVICE_STATE


def test_requeue_on_a_sequential_queue_is_refused_with_a_finding():
    driver = HoldingDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    guest.write_file(file, b"x")
    assert fx.WdfRequestRequeue(driver.held[0]) == S.STATUS_INVALID_DEVICE_REQUEST
    assert [f.rule for f in fx.findings] == ["RequeueNotManual"]


def test_forward_to_another_queue_frees_the_sequential_slot():
    """WdfRequestForwardToIoQueue: same device, other queue, not cancelable (VerifyForwardRequest)."""
    driver = HoldingDriver(manual_reads=True)
    guest, fx, file = machine(driver, verifier_mode="record")
    ops = [guest.write_file(file, b"x"), guest.write_file(file, b"y")]
    request = driver.held[0]
    assert fx.WdfRequestForwardToIoQueue(request, driver.queue) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfRequestForwardToIoQueue(request, driver.manual) == 0
    assert len(driver.held) == 2  # the second write was presented at once
    status, back = fx.WdfIoQueueRetrieveNextRequest(driver.manual)
    assert back == request
    fx.WdfRequestComplete(back, 0)
    assert ops[0].done


def test_callbacks_run_at_the_irql_the_framework_gives_them():
    """No synchronization scope: the caller's IRQL (PASSIVE for a guest syscall). Device scope with
    dispatch execution level: the device's spin lock, DISPATCH_LEVEL. Passive execution level:
    PASSIVE_LEVEL. PnP callbacks: PASSIVE_LEVEL."""
    plain = HoldingDriver()
    guest, fx, file = machine(plain)
    guest.write_file(file, b"x")
    assert plain.irql == [PASSIVE_LEVEL]
    assert {irql for _, irql in plain.log} == {PASSIVE_LEVEL}
    locked = HoldingDriver(device_attributes=WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice))
    guest, fx, file = machine(locked)
    guest.write_file(file, b"x")
    assert locked.irql == [DISPATCH_LEVEL]
    passive = HoldingDriver(device_attributes=WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice,
        ExecutionLevel=WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive))
    guest, fx, file = machine(passive)
    guest.write_file(file, b"x")
    assert passive.irql == [PASSIVE_LEVEL]


def test_device_scope_queue_with_another_execution_level_is_refused():
    """FxIoQueue::ConfigureConstraints: device scope with a different execution level:
    STATUS_INVALID_PARAMETER."""
    driver = HoldingDriver(device_attributes=WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice),
        queue_attributes=WDF_OBJECT_ATTRIBUTES(ExecutionLevel=WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive))
    with pytest.raises(AssertionError, match="0xc000000d"):
        machine(driver)


def test_queue_config_checks():
    """FxIoQueue::Initialize: manual queues take no callbacks (STATUS_INVALID_PARAMETER); other
    queues need one (STATUS_WDF_NO_CALLBACK); NumberOfPresentedRequests only on parallel queues."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    device = driver.device
    assert fx.WdfIoQueueCreate(device, WDF_IO_QUEUE_CONFIG(DispatchType=WdfIoQueueDispatchManual,
                                                           EvtIoRead=driver.EvtIoRead))[0] == S.STATUS_INVALID_PARAMETER
    assert fx.WdfIoQueueCreate(device, WDF_IO_QUEUE_CONFIG())[0] == S.STATUS_WDF_NO_CALLBACK
    assert fx.WdfIoQueueCreate(device, WDF_IO_QUEUE_CONFIG(EvtIoRead=driver.EvtIoRead,
                                                           NumberOfPresentedRequests=2))[0] == S.STATUS_INVALID_PARAMETER
    assert fx.WdfIoQueueCreate(device, WDF_IO_QUEUE_CONFIG(DispatchType=7, EvtIoRead=driver.EvtIoRead))[0] == \
        S.STATUS_INVALID_PARAMETER
    assert fx.WdfIoQueueCreate(device, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchManual))[0] == \
        S.STATUS_INVALID_DEVICE_STATE  # a default queue after the device started


def test_cancel_of_a_queued_request_and_of_a_cancelable_one():
    """Queued: completed STATUS_CANCELLED by the framework (FxIoQueue::CancelForQueue). Driver-owned
    and cancelable: EvtRequestCancel, and WdfRequestUnmarkCancelable then says STATUS_CANCELLED."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    held = guest.write_file(file, b"1")
    queued = guest.write_file(file, b"2")
    guest.iom.cancel(queued)
    assert queued.result() == (STATUS_CANCELLED, 0)
    cancelled = []

    def on_cancel(Request):
        cancelled.append((Request, fx.KeGetCurrentIrql()))
        fx.WdfRequestComplete(Request, STATUS_CANCELLED)
    request = driver.held[0]
    assert fx.WdfRequestMarkCancelableEx(request, on_cancel) == 0
    assert not fx.WdfRequestIsCanceled(request)
    guest.iom.cancel(held)
    assert cancelled == [(request, PASSIVE_LEVEL)] and held.result() == (STATUS_CANCELLED, 0)


def test_mark_cancelable_ex_on_an_already_cancelled_request_returns_status_cancelled():
    """FxIoQueue::RequestCancelable with FailIfIrpIsCancelled: STATUS_CANCELLED, the caller completes."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    op = guest.write_file(file, b"1")
    request = driver.held[0]
    guest.iom.cancel(op)  # not cancelable yet: only the flag
    assert not op.done and fx.WdfRequestIsCanceled(request)
    assert fx.WdfRequestMarkCancelableEx(request, lambda r: None) == STATUS_CANCELLED
    fx.WdfRequestComplete(request, STATUS_CANCELLED)
    assert op.result() == (STATUS_CANCELLED, 0)


def test_completing_a_request_still_marked_cancelable_is_a_finding():
    """FxRequest::VerifyCompleteInternal: "Completing Cancelable WDFREQUEST" (a verifier break)."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    op = guest.write_file(file, b"1")
    request = driver.held[0]
    fx.WdfRequestMarkCancelable(request, lambda r: None)
    fx.WdfRequestComplete(request, 0)
    assert op.done
    assert [f.rule for f in fx.findings] == ["CompleteCancelableRequest"]


def test_a_request_never_completed_is_reported_at_removal_with_where_it_was_presented():
    driver = HoldingDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    guest.write_file(file, b"lost")
    report = guest.iom.remove_device("wdfio0")
    assert len(report.never_completed) == 1
    message = report.never_completed[0]
    assert "EvtIoWrite of" in message and "test_io_dispatch.py" in message
    assert any(f.rule == "RequestNeverCompleted" for f in fx.findings)


def test_pnp_callbacks_in_the_framework_order_and_evt_io_stop_on_removal():
    """Start: PrepareHardware, D0Entry, D0EntryPostInterruptsEnabled, SelfManagedIoInit. Remove:
    SelfManagedIoSuspend, (EvtIoStop), D0ExitPreInterruptsDisabled, D0Exit, ReleaseHardware,
    SelfManagedIoFlush, SelfManagedIoCleanup (pnpstatemachine.cpp)."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    assert [n for n, _ in driver.log] == ["EvtDevicePrepareHardware", "EvtDeviceD0Entry",
                                          "EvtDeviceD0EntryPostInterruptsEnabled", "EvtDeviceSelfManagedIoInit"]
    op = guest.write_file(file, b"x")
    driver.log.clear()
    guest.iom.remove_device("wdfio0")
    assert [n for n, _ in driver.log] == ["EvtDeviceSelfManagedIoSuspend", "EvtDeviceD0ExitPreInterruptsDisabled",
                                          "EvtDeviceD0Exit", "EvtDeviceReleaseHardware",
                                          "EvtDeviceSelfManagedIoFlush", "EvtDeviceSelfManagedIoCleanup"]
    assert driver.stop_flags and driver.stop_flags[0] & 0x1  # WdfRequestStopActionSuspend first
    assert not op.done


def test_request_parameters_and_the_read_only_input_of_a_write():
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    guest.write_file(file, b"payload")
    request = driver.held[0]
    params = fx.WdfRequestGetParameters(request, WDF_REQUEST_PARAMETERS())
    assert (params.Type, params.Length) == (IRP_MJ_WRITE, 7)
    _, memory = fx.WdfRequestRetrieveInputMemory(request)
    assert fx.WdfMemoryCopyFromBuffer(memory, 0, b"X", 1) == S.STATUS_ACCESS_VIOLATION
    out = bytearray(7)
    assert fx.WdfMemoryCopyToBuffer(memory, 0, out, 7) == 0 and out == b"payload"
    fx.WdfRequestComplete(request, 0)


def test_touching_a_direct_mapping_after_completion():
    """With the verifier: BufAfterReqCompletedReadA (the mapping stays quarantined). Without: the
    mapping is gone, a page fault that names it."""
    for verifier in (True, False):
        driver = HoldingDriver()
        from samples.guest import InProcessGuest
        guest = InProcessGuest()
        fx = guest.iom.load_driver(driver, service_name="WDFHold", verifier=verifier)
        guest.iom.add_device(fx, "wdfio0")
        fx._object(driver.device, 0x1002).stack.bottom.io_type = 3  # direct I/O
        file = guest.open("wdfio0")
        op, buffer = guest.read_file(file, 100)
        request = driver.held[0]
        status, va, length = fx.WdfRequestRetrieveOutputBuffer(request, 100)
        fx.RtlCopyMemory(va, b"z" * 100, 100)
        fx.WdfRequestCompleteWithInformation(request, 0, 100)
        assert guest.read(buffer) == b"z" * 100
        if verifier:
            with pytest.raises(BugCheck, match="BufAfterReqCompletedReadA"):
                fx.RtlCopyMemory(va, b"late", 4)
        else:
            with pytest.raises(BugCheck, match="unmapped at"):
                fx.RtlCopyMemory(va, b"late", 4)


def test_waiting_forever_is_an_error_that_names_the_holder():
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    op = guest.write_file(file, b"x")
    with pytest.raises(FrameworkStateError, match="EvtIoWrite of"):
        op.result()


def test_the_run_ending_with_a_held_request_reports_it_once_and_unloads():
    driver = HoldingDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    op = guest.write_file(file, b"held")
    reports = guest.iom.shutdown()
    assert [f.rule for f in fx.findings] == ["RequestNeverCompleted"]
    assert not reports[0], str(reports[0])
    assert not op.done


def test_queue_stop_start_and_purge():
    """Stop: requests queue up unpresented; Start: presented. Purge: queued requests are cancelled,
    cancelable driver-owned ones get EvtRequestCancel, and the queue then refuses new requests with
    STATUS_INVALID_DEVICE_STATE (FxIoQueue::QueueRequest)."""
    driver = HoldingDriver(WdfIoQueueDispatchParallel)
    guest, fx, file = machine(driver)
    fx.WdfIoQueueStop(driver.queue)
    op = guest.write_file(file, b"1")
    assert driver.held == []
    fx.WdfIoQueueStart(driver.queue)
    assert len(driver.held) == 1
    cancelled = []
    fx.WdfRequestMarkCancelable(driver.held[0], lambda r: (cancelled.append(r), fx.WdfRequestComplete(r, STATUS_CANCELLED)))
    fx.WdfIoQueueStop(driver.queue)
    queued = guest.write_file(file, b"2")
    done = []
    fx.WdfIoQueuePurge(driver.queue, lambda q, c: done.append(c), "ctx")
    guest.iom.run()
    assert cancelled == [driver.held[0]] and op.result() == (STATUS_CANCELLED, 0)
    assert queued.result() == (STATUS_CANCELLED, 0) and done == ["ctx"]
    assert guest.write_file(file, b"3").result() == (S.STATUS_INVALID_DEVICE_STATE, 0)


def test_stop_synchronously_waits_for_the_driver_and_evt_io_stop_acknowledge_requeues():
    driver = HoldingDriver()
    guest, fx, file = machine(driver, verifier_mode="record")
    op = guest.write_file(file, b"1")
    request = driver.held[0]
    _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: fx.WdfRequestComplete(request, 0)),
                                 WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(20))
    fx.WdfIoQueueStopSynchronously(driver.queue)   # the timer completes the request meanwhile
    assert op.done and guest.iom.dispatcher.now >= 20 * 10_000
    fx.WdfIoQueueStart(driver.queue)
    guest.write_file(file, b"2")
    fx.WdfRequestStopAcknowledge(driver.held[1], False)   # FxRequest::VerifyStopAcknowledge
    assert [f.rule for f in fx.findings] == ["StopAcknowledgeOutsideEvtIoStop"]


def test_a_request_retrieved_from_a_sequential_queue_holds_its_slot():
    """FxIoQueue::GetRequest -> InsertInDriverOwnedList counts it in m_DriverIoCount: the sequential
    queue presents nothing until it is completed."""
    driver = HoldingDriver()
    guest, fx, file = machine(driver)
    fx.WdfIoQueueStop(driver.queue)
    ops = [guest.write_file(file, b"1"), guest.write_file(file, b"2")]
    fx.WdfIoQueueStart(driver.queue)
    request = driver.held.pop()
    status, retrieved = fx.WdfIoQueueRetrieveNextRequest(driver.queue)
    assert status == S.STATUS_SUCCESS  # allowed on a sequential queue
    third = guest.write_file(file, b"3")
    fx.WdfRequestComplete(request, 0)
    assert driver.held == [] and not third.done   # the retrieved one still holds the slot
    fx.WdfRequestComplete(retrieved, 0)
    assert len(driver.held) == 1                  # now the third is presented


def test_removal_ends_with_the_cleanup_callbacks_children_first():
    log = []
    driver = HoldingDriver(device_attributes=WDF_OBJECT_ATTRIBUTES(EvtCleanupCallback=lambda h: log.append("device")),
                           queue_attributes=WDF_OBJECT_ATTRIBUTES(EvtCleanupCallback=lambda h: log.append("queue")))
    guest, fx, file = machine(driver)
    driver.log.clear()
    guest.iom.close(file)
    guest.iom.remove_device("wdfio0")
    assert [n for n, _ in driver.log][-1] == "EvtDeviceSelfManagedIoCleanup"
    assert log == ["queue", "device"]


def test_a_direct_request_is_mapped_only_when_the_driver_asks_and_unmapped_at_completion():
    """FxRequest::GetMemoryObject maps the MDL on first use; a driver that only takes the MDL (for
    DMA) never gets a mapping. Whoever mapped it, completion unmaps it (MmUnlockPages)."""
    from framework_emu import MDL_MAPPED_TO_SYSTEM_VA
    driver = HoldingDriver()
    guest = InProcessGuest()
    fx = guest.iom.load_driver(driver, service_name="WDFHold", verifier=False)
    guest.iom.add_device(fx, "wdfio0")
    fx._object(driver.device, 0x1002).io_type = 3  # direct I/O
    file = guest.open("wdfio0")
    guest.read_file(file, 64)
    request = driver.held[0]
    status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(request)
    assert status == 0 and not mdl.MdlFlags & MDL_MAPPED_TO_SYSTEM_VA
    va = fx.MmGetSystemAddressForMdlSafe(mdl)
    fx.RtlCopyMemory(va, b"m" * 64, 64)
    fx.WdfRequestCompleteWithInformation(request, 0, 64)
    with pytest.raises(BugCheck, match="unmapped at"):
        fx.RtlCopyMemory(va, b"late", 4)
