"""I/O queues (WDFQUEUE): holding requests and presenting them to the driver (fxioqueue.cpp).

- Sequential: one request at a time; the next is presented only when the
  driver completed the current one (or forwarded or requeued it away).
- Parallel: requests are presented as they arrive, up to
  NumberOfPresentedRequests when that is set; several may be outstanding.
- Manual: never presents; the driver takes requests with
  WdfIoQueueRetrieveNextRequest (also allowed on sequential queues, not on
  parallel ones: STATUS_INVALID_DEVICE_STATE, FxIoQueue::GetRequest).

Presentation (FxIoQueue::DispatchRequestToDriver): a zero-length read or
write is completed with STATUS_SUCCESS unless AllowZeroLengthRequests; a
request with no callback for its type (and no EvtIoDefault) is completed
with STATUS_INVALID_DEVICE_REQUEST. Callbacks run at the caller's IRQL, at
DISPATCH_LEVEL under a spin-lock synchronization scope (device or queue),
at PASSIVE_LEVEL when the execution level is passive (posted as a work item
when the IRQL is higher); see io_dispatch.py for the rest of the model.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .attributes import (WdfExecutionLevelPassive, WdfSynchronizationScopeDevice, WdfSynchronizationScopeQueue)
from .callsite import CallSite
from .io_dispatch import CallbackLock
from .io_request import (STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE, DeviceRequest,
                         WDF_REQUEST_STOP_ACTION_FLAGS, CallbackOf, Presentation)
from .irql import PASSIVE_LEVEL
from .ntstatus import NTSTATUS
from .objects import CREATED, FX_TYPE_OBJECT, FxObject
from .request import IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE

if TYPE_CHECKING:
    from .device import Device

FX_TYPE_QUEUE = 0x1003


class WDF_IO_QUEUE_DISPATCH_TYPE(enum.IntEnum):
    WdfIoQueueDispatchInvalid = 0
    WdfIoQueueDispatchSequential = 1
    WdfIoQueueDispatchParallel = 2
    WdfIoQueueDispatchManual = 3
    WdfIoQueueDispatchMax = 4


WdfIoQueueDispatchSequential = WDF_IO_QUEUE_DISPATCH_TYPE.WdfIoQueueDispatchSequential
WdfIoQueueDispatchParallel = WDF_IO_QUEUE_DISPATCH_TYPE.WdfIoQueueDispatchParallel
WdfIoQueueDispatchManual = WDF_IO_QUEUE_DISPATCH_TYPE.WdfIoQueueDispatchManual
WdfIoQueueDispatchMax = WDF_IO_QUEUE_DISPATCH_TYPE.WdfIoQueueDispatchMax


class WDF_TRI_STATE(enum.IntEnum):
    WdfFalse = 0
    WdfTrue = 1
    WdfUseDefault = 2


WdfFalse = WDF_TRI_STATE.WdfFalse
WdfTrue = WDF_TRI_STATE.WdfTrue
WdfUseDefault = WDF_TRI_STATE.WdfUseDefault
SIZEOF_WDF_IO_QUEUE_CONFIG = 0x68


@dataclass
class WDF_IO_QUEUE_CONFIG:
    """As WDF_IO_QUEUE_CONFIG_INIT leaves it; NumberOfPresentedRequests is Settings.Parallel's."""

    DispatchType: int = WdfIoQueueDispatchSequential
    PowerManaged: int = WdfUseDefault
    AllowZeroLengthRequests: bool = False
    DefaultQueue: bool = False
    EvtIoDefault: Callable[..., Any] | None = None
    EvtIoRead: Callable[..., Any] | None = None
    EvtIoWrite: Callable[..., Any] | None = None
    EvtIoDeviceControl: Callable[..., Any] | None = None
    EvtIoInternalDeviceControl: Callable[..., Any] | None = None
    EvtIoStop: Callable[..., Any] | None = None
    EvtIoResume: Callable[..., Any] | None = None
    EvtIoCanceledOnQueue: Callable[..., Any] | None = None
    NumberOfPresentedRequests: int = 0
    Size: int = SIZEOF_WDF_IO_QUEUE_CONFIG


def WDF_IO_QUEUE_CONFIG_INIT(DispatchType: int) -> WDF_IO_QUEUE_CONFIG:
    return WDF_IO_QUEUE_CONFIG(DispatchType=DispatchType)


def WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(DispatchType: int) -> WDF_IO_QUEUE_CONFIG:
    return WDF_IO_QUEUE_CONFIG(DispatchType=DispatchType, DefaultQueue=True)


_CALLBACK_FOR = {IRP_MJ_READ: "EvtIoRead", IRP_MJ_WRITE: "EvtIoWrite", IRP_MJ_DEVICE_CONTROL: "EvtIoDeviceControl",
                 IRP_MJ_INTERNAL_DEVICE_CONTROL: "EvtIoInternalDeviceControl"}


class IoQueue(FxObject):
    """WDFQUEUE. Requests it holds are framework-owned; presented or retrieved ones driver-owned."""

    WDF_TYPE = FX_TYPE_QUEUE
    HANDLE_NAME = "WDFQUEUE"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_QUEUE})

    def __init__(self, fx: Any, site: CallSite | None, device: "Device", config: WDF_IO_QUEUE_CONFIG,
                 execution_level: int, synchronization_scope: int, power_managed: bool) -> None:
        FxObject.__init__(self, fx, site)
        self.device = device
        self.config = config
        self.dispatch_type = int(config.DispatchType)
        self.execution_level = execution_level
        self.synchronization_scope = synchronization_scope
        self.power_managed = power_managed
        self.pending: collections.deque[DeviceRequest] = collections.deque()
        self.owned: list[DeviceRequest] = []       # driver-owned requests that came from this queue
        self.presented = 0                          # counted against sequential/parallel limits
        self.accepting = True
        self.dispatching = not power_managed or device.started
        self.powered = self.dispatching
        self.stopping_for_power = False
        self.cancelled: collections.deque[DeviceRequest] = collections.deque()
        self._posted = False
        self.idle_waiters: list[Callable[[], Any]] = []
        self.lock = CallbackLock(f"queue lock of WDFQUEUE", passive=execution_level == WdfExecutionLevelPassive)
        kind = WDF_IO_QUEUE_DISPATCH_TYPE(self.dispatch_type).name.replace("WdfIoQueueDispatch", "").lower()
        self.DESCRIPTION = f"{'default ' if config.DefaultQueue else ''}{kind} queue of {device.describe()}"

    # -- execution rules --------------------------------------------------------------------

    def callback_lock(self) -> CallbackLock | None:
        if self.synchronization_scope == WdfSynchronizationScopeDevice:
            return self.device.lock
        if self.synchronization_scope == WdfSynchronizationScopeQueue:
            return self.lock
        return None

    def callback_level(self) -> int:
        """The IRQL this queue's callbacks run at, now."""
        if self.execution_level == WdfExecutionLevelPassive:
            return PASSIVE_LEVEL
        lock = self.callback_lock()
        if lock is not None:
            return lock.level
        return self.fx._irql.current

    _callbacks_of: "dict[str, CallbackOf] | None" = None

    def _invoke(self, name: str, callback: Callable[..., Any], args: tuple) -> Any:
        # "EvtIoRead of this queue": its parts do not change, so one per callback name (made
        # into text only when a message shows it), not one per presented request
        whats = self._callbacks_of
        if whats is None:
            whats = self._callbacks_of = {}
        what = whats.get(name)
        if what is None:
            what = whats[name] = CallbackOf(name, self)
        dispatcher = self.fx.io_manager.dispatcher
        return dispatcher.invoke(self.fx, callback, args, self.callback_level(), what, self.callback_lock())

    def _can_call_now(self) -> bool:
        """False where the framework would defer: our lock is held, or passive work above PASSIVE."""
        lock = self.callback_lock()
        if lock is not None and lock.holder is not None:
            return False
        return not (self.execution_level == WdfExecutionLevelPassive and self.fx._irql.current > PASSIVE_LEVEL)

    def handles(self, major: int) -> bool:
        """FxIoQueue::IsIoEventHandlerRegistered: manual queues and EvtIoDefault take everything."""
        config = self.config
        if self.dispatch_type == WdfIoQueueDispatchManual or config.EvtIoDefault is not None:
            return True
        name = _CALLBACK_FOR.get(major)
        return name is not None and getattr(config, name) is not None

    # -- requests in ---------------------------------------------------------------------------

    def queue_request(self, request: DeviceRequest, *, at_head: bool = False) -> None:
        """FxIoQueue::QueueRequest: a queue that does not accept completes with STATUS_INVALID_DEVICE_STATE."""
        request.queue = self
        request.owner = "framework"
        if not self.accepting:
            request.owner = "driver"
            self.fx._complete(request, STATUS_INVALID_DEVICE_STATE, 0)
            return
        if request.irp.cancel:
            self._cancel_on_queue(request)
            return
        if at_head:
            self.pending.appendleft(request)
        else:
            self.pending.append(request)
        self.kick()

    def kick(self) -> None:
        """Present what can be presented: now if nothing is running, else when the dispatcher drains."""
        dispatcher = self.fx.io_manager.dispatcher
        if dispatcher.depth == 0 and self._can_call_now():
            self.dispatch()
        elif not self._posted:
            self._posted = True
            level = PASSIVE_LEVEL if self.execution_level == WdfExecutionLevelPassive else self.fx._irql.current
            what = self._dispatch_what
            if what is None:   # posted once per request when it completes in a callback: made once
                what = self._dispatch_what = f"dispatch {self.describe()}"
            dispatcher.post(self._posted_dispatch, level, what)

    _dispatch_what: str | None = None

    def _posted_dispatch(self) -> None:
        self._posted = False
        if self._can_call_now():
            self.dispatch()
        else:
            self.kick()

    def _has_room(self) -> bool:
        if self.dispatch_type == WdfIoQueueDispatchSequential:
            return self.presented == 0
        if self.dispatch_type == WdfIoQueueDispatchParallel:
            limit = self.config.NumberOfPresentedRequests
            return limit == 0 or self.presented < limit
        return False

    def dispatch(self) -> None:
        """FxIoQueue::DispatchEvents: cancellations first, then requests while there is room."""
        if self.state is not CREATED:  # being deleted
            return
        while self.cancelled:
            request = self.cancelled.popleft()
            self._notify_cancel(request)
        while self.dispatching and self.pending and self._has_room():
            self.present(self.pending.popleft())

    def present(self, request: DeviceRequest) -> None:
        """FxIoQueue::DispatchRequestToDriver."""
        config = self.config
        io = request.io
        request.owner = "driver"
        self.owned.append(request)
        self.presented += 1
        request.counted = True
        major = io.major
        if major in (IRP_MJ_READ, IRP_MJ_WRITE) and not config.AllowZeroLengthRequests:
            length = io.output_length if major == IRP_MJ_READ else io.input_length
            if length == 0 and (getattr(config, _CALLBACK_FOR[major]) or config.EvtIoDefault):
                request.presented_in = f"{self.describe()} (completed by the framework: zero length)"
                self.fx._complete(request, NTSTATUS.STATUS_SUCCESS, 0)
                return
        name = _CALLBACK_FOR.get(major)
        callback = getattr(config, name) if name else None
        if callback is None and config.EvtIoDefault is not None:
            name, callback = "EvtIoDefault", config.EvtIoDefault
        if callback is None:
            request.presented_in = f"{self.describe()} (no callback: completed by the framework)"
            self.fx._complete(request, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, 0)
            return
        request.presented_in = Presentation(name, callback, self)
        request.presentations += 1
        if name in ("EvtIoRead",):
            args = (self.handle, request.handle, io.output_length)
        elif name == "EvtIoWrite":
            args = (self.handle, request.handle, io.input_length)
        elif name == "EvtIoDefault":
            args = (self.handle, request.handle)
        else:
            args = (self.handle, request.handle, io.output_length, io.input_length, io.ioctl_code)
        self._invoke(name, callback, args)

    # -- requests out --------------------------------------------------------------------------

    def request_left(self, request: DeviceRequest) -> None:
        """The driver no longer owns ``request`` through this queue (completed, forwarded, requeued)."""
        if request in self.owned:
            self.owned.remove(request)
        if getattr(request, "counted", False):
            request.counted = False
            self.presented -= 1
        if not self.owned and self.idle_waiters:
            waiters, self.idle_waiters = self.idle_waiters, []
            for then in waiters:
                self.fx.io_manager.dispatcher.post(then, 2, f"idle notification of {self.describe()}")
        if self.state is CREATED:
            self.kick()

    def retrieve_next(self) -> tuple[int, DeviceRequest | None]:
        """FxIoQueue::GetRequest."""
        if self.dispatch_type == WdfIoQueueDispatchParallel:
            return STATUS_INVALID_DEVICE_STATE, None
        if not self.powered and self.power_managed:
            return 0xC0200203, None  # STATUS_WDF_PAUSED
        if not self.dispatching:
            return 0xC0200203, None
        if not self.pending:
            return 0x8000001A, None  # STATUS_NO_MORE_ENTRIES
        request = self.pending.popleft()
        request.owner = "driver"
        request.counted = True   # InsertInDriverOwnedList: a sequential queue presents nothing meanwhile
        self.presented += 1
        self.owned.append(request)
        request.presented_in = f"WdfIoQueueRetrieveNextRequest on {self.describe()}"
        return NTSTATUS.STATUS_SUCCESS, request

    # -- cancellation --------------------------------------------------------------------------

    def _cancel_on_queue(self, request: DeviceRequest) -> None:
        """FxIoQueue::CancelForQueue: a queued request is cancelled: EvtIoCanceledOnQueue, or the
        framework completes it with STATUS_CANCELLED."""
        request.owner = "driver"
        request.presented_in = f"{self.describe()} (cancelled while queued)"
        callback = self.config.EvtIoCanceledOnQueue
        if callback is not None:
            self.owned.append(request)
            self._invoke("EvtIoCanceledOnQueue", callback, (self.handle, request.handle))
        else:
            self.fx._complete(request, STATUS_CANCELLED, 0)

    def cancel(self, request: DeviceRequest) -> None:
        """The IRP was cancelled (IoCancelIrp)."""
        if request.owner == "framework" and request in self.pending:
            self.pending.remove(request)
            self._cancel_on_queue(request)
        elif request.owner == "driver" and request.cancel_routine is not None:
            self.cancelled.append(request)
            self.kick()

    def _notify_cancel(self, request: DeviceRequest) -> None:
        routine = request.cancel_routine
        if routine is None or request.owner != "driver":
            return
        request.cancel_routine = None
        request.cancel_called = True
        self._invoke("EvtRequestCancel", routine, (request.handle,))

    # -- state ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.accepting = True
        self.dispatching = True
        if not self.power_managed or self.device.started:
            self.powered = True
        self.kick()

    def stop(self) -> None:
        self.dispatching = False

    def power_start(self) -> None:
        self.powered = True
        self.dispatching = True
        resume = self.config.EvtIoResume
        for request in list(self.owned):
            if request.stop_acknowledged and resume is not None:
                request.stop_acknowledged = False
                self._invoke("EvtIoResume", resume, (self.handle, request.handle))
        self.kick()

    def power_stop(self) -> None:
        """Power-down: stop presenting; EvtIoStop for each request the driver holds."""
        self.dispatching = False
        self.powered = False
        self._stop_owned(WDF_REQUEST_STOP_ACTION_FLAGS.WdfRequestStopActionSuspend)

    def _stop_owned(self, action: int) -> None:
        stop = self.config.EvtIoStop
        if stop is None:
            return
        for request in list(self.owned):
            if request.owner != "driver" or request.completed:
                continue
            flags = action
            if request.cancel_routine is not None:
                flags |= WDF_REQUEST_STOP_ACTION_FLAGS.WdfRequestStopRequestCancelable
            request.in_stop_callback = True
            try:
                self._invoke("EvtIoStop", stop, (self.handle, request.handle, int(flags)))
            finally:
                request.in_stop_callback = False

    def purge(self) -> None:
        """QueuePurge: stop accepting; queued requests are cancelled, driver-owned cancelable ones
        get EvtRequestCancel."""
        self.accepting = False
        self.dispatching = False
        while self.pending:
            self._cancel_on_queue(self.pending.popleft())
        for request in list(self.owned):
            if request.owner == "driver" and request.cancel_routine is not None:
                self.cancelled.append(request)
        self.kick()

    def purge_for_remove(self) -> None:
        """Device removal: EvtIoStop(Purge) for what the driver holds, then purge."""
        if self.owned:
            self._stop_owned(WDF_REQUEST_STOP_ACTION_FLAGS.WdfRequestStopActionPurge)
        self.purge()
        self.fx.io_manager.dispatcher.run()

    def dispose(self) -> None:
        self._teardown()
        FxObject.dispose(self)

    def free_storage(self) -> None:  # also on WdfObjectDelete's one-step path, which skips dispose
        self._teardown()
        FxObject.free_storage(self)

    def _teardown(self) -> None:
        """A deleted queue accepts nothing more; what it still holds is cancelled."""
        self.accepting = False
        self.dispatching = False
        while self.pending:
            self._cancel_on_queue(self.pending.popleft())
