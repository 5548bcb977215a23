"""An upper filter over the echo driver: I/O-target sends, synchronous and asynchronous.

- writes: forwarded as they came (WdfRequestFormatRequestUsingCurrentType), with a completion
  routine that counts the bytes the echo driver took and completes the write with its status;
- reads: sent and forgotten (WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET): the echo driver's
  completion goes straight to the guest;
- ``IOCTL_FILTER_PROBE_SYNC``: the filter writes its input to the echo driver and reads it back
  with WdfIoTargetSendWriteSynchronously / SendReadSynchronously (WDF_MEMORY_DESCRIPTORs, a
  timeout) and returns what came back;
- ``IOCTL_FILTER_PROBE_ASYNC``: the same round trip with a request of its own (WdfRequestCreate,
  WdfIoTargetFormatRequestForWrite / ForRead with a memory handle, WdfRequestSend, completion
  routines, WdfRequestGetCompletionParams, WdfRequestReuse);
- ``IOCTL_FILTER_STATS``: the byte count, answered by the filter itself; other IOCTLs pass down
  (the echo driver answers them).
"""

from __future__ import annotations

import struct

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, METHOD_BUFFERED, NT_SUCCESS, NTSTATUS, WDF_DRIVER_CONFIG,
                           WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_MEMORY_DESCRIPTOR_INIT_BUFFER,
                           WDF_OBJECT_ATTRIBUTES, WDF_REL_TIMEOUT_IN_MS, WDF_REQUEST_REUSE_PARAMS,
                           WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET, WDF_REQUEST_SEND_OPTIONS_INIT,
                           WDF_REQUEST_SEND_OPTIONS_SET_TIMEOUT, PoolType, WdfIoQueueDispatchParallel)

