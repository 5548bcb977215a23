"""Requests that travel through devices: the IRP, its WDFREQUESTs, their parameters.

:class:`Irp` is the packet as the I/O manager sees it: who sent it (the
guest, through :class:`IoManager.submit`, or a driver through an I/O
target), whether it was cancelled, and which stack locations hold it now.
Every device the packet reaches gets its own WDFREQUEST over the same
buffers (:class:`DeviceRequest`), as every KMDF driver in a stack gets its
own FxRequest over its own IRP stack location.

Buffers are the originator's: a buffered request's system buffer is the
guest's kernel buffer (its direct-map address); a direct request's MDL
lists the guest caller's page frames and the framework maps them into
system-PTE space (MmGetSystemAddressForMdlSafe) for the driver. The
emulated framework owns neither, so nothing goes back to a pool at
completion; with the verifier on, the ranges are quarantined instead so a
driver touching them afterwards is caught (BufAfterReqCompleted*).
"""

from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .callsite import CallSite, format_site
from .ntstatus import NTSTATUS
from .system_ptes import SYSTEM_PTE_BASE
from .mdl import MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED, MDL_WRITE_OPERATION, Mdl
from .request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                      METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_NEITHER, METHOD_OUT_DIRECT, IoRequest, Request)
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from .device import Device, FileObject
    from .io_manager import IoOperation
    from .queue import IoQueue

IRP_MJ_CREATE = 0x00
IRP_MJ_CLOSE = 0x02
IRP_MJ_CLEANUP = 0x12
MAJOR_NAMES = {IRP_MJ_CREATE: "IRP_MJ_CREATE", IRP_MJ_CLOSE: "IRP_MJ_CLOSE", IRP_MJ_READ: "IRP_MJ_READ",
               IRP_MJ_WRITE: "IRP_MJ_WRITE", IRP_MJ_DEVICE_CONTROL: "IRP_MJ_DEVICE_CONTROL",
               IRP_MJ_INTERNAL_DEVICE_CONTROL: "IRP_MJ_INTERNAL_DEVICE_CONTROL", IRP_MJ_CLEANUP: "IRP_MJ_CLEANUP"}

STATUS_PENDING = NTSTATUS.STATUS_PENDING
STATUS_CANCELLED = NTSTATUS.STATUS_CANCELLED
STATUS_NO_MORE_ENTRIES = NTSTATUS.STATUS_NO_MORE_ENTRIES
STATUS_WDF_PAUSED = NTSTATUS.STATUS_WDF_PAUSED
STATUS_WDF_BUSY = NTSTATUS.STATUS_WDF_BUSY
STATUS_IO_TIMEOUT = NTSTATUS.STATUS_IO_TIMEOUT
STATUS_NOT_FOUND = NTSTATUS.STATUS_NOT_FOUND
STATUS_NO_SUCH_DEVICE = NTSTATUS.STATUS_NO_SUCH_DEVICE
STATUS_DEVICE_NOT_READY = NTSTATUS.STATUS_DEVICE_NOT_READY
STATUS_WDF_NO_CALLBACK = NTSTATUS.STATUS_WDF_NO_CALLBACK
STATUS_OBJECT_NAME_NOT_FOUND = NTSTATUS.STATUS_OBJECT_NAME_NOT_FOUND
STATUS_INVALID_DEVICE_STATE = NTSTATUS.STATUS_INVALID_DEVICE_STATE
STATUS_WDF_REQUEST_INVALID_STATE = NTSTATUS.STATUS_WDF_REQUEST_INVALID_STATE
STATUS_TIMEOUT = NTSTATUS.STATUS_TIMEOUT


def transfer_method(major: int, ioctl_code: int, direct_io: bool) -> str:
    """"buffered", "direct" or "neither" for a request of this kind on a device with this I/O type."""
    if major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL):
        return {METHOD_BUFFERED: "buffered", METHOD_IN_DIRECT: "direct", METHOD_OUT_DIRECT: "direct",
                METHOD_NEITHER: "neither"}[ioctl_code & 3]
    if major in (IRP_MJ_READ, IRP_MJ_WRITE):
        return "direct" if direct_io else "buffered"
    return "buffered"


