"""I/O targets (WDFIOTARGET) and the requests a driver sends through them (fxiotarget.cpp).

As the framework's "Using Memory Buffers" describes: synchronous sends
take WDF_MEMORY_DESCRIPTORs, asynchronous sends take memory handles (with
offsets) formatted into a request. Either way the next driver receives its
own WDFREQUEST over the sender's buffers (io_request.DeviceRequest): a
buffered device gets the buffer itself as its system buffer, a direct one
an MDL over its frames (mapped into system-PTE space for it), METHOD_NEITHER
the raw addresses. A METHOD_BUFFERED IOCTL with distinct input and output
buffers goes through one intermediate buffer from the sender's pool, copied
back at completion, as FxIoContext's double buffering does.

When the next driver completes, the sender's completion routine runs
synchronously, at the IRQL of that completion (IoCompleteRequest calls
completion routines on the completing thread), with
WDF_REQUEST_COMPLETION_PARAMS (FxRequestBase::CompleteSubmitted). A
request sent without a completion routine just comes back: nothing
completes it on the driver's behalf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .callsite import CallSite
from .io_request import (IO_STATUS_BLOCK, WDF_REQUEST_COMPLETION_PARAMS, DeviceRequest, Irp)
from .ntstatus import NTSTATUS
from .objects import FX_TYPE_OBJECT, FxObject
from .pool import PoolType
from .request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                      METHOD_BUFFERED, IoRequest, Request)

if TYPE_CHECKING:
    from .device import Device, DeviceStack

FX_TYPE_IO_TARGET = 0x1200
FX_TYPE_IO_TARGET_REMOTE = 0x1201

WDF_REQUEST_SEND_OPTION_TIMEOUT = 0x00000001
WDF_REQUEST_SEND_OPTION_IGNORE_TARGET_STATE = 0x00000002
WDF_REQUEST_SEND_OPTION_SYNCHRONOUS = 0x00000004
WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET = 0x00000008
SIZEOF_WDF_REQUEST_SEND_OPTIONS = 0x10
DOUBLE_BUFFER_TAG = b"FxIC"


@dataclass
class WDF_REQUEST_SEND_OPTIONS:
    Flags: int = 0
    Timeout: int = 0   # 100-ns units; negative: relative (WDF_REL_TIMEOUT_IN_MS)
    Size: int = SIZEOF_WDF_REQUEST_SEND_OPTIONS


def WDF_REQUEST_SEND_OPTIONS_INIT(Flags: int = 0) -> WDF_REQUEST_SEND_OPTIONS:
    return WDF_REQUEST_SEND_OPTIONS(Flags=Flags)


def WDF_REQUEST_SEND_OPTIONS_SET_TIMEOUT(Options: WDF_REQUEST_SEND_OPTIONS, Timeout: int) -> None:
    Options.Flags |= WDF_REQUEST_SEND_OPTION_TIMEOUT
    Options.Timeout = Timeout


def WDF_REL_TIMEOUT_IN_MS(ms: int) -> int:
    return -int(ms) * 10_000


def WDF_REL_TIMEOUT_IN_SEC(seconds: int) -> int:
    return -int(seconds) * 10_000_000


@dataclass
class WDF_REQUEST_REUSE_PARAMS:
    Flags: int = 0
    Status: int = 0
    NewIrp: Any = None
    Size: int = 0x18


class IoTarget(FxObject):
    """WDFIOTARGET: the local target (the next-lower device) or a remote one opened by name."""

    WDF_TYPE = FX_TYPE_IO_TARGET
    HANDLE_NAME = "WDFIOTARGET"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_IO_TARGET})

    def __init__(self, fx: Any, site: CallSite | None, device: "Device", *, kind: str) -> None:
        FxObject.__init__(self, fx, site)
        self.device = device
        self.kind = kind
        self.target: "Device | None" = None
        self.target_stack: "DeviceStack | None" = None
        self.opened = False
        self.sent: list[Any] = []
        self.NO_DELETE_DDI = kind == "local"
        self.DESCRIPTION = f"{kind} I/O target of {device.describe()}"

    def open_on(self, device: "Device | None", stack: "DeviceStack | None") -> None:
        self.target = device
        self.target_stack = stack
        self.opened = True

    def close(self) -> None:
        self.opened = False

    def deliver_to(self) -> "Device | None":
        """The device the next request goes to (the stack's top for a remote target)."""
        if self.kind == "remote" and self.target_stack is not None and self.target_stack.devices:
            return self.target_stack.top
        return self.target

    def dispose(self) -> None:
        self.opened = False
        FxObject.dispose(self)


class RemoteIoTarget(IoTarget):
    WDF_TYPE = FX_TYPE_IO_TARGET_REMOTE
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_IO_TARGET, FX_TYPE_IO_TARGET_REMOTE})


