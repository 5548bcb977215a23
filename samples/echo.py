"""The echo driver: what a guest writes, it reads back (the WDK's KMDF echo sample, ported line by line).

Buffered (``EchoDriver()``) or direct I/O (``EchoDriver(direct_io=True)``).
A sequential default queue: EvtIoWrite keeps the data in a buffer of its
own (WdfMemoryCreate, parent: the queue), EvtIoRead copies it into the
read's buffer. ``IOCTL_ECHO_REVERSE`` (METHOD_BUFFERED) returns its input
reversed. With ``delay_ms``, requests are completed from a timer, as the
WDK sample does, cancelable while they wait (WdfRequestMarkCancelableEx).
"""

from __future__ import annotations

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, METHOD_BUFFERED, NT_SUCCESS, NTSTATUS, WDF_DRIVER_CONFIG,
                           WDF_FILEOBJECT_CONFIG, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_OBJECT_ATTRIBUTES,
                           WDF_PNPPOWER_EVENT_CALLBACKS, WDF_REL_TIMEOUT_IN_MS, WDF_TIMER_CONFIG_INIT,
                           STATUS_CANCELLED, PoolType, WdfDeviceIoBuffered, WdfDeviceIoDirect,
                           WdfIoQueueDispatchSequential)

GUID_DEVINTERFACE_ECHO = "{CDC35B6E-0BE4-4936-BF5F-5537380A7C1A}"
IOCTL_ECHO_REVERSE = CTL_CODE(0x22, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
ECHO_TAG = b"Echo"


class EchoDriver:
    """A correct echo driver. ``self.fx`` is set by IoManager.load_driver before DriverEntry."""

    fx = None

    def __init__(self, *, direct_io: bool = False, delay_ms: int = 0) -> None:
        self.direct_io = direct_io
        self.delay_ms = delay_ms
        self.buffer = None          # WDFMEMORY holding the last write
        self.length = 0
        self.queue = None
        self.timer = None
        self.pending = None         # the request the timer will complete
        self.events: list[str] = []

    def DriverEntry(self, DriverObject, RegistryPath):
        config = WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd)
        status, _driver = self.fx.WdfDriverCreate(DriverObject, RegistryPath, None, config)
        return status

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfDeviceInitSetIoType(DeviceInit, WdfDeviceIoDirect if self.direct_io else WdfDeviceIoBuffered)
        fx.WdfDeviceInitSetFileObjectConfig(DeviceInit, WDF_FILEOBJECT_CONFIG(
            EvtDeviceFileCreate=self.EvtDeviceFileCreate, EvtFileClose=self.EvtFileClose), None)
        fx.WdfDeviceInitSetPnpPowerEventCallbacks(DeviceInit, WDF_PNPPOWER_EVENT_CALLBACKS(
            EvtDeviceSelfManagedIoInit=self.EvtDeviceSelfManagedIoInit,
            EvtDeviceSelfManagedIoSuspend=self.EvtDeviceSelfManagedIoSuspend))
        status, device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        status = fx.WdfDeviceCreateDeviceInterface(device, GUID_DEVINTERFACE_ECHO)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
        config.EvtIoRead = self.EvtIoRead
        config.EvtIoWrite = self.EvtIoWrite
        config.EvtIoDeviceControl = self.EvtIoDeviceControl
        config.EvtIoStop = self.EvtIoStop
        status, self.queue = fx.WdfIoQueueCreate(device, config, None)
        if not NT_SUCCESS(status):
            return status
        if self.delay_ms:
            status, self.timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(self.EvtTimerFunc),
                                                   WDF_OBJECT_ATTRIBUTES(ParentObject=self.queue))
        return status

    # -- PnP and files ---------------------------------------------------------------------------

    def EvtDeviceSelfManagedIoInit(self, Device):
        self.events.append("SelfManagedIoInit")
        return NTSTATUS.STATUS_SUCCESS

    def EvtDeviceSelfManagedIoSuspend(self, Device):
        self.events.append("SelfManagedIoSuspend")
        return NTSTATUS.STATUS_SUCCESS

    def EvtDeviceFileCreate(self, Device, Request, FileObject):
        self.events.append("FileCreate")
        self.fx.WdfRequestComplete(Request, NTSTATUS.STATUS_SUCCESS)

    def EvtFileClose(self, FileObject):
        self.events.append("FileClose")

    # -- I/O ---------------------------------------------------------------------------------------

    def EvtIoWrite(self, Queue, Request, Length):
        fx = self.fx
        status, memory = fx.WdfRequestRetrieveInputMemory(Request)
        if not NT_SUCCESS(status):
            fx.WdfRequestCompleteWithInformation(Request, status, 0)
            return
        if self.buffer is not None:
            fx.WdfObjectDelete(self.buffer)
            self.buffer = None
        status, self.buffer, address = fx.WdfMemoryCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=Queue),
                                                          PoolType.NonPagedPoolNx, ECHO_TAG, Length)
        if not NT_SUCCESS(status):
            self.length = 0
            fx.WdfRequestCompleteWithInformation(Request, status, 0)
            return
        status = fx.WdfMemoryCopyToBuffer(memory, 0, address, Length)
        self.length = Length if NT_SUCCESS(status) else 0
        self._finish(Request, status, Length)

    def EvtIoRead(self, Queue, Request, Length):
        fx = self.fx
        if self.buffer is None:
            fx.WdfRequestCompleteWithInformation(Request, NTSTATUS.STATUS_SUCCESS, 0)
            return
        count = min(Length, self.length)
        status, memory = fx.WdfRequestRetrieveOutputMemory(Request)
        if NT_SUCCESS(status):
            address, _size = fx.WdfMemoryGetBuffer(self.buffer)
            status = fx.WdfMemoryCopyFromBuffer(memory, 0, address, count)
        self._finish(Request, status, count if NT_SUCCESS(status) else 0)

    def EvtIoDeviceControl(self, Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode):
        fx = self.fx
        if IoControlCode != IOCTL_ECHO_REVERSE:
            fx.WdfRequestComplete(Request, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
            return
        status, inp, in_len = fx.WdfRequestRetrieveInputBuffer(Request, 1)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        data = fx.read(inp, in_len)   # read it all before writing: input and output share one buffer
        status, out, out_len = fx.WdfRequestRetrieveOutputBuffer(Request, in_len)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        fx.RtlCopyMemory(out, data[::-1], in_len)
        fx.WdfRequestCompleteWithInformation(Request, NTSTATUS.STATUS_SUCCESS, in_len)

    def _finish(self, Request, status, information):
        fx = self.fx
        if not self.delay_ms or not NT_SUCCESS(status):
            fx.WdfRequestCompleteWithInformation(Request, status, information)
            return
        fx.WdfRequestSetInformation(Request, information)
        if fx.WdfRequestMarkCancelableEx(Request, self.EvtRequestCancel) == STATUS_CANCELLED:
            fx.WdfRequestComplete(Request, STATUS_CANCELLED)
            return
        self.pending = Request
        fx.WdfTimerStart(self.timer, WDF_REL_TIMEOUT_IN_MS(self.delay_ms))

    def EvtTimerFunc(self, Timer):
        fx = self.fx
        request, self.pending = self.pending, None
        if request is None:
            return
        if fx.WdfRequestUnmarkCancelable(request) != STATUS_CANCELLED:
            fx.WdfRequestComplete(request, NTSTATUS.STATUS_SUCCESS)

    def EvtRequestCancel(self, Request):
        self.events.append("RequestCancel")
        if self.pending == Request:
            self.pending = None
        self.fx.WdfRequestCompleteWithInformation(Request, STATUS_CANCELLED, 0)

    def EvtIoStop(self, Queue, Request, ActionFlags):
        self.events.append("IoStop")
