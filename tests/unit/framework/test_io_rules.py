"""Execution rules around callbacks: IRQL on return, IRQL-limited calls from locked callbacks,
passive queues fed from DISPATCH_LEVEL, EvtIoCanceledOnQueue, cancelling a sent request, and the
echo sample without the verifier (production layout)."""

import pytest

from framework_emu import (DISPATCH_LEVEL, PASSIVE_LEVEL, BugCheck, NTSTATUS, STATUS_CANCELLED, WDF_DRIVER_CONFIG,
                           WDF_EXECUTION_LEVEL, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE,
                           WDF_MEMORY_DESCRIPTOR_INIT_BUFFER, WDF_OBJECT_ATTRIBUTES, WDF_REL_TIMEOUT_IN_MS,
                           WDF_SYNCHRONIZATION_SCOPE, WDF_TIMER_CONFIG_INIT, WdfIoQueueDispatchSequential)
from samples.echo import EchoDriver
from samples.guest import InProcessGuest

S = NTSTATUS


class Configurable:
    fx = None

    def __init__(self, on_write, *, device_attributes=None, queue_attributes=None, canceled_on_queue=None):
        self.on_write = on_write
        self.device_attributes = device_attributes
        self.queue_attributes = queue_attributes
        self.canceled_on_queue = canceled_on_queue

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        status, self.device = fx.WdfDeviceCreate(DeviceInit, self.device_attributes)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
        config.EvtIoWrite = lambda Queue, Request, Length: self.on_write(self, Request)
        config.EvtIoCanceledOnQueue = self.canceled_on_queue
        status, self.queue = fx.WdfIoQueueCreate(self.device, config, self.queue_attributes)
        assert status == 0
        return status


def machine(driver, service_name="WDFRules", stack="dev0", guest=None, **options):
    guest = guest or InProcessGuest()
    fx = guest.iom.load_driver(driver, service_name=service_name, **options)
    guest.iom.add_device(fx, stack)
    return guest, fx


def test_a_callback_returning_at_a_raised_irql_stops_the_machine():
    def raise_and_return(driver, Request):
        driver.fx.KeRaiseIrql(DISPATCH_LEVEL)
    guest, fx = machine(Configurable(raise_and_return))
    file = guest.open("dev0")
    with pytest.raises(BugCheck, match="0xC8|IRQL") as caught:
        guest.write_file(file, b"x")
    assert caught.value.code == 0xC8


def test_a_synchronous_send_from_a_spin_lock_synchronized_callback_is_a_kmdf_irql_finding():
    """Device scope, dispatch level: EvtIoWrite runs at DISPATCH_LEVEL; synchronous sends are
    PASSIVE_LEVEL only."""
    guest = InProcessGuest()

    def send_sync(driver, Request):
        fx = driver.fx
        _, inp, length = fx.WdfRequestRetrieveInputBuffer(Request, 1)
        fx.WdfIoTargetSendWriteSynchronously(fx.WdfDeviceGetIoTarget(driver.device), None,
                                             WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(inp, length))
    driver = Configurable(send_sync, device_attributes=WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice))
    driver_fx = guest.iom.load_driver(driver, service_name="Upper")
    guest.iom.add_device(driver_fx, "upper0")
    file = guest.open("upper0")
    with pytest.raises(BugCheck, match="KmdfIrql"):
        guest.write_file(file, b"x")


def test_a_passive_queue_fed_from_a_timer_dpc_presents_at_passive_level():
    """The second write is presented when the first completes inside a DPC (DISPATCH_LEVEL); the
    queue's passive execution level defers the presentation to PASSIVE_LEVEL."""
    seen = []

    def hold_then_timer(driver, Request):
        fx = driver.fx
        seen.append(fx.KeGetCurrentIrql())
        if len(seen) == 1:
            _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: fx.WdfRequestComplete(Request, 0)),
                                         WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
            fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(1))
        else:
            fx.WdfRequestComplete(Request, 0)
    driver = Configurable(hold_then_timer, queue_attributes=WDF_OBJECT_ATTRIBUTES(
        ExecutionLevel=WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive))
    guest, fx = machine(driver)
    file = guest.open("dev0")
    first = guest.write_file(file, b"1")
    second = guest.write_file(file, b"2")
    guest.iom.advance_time(1)
    assert first.done and second.done and seen == [PASSIVE_LEVEL, PASSIVE_LEVEL]


def test_evt_io_canceled_on_queue_gets_the_queued_request():
    got = []

    def hold(driver, Request):
        got.append(("held", Request))

    def canceled_on_queue(Queue, Request):
        got.append(("canceled", Request))
        driver.fx.WdfRequestComplete(Request, STATUS_CANCELLED)
    driver = Configurable(hold, canceled_on_queue=canceled_on_queue)
    guest, fx = machine(driver)
    file = guest.open("dev0")
    guest.write_file(file, b"1")
    queued = guest.write_file(file, b"2")
    guest.iom.cancel(queued)
    assert [kind for kind, _ in got] == ["held", "canceled"] and queued.result() == (STATUS_CANCELLED, 0)


