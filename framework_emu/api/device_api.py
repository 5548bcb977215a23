"""WDFDEVICE_INIT and WDFDEVICE entry points (fxdeviceinitapi.cpp, fxdeviceapi.cpp), file objects."""

from __future__ import annotations

from typing import Any

from ..attributes import WDF_OBJECT_ATTRIBUTES
from ..callsite import driver_site
from ..core import OUT
from ..device import (DRIVER_EXECUTION_LEVEL, DRIVER_SYNCHRONIZATION_SCOPE, FX_TYPE_DEVICE, FX_TYPE_FILEOBJECT,
                      WDF_DEVICE_IO_TYPE, WDF_DEVICE_POWER_POLICY_IDLE_SETTINGS,
                      WDF_DEVICE_POWER_POLICY_WAKE_SETTINGS, WDF_FILEOBJECT_CONFIG, WDF_PNPPOWER_EVENT_CALLBACKS,
                      WDFDEVICE_INIT, Device, effective_constraints)
from ..errors import ArgumentError
from ..io_request import STATUS_INVALID_DEVICE_STATE
from ..irql import PASSIVE_LEVEL
from ..ntstatus import NTSTATUS
from ..request import IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE
from ..verifier import Finding, finding_for
from .validation import (FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED,
                         FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED, validate_object_attributes)

_QUEUE_TYPES = (IRP_MJ_READ, IRP_MJ_WRITE, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL)


