"""WDFQUEUE entry points and the request calls around dispatch (fxioqueueapi.cpp, fxrequestapi.cpp)."""

from __future__ import annotations

from typing import Any, Callable

from ..attributes import WDF_OBJECT_ATTRIBUTES, WdfSynchronizationScopeDevice
from ..callsite import driver_site
from ..core import OUT
from ..device import FX_TYPE_DEVICE
from ..io_request import (STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE, STATUS_WDF_NO_CALLBACK,
                          WDF_REQUEST_PARAMETERS, DeviceRequest)
from ..irql import DISPATCH_LEVEL, PASSIVE_LEVEL
from ..ntstatus import NTSTATUS
from ..objects import FX_TYPE_REQUEST
from ..queue import (FX_TYPE_QUEUE, SIZEOF_WDF_IO_QUEUE_CONFIG, WDF_IO_QUEUE_CONFIG, IoQueue,
                     WdfIoQueueDispatchManual, WdfIoQueueDispatchMax, WdfIoQueueDispatchSequential, WdfTrue,
                     WdfUseDefault)
from ..device import effective_constraints
from .validation import (FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED,
                         FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED, validate_object_attributes)

STATUS_INVALID_PARAMETER_4 = 0xC00000F2


class QueueApi:
    """WdfIoQueue*, and WdfRequest* calls that move requests between queues and the driver."""

    def _queue(self, handle: int) -> IoQueue:
        return self._object(handle, FX_TYPE_QUEUE)

    def WdfIoQueueCreate(self, Device: int, Config: WDF_IO_QUEUE_CONFIG,
                         QueueAttributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                         Queue: Any = OUT) -> tuple[int, int | None]:
        """-> (status, queue), checked in FxIoQueue's order [S]: attributes, config size, a missing
        output for a non-default queue (STATUS_INVALID_PARAMETER_4), the default queue only before
        the device starts (STATUS_INVALID_DEVICE_STATE), constraints (device scope needs the
        device's execution level: STATUS_INVALID_PARAMETER), dispatch type
        (STATUS_INVALID_PARAMETER), no callback on a non-manual queue (STATUS_WDF_NO_CALLBACK),
        callbacks on a manual queue (STATUS_INVALID_PARAMETER), NumberOfPresentedRequests on a
        sequential or manual queue (STATUS_INVALID_PARAMETER)."""
        device = self._object(Device, FX_TYPE_DEVICE)
        if Config is None:
            raise self._null("Config")
        status = validate_object_attributes(
            QueueAttributes, FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED | FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED)
        if status:
            return status, None
        if Config.Size != SIZEOF_WDF_IO_QUEUE_CONFIG:
            return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH, None
        if not Config.DefaultQueue and Queue is None:
            return STATUS_INVALID_PARAMETER_4, None
        self._check_dispatch("WdfIoQueueCreate")
        if Config.DefaultQueue and (device.started or device.default_queue is not None):
            return STATUS_INVALID_DEVICE_STATE, None
        level, scope = effective_constraints(QueueAttributes, device.execution_level, device.synchronization_scope)
        if scope == WdfSynchronizationScopeDevice and level != device.execution_level:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        kind = int(Config.DispatchType)
        if kind <= 0 or kind >= WdfIoQueueDispatchMax:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        callbacks = (Config.EvtIoDefault, Config.EvtIoRead, Config.EvtIoWrite, Config.EvtIoDeviceControl,
                     Config.EvtIoInternalDeviceControl)
        if kind != WdfIoQueueDispatchManual and not any(callbacks):
            return STATUS_WDF_NO_CALLBACK, None
        if kind == WdfIoQueueDispatchManual and any(callbacks):
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        if Config.NumberOfPresentedRequests and kind in (WdfIoQueueDispatchSequential, WdfIoQueueDispatchManual):
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        if Config.PowerManaged == WdfUseDefault:
            power_managed = device.init.power_policy_owner and not device.filter
        else:
            power_managed = Config.PowerManaged == WdfTrue
        site = driver_site()
        queue = IoQueue(self, site, device, Config, level, scope, power_managed)
        parent = device
        if QueueAttributes is not None and QueueAttributes.ParentObject:
            parent = self._object(QueueAttributes.ParentObject, 0x1000)
        status = self._commit_new(queue, QueueAttributes, parent, site)
        if status:
            return status, None
        device.queues.append(queue)
        if Config.DefaultQueue:
            device.default_queue = queue
            queue.NO_DELETE_DDI = True  # the default queue may not be deleted
        return NTSTATUS.STATUS_SUCCESS, queue.handle

    def WdfIoQueueGetDevice(self, Queue: int) -> int:
        return self._queue(Queue).device.handle

    def WdfIoQueueStart(self, Queue: int) -> None:
        self._check_dispatch("WdfIoQueueStart")
        self._queue(Queue).start()

    def WdfIoQueueStop(self, Queue: int, StopComplete: Callable[..., Any] | None = None,
                       Context: Any = None) -> None:
        """Stop presenting (requests still queue up); StopComplete runs once the driver owns
        none of this queue's requests."""
        queue = self._queue(Queue)
        self._check_dispatch("WdfIoQueueStop")
        queue.stop()
        if StopComplete is not None:
            self._when_idle(queue, lambda: StopComplete(queue.handle, Context), "WdfIoQueueStop")

    def _when_idle(self, queue: IoQueue, then: Callable[[], Any], what: str) -> None:
        """Run ``then`` (at DISPATCH_LEVEL, as the framework's stop/purge completion) once the driver
        owns none of the queue's requests."""
        if queue.owned:
            queue.idle_waiters.append(then)
        else:
            self.io_manager.dispatcher.post(then, DISPATCH_LEVEL, what)

    def _wait_queue_idle(self, queue: IoQueue, call: str) -> None:
        self._check_passive(call)
        lock = queue.callback_lock()
        if lock is not None and lock.holder is not None:
            self._dbg_break("QueueWaitInOwnCallback",
                            f"{call} inside {lock.holder}, which holds the lock the queue needs: deadlock", queue)
            return
        self.io_manager.dispatcher.wait_until(lambda: not queue.owned, None,
                                              f"{call} on {queue.describe()} (the driver holds"
                                              f" {[r.describe() for r in queue.owned]})")

    def WdfIoQueueStopSynchronously(self, Queue: int) -> None:
        """Stop and wait (PASSIVE_LEVEL) until the driver owns none of the queue's requests."""
        queue = self._queue(Queue)
        queue.stop()
        self._wait_queue_idle(queue, "WdfIoQueueStopSynchronously")

    def WdfIoQueuePurge(self, Queue: int, PurgeComplete: Callable[..., Any] | None = None,
                        Context: Any = None) -> None:
        """Stop accepting; queued requests are cancelled, cancelable driver-owned ones get
        EvtRequestCancel."""
        queue = self._queue(Queue)
        self._check_dispatch("WdfIoQueuePurge")
        queue.purge()
        if PurgeComplete is not None:
            self._when_idle(queue, lambda: PurgeComplete(queue.handle, Context), "WdfIoQueuePurge")

    def WdfIoQueuePurgeSynchronously(self, Queue: int) -> None:
        queue = self._queue(Queue)
        queue.purge()
        self._wait_queue_idle(queue, "WdfIoQueuePurgeSynchronously")

    def WdfIoQueueDrainSynchronously(self, Queue: int) -> None:
        queue = self._queue(Queue)
        queue.accepting = False
        self.io_manager.dispatcher.wait_until(lambda: not queue.owned and not queue.pending, None,
                                              f"WdfIoQueueDrainSynchronously on {queue.describe()}")

    def WdfIoQueueRetrieveNextRequest(self, Queue: int, *, OutRequest: Any = OUT) -> tuple[int, int | None]:
        """-> (status, request): STATUS_NO_MORE_ENTRIES when empty, STATUS_WDF_PAUSED when stopped,
        STATUS_INVALID_DEVICE_STATE on a parallel queue."""
        queue = self._queue(Queue)
        if OutRequest is None:
            raise self._null("OutRequest")
        self._check_dispatch("WdfIoQueueRetrieveNextRequest")
        status, request = queue.retrieve_next()
        return status, (request.handle if request is not None else None)

    # -- requests and queues ----------------------------------------------------------------------

    def _device_request(self, handle: int, call: str) -> DeviceRequest:
        request = self._object(handle, FX_TYPE_REQUEST)
        if not isinstance(request, DeviceRequest):
            raise self._not_from_queue(request, call)
        return request

    def _not_from_queue(self, request: Any, call: str) -> Exception:
        from ..bugcheck import WDF_REQUEST_FATAL_ERROR, wdf_violation
        return wdf_violation(WDF_REQUEST_FATAL_ERROR, request.handle, 0, 0,
                             f"{call} on {request.describe()}, which no queue presented")

    def WdfRequestGetIoQueue(self, Request: int) -> int | None:
        request = self._device_request(Request, "WdfRequestGetIoQueue")
        return request.queue.handle if request.queue is not None else None

    def WdfRequestGetParameters(self, Request: int, Parameters: WDF_REQUEST_PARAMETERS | None = None
                                ) -> WDF_REQUEST_PARAMETERS:
        """Fills ``Parameters`` (WDF_REQUEST_PARAMETERS_INIT'd by the caller) and returns it."""
        request = self._object(Request, FX_TYPE_REQUEST)
        params = request.parameters() if isinstance(request, DeviceRequest) else WDF_REQUEST_PARAMETERS()
        if Parameters is not None:
            Parameters.__dict__.update(params.__dict__)
            return Parameters
        return params

    def WdfRequestGetRequestorMode(self, Request: int) -> int:
        return self._object(Request, FX_TYPE_REQUEST).io.requestor_mode

    def WdfRequestIsCanceled(self, Request: int) -> bool:
        request = self._device_request(Request, "WdfRequestIsCanceled")
        return request.irp.cancel

    def _verify_driver_owned(self, request: DeviceRequest, call: str) -> bool:
        if request.completed or request.owner != "driver":
            self._dbg_break("RequestNotDriverOwned", f"{call} on {request.describe()}, which the driver does"
                            f" not own ({request.owner})", request, status=NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
            return False
        return True

    def WdfRequestMarkCancelable(self, Request: int, EvtRequestCancel: Callable[[int], Any]) -> None:
        """An already cancelled IRP gets its EvtRequestCancel right away (through the queue's
        dispatch loop, FxIoQueue::RequestCancelable with FailIfIrpIsCancelled FALSE)."""
        self._mark_cancelable(Request, EvtRequestCancel, "WdfRequestMarkCancelable", ex=False)

    def WdfRequestMarkCancelableEx(self, Request: int, EvtRequestCancel: Callable[[int], Any]) -> int:
        """STATUS_CANCELLED if the IRP is already cancelled (the caller completes it)."""
        return self._mark_cancelable(Request, EvtRequestCancel, "WdfRequestMarkCancelableEx", ex=True)

    def _mark_cancelable(self, handle: int, routine: Any, call: str, *, ex: bool) -> int:
        request = self._device_request(handle, call)
        if routine is None:
            raise self._null("EvtRequestCancel")
        self._check_dispatch(call)
        if request.queue is None:
            self._dbg_break("RequestNotInQueue", f"{call}: {request.describe()} doesn't belong to any queue", request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if not self._verify_driver_owned(request, call):
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if request.cancel_routine is not None:
            self._dbg_break("RequestAlreadyCancelable", f"{call}: {request.describe()} is already cancelable",
                            request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if request.irp.cancel:
            if ex:
                return STATUS_CANCELLED
            request.cancel_routine = routine
            request.queue.cancelled.append(request)
            request.queue.kick()
            return NTSTATUS.STATUS_SUCCESS
        request.cancel_routine = routine
        return NTSTATUS.STATUS_SUCCESS

    def WdfRequestUnmarkCancelable(self, Request: int) -> int:
        """STATUS_CANCELLED when the cancel routine won (it runs, or ran; it completes the request)."""
        request = self._device_request(Request, "WdfRequestUnmarkCancelable")
        self._check_dispatch("WdfRequestUnmarkCancelable")
        if request.cancel_routine is None:
            if request.cancel_called or (request.queue is not None and request in request.queue.cancelled):
                return STATUS_CANCELLED
            self._dbg_break("RequestNotCancelable",
                            f"WdfRequestUnmarkCancelable on {request.describe()}, which is not cancelable", request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if request.queue is not None and request in request.queue.cancelled:
            return STATUS_CANCELLED
        request.cancel_routine = None
        return NTSTATUS.STATUS_SUCCESS

    def WdfRequestForwardToIoQueue(self, Request: int, DestinationQueue: int) -> int:
        """Driver-owned, not cancelable, another queue of the same device (FxIoQueue::VerifyForwardRequest)."""
        request = self._device_request(Request, "WdfRequestForwardToIoQueue")
        dest = self._queue(DestinationQueue)
        self._check_dispatch("WdfRequestForwardToIoQueue")
        if not self._verify_driver_owned(request, "WdfRequestForwardToIoQueue"):
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if request.cancel_routine is not None:
            self._dbg_break("ForwardCancelableRequest", f"WdfRequestForwardToIoQueue: {request.describe()} is"
                            " still cancelable: call WdfRequestUnmarkCancelable first", request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if dest is request.queue:
            self._dbg_break("ForwardToSameQueue", f"cannot forward {request.describe()} to the queue it came from",
                            request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if dest.device is not request.device:
            self._dbg_break("ForwardToOtherDevice", f"cannot forward {request.describe()} to {dest.describe()},"
                            " a queue of another device", request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if not dest.accepting:
            return 0xC0200204  # STATUS_WDF_BUSY: QueueRequestFromForward on a queue that does not accept
        source = request.queue
        request.note(f"forwarded to {dest.describe()}", driver_site())
        if source is not None:
            source.request_left(request)
        dest.queue_request(request)
        return NTSTATUS.STATUS_SUCCESS

    def WdfRequestRequeue(self, Request: int) -> int:
        """Back to the head of its (manual) queue; other queues: STATUS_INVALID_DEVICE_REQUEST."""
        request = self._device_request(Request, "WdfRequestRequeue")
        self._check_dispatch("WdfRequestRequeue")
        if not self._verify_driver_owned(request, "WdfRequestRequeue"):
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        queue = request.queue
        if queue is None or queue.dispatch_type != WdfIoQueueDispatchManual:
            self._dbg_break("RequeueNotManual", f"WdfRequestRequeue: {request.describe()} is not from a manual"
                            " queue", request)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        queue.request_left(request)
        queue.queue_request(request, at_head=True)
        return NTSTATUS.STATUS_SUCCESS

    def WdfRequestStopAcknowledge(self, Request: int, Requeue: bool) -> None:
        """Only inside EvtIoStop, on a driver-owned request that is not cancelable
        (FxRequest::VerifyStopAcknowledge). Requeue TRUE puts it back at the head of its queue."""
        request = self._device_request(Request, "WdfRequestStopAcknowledge")
        if not request.in_stop_callback:
            self._dbg_break("StopAcknowledgeOutsideEvtIoStop",
                            f"WdfRequestStopAcknowledge on {request.describe()} outside EvtIoStop", request)
            return
        if not self._verify_driver_owned(request, "WdfRequestStopAcknowledge"):
            return
        if request.cancel_routine is not None:
            self._dbg_break("StopAcknowledgeCancelable", f"WdfRequestStopAcknowledge: {request.describe()} is"
                            " still cancelable: call WdfRequestUnmarkCancelable first", request)
            return
        request.stop_acknowledged = True
        if Requeue and request.queue is not None:
            queue = request.queue
            queue.request_left(request)
            request.stop_acknowledged = False
            queue.pending.appendleft(request)
            request.owner = "framework"

    def WdfRequestGetStatus(self, Request: int) -> int:
        request = self._object(Request, FX_TYPE_REQUEST)
        status = getattr(request, "send_status", None)
        if status is not None:
            return status
        return request.io.status if request.io.status is not None else 0x00000103
