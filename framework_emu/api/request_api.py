"""Requests as far as memory goes (fxrequestapi.cpp), and presenting them to the driver."""

from __future__ import annotations

from typing import Any

from ..bugcheck import (WDF_REQUEST_FATAL_ERROR, WDF_REQUEST_FATAL_ERROR_INFORMATION_LENGTH_MISMATCH,
                        WDF_VERIFIER_FATAL_ERROR, WDF_VIOLATION, BugCheck, wdf_violation)
from ..callsite import CallSite, caller_site, driver_site, format_site
from ..core import OUT
from ..errors import ArgumentError
from ..mdl import Mdl
from ..ntstatus import NT_SUCCESS, NTSTATUS
from ..objects import FX_TYPE_REQUEST
from ..request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                       METHOD_BUFFERED, KPROCESSOR_MODE, IoRequest, Request)
from ..verifier import finding_for
from .validation import check_size

MULTIPLE_IRP_COMPLETE_REQUESTS = 0x44


class RequestApi:
    """WdfRequestRetrieve*, WdfRequestComplete*, and the I/O manager side (present_request)."""

    def present_request(self, RequestType: int, *, input_data: bytes = b"", input_length: int | None = None,
                        output_length: int = 0, ioctl_code: int = 0, method: int | None = None,
                        direct: bool = False, requestor_mode: int = KPROCESSOR_MODE.UserMode) -> IoRequest:
        """Play the I/O manager and the queue: build a request with its buffers and hand it
        to the driver. Returns the originator's view; the driver's handle is ``.handle``.

        ``RequestType`` is IRP_MJ_READ / WRITE / DEVICE_CONTROL / INTERNAL_DEVICE_CONTROL;
        the IOCTL transfer method comes from ``ioctl_code`` (its low two bits) unless
        ``method`` is given; ``direct`` selects direct I/O for reads and writes.
        """
        self._require_driver()
        major = int(RequestType)
        if major not in (IRP_MJ_READ, IRP_MJ_WRITE, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL):
            raise ArgumentError("RequestType is IRP_MJ_READ, IRP_MJ_WRITE, IRP_MJ_DEVICE_CONTROL or"
                                " IRP_MJ_INTERNAL_DEVICE_CONTROL", field="RequestType", value=RequestType)
        data = bytes(input_data)
        in_len = len(data) if input_length is None else check_size(input_length, "input_length")
        if in_len < len(data):
            raise ArgumentError("input_length is shorter than input_data", field="input_length", value=in_len)
        check_size(output_length, "output_length")
        if major == IRP_MJ_READ and in_len:
            raise ArgumentError("a read carries no input", field="input_data", value=in_len)
        if major == IRP_MJ_WRITE and output_length:
            raise ArgumentError("a write carries no output", field="output_length", value=output_length)
        ioctl = major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL)
        io = IoRequest(major, in_len, output_length, ioctl_code,
                       (ioctl_code & 3 if method is None else method) if ioctl else METHOD_BUFFERED,
                       bool(direct) and not ioctl, int(requestor_mode))
        site = driver_site()
        request = Request(self, site, io)
        request.tag = self._driver_tag
        if not request.allocate_buffers(data, site):
            io.completed = True
            io.status = NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
            return io
        self._commit(request, None, None, default_parent=False)
        io.handle = request.handle
        return io

    # -- retrieving buffers ---------------------------------------------------------------

    def _request_for_buffer(self, handle: int, out: Any, out_name: str, call: str) -> Request:
        """The retrieval calls' first checks, in fxrequestapi.cpp's order: the handle, the
        NULL output pointer (0x10D/0x4), the IRQL."""
        request = self._object(handle, FX_TYPE_REQUEST)
        if out is None:
            raise self._null(out_name)
        self._check_dispatch(call)
        return request

    def _verify_not_completed(self, request: Request, call: str, rule_prefix: str) -> int:
        """FxRequest::VerifyRequestIsNotCompleted, the first thing GetMemoryObject, GetMdl and
        their output twins do under the verifier: a completed request gives
        STATUS_INTERNAL_ERROR. The emulator reports it as the BufAfterReqCompleted* /
        MemAfterReqCompleted* rule (fatal in bugcheck mode)."""
        if not (request.completed and self._verifier_on):
            return NTSTATUS.STATUS_SUCCESS
        self._verifier.report(finding_for(
            f"{rule_prefix}{request.io.kind}A", "error",
            f"{call} on {request.describe()} after it completed", driver_site(), request,
            status=NTSTATUS.STATUS_INTERNAL_ERROR), fatal=True,
            bugcheck=(WDF_VIOLATION, (WDF_VERIFIER_FATAL_ERROR, request.handle, 0, 0)))
        return NTSTATUS.STATUS_INTERNAL_ERROR

    def _buffer_of(self, request: Request, which: str, call: str, rule_prefix: str,
                   site: CallSite | None = None) -> tuple[int, int, int, bool, str]:
        """(status, va, length, read_only, slot): fxrequestapi.cpp refuses a read's input and a
        write's output (STATUS_INVALID_DEVICE_REQUEST) first; then GetMemoryObject (a read's
        output too) or, for an IOCTL's output, GetDeviceControlOutputMemoryObject. ``site``: the
        driver's call site if the caller has it (a direct request's mapping is made there)."""
        major = request.io.major
        if (which == "input" and major == IRP_MJ_READ) or (which == "output" and major == IRP_MJ_WRITE):
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, 0, 0, False, "system"
        status = self._verify_not_completed(request, call, rule_prefix)
        if status:
            return status, 0, 0, False, "system"
        if which == "output" and request.is_ioctl:
            return (*request.output_buffer(site), "output")
        return (*request.input_buffer(site), "system")

    def _memory_handle(self, request: Request, found: tuple[int, int, int, bool, str],
                       site: CallSite | None = None) -> tuple[int, int | None]:
        status, va, length, read_only, slot = found
        if status:
            return status, None
        label = "output" if slot == "output" or request.io.major == IRP_MJ_READ else "input"
        mem = request.memory_object(slot, label, va, length, read_only, site or driver_site())
        return NTSTATUS.STATUS_SUCCESS, mem.handle

    def _retrieve_memory(self, handle: int, memory_out: Any, call: str, which: str,
                         site: CallSite) -> tuple[int, int | None]:
        """``site``: the driver's call, found once by the entry point for the memory object and a
        direct request's mapping both, rather than walked again from deep inside the mapping."""
        request = self._request_for_buffer(handle, memory_out, "Memory", call)
        return self._memory_handle(request, self._buffer_of(request, which, call, "MemAfterReqCompleted", site),
                                   site)

    def WdfRequestRetrieveInputMemory(self, Request: int, *, Memory: Any = OUT) -> tuple[int, int | None]:
        """-> (status, memory). A read has no input (STATUS_INVALID_DEVICE_REQUEST)."""
        return self._retrieve_memory(Request, Memory, "WdfRequestRetrieveInputMemory", "input", caller_site())

    def WdfRequestRetrieveOutputMemory(self, Request: int, *, Memory: Any = OUT) -> tuple[int, int | None]:
        """-> (status, memory). A write has no output (STATUS_INVALID_DEVICE_REQUEST)."""
        return self._retrieve_memory(Request, Memory, "WdfRequestRetrieveOutputMemory", "output", caller_site())

    def _retrieve_buffer(self, handle: int, minimum: int, buffer_out: Any, call: str,
                         which: str) -> tuple[int, int | None, int | None]:
        request = self._request_for_buffer(handle, buffer_out, "Buffer", call)
        check_size(minimum, "MinimumRequiredSize")
        status, va, length, _read_only, _slot = self._buffer_of(request, which, call, "BufAfterReqCompleted")
        if status:
            return status, None, None
        if length < minimum:
            return NTSTATUS.STATUS_BUFFER_TOO_SMALL, None, None
        return NTSTATUS.STATUS_SUCCESS, va, length

    def WdfRequestRetrieveInputBuffer(self, Request: int, MinimumRequiredSize: int, *,
                                      Buffer: Any = OUT, Length: Any = OUT) -> tuple[int, int | None, int | None]:
        """-> (status, buffer, length); shorter than MinimumRequiredSize: STATUS_BUFFER_TOO_SMALL."""
        return self._retrieve_buffer(Request, MinimumRequiredSize, Buffer, "WdfRequestRetrieveInputBuffer", "input")

    def WdfRequestRetrieveOutputBuffer(self, Request: int, MinimumRequiredSize: int, *,
                                       Buffer: Any = OUT, Length: Any = OUT) -> tuple[int, int | None, int | None]:
        """-> (status, buffer, length); shorter than MinimumRequiredSize: STATUS_BUFFER_TOO_SMALL."""
        return self._retrieve_buffer(Request, MinimumRequiredSize, Buffer, "WdfRequestRetrieveOutputBuffer",
                                     "output")

    def WdfRequestRetrieveInputWdmMdl(self, Request: int, *, Mdl: Any = OUT) -> tuple[int, Mdl | None]:
        """-> (status, mdl), as fxrequestapi.cpp: a read has no input (STATUS_INVALID_DEVICE_REQUEST);
        otherwise FxRequest::GetMdl (see Request.get_mdl)."""
        call = "WdfRequestRetrieveInputWdmMdl"
        request = self._request_for_buffer(Request, Mdl, "Mdl", call)
        if request.io.major == IRP_MJ_READ:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
        status = self._verify_not_completed(request, call, "BufAfterReqCompleted")
        return (status, None) if status else request.get_mdl(driver_site())

    def WdfRequestRetrieveOutputWdmMdl(self, Request: int, *, Mdl: Any = OUT) -> tuple[int, Mdl | None]:
        """-> (status, mdl), as fxrequestapi.cpp: a write has no output (STATUS_INVALID_DEVICE_REQUEST);
        IOCTLs: FxRequest::GetDeviceControlOutputMdl (METHOD_BUFFERED gets an MDL over the system
        buffer); reads: FxRequest::GetMdl."""
        call = "WdfRequestRetrieveOutputWdmMdl"
        request = self._request_for_buffer(Request, Mdl, "Mdl", call)
        if request.io.major == IRP_MJ_WRITE:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
        status = self._verify_not_completed(request, call, "BufAfterReqCompleted")
        if status:
            return status, None
        if request.is_ioctl:
            return request.get_device_control_output_mdl(driver_site())
        return request.get_mdl(driver_site())

    # -- completion ---------------------------------------------------------------------------

    def WdfRequestSetInformation(self, Request: int, Information: int) -> None:
        request = self._object(Request, FX_TYPE_REQUEST)
        request.io.information = check_size(Information, "Information")

    def WdfRequestGetInformation(self, Request: int) -> int:
        return self._object(Request, FX_TYPE_REQUEST).io.information

    def WdfRequestComplete(self, Request: int, Status: int) -> None:
        request = self._object(Request, FX_TYPE_REQUEST)
        self._complete(request, Status, request.io.information, caller_site())

    def WdfRequestCompleteWithInformation(self, Request: int, Status: int, Information: int) -> None:
        request = self._object(Request, FX_TYPE_REQUEST)
        self._complete(request, Status, check_size(Information, "Information"), caller_site())

    def _complete(self, request: Request, status: int, information: int, site: CallSite | None = None) -> None:
        """WdfRequestComplete* in the framework's order (fxrequestapi.cpp VerifyRequestComplete,
        fxrequest.cpp FxRequest::CompleteInternal) [S]:

        1. verifier: a request the driver no longer owns (already completed) is not completed
           again: an error finding, the call returns (VerifyRequestIsDriverOwned);
        2. verifier: success with Information above the buffer length of a read, a write or a
           user-mode IOCTL with an output buffer: 0x10D / WDF_REQUEST_FATAL_ERROR (0x6) /
           INFORMATION_LENGTH_MISMATCH (0x4) (VerifyCompleteInternal);
        3. a WDF facility status becomes a standard NTSTATUS;
        4. the request's children are disposed and destroyed (EarlyDispose, DestroyChildren);
        5. only then, references still held on its buffers: 0x10D/0x3 (P2 request, P3 count);
        6. the IRP completes: the originator gets the data, the buffers go back (to the
           verifier's quarantine first).

        ``site``: the driver's call if the entry point found it (caller_site(): one probe while
        the driver called it directly; a walk materialises a frame object per frame)."""
        self._check_dispatch("WdfRequestComplete")
        site = site or driver_site()
        if request.completed:
            if self._verifier_on:
                self._log(f"WdfRequestComplete: {request.describe()} is not owned by the driver (completed),"
                          f" STATUS_INVALID_DEVICE_REQUEST at {format_site(site)}")
                self._verifier.report(finding_for(
                    "DoubleCompletion", "error", f"{request.describe()} completed a second time: ignored"
                    " (VerifyRequestIsDriverOwned)", site, request,
                    status=NTSTATUS.STATUS_INVALID_DEVICE_REQUEST), fatal=False)
                return
            raise BugCheck(MULTIPLE_IRP_COMPLETE_REQUESTS, (request.handle, 0, 0, 0),
                           f"{request.describe()} completed a second time at {format_site(site)}",
                           details=request.format_history())
        if self._verifier_on:
            self._verify_complete_information(request, status, information, site)
        status = nt_status_for_completion(status)
        io = request.io
        request.completed = True
        request.note("completed", site)
        self._deleting_site = site
        try:
            if request.children:
                for child in list(request.children):
                    child.delete(site)
            if request.irp_references:
                request.completed = False  # the machine stopped here; a test may release and retry
                raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, request.handle, request.irp_references, 0,
                                    f"{request.describe()} completed at {format_site(site)} while its buffers"
                                    f" still hold {request.irp_references} reference(s)",
                                    details=request.format_history())
            io.completed = True
            io.completed_at = site
            io.status = status
            io.information = information
            io.output_data = request.output_for_originator(information)
            for mem in (request.system_memory, request.output_memory):
                if mem is not None:
                    mem.retire_with_request(site)
            request.free_mdls(site)
            if self._verifier_on:
                ranges = request.buffer_ranges()
                request.system_buffer = request.data_buffer = 0
                self._verifier.quarantine(request, ranges, self._pool.free)
            else:
                request.free_buffers()
            request.release()
            if request.completion_hook is not None:  # queues, the I/O manager, the sender above
                request.completion_hook(site)
        finally:
            self._deleting_site = None

    def _verify_complete_information(self, request: Request, status: int, information: int, site: Any) -> None:
        """FxRequest::VerifyCompleteInternal: Information may not exceed the buffer on success."""
        length = request.information_limit()
        if length is None or not NT_SUCCESS(status) or information <= length:
            return
        self._verifier.report(finding_for(
            "RequestInformationLengthMismatch", "error",
            f"{request.describe()} completed with Information 0x{information:x}, more than its buffer length"
            f" 0x{length:x}", site, request), fatal=True,
            bugcheck=(WDF_VIOLATION, (WDF_REQUEST_FATAL_ERROR, WDF_REQUEST_FATAL_ERROR_INFORMATION_LENGTH_MISMATCH,
                                      request.handle, 0)))


