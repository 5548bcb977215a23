"""WDFIOTARGET entry points and sending requests (fxiotargetapi.cpp, fxrequestapi.cpp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..attributes import WDF_OBJECT_ATTRIBUTES
from ..callsite import driver_site
from ..core import OUT
from ..memory_descriptor import (WDF_MEMORY_DESCRIPTOR, WDF_MEMORY_DESCRIPTOR_INIT_HANDLE, WDFMEMORY_OFFSET,
                          MemoryDescriptorNullAllowed)
from ..device import FX_TYPE_DEVICE
from ..io_request import (STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE, STATUS_IO_TIMEOUT,
                          STATUS_OBJECT_NAME_NOT_FOUND, DeviceRequest, Irp)
from ..iotarget import (FX_TYPE_IO_TARGET, WDF_REQUEST_SEND_OPTION_IGNORE_TARGET_STATE,
                        WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET, WDF_REQUEST_SEND_OPTION_SYNCHRONOUS,
                        WDF_REQUEST_SEND_OPTION_TIMEOUT, WDF_REQUEST_SEND_OPTIONS, DriverRequest, IoTarget,
                        RemoteIoTarget)
from ..io_request import WDF_REQUEST_COMPLETION_PARAMS
from ..irql import PASSIVE_LEVEL
from ..ntstatus import NTSTATUS
from ..objects import FX_TYPE_OBJECT, FX_TYPE_REQUEST
from ..request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                       METHOD_BUFFERED, KPROCESSOR_MODE, IoRequest)
from .validation import validate_object_attributes


@dataclass
class WDF_IO_TARGET_OPEN_PARAMS:
    """WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME: TargetDeviceName is a stack name, a symbolic
    link or an interface GUID the I/O manager knows."""

    TargetDeviceName: str | None = None
    DesiredAccess: int = 0
    Type: int = 2  # WdfIoTargetOpenByName
    Size: int = 0x68


def WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME(TargetDeviceName: str, DesiredAccess: int = 0
                                                ) -> WDF_IO_TARGET_OPEN_PARAMS:
    return WDF_IO_TARGET_OPEN_PARAMS(TargetDeviceName=TargetDeviceName, DesiredAccess=DesiredAccess)


class IoTargetApi:
    """Targets, formatting, WdfRequestSend and the synchronous sends."""

    def _target(self, handle: int) -> IoTarget:
        return self._object(handle, FX_TYPE_IO_TARGET)

    def WdfIoTargetCreate(self, Device: int, IoTargetAttributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                          IoTarget: Any = OUT) -> tuple[int, int | None]:
        """-> (status, target): a remote target (open it with WdfIoTargetOpen); parent: the device."""
        device = self._object(Device, FX_TYPE_DEVICE)
        if IoTarget is None:
            raise self._null("IoTarget")
        self._check_passive("WdfIoTargetCreate")
        status = validate_object_attributes(IoTargetAttributes)
        if status:
            return status, None
        parent = device
        if IoTargetAttributes is not None and IoTargetAttributes.ParentObject:
            parent = self._object(IoTargetAttributes.ParentObject, FX_TYPE_OBJECT)
        site = driver_site()
        target = RemoteIoTarget(self, site, device, kind="remote")
        status = self._commit_new(target, IoTargetAttributes, parent, site)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, target.handle

    def WdfIoTargetOpen(self, IoTarget: int, OpenParams: WDF_IO_TARGET_OPEN_PARAMS) -> int:
        """Open by the name of another emulated device: STATUS_OBJECT_NAME_NOT_FOUND if none."""
        target = self._target(IoTarget)
        if OpenParams is None:
            raise self._null("OpenParams")
        self._check_passive("WdfIoTargetOpen")
        stack = self.io_manager.names.get(OpenParams.TargetDeviceName)
        if stack is None or not stack.devices:
            return STATUS_OBJECT_NAME_NOT_FOUND
        target.open_on(stack.top, stack)
        return NTSTATUS.STATUS_SUCCESS

    def WdfIoTargetClose(self, IoTarget: int) -> None:
        self._target(IoTarget).close()

    def WdfIoTargetStop(self, IoTarget: int, Action: int = 0) -> None:
        self._target(IoTarget).opened = False

    def WdfIoTargetStart(self, IoTarget: int) -> int:
        target = self._target(IoTarget)
        target.opened = target.target is not None or target.target_stack is not None or target.kind == "local"
        return NTSTATUS.STATUS_SUCCESS

    def WdfIoTargetGetDevice(self, IoTarget: int) -> int:
        return self._target(IoTarget).device.handle

    # -- driver-created requests -----------------------------------------------------------------

    def WdfRequestCreate(self, RequestAttributes: WDF_OBJECT_ATTRIBUTES | None, IoTarget: int | None = None, *,
                         Request: Any = OUT) -> tuple[int, int | None]:
        """-> (status, request); parent: RequestAttributes.ParentObject, else the driver."""
        self._require_driver()
        if IoTarget:
            self._target(IoTarget)
        if Request is None:
            raise self._null("Request")
        self._check_dispatch("WdfRequestCreate")
        status = validate_object_attributes(RequestAttributes)
        if status:
            return status, None
        parent = None
        if RequestAttributes is not None and RequestAttributes.ParentObject:
            parent = self._object(RequestAttributes.ParentObject, FX_TYPE_OBJECT)
        site = driver_site()
        request = DriverRequest(self, site)
        request.tag = self._driver_tag
        status = self._commit_new(request, RequestAttributes, parent, site)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, request.handle

    def WdfRequestReuse(self, Request: int, ReuseParams: Any) -> int:
        """Clears the formatting (releasing the memory references it took) and the completion
        routine; a request still sent: STATUS_INVALID_DEVICE_STATE [I]."""
        request = self._object(Request, FX_TYPE_REQUEST)
        if ReuseParams is None:
            raise self._null("ReuseParams")
        if not isinstance(request, DriverRequest):
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if request.owner == "sent":
            return STATUS_INVALID_DEVICE_STATE
        request.release_memory()
        request.reset_send_state()
        request.send_status = getattr(ReuseParams, "Status", 0)
        return NTSTATUS.STATUS_SUCCESS

    def WdfRequestSetCompletionRoutine(self, Request: int, CompletionRoutine: Callable[..., Any] | None,
                                       CompletionContext: Any = None) -> None:
        request = self._object(Request, FX_TYPE_REQUEST)
        request.completion_routine = CompletionRoutine
        request.completion_context = CompletionContext

    def WdfRequestGetCompletionParams(self, Request: int, Params: WDF_REQUEST_COMPLETION_PARAMS | None = None
                                      ) -> WDF_REQUEST_COMPLETION_PARAMS:
        request = self._object(Request, FX_TYPE_REQUEST)
        params = request.completion_params
        if Params is not None:
            Params.__dict__.update(params.__dict__)
            return Params
        return params

    # -- formatting -----------------------------------------------------------------------------------

    def _described(self, memory: int | None, offsets: WDFMEMORY_OFFSET | None) -> tuple[int, tuple]:
        if not memory:
            return NTSTATUS.STATUS_SUCCESS, (0, 0, None)
        status, described = self.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(memory, offsets),
                                                          MemoryDescriptorNullAllowed)
        if status:
            return status, (0, 0, None)
        return NTSTATUS.STATUS_SUCCESS, (described.start(), described.buffer_length(), described.memory)

    def _format(self, target_handle: int, request_handle: int, major: int, ioctl: int,
                inp: tuple[int | None, Any], out: tuple[int | None, Any], device_offset: int | None,
                call: str) -> int:
        target = self._target(target_handle)
        request = self._object(request_handle, FX_TYPE_REQUEST)
        self._check_dispatch(call)
        if request.owner == "sent":
            return STATUS_INVALID_DEVICE_STATE
        status, in_desc = self._described(*inp)
        if status:
            return status
        status, out_desc = self._described(*out)
        if status:
            return status
        if isinstance(request, DriverRequest):
            request.release_memory()
        for desc in (in_desc, out_desc):
            if desc[2] is not None:
                desc[2].add_reference()
                request.referenced.append(desc[2])
        request.formatted = (major, ioctl, in_desc[:2], out_desc[:2], device_offset or 0)
        request.target = target
        params = WDF_REQUEST_COMPLETION_PARAMS(Type=major, IoControlCode=ioctl, Offset=device_offset or 0)
        params.Buffer = (out_desc[2] if major == IRP_MJ_READ else in_desc[2] if major == IRP_MJ_WRITE else None)
        params.Buffer = params.Buffer.handle if params.Buffer is not None else None
        params.Input = in_desc[2].handle if in_desc[2] is not None else None
        params.Output = out_desc[2].handle if out_desc[2] is not None else None
        request.completion_params = params
        return NTSTATUS.STATUS_SUCCESS

    def WdfIoTargetFormatRequestForRead(self, IoTarget: int, Request: int, OutputBuffer: int | None,
                                        OutputBufferOffset: WDFMEMORY_OFFSET | None = None,
                                        DeviceOffset: int | None = None) -> int:
        return self._format(IoTarget, Request, IRP_MJ_READ, 0, (None, None), (OutputBuffer, OutputBufferOffset),
                            DeviceOffset, "WdfIoTargetFormatRequestForRead")

    def WdfIoTargetFormatRequestForWrite(self, IoTarget: int, Request: int, InputBuffer: int | None,
                                         InputBufferOffset: WDFMEMORY_OFFSET | None = None,
                                         DeviceOffset: int | None = None) -> int:
        return self._format(IoTarget, Request, IRP_MJ_WRITE, 0, (InputBuffer, InputBufferOffset), (None, None),
                            DeviceOffset, "WdfIoTargetFormatRequestForWrite")

    def WdfIoTargetFormatRequestForIoctl(self, IoTarget: int, Request: int, IoctlCode: int,
                                         InputBuffer: int | None, InputBufferOffset: WDFMEMORY_OFFSET | None,
                                         OutputBuffer: int | None,
                                         OutputBufferOffset: WDFMEMORY_OFFSET | None = None) -> int:
        return self._format(IoTarget, Request, IRP_MJ_DEVICE_CONTROL, IoctlCode, (InputBuffer, InputBufferOffset),
                            (OutputBuffer, OutputBufferOffset), None, "WdfIoTargetFormatRequestForIoctl")

    def WdfIoTargetFormatRequestForInternalIoctl(self, IoTarget: int, Request: int, IoctlCode: int,
                                                 InputBuffer: int | None, InputBufferOffset: WDFMEMORY_OFFSET | None,
                                                 OutputBuffer: int | None,
                                                 OutputBufferOffset: WDFMEMORY_OFFSET | None = None) -> int:
        return self._format(IoTarget, Request, IRP_MJ_INTERNAL_DEVICE_CONTROL, IoctlCode,
                            (InputBuffer, InputBufferOffset), (OutputBuffer, OutputBufferOffset), None,
                            "WdfIoTargetFormatRequestForInternalIoctl")

    def WdfRequestFormatRequestUsingCurrentType(self, Request: int) -> None:
        """Pass the request on as it came (the same IRP, the next stack location)."""
        request = self._object(Request, FX_TYPE_REQUEST)
        if not isinstance(request, DeviceRequest):
            raise self._not_from_queue(request, "WdfRequestFormatRequestUsingCurrentType")
        request.formatted = ("current",)
        params = WDF_REQUEST_COMPLETION_PARAMS(Type=request.io.major, IoControlCode=request.io.ioctl_code)
        request.completion_params = params

    # -- sending ----------------------------------------------------------------------------------------

    def WdfRequestSend(self, Request: int, Target: int, Options: WDF_REQUEST_SEND_OPTIONS | None = None) -> bool:
        """TRUE if the request went to the target (its status then comes to the completion routine,
        or is there at once with WDF_REQUEST_SEND_OPTION_SYNCHRONOUS); FALSE with the status in
        WdfRequestGetStatus. SEND_AND_FORGET only for a request a queue presented
        (else STATUS_INVALID_DEVICE_STATE), and never with a completion routine set [S]."""
        request = self._object(Request, FX_TYPE_REQUEST)
        if Options is not None and Options.Size != 0x10:
            request.send_status = NTSTATUS.STATUS_INVALID_PARAMETER
            self._dbg_break("RequestSendOptionsInvalid", "WdfRequestSend with a bad WDF_REQUEST_SEND_OPTIONS", request)
            return False
        target = self._target(Target)
        self._check_dispatch("WdfRequestSend")
        flags = Options.Flags if Options is not None else 0
        if request.completed or request.owner == "sent":
            self._dbg_break("RequestSendInvalidState", f"WdfRequestSend on {request.describe()}, which is"
                            f" {'completed' if request.completed else 'already sent'}", request)
            request.send_status = STATUS_INVALID_DEVICE_STATE
            return False
        if flags & WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET:
            if not isinstance(request, DeviceRequest):
                request.send_status = STATUS_INVALID_DEVICE_STATE
                return False
            if request.completion_routine is not None:
                request.send_status = NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
                return False
        if not target.opened and not flags & WDF_REQUEST_SEND_OPTION_IGNORE_TARGET_STATE:
            request.send_status = STATUS_INVALID_DEVICE_STATE
            return False
        if request.formatted is None:
            if isinstance(request, DeviceRequest):
                request.formatted = ("current",)  # the framework formats a presented request as it came
            else:
                request.send_status = NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
                return False
        manager = self.io_manager
        destination = target.deliver_to()
        if flags & WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET:
            request.forgotten = True
            request.note("sent and forgotten", driver_site())
            irp = request.irp
            self._complete(request, NTSTATUS.STATUS_SUCCESS, 0)
            manager._deliver(irp, destination)
            return True
        request.owner = "sent"
        request.target = target
        request.send_done = False
        request.send_status = None
        target.sent.append(request)
        request.note(f"sent to {target.describe()}", driver_site())
        if request.formatted[0] == "current":
            irp = request.irp
            manager._deliver(irp, destination, sender=request)
        else:
            irp = self._new_irp(request)
            request.send_irp = irp
            irp.stack.append(request)
            manager._deliver(irp, destination, sender=request)
        if flags & WDF_REQUEST_SEND_OPTION_TIMEOUT:
            self._arm_send_timeout(request, irp, Options.Timeout)
        if flags & WDF_REQUEST_SEND_OPTION_SYNCHRONOUS:
            self._wait_sent(request, irp, Options)
        return True

    def _new_irp(self, request: Any) -> Irp:
        major, ioctl, (in_va, in_len), (out_va, out_len), offset = request.formatted
        irp = Irp(major)
        ioctl_request = major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL)
        irp.template = IoRequest(major, in_len, out_len, ioctl, (ioctl & 3) if ioctl_request else METHOD_BUFFERED,
                                 False, KPROCESSOR_MODE.KernelMode)
        irp.spec = ("va", in_va, in_len, out_va, out_len, self)
        irp.byte_offset = offset
        return irp

    def _arm_send_timeout(self, request: Any, irp: Irp, timeout: int) -> None:
        dispatcher = self.io_manager.dispatcher
        when = dispatcher.now - timeout if timeout < 0 else timeout
        request.timed_out = False

        def expire() -> None:
            if request.send_done:
                return
            request.timed_out = True
            self._cancel_irp(irp)
        request.timeout_timer = dispatcher.schedule(when, lambda: dispatcher.post(expire, 2, "send timeout"))

    def _cancel_irp(self, irp: Irp) -> None:
        irp.cancel = True
        if irp.stack:
            holder = irp.stack[-1]
            if isinstance(holder, DeviceRequest) and holder.queue is not None:
                holder.queue.cancel(holder)

    def _wait_sent(self, request: Any, irp: Irp, options: WDF_REQUEST_SEND_OPTIONS | None) -> None:
        request.sync_waiting = True
        try:
            self.io_manager.dispatcher.wait_until(lambda: request.send_done, None,
                                                  f"the synchronous send of {request.describe()}")
        finally:
            request.sync_waiting = False
        if getattr(request, "timed_out", False) and request.send_status == STATUS_CANCELLED:
            request.send_status = STATUS_IO_TIMEOUT

    def WdfRequestCancelSentRequest(self, Request: int) -> bool:
        request = self._object(Request, FX_TYPE_REQUEST)
        if request.owner != "sent":
            return False
        irp = request.send_irp or request.irp
        self._cancel_irp(irp)
        return True

    def _send_sync(self, call: str, target_handle: int, request_handle: int | None, major: int, ioctl: int,
                   inp: WDF_MEMORY_DESCRIPTOR | None, out: WDF_MEMORY_DESCRIPTOR | None, offset: int | None,
                   options: WDF_REQUEST_SEND_OPTIONS | None) -> tuple[int, int]:
        """The synchronous sends: PASSIVE_LEVEL, descriptors, an internal request when none is given."""
        target = self._target(target_handle)
        self._check_passive(call)
        descs = []
        for desc in (inp, out):
            status, described = self.ValidateMemoryDescriptor(desc, MemoryDescriptorNullAllowed)
            if status:
                return status, 0
            if described.kind == "none":
                descs.append((0, 0))
            elif described.kind == "mdl":  # the pages the MDL lists, through its system address
                va = self.MmGetSystemAddressForMdlSafe(described.mdl)
                descs.append((va, described.length or described.mdl.ByteCount))
            else:
                descs.append((described.start(), described.buffer_length()))
        own = request_handle is None
        if own:
            _, request_handle = self.WdfRequestCreate(None, target.handle)
        request = self._object(request_handle, FX_TYPE_REQUEST)
        if isinstance(request, DriverRequest):
            request.release_memory()
        request.formatted = (major, ioctl, descs[0], descs[1], offset or 0)
        request.completion_params = WDF_REQUEST_COMPLETION_PARAMS(Type=major, IoControlCode=ioctl)
        flags = WDF_REQUEST_SEND_OPTION_SYNCHRONOUS
        timeout = 0
        if options is not None:
            flags |= options.Flags & (WDF_REQUEST_SEND_OPTION_TIMEOUT | WDF_REQUEST_SEND_OPTION_IGNORE_TARGET_STATE)
            timeout = options.Timeout
        sent = self.WdfRequestSend(request.handle, target.handle, WDF_REQUEST_SEND_OPTIONS(flags, timeout))
        status = request.send_status if request.send_status is not None else NTSTATUS.STATUS_UNSUCCESSFUL
        information = getattr(request, "send_information", 0) if sent else 0
        if own:
            self.WdfObjectDelete(request.handle)
        return status, information

    def WdfIoTargetSendReadSynchronously(self, IoTarget: int, Request: int | None,
                                         OutputBuffer: WDF_MEMORY_DESCRIPTOR | None, DeviceOffset: int | None = None,
                                         RequestOptions: WDF_REQUEST_SEND_OPTIONS | None = None, *,
                                         BytesRead: Any = OUT) -> tuple[int, int]:
        """-> (status, bytes read)."""
        return self._send_sync("WdfIoTargetSendReadSynchronously", IoTarget, Request, IRP_MJ_READ, 0, None,
                               OutputBuffer, DeviceOffset, RequestOptions)

    def WdfIoTargetSendWriteSynchronously(self, IoTarget: int, Request: int | None,
                                          InputBuffer: WDF_MEMORY_DESCRIPTOR | None, DeviceOffset: int | None = None,
                                          RequestOptions: WDF_REQUEST_SEND_OPTIONS | None = None, *,
                                          BytesWritten: Any = OUT) -> tuple[int, int]:
        """-> (status, bytes written)."""
        return self._send_sync("WdfIoTargetSendWriteSynchronously", IoTarget, Request, IRP_MJ_WRITE, 0, InputBuffer,
                               None, DeviceOffset, RequestOptions)

    def WdfIoTargetSendIoctlSynchronously(self, IoTarget: int, Request: int | None, IoctlCode: int,
                                          InputBuffer: WDF_MEMORY_DESCRIPTOR | None,
                                          OutputBuffer: WDF_MEMORY_DESCRIPTOR | None,
                                          RequestOptions: WDF_REQUEST_SEND_OPTIONS | None = None, *,
                                          BytesReturned: Any = OUT) -> tuple[int, int]:
        """-> (status, bytes returned)."""
        return self._send_sync("WdfIoTargetSendIoctlSynchronously", IoTarget, Request, IRP_MJ_DEVICE_CONTROL,
                               IoctlCode, InputBuffer, OutputBuffer, None, RequestOptions)

    def WdfIoTargetSendInternalIoctlSynchronously(self, IoTarget: int, Request: int | None, IoctlCode: int,
                                                  InputBuffer: WDF_MEMORY_DESCRIPTOR | None,
                                                  OutputBuffer: WDF_MEMORY_DESCRIPTOR | None,
                                                  RequestOptions: WDF_REQUEST_SEND_OPTIONS | None = None, *,
                                                  BytesReturned: Any = OUT) -> tuple[int, int]:
        """-> (status, bytes returned)."""
        return self._send_sync("WdfIoTargetSendInternalIoctlSynchronously", IoTarget, Request,
                               IRP_MJ_INTERNAL_DEVICE_CONTROL, IoctlCode, InputBuffer, OutputBuffer, None,
                               RequestOptions)
