"""METHOD_NEITHER done right: the caller's buffers probed and locked in EvtIoInCallerContext.

The pattern the WDK documents for a top-level driver (the NONPNP sample's
``NonPnpEvtDeviceIoInCallerContext``): every request reaches
EvtIoInCallerContext first, in the calling thread. For the driver's
METHOD_NEITHER IOCTLs it takes the raw user addresses
(WdfRequestRetrieveUnsafeUserInput/OutputBuffer), probes and locks them
(WdfRequestProbeAndLockUserBufferForRead/Write: memory objects that live
until the request completes), keeps the memory objects with the request,
and hands the request back to its queue (WdfDeviceEnqueueRequest), whose
EvtIoDeviceControl then works on the locked memory from any thread:

- ``IOCTL_NEITHER_REVERSE``: the output gets the input reversed;
- ``IOCTL_NEITHER_IN_PLACE``: the input is reversed in place (locked for write).

Anything else goes back to the queue untouched.
"""

from __future__ import annotations

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, METHOD_NEITHER, NT_SUCCESS, NTSTATUS,
                           WDF_DRIVER_CONFIG, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_REQUEST_PARAMETERS,
                           WdfIoQueueDispatchSequential)

IOCTL_NEITHER_REVERSE = CTL_CODE(0x22, 0xA00, METHOD_NEITHER, FILE_ANY_ACCESS)
IOCTL_NEITHER_IN_PLACE = CTL_CODE(0x22, 0xA01, METHOD_NEITHER, FILE_ANY_ACCESS)
STATUS_INVALID_USER_BUFFER = 0xC00000E8


class NeitherDriver:
    """Probes and locks METHOD_NEITHER buffers in the caller's context. ``locked``: request ->
    (input memory, output memory) between EvtIoInCallerContext and completion."""

    fx = None

    def __init__(self) -> None:
        self.locked: dict[int, tuple[int | None, int | None]] = {}
        self.device = None
        self.events: list[str] = []

    def DriverEntry(self, DriverObject, RegistryPath):
        config = WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd)
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None, config)[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfDeviceInitSetIoInCallerContextCallback(DeviceInit, self.EvtIoInCallerContext)
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
        config.EvtIoDeviceControl = self.EvtIoDeviceControl
        return fx.WdfIoQueueCreate(self.device, config, None)[0]

    def EvtIoInCallerContext(self, Device, Request):
        fx = self.fx
        params = fx.WdfRequestGetParameters(Request, WDF_REQUEST_PARAMETERS())
        code = params.IoControlCode if params.Type == IRP_MJ_DEVICE_CONTROL else None
        if code in (IOCTL_NEITHER_REVERSE, IOCTL_NEITHER_IN_PLACE):
            status = self._lock(Request, code)
            if not NT_SUCCESS(status):
                self.events.append(f"lock failed 0x{status:08x}")
                fx.WdfRequestComplete(Request, status)
                return
        status = fx.WdfDeviceEnqueueRequest(Device, Request)
        if not NT_SUCCESS(status):
            self.locked.pop(Request, None)
            fx.WdfRequestComplete(Request, status)

    def _lock(self, Request, code) -> int:
        fx = self.fx
        status, in_va, in_len = fx.WdfRequestRetrieveUnsafeUserInputBuffer(Request, 1)
        if not NT_SUCCESS(status):
            return status
        if not in_va:                   # a NULL pointer from the caller: probing it would bug check
            return STATUS_INVALID_USER_BUFFER
        if code == IOCTL_NEITHER_IN_PLACE:
            status, memory = fx.WdfRequestProbeAndLockUserBufferForWrite(Request, in_va, in_len)
            if NT_SUCCESS(status):
                self.locked[Request] = (memory, None)
            return status
        status, in_memory = fx.WdfRequestProbeAndLockUserBufferForRead(Request, in_va, in_len)
        if not NT_SUCCESS(status):
            return status
        status, out_va, out_len = fx.WdfRequestRetrieveUnsafeUserOutputBuffer(Request, in_len)
        if not NT_SUCCESS(status):
            return status
        if not out_va:
            return STATUS_INVALID_USER_BUFFER
        status, out_memory = fx.WdfRequestProbeAndLockUserBufferForWrite(Request, out_va, out_len)
        if NT_SUCCESS(status):
            self.locked[Request] = (in_memory, out_memory)
        return status

    def EvtIoDeviceControl(self, Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode):
        fx = self.fx
        memories = self.locked.pop(Request, None)
        if memories is None:
            fx.WdfRequestComplete(Request, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
            return
        in_memory, out_memory = memories
        address, _size = fx.WdfMemoryGetBuffer(in_memory)
        data = fx.read(address, InputBufferLength)[::-1]
        status = fx.WdfMemoryCopyFromBuffer(out_memory or in_memory, 0, data, len(data))
        fx.WdfRequestCompleteWithInformation(Request, status, len(data) if NT_SUCCESS(status) else 0)
