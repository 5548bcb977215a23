"""METHOD_NEITHER from user mode: the caller's own buffers, reached in the caller's context.

The framework hands a user-mode METHOD_NEITHER request's pointers to no
queue callback (WdfRequestRetrieveInputBuffer fails). A driver that wants
them registers EvtIoInCallerContext (WdfDeviceInitSetIoInCallerContextCallback):
the I/O manager then gives it every request of the device first, in the
caller's thread (io_manager.py ``_in_caller_context``), where it may read the
raw addresses (WdfRequestRetrieveUnsafeUserInput/OutputBuffer), probe and lock
them into memory objects (WdfRequestProbeAndLockUserBufferForRead/Write) and
put the request back into the queues (WdfDeviceEnqueueRequest), or complete it.

Statuses and checks follow fxrequestapi.cpp, fxrequestkm.cpp (ProbeAndLockFor*)
and fxpkgio.cpp (EnqueueRequest) [S]. What the emulator can lock: the pages
the guest handed over with the request (the output buffer's pinned frames, and
the guest module's copy of the input, see docs/device-abi.md); any other user
address (a pointer inside the input, say) probes as STATUS_ACCESS_VIOLATION,
as an address the emulator cannot see.
"""

from __future__ import annotations

from typing import Any, Callable

from ..callsite import driver_site
from ..core import OUT
from ..device import FX_TYPE_DEVICE
from ..io_request import DeviceRequest, UserPages, _locked_flags
from ..memory import RequestBufferMemory
from ..ntstatus import NTSTATUS
from ..objects import FX_TYPE_REQUEST
from ..request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                       KPROCESSOR_MODE, METHOD_NEITHER)
from .validation import check_size
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE

STATUS_INVALID_USER_BUFFER = 0xC00000E8
_INVALID = NTSTATUS.STATUS_INVALID_DEVICE_REQUEST


class LockedUserMemory(RequestBufferMemory):
    """FxRequestMemory over a probed and locked user buffer: its MDL, its system mapping; a child
    of the request, gone (MDL freed, mapping unmapped after the verifier's quarantine) when the
    request completes."""

    def __init__(self, fx: Any, site: Any, request: DeviceRequest, va: int, length: int, read_only: bool,
                 mdl: Any, user_va: int) -> None:
        RequestBufferMemory.__init__(self, fx, site, request, "locked user", va, length, read_only)
        self.mdl = mdl
        self.user_va = user_va
        self.DESCRIPTION = (f"user buffer 0x{user_va:x}+0x{length:x} locked for "
                            f"{'read' if read_only else 'write'} by WDFREQUEST 0x{request.handle:x}")


