"""The case "Using Memory Buffers" singles out: a driver-defined structure in an internal IOCTL's
buffer, wrapped with WdfMemoryCreatePreallocated and passed to the next driver with
WdfIoTargetFormatRequestForInternalIoctl.

- :class:`SensorDriver` (the lower, function driver) answers ``IOCTL_INTERNAL_SENSOR_READ``: the
  input is a ``SENSOR_READING`` {ULONG Channel; ULONG Value}; it fills Value, after ``delay_ms``
  (a timer) when asked to;
- :class:`SensorFilterDriver` (the upper filter) receives the same IOCTL from a kernel-mode client,
  wraps the caller's structure (WdfMemoryCreatePreallocated, parent: the request), sends it down in
  a request of its own, and completes the caller's request from the completion routine, after
  reading the answer through its memory object. With ``complete_early=True`` it completes the
  caller's request right after sending -- the bug the documentation warns about: the structure
  belongs to that request, and touching it afterwards (as the completion routine then does) is a
  verifier finding, BufAfterReqCompletedIntIoctlA, naming where the memory was created and where
  it was touched.
"""

from __future__ import annotations

import struct

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, METHOD_BUFFERED, NT_SUCCESS, NTSTATUS, WDF_DRIVER_CONFIG,
                           WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_OBJECT_ATTRIBUTES, WDF_REL_TIMEOUT_IN_MS,
                           WDF_TIMER_CONFIG_INIT, WdfIoQueueDispatchParallel, WdfIoQueueDispatchSequential)

IOCTL_INTERNAL_SENSOR_READ = CTL_CODE(0x22, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)
SENSOR_READING = struct.Struct("<II")  # Channel, Value


class SensorDriver:
    """The lower driver: fills SENSOR_READING.Value = Channel * 100."""

    fx = None

    def __init__(self, *, delay_ms: int = 0) -> None:
        self.delay_ms = delay_ms
        self.pending = None
        self.timer = None

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        status, device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
        config.EvtIoInternalDeviceControl = self.EvtIoInternalDeviceControl
        status, queue = fx.WdfIoQueueCreate(device, config, None)
        if NT_SUCCESS(status) and self.delay_ms:
            status, self.timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(self.EvtTimerFunc),
                                                   WDF_OBJECT_ATTRIBUTES(ParentObject=queue))
        return status

    def EvtIoInternalDeviceControl(self, Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode):
        if IoControlCode != IOCTL_INTERNAL_SENSOR_READ:
            self.fx.WdfRequestComplete(Request, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
            return
        if self.delay_ms:
            self.pending = Request
            self.fx.WdfTimerStart(self.timer, WDF_REL_TIMEOUT_IN_MS(self.delay_ms))
            return
        self._answer(Request)

    def EvtTimerFunc(self, Timer):
        request, self.pending = self.pending, None
        if request is not None:
            self._answer(request)

    def _answer(self, Request):
        fx = self.fx
        status, memory = fx.WdfRequestRetrieveInputMemory(Request)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        reading = bytearray(SENSOR_READING.size)
        status = fx.WdfMemoryCopyToBuffer(memory, 0, reading, SENSOR_READING.size)
        if NT_SUCCESS(status):
            channel, _ = SENSOR_READING.unpack(reading)
            status = fx.WdfMemoryCopyFromBuffer(memory, 4, struct.pack("<I", channel * 100), 4)
        fx.WdfRequestCompleteWithInformation(Request, status, SENSOR_READING.size if NT_SUCCESS(status) else 0)


class SensorFilterDriver:
    """The upper filter: passes the caller's structure down through a preallocated memory object."""

    fx = None

    def __init__(self, *, complete_early: bool = False) -> None:
        self.complete_early = complete_early
        self.answers: list[int] = []
        self.target = None

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfFdoInitSetFilter(DeviceInit)
        status, device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoInternalDeviceControl = self.EvtIoInternalDeviceControl
        status, _queue = fx.WdfIoQueueCreate(device, config, None)
        self.target = fx.WdfDeviceGetIoTarget(device)
        return status

    def EvtIoInternalDeviceControl(self, Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode):
        fx = self.fx
        status, reading, length = fx.WdfRequestRetrieveInputBuffer(Request, SENSOR_READING.size)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        attributes = WDF_OBJECT_ATTRIBUTES(ParentObject=Request)
        status, memory = fx.WdfMemoryCreatePreallocated(attributes, reading, SENSOR_READING.size)
        if NT_SUCCESS(status):
            status, mine = fx.WdfRequestCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=self.target), self.target)
        if NT_SUCCESS(status):
            status = fx.WdfIoTargetFormatRequestForInternalIoctl(self.target, mine, IOCTL_INTERNAL_SENSOR_READ,
                                                                 memory, None, None, None)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        fx.WdfRequestSetCompletionRoutine(mine, self.SensorAnswered, (Request, memory))
        if not fx.WdfRequestSend(mine, self.target, None):
            fx.WdfRequestComplete(Request, fx.WdfRequestGetStatus(mine))
            return
        if self.complete_early:
            fx.WdfRequestCompleteWithInformation(Request, NTSTATUS.STATUS_SUCCESS, SENSOR_READING.size)  # the bug

    def SensorAnswered(self, Request, Target, Params, Context):
        fx = self.fx
        original, memory = Context
        answer = bytearray(SENSOR_READING.size)
        fx.WdfMemoryCopyToBuffer(memory, 0, answer, SENSOR_READING.size)  # touches the caller's structure
        self.answers.append(SENSOR_READING.unpack(answer)[1])
        fx.WdfObjectDelete(Request)
        if not self.complete_early:
            fx.WdfRequestCompleteWithInformation(original, Params.IoStatus.Status, Params.IoStatus.Information)
