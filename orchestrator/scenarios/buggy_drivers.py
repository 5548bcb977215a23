"""Small drivers with one bug each, for the built-in bug-reproduction scenarios
(``driver: {class: buggy_drivers.py:NAME}``). Each is the echo sample (samples/echo.py)
with one callback changed the way a real driver gets it wrong; the scenario that loads it
expects the exact finding or bug check the framework's verifier gives for it.
"""

from __future__ import annotations

from framework_emu import NT_SUCCESS, PAGE_SIZE, NTSTATUS
from samples.echo import EchoDriver


class TouchAfterCompleteDriver(EchoDriver):
    """Buffered reads: completes the read, then writes into its output buffer (the
    framework's system buffer, already handed back): BufAfterReqCompletedReadA."""

    def EvtIoRead(self, Queue, Request, Length):
        fx = self.fx
        status, buffer, size = fx.WdfRequestRetrieveOutputBuffer(Request, 1)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        fx.WdfRequestCompleteWithInformation(Request, NTSTATUS.STATUS_SUCCESS, 0)
        fx.RtlZeroMemory(buffer, size)          # the bug: the request is gone


class DeleteThenUseDriver(EchoDriver):
    """Deletes the memory object holding the last write but keeps its handle; the next read
    uses it: a stale WDFMEMORY handle, bug check 0x10D (WDF_VIOLATION, invalid handle)."""

    def EvtIoWrite(self, Queue, Request, Length):
        super().EvtIoWrite(Queue, Request, Length)
        if self.buffer is not None:
            self.fx.WdfObjectDelete(self.buffer)     # the bug: self.buffer still names it


class OverrunDriver(EchoDriver):
    """Direct reads: maps the caller's pages (MmGetSystemAddressForMdlSafe) and writes one
    page more than the request's length: past the mapping, into its guard page, bug check
    0x50 (PAGE_FAULT_IN_NONPAGED_AREA)."""

    def __init__(self) -> None:
        super().__init__(direct_io=True)

    def EvtIoRead(self, Queue, Request, Length):
        fx = self.fx
        status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(Request)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(Request, status)
            return
        address = fx.MmGetSystemAddressForMdlSafe(mdl, 0)
        fx.RtlZeroMemory(address, Length + PAGE_SIZE)     # the bug: Length + a page
        fx.WdfRequestCompleteWithInformation(Request, NTSTATUS.STATUS_SUCCESS, Length)


class ForgetfulDriver(EchoDriver):
    """Keeps every read to answer later, and never does: RequestNeverCompleted when it is
    unloaded (the guest's read then ends ENODEV)."""

    def __init__(self) -> None:
        super().__init__(direct_io=True)
        self.kept: list[int] = []

    def EvtIoRead(self, Queue, Request, Length):
        self.kept.append(Request)               # the bug: nothing ever completes it


class LeakyDriver(EchoDriver):
    """Allocates pool for every write and never frees it: PoolLeakOnUnload when it is
    unloaded, naming where each allocation was made."""

    def EvtIoWrite(self, Queue, Request, Length):
        self.fx.ExAllocatePool2(0x40, 64, b"Leak")     # POOL_FLAG_NON_PAGED; the bug: never freed
        super().EvtIoWrite(Queue, Request, Length)