IOCTL_FILTER_STATS = CTL_CODE(0x22, 0x810, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_FILTER_PROBE_SYNC = CTL_CODE(0x22, 0x811, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_FILTER_PROBE_ASYNC = CTL_CODE(0x22, 0x812, METHOD_BUFFERED, FILE_ANY_ACCESS)
FILTER_TAG = b"Filt"


class EchoFilterDriver:
    fx = None

    def __init__(self) -> None:
        self.bytes_written = 0
        self.completions: list[tuple[int, int]] = []   # (status, information) seen by the write routine
        self.device = None
        self.target = None
        self.async_state: dict = {}

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfFdoInitSetFilter(DeviceInit)
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoWrite = self.EvtIoWrite
        config.EvtIoRead = self.EvtIoRead
        config.EvtIoDeviceControl = self.EvtIoDeviceControl
        status, _queue = fx.WdfIoQueueCreate(self.device, config, None)
        self.target = fx.WdfDeviceGetIoTarget(self.device)
        return status

    # -- pass-through ---------------------------------------------------------------------------

    def EvtIoWrite(self, Queue, Request, Length):
        fx = self.fx
        fx.WdfRequestFormatRequestUsingCurrentType(Request)
        fx.WdfRequestSetCompletionRoutine(Request, self.WriteCompleted, None)
        if not fx.WdfRequestSend(Request, self.target, None):
            fx.WdfRequestComplete(Request, fx.WdfRequestGetStatus(Request))

    def WriteCompleted(self, Request, Target, Params, Context):
        status, information = Params.IoStatus.Status, Params.IoStatus.Information
        self.completions.append((status, information))
        if NT_SUCCESS(status):
            self.bytes_written += information
        self.fx.WdfRequestCompleteWithInformation(Request, status, information)

    def EvtIoRead(self, Queue, Request, Length):
        fx = self.fx
        options = WDF_REQUEST_SEND_OPTIONS_INIT(WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET)
        if not fx.WdfRequestSend(Request, self.target, options):
            fx.WdfRequestComplete(Request, fx.WdfRequestGetStatus(Request))

    # -- IOCTLs -------------------------------------------------------------------------------------

    def EvtIoDeviceControl(self, Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode):
        fx = self.fx
        if IoControlCode == IOCTL_FILTER_STATS:
            status, out, _ = fx.WdfRequestRetrieveOutputBuffer(Request, 8)
            if NT_SUCCESS(status):
                fx.RtlCopyMemory(out, struct.pack("<Q", self.bytes_written), 8)
            fx.WdfRequestCompleteWithInformation(Request, status, 8 if NT_SUCCESS(status) else 0)
        elif IoControlCode == IOCTL_FILTER_PROBE_SYNC:
            self._probe_sync(Request, InputBufferLength)
        elif IoControlCode == IOCTL_FILTER_PROBE_ASYNC:
            self._probe_async(Request, InputBufferLength)
        else:
            fx.WdfRequestFormatRequestUsingCurrentType(Request)
            if not fx.WdfRequestSend(Request, self.target, WDF_REQUEST_SEND_OPTIONS_INIT(
                    WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET)):
                fx.WdfRequestComplete(Request, fx.WdfRequestGetStatus(Request))

    def _probe_sync(self, Request, length):
        fx = self.fx
        status, inp, _ = fx.WdfRequestRetrieveInputBuffer(Request, 1)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        status, scratch, address = fx.WdfMemoryCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=Request),
                                                       PoolType.NonPagedPoolNx, FILTER_TAG, length)
        fx.RtlCopyMemory(address, fx.read(inp, length), length)
        options = WDF_REQUEST_SEND_OPTIONS_INIT()
        WDF_REQUEST_SEND_OPTIONS_SET_TIMEOUT(options, WDF_REL_TIMEOUT_IN_MS(100))
        status, written = fx.WdfIoTargetSendWriteSynchronously(
            self.target, None, WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(address, length), None, options)
        if NT_SUCCESS(status):
            fx.RtlZeroMemory(address, length)
            status, read = fx.WdfIoTargetSendReadSynchronously(
                self.target, None, WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(address, length), None, options)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        status, out, _ = fx.WdfRequestRetrieveOutputBuffer(Request, read)
        if NT_SUCCESS(status):
            fx.RtlCopyMemory(out, address, read)
        fx.WdfRequestCompleteWithInformation(Request, status, read if NT_SUCCESS(status) else 0)

    def _probe_async(self, Request, length):
        fx = self.fx
        status, inp, _ = fx.WdfRequestRetrieveInputBuffer(Request, 1)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        attributes = WDF_OBJECT_ATTRIBUTES(ParentObject=Request)
        status, mine = fx.WdfRequestCreate(attributes, self.target)
        if NT_SUCCESS(status):
            status, memory, address = fx.WdfMemoryCreate(attributes, PoolType.NonPagedPoolNx, FILTER_TAG, length)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        fx.RtlCopyMemory(address, fx.read(inp, length), length)
        self.async_state = {"original": Request, "memory": memory}
        fx.WdfIoTargetFormatRequestForWrite(self.target, mine, memory, None, None)
        fx.WdfRequestSetCompletionRoutine(mine, self.ProbeWritten, None)
        if not fx.WdfRequestSend(mine, self.target, None):
            fx.WdfRequestComplete(Request, fx.WdfRequestGetStatus(mine))

    def ProbeWritten(self, Request, Target, Params, Context):
        fx = self.fx
        state = self.async_state
        if not NT_SUCCESS(Params.IoStatus.Status):
            fx.WdfRequestComplete(state["original"], Params.IoStatus.Status)
            return
        fx.WdfRequestReuse(Request, WDF_REQUEST_REUSE_PARAMS(Status=NTSTATUS.STATUS_SUCCESS))
        address, size = fx.WdfMemoryGetBuffer(state["memory"])
        fx.RtlZeroMemory(address, size)
        fx.WdfIoTargetFormatRequestForRead(Target, Request, state["memory"], None, None)
        fx.WdfRequestSetCompletionRoutine(Request, self.ProbeRead, None)
        if not fx.WdfRequestSend(Request, Target, None):
            fx.WdfRequestComplete(state["original"], fx.WdfRequestGetStatus(Request))

    def ProbeRead(self, Request, Target, Params, Context):
        fx = self.fx
        original = self.async_state["original"]
        params = fx.WdfRequestGetCompletionParams(Request)
        status, count = params.IoStatus.Status, params.IoStatus.Information
        if NT_SUCCESS(status):
            _, out_memory = fx.WdfRequestRetrieveOutputMemory(original)
            address, _ = fx.WdfMemoryGetBuffer(self.async_state["memory"])
            status = fx.WdfMemoryCopyFromBuffer(out_memory, 0, address, count)
        self.async_state = {}
        fx.WdfRequestCompleteWithInformation(original, status, count if NT_SUCCESS(status) else 0)