_WDF_STATUS_ON_COMPLETION = {
    NTSTATUS.STATUS_WDF_PAUSED: NTSTATUS.STATUS_DEVICE_BUSY,
    NTSTATUS.STATUS_WDF_BUSY: NTSTATUS.STATUS_DEVICE_BUSY,
    NTSTATUS.STATUS_WDF_INTERNAL_ERROR: NTSTATUS.STATUS_INTERNAL_ERROR,
    NTSTATUS.STATUS_WDF_TOO_FRAGMENTED: NTSTATUS.STATUS_INVALID_DEVICE_REQUEST,
    NTSTATUS.STATUS_WDF_TOO_MANY_TRANSFERS: NTSTATUS.STATUS_INVALID_DEVICE_REQUEST,
    NTSTATUS.STATUS_WDF_NOT_ENOUGH_MAP_REGISTERS: NTSTATUS.STATUS_INSUFFICIENT_RESOURCES,
}
FACILITY_DRIVER_FRAMEWORK = 0x20


def nt_status_for_completion(status: int) -> int:
    """FxRequest::CompleteInternal: a status of the framework's facility (0x20) never reaches
    the I/O manager; the known ones map to standard statuses, any other to
    STATUS_INVALID_DEVICE_REQUEST [S]."""
    status = int(status) & 0xFFFFFFFF
    if (status & 0x0FFF0000) != FACILITY_DRIVER_FRAMEWORK << 16:
        return status
    return int(_WDF_STATUS_ON_COMPLETION.get(status, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST))