class DeviceApi:
    """Everything EvtDriverDeviceAdd calls, and the device's accessors."""

    # -- verifier helpers shared by the I/O model ---------------------------------------------

    def _dbg_break(self, rule: str, message: str, obj: Any = None, *, status: int | None = None) -> Finding | None:
        """FxVerifierDbgBreakPoint: with the verifier on, a finding (an error that does not stop
        the machine: the real one breaks into an attached debugger and goes on)."""
        if not self._verifier_on:
            self._log(f"{rule}: {message}")
            return None
        return self._verifier.report(finding_for(rule, "error", message, driver_site(), obj, status=status),
                                     fatal=False)

    def _check_passive(self, call: str) -> None:
        if self._verifier_on and self._irql.current > PASSIVE_LEVEL:
            self._irql_violation(call, PASSIVE_LEVEL, driver_site(), fatal=True)

    def _init(self, DeviceInit: Any) -> WDFDEVICE_INIT:
        if DeviceInit is None:
            raise self._null("DeviceInit")
        if not isinstance(DeviceInit, WDFDEVICE_INIT):
            raise ArgumentError("DeviceInit is the WDFDEVICE_INIT EvtDriverDeviceAdd received", field="DeviceInit",
                                value=type(DeviceInit).__name__)
        return DeviceInit

    # -- WDFDEVICE_INIT -------------------------------------------------------------------------

    def WdfDeviceInitSetIoType(self, DeviceInit: Any, IoType: int) -> None:
        """Buffered (default), direct or neither for reads and writes; a filter gets the lower
        driver's type whatever it sets here."""
        init = self._init(DeviceInit)
        init.io_type = WDF_DEVICE_IO_TYPE(IoType)

    def WdfDeviceInitSetPnpPowerEventCallbacks(self, DeviceInit: Any,
                                               PnpPowerEventCallbacks: WDF_PNPPOWER_EVENT_CALLBACKS) -> None:
        init = self._init(DeviceInit)
        if PnpPowerEventCallbacks is None:
            raise self._null("PnpPowerEventCallbacks")
        init.pnp_power_callbacks = PnpPowerEventCallbacks

    def WdfDeviceInitSetFileObjectConfig(self, DeviceInit: Any, FileObjectConfig: WDF_FILEOBJECT_CONFIG,
                                         FileObjectAttributes: WDF_OBJECT_ATTRIBUTES | None = None) -> None:
        init = self._init(DeviceInit)
        if FileObjectConfig is None:
            raise self._null("FileObjectConfig")
        init.file_config = FileObjectConfig
        init.file_attributes = FileObjectAttributes

    def WdfDeviceInitSetRequestAttributes(self, DeviceInit: Any, RequestAttributes: WDF_OBJECT_ATTRIBUTES) -> None:
        """Every request the device receives gets this context (zeroed) and callbacks."""
        init = self._init(DeviceInit)
        if RequestAttributes is None:
            raise self._null("RequestAttributes")
        init.request_attributes = RequestAttributes

    def WdfDeviceInitSetExclusive(self, DeviceInit: Any, IsExclusive: bool) -> None:
        self._init(DeviceInit).exclusive = bool(IsExclusive)

    def WdfFdoInitSetFilter(self, DeviceInit: Any) -> None:
        """A filter: requests with no queue for their type pass to the next-lower driver."""
        init = self._init(DeviceInit)
        init.filter = True
        init.power_policy_owner = False

    def WdfDeviceInitAssignName(self, DeviceInit: Any, DeviceName: str | None) -> int:
        self._init(DeviceInit).name = DeviceName
        return NTSTATUS.STATUS_SUCCESS

    # -- WdfDeviceCreate --------------------------------------------------------------------------

    def WdfDeviceCreate(self, DeviceInit: Any, DeviceAttributes: WDF_OBJECT_ATTRIBUTES | None, *,
                        Device: Any = OUT) -> tuple[int, int | None]:
        """-> (status, device). PASSIVE_LEVEL only. The device joins its stack above the devices
        already there; its local I/O target is the next-lower device."""
        driver = self._require_driver()
        init = self._init(DeviceInit)
        if Device is None:
            raise self._null("Device")
        self._check_passive("WdfDeviceCreate")
        if init.used:
            return STATUS_INVALID_DEVICE_STATE, None
        status = validate_object_attributes(
            DeviceAttributes, FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED | FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED)
        if status:
            return status, None
        if DeviceAttributes is not None and DeviceAttributes.ParentObject:
            return NTSTATUS.STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED, None
        level, scope = effective_constraints(DeviceAttributes, DRIVER_EXECUTION_LEVEL, DRIVER_SYNCHRONIZATION_SCOPE)
        site = driver_site()
        device = _new_device(self, site, init, level, scope)
        status = self._commit_new(device, DeviceAttributes, driver, site)
        if status:
            return status, None
        init.used = True
        stack = init.stack
        if stack.devices:
            device.lower = stack.top
            if device.filter:
                device.io_type = stack.bottom.io_type
        stack.devices.append(device)
        if init.name:
            self.io_manager._add_name(init.name, stack)
        from ..iotarget import IoTarget
        target = IoTarget(self, site, device, kind="local")
        target.open_on(device.lower, stack)
        self._commit(target, None, device)
        device.local_target = target
        return NTSTATUS.STATUS_SUCCESS, device.handle

    # -- the device --------------------------------------------------------------------------------

    def _device(self, handle: int) -> Device:
        return self._object(handle, FX_TYPE_DEVICE)

    def WdfDeviceGetDefaultQueue(self, Device: int) -> int | None:
        device = self._device(Device)
        return device.default_queue.handle if device.default_queue is not None else None

    def WdfDeviceGetIoTarget(self, Device: int) -> int:
        return self._device(Device).local_target.handle

    def WdfDeviceGetDriver(self, Device: int) -> int:
        self._device(Device)
        return self._require_driver().handle

    def WdfDeviceCreateDeviceInterface(self, Device: int, InterfaceClassGUID: str,
                                       ReferenceString: str | None = None) -> int:
        """The interface (a GUID string) names the device's stack for IoManager.open and remote targets."""
        device = self._device(Device)
        self._check_passive("WdfDeviceCreateDeviceInterface")
        if not InterfaceClassGUID:
            raise self._null("InterfaceClassGUID")
        device.interfaces.append((str(InterfaceClassGUID), ReferenceString))
        self.io_manager._add_name(str(InterfaceClassGUID), device.stack)
        return NTSTATUS.STATUS_SUCCESS

    def WdfDeviceCreateSymbolicLink(self, Device: int, SymbolicLinkName: str) -> int:
        device = self._device(Device)
        self._check_passive("WdfDeviceCreateSymbolicLink")
        if not SymbolicLinkName:
            raise self._null("SymbolicLinkName")
        device.symbolic_links.append(str(SymbolicLinkName))
        self.io_manager._add_name(str(SymbolicLinkName), device.stack)
        return NTSTATUS.STATUS_SUCCESS

    def WdfDeviceConfigureRequestDispatching(self, Device: int, Queue: int, RequestType: int) -> int:
        """Route one request type to a queue; a type already routed: STATUS_WDF_BUSY [I]."""
        device = self._device(Device)
        queue = self._queue(Queue)
        if queue.device is not device:
            self._dbg_break("ConfigureDispatchingOtherDevice",
                            f"{queue.describe()} belongs to another device than {device.describe()}", queue)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        major = int(RequestType)
        if major not in _QUEUE_TYPES:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        if not queue.handles(major):
            self._dbg_break("DispatchingWithoutHandler", f"{queue.describe()} has no EvtIoDefault or callback for"
                            f" request type 0x{major:x} (FxPkgIo::ConfigureDynamicDispatching)", queue)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if major in device.dispatching:
            return 0xC0200204  # STATUS_WDF_BUSY
        device.dispatching[major] = queue
        return NTSTATUS.STATUS_SUCCESS

    def WdfDeviceAssignS0IdleSettings(self, Device: int, Settings: WDF_DEVICE_POWER_POLICY_IDLE_SETTINGS) -> int:
        """Accepted and kept (the emulated device never idles out of D0)."""
        device = self._device(Device)
        if Settings is None:
            raise self._null("Settings")
        if not device.init.power_policy_owner:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        device.idle_settings = Settings
        return NTSTATUS.STATUS_SUCCESS

    def WdfDeviceAssignSxWakeSettings(self, Device: int, Settings: WDF_DEVICE_POWER_POLICY_WAKE_SETTINGS) -> int:
        device = self._device(Device)
        if Settings is None:
            raise self._null("Settings")
        if not device.init.power_policy_owner:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        device.wake_settings = Settings
        return NTSTATUS.STATUS_SUCCESS

    # -- file objects -------------------------------------------------------------------------------

    def WdfFileObjectGetDevice(self, FileObject: int) -> int:
        return self._object(FileObject, FX_TYPE_FILEOBJECT).device.handle

    def WdfRequestGetFileObject(self, Request: int) -> int | None:
        request = self._object(Request, 0x1008)
        file = getattr(request, "file", None)
        return file.handle if file is not None else None

    def WdfFileObjectGetFileName(self, FileObject: int) -> str:
        return self._object(FileObject, FX_TYPE_FILEOBJECT).file_name



def _new_device(fx: Any, site: Any, init: WDFDEVICE_INIT, level: int, scope: int) -> Device:
    """Device(...) from WdfDeviceCreate, whose output parameter shadows the class name."""
    return Device(fx, site, init, level, scope)