@dataclass(frozen=True)
class SystemBuffer:
    """A physically contiguous kernel buffer of the guest (buffered I/O), by guest-physical address."""

    gpa: int
    size: int


@dataclass(frozen=True)
class UserPages:
    """The guest caller's locked pages (direct I/O): frames in order, the offset into the first,
    the byte count, and the caller's user virtual address (what MmGetMdlVirtualAddress shows)."""

    pfns: tuple[int, ...]
    offset: int
    length: int
    user_va: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pfns", tuple(map(int, self.pfns)))


class WDF_REQUEST_STOP_ACTION_FLAGS(enum.IntFlag):
    WdfRequestStopActionInvalid = 0
    WdfRequestStopActionSuspend = 0x01
    WdfRequestStopActionPurge = 0x2
    WdfRequestStopRequestCancelable = 0x10000000


@dataclass
class WDF_REQUEST_PARAMETERS:
    """WdfRequestGetParameters: Type and the arm of Parameters for that type, flattened."""

    Type: int = 0
    MinorFunction: int = 0
    Length: int = 0                 # Read / Write
    Key: int = 0
    DeviceOffset: int = 0
    OutputBufferLength: int = 0     # DeviceIoControl
    InputBufferLength: int = 0
    IoControlCode: int = 0
    Type3InputBuffer: int = 0


@dataclass
class IO_STATUS_BLOCK:
    Status: int = 0
    Information: int = 0


@dataclass
class WDF_REQUEST_COMPLETION_PARAMS:
    """What a sent request came back with (WdfRequestGetCompletionParams)."""

    Type: int = 0
    IoStatus: IO_STATUS_BLOCK = field(default_factory=IO_STATUS_BLOCK)
    Buffer: int | None = None       # Read/Write: the memory handle sent; Ioctl: Output
    Length: int = 0
    Offset: int = 0
    Input: int | None = None
    Output: int | None = None
    IoControlCode: int = 0


class Irp:
    """The packet: its originator, cancel flag, and the WDFREQUESTs that hold it, top first."""

    def __init__(self, major: int, *, originator: "IoOperation | None" = None) -> None:
        self.major = major
        self.originator = originator
        self.cancel = False
        self.stack: list["DeviceRequest"] = []

    def describe(self) -> str:
        return MAJOR_NAMES.get(self.major, f"IRP_MJ_0x{self.major:x}")