class DriverRequest(Request):
    """A WDFREQUEST the driver made (WdfRequestCreate): formatted, sent, reused; deleted by the
    driver with WdfObjectDelete (never completed with WdfRequestComplete)."""

    NO_DELETE_DDI = False

    def __init__(self, fx: Any, site: CallSite | None) -> None:
        Request.__init__(self, fx, site, IoRequest(0))
        self.DESCRIPTION = "request created by the driver"
        self.reset_send_state()

    def reset_send_state(self) -> None:
        self.formatted: tuple | None = None     # (major, ioctl, in (va, len, mem), out (va, len, mem), offset)
        self.owner = "driver"
        self.completion_routine = None
        self.completion_context = None
        self.completion_params = WDF_REQUEST_COMPLETION_PARAMS()
        self.send_status: int | None = None
        self.send_done = False
        self.target: IoTarget | None = None
        self.send_irp: Irp | None = None
        self.referenced: list[Any] = []

    def release_memory(self) -> None:
        """ReleaseAndRestore: drop the references formatting took on memory objects."""
        refs, self.referenced = self.referenced, []
        for mem in refs:
            mem.release()

    def dispose(self) -> None:
        self.release_memory()
        FxObject.dispose(self)

    def free_storage(self) -> None:  # also on WdfObjectDelete's one-step path, which skips dispose
        self.release_memory()
        FxObject.free_storage(self)


# -- the request the next driver receives ---------------------------------------------------------

def attach_sent_buffers(request: DeviceRequest, spec: tuple, site: CallSite | None, device_writes: bool) -> bool:
    """Lay the sender's buffers into the receiver's request by its transfer type (module docstring)."""
    _kind, in_va, in_len, out_va, out_len, sender_fx = spec
    io = request.io
    major = io.major
    fx = request.fx
    if major in (IRP_MJ_READ, IRP_MJ_WRITE):
        va, length = (out_va, out_len) if major == IRP_MJ_READ else (in_va, in_len)
        if not length:
            return True
        if io.direct:
            return request.attach_frames(va, length, site, device_writes)
        request.system_buffer, request.system_buffer_size = va, length
        return True
    method = io.method
    if method == METHOD_BUFFERED:
        size = max(in_len, out_len)
        if in_len and out_len and in_va != out_va:
            pool_va = sender_fx._pool.allocate(PoolType.NonPagedPool, size, DOUBLE_BUFFER_TAG, site)
            if not pool_va:
                return False
            sender_fx._write(pool_va, sender_fx._read(in_va, in_len))
            request.double_buffer = (pool_va, out_len, out_va)
            request.sender_fx = sender_fx
            request.system_buffer, request.system_buffer_size = pool_va, size
        elif size:
            request.system_buffer, request.system_buffer_size = (in_va or out_va), size
        return True
    if in_len:
        request.system_buffer, request.system_buffer_size = in_va, in_len
    if method == 3:  # METHOD_NEITHER: Type3InputBuffer and UserBuffer, raw
        if out_len:
            request.data_buffer, request.data_buffer_size = out_va, out_len
        return True
    if out_len:
        return request.attach_frames(out_va, out_len, site, device_writes)
    return True


def sent_request_completed(holder: Any, status: int, information: int) -> None:
    """The IRP a driver sent came back to ``holder`` (its sender's WDFREQUEST)."""
    fx = holder.fx
    target = holder.target
    send_irp = holder.send_irp
    if send_irp is not None and holder in send_irp.stack:
        send_irp.stack.remove(holder)
    holder.send_irp = None
    if getattr(holder, "timed_out", False) and status == NTSTATUS.STATUS_CANCELLED:
        status = NTSTATUS.STATUS_IO_TIMEOUT  # FX_REQUEST_CANCELLED_FROM_TIMER (fxiotarget.cpp)
    holder.owner = "driver"
    holder.send_status = int(status)
    holder.send_information = int(information)
    holder.send_done = True
    params = holder.completion_params
    params.IoStatus = IO_STATUS_BLOCK(int(status), int(information))
    if params.Type in (IRP_MJ_READ,) or params.Type in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL):
        params.Length = int(information)
    if target is not None and holder in target.sent:
        target.sent.remove(holder)
    timer = getattr(holder, "timeout_timer", None)
    if timer is not None:
        timer.cancelled = True
        holder.timeout_timer = None
    if getattr(holder, "sync_waiting", False):
        return
    routine = holder.completion_routine
    if routine is None:
        return
    context = holder.completion_context
    holder.completion_routine = None
    dispatcher = fx.io_manager.dispatcher
    dispatcher.invoke(fx, routine, (holder.handle, target.handle if target is not None else None, params, context),
                      fx._irql.current, f"completion routine of {holder.describe()}")