def test_cancel_sent_request_reaches_the_lower_driver():
    """WdfRequestCancelSentRequest: the lower driver's cancelable request gets EvtRequestCancel and
    the sender's completion routine sees STATUS_CANCELLED."""
    guest = InProcessGuest()
    echo = EchoDriver(delay_ms=50)
    machine(echo, "WDFEcho", "wdfio0", guest)
    results = []

    def forward(driver, Request):
        fx = driver.fx
        fx.WdfRequestFormatRequestUsingCurrentType(Request)
        fx.WdfRequestSetCompletionRoutine(Request, lambda R, T, P, C: (results.append(P.IoStatus.Status),
                                                                     fx.WdfRequestComplete(R, P.IoStatus.Status)))
        fx.WdfRequestSend(Request, fx.WdfDeviceGetIoTarget(driver.device))
        driver.sent = Request

    class Filter(Configurable):
        def EvtDriverDeviceAdd(self, Driver, DeviceInit):
            self.fx.WdfFdoInitSetFilter(DeviceInit)
            return Configurable.EvtDriverDeviceAdd(self, Driver, DeviceInit)
    upper = Filter(forward)
    fx_upper = guest.iom.load_driver(upper, service_name="Upper")
    guest.iom.add_device(fx_upper, "wdfio0")
    file = guest.open("wdfio0")
    op = guest.write_file(file, b"slow")
    assert not op.done
    assert fx_upper.WdfRequestCancelSentRequest(upper.sent) is True
    guest.iom.run()
    assert results == [STATUS_CANCELLED] and op.result() == (STATUS_CANCELLED, 0)
    assert "RequestCancel" in echo.events


def test_echo_without_the_verifier_uses_the_production_layout_and_stays_clean():
    guest = InProcessGuest()
    echo = EchoDriver(direct_io=True)
    guest, fx = machine(echo, "WDFEcho", "wdfio0", guest, verifier=False)
    file = guest.open("wdfio0")
    data = b"production " * 500
    assert guest.write_file(file, data).result() == (0, len(data))
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (0, len(data)) and guest.read(buffer) == data
    guest.iom.close(file)
    assert not any(guest.iom.shutdown())
    assert fx.findings == []


def test_an_asynchronous_send_with_a_timeout_completes_with_status_io_timeout():
    """The target's timer cancels the sent request; a STATUS_CANCELLED completion becomes
    STATUS_IO_TIMEOUT (FX_REQUEST_CANCELLED_FROM_TIMER, fxiotarget.cpp)."""
    from framework_emu import (STATUS_IO_TIMEOUT, WDF_REQUEST_SEND_OPTIONS_INIT,
                               WDF_REQUEST_SEND_OPTIONS_SET_TIMEOUT)
    guest = InProcessGuest()
    echo = EchoDriver(delay_ms=500)
    machine(echo, "WDFEcho", "wdfio0", guest)
    results = []

    def forward(driver, Request):
        fx = driver.fx
        fx.WdfRequestFormatRequestUsingCurrentType(Request)
        fx.WdfRequestSetCompletionRoutine(Request, lambda R, T, P, C: (results.append(P.IoStatus.Status),
                                                                     fx.WdfRequestComplete(R, P.IoStatus.Status)))
        options = WDF_REQUEST_SEND_OPTIONS_INIT()
        WDF_REQUEST_SEND_OPTIONS_SET_TIMEOUT(options, WDF_REL_TIMEOUT_IN_MS(100))
        fx.WdfRequestSend(Request, fx.WdfDeviceGetIoTarget(driver.device), options)

    class Filter(Configurable):
        def EvtDriverDeviceAdd(self, Driver, DeviceInit):
            self.fx.WdfFdoInitSetFilter(DeviceInit)
            return Configurable.EvtDriverDeviceAdd(self, Driver, DeviceInit)
    fx_upper = guest.iom.load_driver(Filter(forward), service_name="Upper")
    guest.iom.add_device(fx_upper, "wdfio0")
    file = guest.open("wdfio0")
    op = guest.write_file(file, b"slow")
    guest.iom.advance_time(99)
    assert not op.done
    guest.iom.advance_time(1)
    assert results == [STATUS_IO_TIMEOUT] and op.result() == (STATUS_IO_TIMEOUT, 0)


def test_file_callbacks_share_the_device_lock_under_device_scope_and_passive_level():
    from framework_emu import WDF_FILEOBJECT_CONFIG
    holders = []

    class FileDriver(Configurable):
        def EvtDriverDeviceAdd(self, Driver, DeviceInit):
            fx = self.fx
            fx.WdfDeviceInitSetFileObjectConfig(DeviceInit, WDF_FILEOBJECT_CONFIG(
                EvtDeviceFileCreate=self.create, EvtFileClose=self.close))
            return Configurable.EvtDriverDeviceAdd(self, Driver, DeviceInit)

        def create(self, Device, Request, FileObject):
            holders.append((self.fx._object(Device, 0x1002).lock.holder, self.fx.KeGetCurrentIrql()))
            self.fx.WdfRequestComplete(Request, 0)

        def close(self, FileObject):
            device = self.fx.WdfFileObjectGetDevice(FileObject)
            holders.append((self.fx._object(device, 0x1002).lock.holder, self.fx.KeGetCurrentIrql()))
    driver = FileDriver(lambda d, r: None, device_attributes=WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice,
        ExecutionLevel=WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive))
    guest, fx = machine(driver)
    guest.iom.close(guest.open("dev0"))
    assert [("EvtDeviceFileCreate" in h, irql) for h, irql in holders] == [(True, PASSIVE_LEVEL), (False, PASSIVE_LEVEL)]
    assert "EvtFileClose" in holders[1][0]
