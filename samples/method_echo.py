"""The echo sample plus one echo IOCTL per transfer method: what a guest program needs to
exercise METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT and METHOD_NEITHER on one driver.

The codes are the device model's (``device_model.request_echo.IOCTL_ECHO``), by name here so a
scenario writes ``code: IOCTL_ECHO_OUT_DIRECT``. Input comes back as output; METHOD_IN_DIRECT
has the driver read the "output" pages (kept in ``in_direct``); METHOD_NEITHER from user mode
gets no buffer from the framework, so the driver completes it STATUS_INVALID_DEVICE_REQUEST,
as on Windows without EvtIoInCallerContext.
"""

from __future__ import annotations

from device_model.abi import TransferMethod
from device_model.request_echo import IOCTL_ECHO
from framework_emu import NT_SUCCESS, PAGE_SIZE
from samples.echo import IOCTL_ECHO_REVERSE, EchoDriver

IOCTL_ECHO_BUFFERED = IOCTL_ECHO[TransferMethod.BUFFERED]
IOCTL_ECHO_IN_DIRECT = IOCTL_ECHO[TransferMethod.IN_DIRECT]
IOCTL_ECHO_OUT_DIRECT = IOCTL_ECHO[TransferMethod.OUT_DIRECT]
IOCTL_ECHO_NEITHER = IOCTL_ECHO[TransferMethod.NEITHER]

__all__ = ["MethodEchoDriver", "IOCTL_ECHO_BUFFERED", "IOCTL_ECHO_IN_DIRECT", "IOCTL_ECHO_OUT_DIRECT",
           "IOCTL_ECHO_NEITHER", "IOCTL_ECHO_REVERSE"]


class MethodEchoDriver(EchoDriver):
    """The echo sample plus one echo IOCTL per transfer method (the device model's codes):
    input -> output; METHOD_IN_DIRECT: the driver reads the "output" pages (kept in
    ``in_direct``); METHOD_NEITHER: whatever the framework gives a user-mode caller.
    ``mdls``: (major, PFNs, ByteOffset, ByteCount, MmGetMdlVirtualAddress) of every direct
    buffer it was given, as a driver handing it to DMA would see it."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.in_direct = b""
        self.statuses: dict[int, int] = {}
        self.mdls: list[tuple[str, list[int], int, int, int]] = []

    def _record_mdl(self, Request, what: str, retrieve) -> None:
        fx = self.fx
        status, mdl = retrieve(Request)
        if not NT_SUCCESS(status) or mdl is None:
            return
        offset, count = fx.MmGetMdlByteOffset(mdl), fx.MmGetMdlByteCount(mdl)
        pages = (offset + count + PAGE_SIZE - 1) // PAGE_SIZE
        self.mdls.append((what, list(fx.MmGetMdlPfnArray(mdl)[:pages]), offset, count,
                          fx.MmGetMdlVirtualAddress(mdl)))

    def EvtIoWrite(self, Queue, Request, Length):
        if self.direct_io:
            self._record_mdl(Request, "write", self.fx.WdfRequestRetrieveInputWdmMdl)
        super().EvtIoWrite(Queue, Request, Length)

    def EvtIoRead(self, Queue, Request, Length):
        if self.direct_io:
            self._record_mdl(Request, "read", self.fx.WdfRequestRetrieveOutputWdmMdl)
        super().EvtIoRead(Queue, Request, Length)

    def EvtIoDeviceControl(self, Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode):
        if IoControlCode not in IOCTL_ECHO.values():
            super().EvtIoDeviceControl(Queue, Request, OutputBufferLength, InputBufferLength, IoControlCode)
            return
        fx = self.fx
        if IoControlCode & 3 in (TransferMethod.IN_DIRECT, TransferMethod.OUT_DIRECT):
            self._record_mdl(Request, "ioctl", fx.WdfRequestRetrieveOutputWdmMdl)
        if IoControlCode & 3 == TransferMethod.IN_DIRECT:
            status, memory = fx.WdfRequestRetrieveOutputMemory(Request)
            data = bytearray(OutputBufferLength)
            if NT_SUCCESS(status):
                status = fx.WdfMemoryCopyToBuffer(memory, 0, data, OutputBufferLength)
            self.in_direct = bytes(data)
            self._done(Request, IoControlCode, status, OutputBufferLength)
            return
        status, memory = fx.WdfRequestRetrieveInputMemory(Request)
        if not NT_SUCCESS(status):       # METHOD_NEITHER from user mode: no buffer for anyone
            self._done(Request, IoControlCode, status, 0)
            return
        data = bytearray(InputBufferLength)
        status = fx.WdfMemoryCopyToBuffer(memory, 0, data, InputBufferLength)
        count = min(InputBufferLength, OutputBufferLength)
        if NT_SUCCESS(status):
            status, out = fx.WdfRequestRetrieveOutputMemory(Request)
        if NT_SUCCESS(status):
            status = fx.WdfMemoryCopyFromBuffer(out, 0, bytes(data[:count]), count)
        self._done(Request, IoControlCode, status, count if NT_SUCCESS(status) else 0)

    def _done(self, Request, code, status, information):
        self.statuses[code] = status
        self.fx.WdfRequestCompleteWithInformation(Request, status, information)