class NeitherApi:
    """EvtIoInCallerContext and the calls only it may make."""

    def WdfDeviceInitSetIoInCallerContextCallback(self, DeviceInit: Any,
                                                  EvtIoInCallerContext: Callable[[int, int], Any]) -> None:
        """Every request of the device goes to ``EvtIoInCallerContext(Device, Request)`` first."""
        init = self._init(DeviceInit)
        if EvtIoInCallerContext is None:
            raise self._null("EvtIoInCallerContext")
        init.io_in_caller_context = EvtIoInCallerContext

    def WdfDeviceEnqueueRequest(self, Device: int, Request: int) -> int:
        """FxPkgIo::EnqueueRequest: back into the device's I/O path, to the queue the request was
        bound for (its type's, or the default queue). With the verifier, only from caller
        context and for a driver-owned request (else STATUS_INVALID_DEVICE_REQUEST); no queue:
        STATUS_INVALID_DEVICE_REQUEST (a filter: sent on to the lower driver); a queue that does
        not accept: STATUS_WDF_BUSY. On failure the driver still owns the request."""
        device = self._object(Device, FX_TYPE_DEVICE)
        request = self._device_request(Request, "WdfDeviceEnqueueRequest")
        self._check_dispatch("WdfDeviceEnqueueRequest")
        was_in_caller_context = request.in_caller_context
        if self._verifier_on:
            if not request.in_caller_context:
                self._dbg_break("EnqueueOutsideInCallerContext", "WdfDeviceEnqueueRequest: this call is valid only"
                                f" in EvtIoInCallerContext ({request.describe()})", request, status=_INVALID)
                return _INVALID
            if not self._verify_driver_owned(request, "WdfDeviceEnqueueRequest"):
                return _INVALID
            request.in_caller_context = False
        queue = request.in_caller_queue
        major = request.io.major
        if queue is None:
            queue = device.dispatching.get(major) or device.default_queue
        if device.filter and (queue is None or (queue is device.default_queue and not queue.handles(major))):
            request.forgotten = True     # PreProcessSendAndForget, CallDriver, PostProcessSendAndForget
            request.note("enqueued: sent on to the lower driver", driver_site())
            irp = request.irp
            self._complete(request, NTSTATUS.STATUS_SUCCESS, 0)
            self.io_manager._deliver(irp, device.lower)
            return NTSTATUS.STATUS_SUCCESS
        if queue is None:
            request.in_caller_context = was_in_caller_context
            self._dbg_break("EnqueueWithoutQueue", f"WdfDeviceEnqueueRequest: no queue configured for"
                            f" {request.describe()} on {device.describe()}", request, status=_INVALID)
            return _INVALID
        if not queue.accepting:
            request.in_caller_context = was_in_caller_context
            return NTSTATUS.STATUS_WDF_BUSY
        request.note(f"enqueued to {queue.describe()}", driver_site())
        queue.queue_request(request)
        return NTSTATUS.STATUS_SUCCESS

    # -- the caller's raw addresses ----------------------------------------------------------------

    def _unsafe_request(self, Request: int, call: str) -> DeviceRequest | None:
        """The checks both unsafe retrievals share: IRQL, and (verifier) caller context."""
        request = self._object(Request, FX_TYPE_REQUEST)
        self._check_passive(call)
        if self._verifier_on and not getattr(request, "in_caller_context", False):
            self._dbg_break("UnsafeBufferOutsideInCallerContext", f"{call}: this call is valid only in"
                            f" EvtIoInCallerContext ({request.describe()})", request, status=_INVALID)
            return None
        return request

    def WdfRequestRetrieveUnsafeUserInputBuffer(self, Request: int, RequiredLength: int, *,
                                                InputBuffer: Any = OUT,
                                                Length: Any = OUT) -> tuple[int, int | None, int]:
        """-> (status, buffer, length): a METHOD_NEITHER IOCTL's Type3InputBuffer (a write's
        Irp->UserBuffer on a WdfDeviceIoNeither device). A read or an internal IOCTL:
        STATUS_INVALID_DEVICE_REQUEST; shorter than RequiredLength: STATUS_BUFFER_TOO_SMALL."""
        return self._unsafe_buffer(Request, RequiredLength, "WdfRequestRetrieveUnsafeUserInputBuffer", False)

    def WdfRequestRetrieveUnsafeUserOutputBuffer(self, Request: int, RequiredLength: int, *,
                                                 OutputBuffer: Any = OUT,
                                                 Length: Any = OUT) -> tuple[int, int | None, int]:
        """-> (status, buffer, length): a METHOD_NEITHER IOCTL's Irp->UserBuffer (a read's on a
        WdfDeviceIoNeither device). A write or an internal IOCTL: STATUS_INVALID_DEVICE_REQUEST;
        shorter than RequiredLength: STATUS_BUFFER_TOO_SMALL."""
        return self._unsafe_buffer(Request, RequiredLength, "WdfRequestRetrieveUnsafeUserOutputBuffer", True)

    def _unsafe_buffer(self, Request: int, RequiredLength: int, call: str,
                       output: bool) -> tuple[int, int | None, int]:
        """Both retrievals, in fxrequestapi.cpp's order: IRQL, caller context (verifier), the
        other direction's major and internal IOCTLs refused, then the NEITHER IOCTL (or the
        read/write of a WdfDeviceIoNeither device) with its length; anything else refused (the
        input variant breaks into the debugger: a finding)."""
        check_size(RequiredLength, "RequiredLength")
        request = self._unsafe_request(Request, call)
        if request is None:
            return _INVALID, None, 0
        io = request.io
        wrong, own = (IRP_MJ_WRITE, IRP_MJ_READ) if output else (IRP_MJ_READ, IRP_MJ_WRITE)
        if io.major in (wrong, IRP_MJ_INTERNAL_DEVICE_CONTROL):
            return _INVALID, None, 0
        neither_ioctl = io.major == IRP_MJ_DEVICE_CONTROL and io.method == METHOD_NEITHER
        if neither_ioctl or (io.major == own and self._neither_io(request)):
            length = io.output_length if output else io.input_length
            if length < RequiredLength:
                return NTSTATUS.STATUS_BUFFER_TOO_SMALL, None, 0
            address = getattr(request, "type3_input" if neither_ioctl and not output else "user_buffer", 0)
            return NTSTATUS.STATUS_SUCCESS, address or None, length
        if not output:
            self._dbg_break("UnsafeBufferNotNeither", f"{call}: valid only on a METHOD_NEITHER IOCTL or a write;"
                            f" {request.describe()} is neither", request, status=_INVALID)
        return _INVALID, None, 0

    @staticmethod
    def _neither_io(request: Any) -> bool:
        from ..device import WdfDeviceIoNeither
        device = getattr(request, "device", None)
        return device is not None and device.io_type == WdfDeviceIoNeither

    # -- probe and lock ----------------------------------------------------------------------------

    def WdfRequestProbeAndLockUserBufferForRead(self, Request: int, Buffer: int, Length: int, *,
                                                MemoryObject: Any = OUT) -> tuple[int, int | None]:
        """-> (status, memory): the user buffer locked (read-only memory object, freed when the
        request completes). See :meth:`_probe_and_lock` for the statuses."""
        return self._probe_and_lock(Request, Buffer, Length, False, "WdfRequestProbeAndLockUserBufferForRead")

    def WdfRequestProbeAndLockUserBufferForWrite(self, Request: int, Buffer: int, Length: int, *,
                                                 MemoryObject: Any = OUT) -> tuple[int, int | None]:
        """-> (status, memory): the user buffer locked for writing (writable memory object)."""
        return self._probe_and_lock(Request, Buffer, Length, True, "WdfRequestProbeAndLockUserBufferForWrite")

    def _probe_and_lock(self, Request: int, Buffer: int, Length: int, write: bool,
                        call: str) -> tuple[int, int | None]:
        """FxRequest::ProbeAndLockForRead/Write [S], in order: NULL Buffer (bug check), IRQL, the
        verifier's driver-owned check (STATUS_INVALID_DEVICE_REQUEST), a zero Length
        (STATUS_INVALID_USER_BUFFER), a completed request (STATUS_INVALID_DEVICE_REQUEST), the
        caller's thread for a user-mode request (VerifyProbeAndLock: STATUS_ACCESS_VIOLATION
        outside EvtIoInCallerContext), the probe (an address the request did not bring:
        STATUS_ACCESS_VIOLATION), then the MDL, its system mapping and the memory object."""
        request = self._object(Request, FX_TYPE_REQUEST)
        if Buffer is None or Buffer == 0:
            raise self._null("Buffer")
        length = check_size(Length, "Length")
        self._check_passive(call)
        if not isinstance(request, DeviceRequest):
            return _INVALID, None
        if self._verifier_on and not self._verify_driver_owned(request, call):
            return _INVALID, None
        if length == 0:
            return STATUS_INVALID_USER_BUFFER, None
        if request.completed:
            self._dbg_break("ProbeCompletedRequest", f"{call}: {request.describe()} has already been completed",
                            request, status=_INVALID)
            return _INVALID, None
        if request.io.requestor_mode == KPROCESSOR_MODE.UserMode and not request.in_caller_thread:
            return NTSTATUS.STATUS_ACCESS_VIOLATION, None
        pfns = _frames_of(request, int(Buffer), length)
        if pfns is None:
            return NTSTATUS.STATUS_ACCESS_VIOLATION, None
        site = driver_site()
        mdl = self._mdl_table.allocate(int(Buffer), length, site, _locked_flags(write))
        if mdl is None:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
        mdl.pfn_array()[:len(pfns)] = _array(pfns)
        mdl.caller_frames = True
        va = self.MmGetSystemAddressForMdlSafe(mdl)
        if not va:
            self._mdl_table.free(mdl, site)
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
        memory = LockedUserMemory(self, site, request, va, length, not write, mdl, int(Buffer))
        self._handles.issue(memory)
        request.locked_memories = (*request.locked_memories, memory)
        request.note(f"{call} 0x{int(Buffer):x}+0x{length:x}", site)
        return NTSTATUS.STATUS_SUCCESS, memory.handle


def _frames_of(request: DeviceRequest, va: int, length: int) -> list[int] | None:
    """The page frames behind ``[va, va + length)`` of the caller, if the range lies inside a
    buffer the request brought (its output's pinned pages, its input's pages); else None."""
    for pages in (request.neither_output, request.neither_input):
        if pages is None or not pages.user_va:
            continue
        start = pages.user_va + pages.offset
        if start <= va and va + length <= start + pages.length:
            first = (va - pages.user_va) >> PAGE_SHIFT
            last = (va + length - 1 - pages.user_va) >> PAGE_SHIFT
            return list(pages.pfns[first:last + 1])
    return None


def _array(pfns: list[int]) -> Any:
    from array import array
    return array("Q", pfns)