class DeviceRequest(Request):
    """A WDFREQUEST a device received: from the guest, or from the driver above it.

    The framework owns it while it sits in a queue; the driver owns it from
    presentation (or WdfIoQueueRetrieveNextRequest) until it completes it,
    forwards it to another queue, requeues it, or sends it on.
    """

    borrowed_buffers = True
    top_of_irp = False           # the guest's (the I/O manager's) own request: its system buffer is the IRP's
    mapping_va = 0               # system-PTE mapping of this request's MDL
    mapping_size = 0
    # Defaults every request starts with, kept on the class: an instance sets its own when it
    # changes one (one request per guest I/O: ~20 assignments and two dataclasses less each).
    queue: "IoQueue | None" = None
    owner = "framework"          # framework (in a queue) / driver / sent / completed
    presented_in: "str | Presentation | None" = None  # "EvtIoRead of WDFQUEUE 0x... (driver.py:42)"
    presentations = 0
    cancel_routine: Callable[[int], Any] | None = None
    cancel_called = False
    in_stop_callback = False
    stop_acknowledged = False
    double_buffer: tuple[int, int, int] | None = None  # (pool va, length, copy back to va)
    byte_offset = 0
    sender: "Request | None" = None   # the request of the driver above that was sent here
    # as a sender itself (forwarded or reformatted to an I/O target)
    formatted: tuple | None = None
    completion_routine: Callable[..., Any] | None = None
    completion_context: Any = None
    send_status: int | None = None
    send_done = False
    target: Any = None
    send_irp: Irp | None = None

    def __init__(self, fx: Any, site: CallSite | None, io: IoRequest, irp: Irp, device: "Device",
                 file: "FileObject | None") -> None:
        Request.__init__(self, fx, site, io)
        self.irp = irp
        self.device = device
        self.file = file

    @property
    def completion_params(self) -> WDF_REQUEST_COMPLETION_PARAMS:
        """WdfRequestGetCompletionParams' record, made when first needed (a sent request)."""
        params = self.__dict__.get("_completion_params")
        if params is None:
            params = self._completion_params = WDF_REQUEST_COMPLETION_PARAMS()
        return params

    @completion_params.setter
    def completion_params(self, params: WDF_REQUEST_COMPLETION_PARAMS) -> None:
        self._completion_params = params

    @property
    def referenced(self) -> list[Any]:
        """Memory objects formatting referenced (released when the request is reused or goes)."""
        refs = self.__dict__.get("_referenced")
        if refs is None:
            refs = self._referenced = []
        return refs

    @referenced.setter
    def referenced(self, refs: list[Any]) -> None:
        self._referenced = refs

    # -- buffers --------------------------------------------------------------------------

    def attach_guest_buffers(self, system: SystemBuffer | None, pages: UserPages | None, site: CallSite | None,
                             device_writes: bool, input_pages: UserPages | None = None) -> bool:
        """The IRP's buffers as the guest's kernel module handed them over. METHOD_NEITHER from
        user mode: no system buffer and no MDL reach the driver, only the caller's addresses
        (Type3InputBuffer, Irp->UserBuffer); the pages behind them are kept for
        WdfRequestProbeAndLockUserBufferFor* (neither_api.py)."""
        fx = self.fx
        if self.user_neither:
            self.neither_input, self.neither_output = input_pages, pages
            self.type3_input = _first_byte_va(input_pages)
            self.user_buffer = _first_byte_va(pages)
            return True
        if system is not None:
            self.system_buffer = fx.gpa_to_va(system.gpa)
            self.system_buffer_size = system.size
            self.system_buffer_saved = (self.system_buffer, system.size)
        if pages is not None:
            mdl = fx._mdl_table.allocate(pages.user_va + pages.offset if pages.user_va else
                                         _SYNTHETIC_USER_VA + pages.offset, pages.length, site,
                                         _locked_flags(device_writes))
            if mdl is None:
                return False
            count = mdl.pages
            mdl.pfn_array()[:count] = array("Q", pages.pfns[:count])
            self._adopt_mdl(mdl)
        return True

    def attach_frames(self, va: int, length: int, site: CallSite | None, device_writes: bool) -> bool:
        """An MDL over the frames behind ``va`` (a buffer of the driver above), for direct I/O."""
        fx = self.fx
        mdl = fx._mdl_table.allocate(va, length, site, _locked_flags(device_writes))
        if mdl is None:
            return False
        pfns = mdl.pfn_array()
        first = va & ~(PAGE_SIZE - 1)
        if fx._system_ptes.holds(va):
            for i, pfn in enumerate(fx._system_ptes.pfns_of(va, length)):
                pfns[i] = pfn
        else:
            for i in range(mdl.pages):
                pfns[i] = fx.va_to_gpa(first + (i << PAGE_SHIFT)) >> PAGE_SHIFT
        self._adopt_mdl(mdl)
        return True

    def _adopt_mdl(self, mdl: Mdl) -> None:
        """The MDL (allocated with :func:`_locked_flags`) is the request's; it is mapped only
        when the driver asks for a buffer or memory (FxRequest::GetMemoryObject), never for a
        driver that only hands the MDL to DMA."""
        mdl.caller_frames = True
        self.mdl = mdl
        self.own_mdl = mdl  # WdfRequestComplete drops .mdl before the completion hook runs

    own_mdl: Mdl | None = None

    def _map_data(self, site: CallSite | None = None) -> bool:
        """MmGetSystemAddressForMdlSafe on first use, the mapping made at the driver's ``site``
        (None: looked up); False if the mapping fails."""
        if self.data_buffer or self.mdl is None:
            return True
        va = self.fx._system_address_for_mdl(self.mdl, site)
        if not va:
            return False
        self.data_buffer = va
        self.data_buffer_size = self.mdl.ByteCount
        if va >= SYSTEM_PTE_BASE and not self.mapping_va:
            self.mapping_va = va
            self.mapping_size = self.mdl.ByteCount
        return True

    def input_buffer(self, site: CallSite | None = None) -> tuple[int, int, int, bool]:
        if self.mdl is not None and not self.is_ioctl and not self._map_data(site):
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, 0, 0, False
        return Request.input_buffer(self)

    def output_buffer(self, site: CallSite | None = None) -> tuple[int, int, int, bool]:
        if self.mdl is not None and self.io.output_length and not self._map_data(site):
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, 0, 0, False
        return Request.output_buffer(self)

    def output_for_originator(self, information: int) -> bytes:
        """Nothing to copy back: the data is in the originator's own memory already."""
        return b""

    def buffer_ranges(self) -> list[tuple[int, int]]:
        """Nothing here came from this framework's pool (see _completed for the quarantine)."""
        return []

    def free_buffers(self) -> None:
        """Only the MDLs are this request's (the buffers are the originator's)."""
        self.free_mdls(None)

    def free_mdls(self, site: CallSite | None) -> None:
        """The IRP's MDLs, and those ProbeAndLock built (FxRequestMemory's, freed with it)."""
        Request.free_mdls(self, site)
        for memory in self.locked_memories:
            if memory.mdl is not None:
                self.fx._mdl_table.free(memory.mdl, site)
                memory.mdl = None

    # -- what the driver sees ---------------------------------------------------------------

    def parameters(self) -> WDF_REQUEST_PARAMETERS:
        io = self.io
        params = WDF_REQUEST_PARAMETERS(Type=io.major)
        if io.major == IRP_MJ_READ:
            params.Length = io.output_length
            params.DeviceOffset = self.byte_offset
        elif io.major == IRP_MJ_WRITE:
            params.Length = io.input_length
            params.DeviceOffset = self.byte_offset
        elif self.is_ioctl:
            params.OutputBufferLength = io.output_length
            params.InputBufferLength = io.input_length
            params.IoControlCode = io.ioctl_code
            if io.method == METHOD_NEITHER:
                params.Type3InputBuffer = self.type3_input or self.system_buffer
        return params

    def where_presented(self) -> str:
        return str(self.presented_in) if self.presented_in else "never presented (still in a queue)"

    # -- completion -------------------------------------------------------------------------

    def _completed(self, site: CallSite | None) -> None:
        """Called by WdfRequestComplete after the framework's own completion work."""
        fx = self.fx
        self.owner = "completed"
        if self.cancel_routine is not None and not self.cancel_called:
            self.cancel_routine = None
            fx._dbg_break("CompleteCancelableRequest",
                          f"completing {self.describe()} while it is still cancelable: a race that can complete it"
                          " twice; call WdfRequestUnmarkCancelable first (FxRequest::VerifyCompleteInternal)", self)
        ranges = []
        mdl = self.own_mdl
        if (not self.mapping_va and mdl is not None and mdl.MdlFlags & MDL_MAPPED_TO_SYSTEM_VA
                and mdl.MappedSystemVa >= SYSTEM_PTE_BASE):  # the driver mapped it itself
            self.mapping_va, self.mapping_size = mdl.MappedSystemVa, mdl.ByteCount
        self.own_mdl = None
        if self.mapping_va:
            ranges.append((self.mapping_va, self.mapping_size))
        for memory in self.locked_memories:     # WdfRequestProbeAndLockUserBufferFor*
            memory.retire_with_request(site)
            ranges.append((memory.buffer, memory.size))
        if self.top_of_irp and self.system_buffer_saved:
            ranges.append(self.system_buffer_saved)
        if fx._verifier_on and ranges:
            fx._verifier.quarantine(self, ranges, self._release_range)
        else:
            for va, _size in ranges:
                self._release_range(va)
        if self.double_buffer is not None:
            pool_va, length, back = self.double_buffer
            self.double_buffer = None
            self.sender_fx._write(back, fx._read(pool_va, min(length, self.io.information)))
            self.sender_fx._pool.free(pool_va)
        fx.io_manager._request_completed(self, site)

    # WdfRequestComplete's hook, bound when called: a bound method stored in every request
    # would be one more object and a reference cycle for the collector, per guest I/O request
    completion_hook = _completed

    system_buffer_saved: tuple[int, int] | None = None
    sender_fx: Any = None
    # METHOD_NEITHER from user mode (attach_guest_buffers) and caller context (neither_api.py)
    neither_input: UserPages | None = None     # the pages behind Type3InputBuffer
    neither_output: UserPages | None = None    # the pages behind Irp->UserBuffer
    type3_input = 0                            # the caller's input address
    user_buffer = 0                            # Irp->UserBuffer: the caller's output address
    in_caller_context = False                  # FXREQUEST_FLAG_DRIVER_INPROCESS_CONTEXT (verifier)
    in_caller_thread = False                   # running in the caller's thread (EvtIoInCallerContext)
    in_caller_queue: "IoQueue | None" = None   # where WdfDeviceEnqueueRequest puts it
    locked_memories: tuple = ()                # the memory objects ProbeAndLock made (freed at completion)

    def _release_range(self, va: int) -> None:
        if va == self.mapping_va:
            self.fx._system_ptes.unmap(va, self.io.completed_at)
            return
        for memory in self.locked_memories:
            if va == memory.buffer:
                self.fx._system_ptes.unmap(va, self.io.completed_at)
                return

    def format_presented(self) -> str:
        return f"{self.describe()} presented in {self.where_presented()}"


