"""Drivers the guest I/O tests run (the end-to-end tests and the runtime's unit test),
written against framework_emu as a driver developer would: the echo sample with one echo
IOCTL per transfer method and a record of the MDLs it was given, a driver storing by byte
offset on a parallel or sequential queue, drivers with bugs (a request held forever, a
leak, a buffer touched after completion)."""

from __future__ import annotations

from framework_emu import (NT_SUCCESS, WDF_DRIVER_CONFIG, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE,
                           WDF_OBJECT_ATTRIBUTES, WDF_REL_TIMEOUT_IN_MS, WDF_TIMER_CONFIG_INIT,
                           WdfDeviceIoDirect, WdfIoQueueDispatchParallel, WdfIoQueueDispatchSequential)
from samples.echo import EchoDriver
from samples.method_echo import MethodEchoDriver

__all__ = ["MethodEchoDriver", "OffsetStoreDriver", "HoldingDriver", "LeakyEchoDriver", "UseAfterCompleteDriver"]


class OffsetStoreDriver:
    """Reads and writes a store at the request's byte offset (so each guest thread has its own
    data), on a parallel or sequential default queue, recording how many requests it holds at
    once. ``gate``: hold requests until that many are held together, then complete them all
    (once). ``delay_ms``: complete each from a timer (sequential queues: one at a time)."""

    fx = None

    def __init__(self, *, parallel: bool, direct_io: bool = True, gate: int = 0, delay_ms: int = 0) -> None:
        self.parallel, self.direct_io, self.gate, self.delay_ms = parallel, direct_io, gate, delay_ms
        self.store = bytearray(16 << 20)
        self.held: list[tuple[int, int]] = []     # (request, information)
        self.max_held = 0
        self.presented = 0
        self.timer = None

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        if self.direct_io:
            fx.WdfDeviceInitSetIoType(DeviceInit, WdfDeviceIoDirect)
        status, device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(
            WdfIoQueueDispatchParallel if self.parallel else WdfIoQueueDispatchSequential)
        config.EvtIoRead, config.EvtIoWrite = self.EvtIoRead, self.EvtIoWrite
        status, queue = fx.WdfIoQueueCreate(device, config, None)
        if NT_SUCCESS(status) and self.delay_ms:
            status, self.timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(self.EvtTimerFunc),
                                                   WDF_OBJECT_ATTRIBUTES(ParentObject=queue))
        return status

    def EvtIoWrite(self, Queue, Request, Length):
        fx = self.fx
        offset = fx.WdfRequestGetParameters(Request).DeviceOffset
        status, memory = fx.WdfRequestRetrieveInputMemory(Request)
        data = bytearray(Length)
        if NT_SUCCESS(status):
            status = fx.WdfMemoryCopyToBuffer(memory, 0, data, Length)
        if NT_SUCCESS(status):
            self.store[offset:offset + Length] = data
        self._hold(Request, status, Length)

    def EvtIoRead(self, Queue, Request, Length):
        fx = self.fx
        offset = fx.WdfRequestGetParameters(Request).DeviceOffset
        status, memory = fx.WdfRequestRetrieveOutputMemory(Request)
        if NT_SUCCESS(status):
            status = fx.WdfMemoryCopyFromBuffer(memory, 0, bytes(self.store[offset:offset + Length]), Length)
        self._hold(Request, status, Length)

    def _hold(self, Request, status, information):
        self.presented += 1
        if not NT_SUCCESS(status):
            self.fx.WdfRequestComplete(Request, status)
            return
        self.held.append((Request, information))
        self.max_held = max(self.max_held, len(self.held))
        if self.delay_ms:
            self.fx.WdfTimerStart(self.timer, WDF_REL_TIMEOUT_IN_MS(self.delay_ms))
        elif len(self.held) >= self.gate:
            self.gate = 0
            self._release()

    def _release(self):
        held, self.held = self.held, []
        for request, information in held:
            self.fx.WdfRequestCompleteWithInformation(request, 0, information)

    def EvtTimerFunc(self, Timer):
        self._release()


class HoldingDriver:
    """Keeps every read and never completes it: the bug the runtime's report must name."""

    fx = None

    def __init__(self) -> None:
        self.held = []

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        status, device = self.fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoRead = self.EvtIoRead
        return self.fx.WdfIoQueueCreate(device, config, None)[0]

    def EvtIoRead(self, Queue, Request, Length):
        self.held.append(Request)


class LeakyEchoDriver(EchoDriver):
    """The echo sample, plus a pool allocation per write that is never freed."""

    def EvtIoWrite(self, Queue, Request, Length):
        self.fx.ExAllocatePool2(0x40, 64, b"Leak")      # POOL_FLAG_NON_PAGED, never freed
        super().EvtIoWrite(Queue, Request, Length)


class UseAfterCompleteDriver(EchoDriver):
    """Completes a write, then reads its buffer: a fatal verifier finding (bug check 0x10D)."""

    def EvtIoWrite(self, Queue, Request, Length):
        fx = self.fx
        _status, memory = fx.WdfRequestRetrieveInputMemory(Request)
        fx.WdfRequestCompleteWithInformation(Request, 0, Length)
        fx.WdfMemoryCopyToBuffer(memory, 0, bytearray(Length), Length)