def _first_byte_va(pages: UserPages | None) -> int:
    """The caller's address of the first byte of ``pages`` (0: none, or no address given)."""
    if pages is None or not pages.user_va:
        return 0
    return pages.user_va + pages.offset


def _locked_flags(device_writes: bool) -> int:
    """MdlFlags of an MDL over locked caller pages (the device writes them for a read)."""
    return MDL_PAGES_LOCKED | (MDL_WRITE_OPERATION if device_writes else 0)


_SYNTHETIC_USER_VA = 0x0000_7FF7_0000_0000  # where guest user buffers "live" when the runtime gives no VA


def site_of_callback(callback: Callable[..., Any]) -> CallSite | None:
    """The driver's source line of a callback function (where it was presented)."""
    func = getattr(callback, "__func__", callback)
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    return (code.co_filename, code.co_firstlineno)


def describe_callback(name: str, callback: Callable[..., Any], where: str) -> str:
    return f"{name} of {where} ({format_site(site_of_callback(callback))})"


class CallbackOf:
    """"EvtIoRead of WDFQUEUE 0x... (ECHO)": which callback of which object a dispatcher call
    (its ``what``) or a presentation is, kept as its parts and made into text only when a
    message shows it. Every request is presented; its text almost never read (building it
    each time was ~3% of a 4 KiB read)."""

    __slots__ = ("name", "holder")

    def __init__(self, name: str, holder: Any) -> None:
        self.name = name
        self.holder = holder           # anything with describe(): a queue, a device

    def __str__(self) -> str:
        return f"{self.name} of {self.holder.describe()}"


class Presentation(CallbackOf):
    """The callback a request was presented to, with its driver file:line (``where_presented``)."""

    __slots__ = ("callback",)

    def __init__(self, name: str, callback: Callable[..., Any], holder: Any) -> None:
        CallbackOf.__init__(self, name, holder)
        self.callback = callback

    def __str__(self) -> str:
        return describe_callback(self.name, self.callback, self.holder.describe())
