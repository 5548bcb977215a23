"""Devices (WDFDEVICE), their init structure, file objects, and the PnP/power sequence.

A device belongs to one driver (one :class:`Framework`) and sits in a
device stack of the :class:`IoManager` (a function device, maybe filters
above it). :meth:`Device.start` and :meth:`Device.remove` call the driver's
PnP/power callbacks in the framework's order (pnpstatemachine.cpp):

- start: EvtDevicePrepareHardware, EvtDeviceD0Entry(WdfPowerDeviceD3Final),
  EvtDeviceD0EntryPostInterruptsEnabled, the power-managed queues resume,
  EvtDeviceSelfManagedIoInit (PowerStartSelfManagedIo: queues first);
- remove: EvtDeviceSelfManagedIoSuspend, power-managed queues stop
  (EvtIoStop for the requests the driver holds), EvtDeviceD0ExitPreInterruptsDisabled,
  EvtDeviceD0Exit(WdfPowerDeviceD3Final), EvtDeviceReleaseHardware
  (PnpEventRemovingDisableInterfaces), managed queues purged,
  EvtDeviceSelfManagedIoFlush, non-managed queues purged,
  EvtDeviceSelfManagedIoCleanup (PnpEventRemoved), then the device object
  is deleted (EvtCleanupCallback of its children, then its own).

Every one of them runs at PASSIVE_LEVEL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .attributes import (WDF_OBJECT_ATTRIBUTES, WdfExecutionLevelDispatch, WdfExecutionLevelInheritFromParent,
                         WdfExecutionLevelPassive, WdfSynchronizationScopeDevice,
                         WdfSynchronizationScopeInheritFromParent, WdfSynchronizationScopeNone)
from .callsite import CallSite
from .io_dispatch import CallbackLock
from .irql import PASSIVE_LEVEL
from .objects import FX_TYPE_OBJECT, FxObject

if TYPE_CHECKING:
    from .iotarget import IoTarget
    from .queue import IoQueue

FX_TYPE_DEVICE = 0x1002
FX_TYPE_QUEUE = 0x1003
FX_TYPE_STRING = 0x1007
FX_TYPE_FILEOBJECT = 0x1018
FX_TYPE_WAIT_LOCK = 0x1023
FX_TYPE_SPIN_LOCK = 0x1024
FX_TYPE_TIMER = 0x1028
FX_TYPE_IO_TARGET = 0x1200
FX_TYPE_IO_TARGET_REMOTE = 0x1201
FX_TYPE_IO_TARGET_SELF = 0x1205


class WDF_DEVICE_IO_TYPE(enum.IntEnum):
    WdfDeviceIoUndefined = 0
    WdfDeviceIoNeither = 1
    WdfDeviceIoBuffered = 2
    WdfDeviceIoDirect = 3
    WdfDeviceIoBufferedOrDirect = 4


WdfDeviceIoNeither = WDF_DEVICE_IO_TYPE.WdfDeviceIoNeither
WdfDeviceIoBuffered = WDF_DEVICE_IO_TYPE.WdfDeviceIoBuffered
WdfDeviceIoDirect = WDF_DEVICE_IO_TYPE.WdfDeviceIoDirect


class WDF_POWER_DEVICE_STATE(enum.IntEnum):
    WdfPowerDeviceInvalid = 0
    WdfPowerDeviceD0 = 1
    WdfPowerDeviceD1 = 2
    WdfPowerDeviceD2 = 3
    WdfPowerDeviceD3 = 4
    WdfPowerDeviceD3Final = 5
    WdfPowerDevicePrepareForHibernation = 6


WdfPowerDeviceD3Final = WDF_POWER_DEVICE_STATE.WdfPowerDeviceD3Final


@dataclass
class WDF_PNPPOWER_EVENT_CALLBACKS:
    EvtDeviceD0Entry: Callable[..., int] | None = None
    EvtDeviceD0EntryPostInterruptsEnabled: Callable[..., int] | None = None
    EvtDeviceD0Exit: Callable[..., int] | None = None
    EvtDeviceD0ExitPreInterruptsDisabled: Callable[..., int] | None = None
    EvtDevicePrepareHardware: Callable[..., int] | None = None
    EvtDeviceReleaseHardware: Callable[..., int] | None = None
    EvtDeviceSelfManagedIoCleanup: Callable[..., Any] | None = None
    EvtDeviceSelfManagedIoFlush: Callable[..., Any] | None = None
    EvtDeviceSelfManagedIoInit: Callable[..., int] | None = None
    EvtDeviceSelfManagedIoSuspend: Callable[..., int] | None = None
    EvtDeviceSelfManagedIoRestart: Callable[..., int] | None = None
    EvtDeviceSurpriseRemoval: Callable[..., Any] | None = None
    Size: int = 0x88


class WDF_FILEOBJECT_CLASS(enum.IntEnum):
    WdfFileObjectInvalid = 0
    WdfFileObjectNotRequired = 1
    WdfFileObjectWdfCanUseFsContext = 2
    WdfFileObjectWdfCanUseFsContext2 = 3
    WdfFileObjectWdfCannotUseFsContexts = 4


@dataclass
class WDF_FILEOBJECT_CONFIG:
    """WDF_FILEOBJECT_CONFIG_INIT(config, EvtDeviceFileCreate, EvtFileClose, EvtFileCleanup)."""

    EvtDeviceFileCreate: Callable[..., Any] | None = None
    EvtFileClose: Callable[..., Any] | None = None
    EvtFileCleanup: Callable[..., Any] | None = None
    AutoForwardCleanupClose: int = 2  # WdfUseDefault
    FileObjectClass: int = WDF_FILEOBJECT_CLASS.WdfFileObjectWdfCannotUseFsContexts
    Size: int = 0x28


@dataclass
class WDF_DEVICE_POWER_POLICY_IDLE_SETTINGS:
    IdleCaps: int = 0
    DxState: int = 4
    IdleTimeout: int = 0
    UserControlOfIdleSettings: int = 0
    Enabled: int = 2
    Size: int = 0x20


@dataclass
class WDF_DEVICE_POWER_POLICY_WAKE_SETTINGS:
    DxState: int = 4
    UserControlOfWakeSettings: int = 0
    Enabled: int = 2
    Size: int = 0x14


class WDFDEVICE_INIT:
    """What EvtDriverDeviceAdd gets: the device under construction, configured by WdfDeviceInit*
    calls and consumed by WdfDeviceCreate (a PWDFDEVICE_INIT: a Python object, not a handle)."""

    def __init__(self, fx: Any, stack: Any) -> None:
        self.fx = fx
        self.stack = stack
        self.io_type = WDF_DEVICE_IO_TYPE.WdfDeviceIoBuffered
        self.pnp_power_callbacks = WDF_PNPPOWER_EVENT_CALLBACKS()
        self.file_config: WDF_FILEOBJECT_CONFIG | None = None
        self.file_attributes: WDF_OBJECT_ATTRIBUTES | None = None
        self.request_attributes: WDF_OBJECT_ATTRIBUTES | None = None
        self.io_in_caller_context: Any = None   # EvtIoInCallerContext (neither_api.py)
        self.filter = False
        self.name: str | None = None
        self.exclusive = False
        self.power_policy_owner = True
        self.used = False

    def __repr__(self) -> str:
        return f"<WDFDEVICE_INIT for stack {self.stack.name!r}{' (filter)' if self.filter else ''}>"


class Device(FxObject):
    """WDFDEVICE: a PnP device of this driver in a device stack (the driver may not delete it)."""

    WDF_TYPE = FX_TYPE_DEVICE
    HANDLE_NAME = "WDFDEVICE"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_DEVICE})
    NO_DELETE_DDI = True

    def __init__(self, fx: Any, site: CallSite | None, init: WDFDEVICE_INIT, execution_level: int,
                 synchronization_scope: int) -> None:
        FxObject.__init__(self, fx, site)
        self.init = init
        self.stack = init.stack
        self.filter = init.filter
        self.io_type = init.io_type
        self.callbacks = init.pnp_power_callbacks
        self.file_config = init.file_config
        self.request_attributes = init.request_attributes
        self.io_in_caller_context = init.io_in_caller_context
        self.queues: list["IoQueue"] = []
        self.default_queue: "IoQueue | None" = None
        self.dispatching: dict[int, "IoQueue"] = {}
        self.local_target: "IoTarget | None" = None
        self.lower: "Device | None" = None  # the next-lower device in the stack
        self.interfaces: list[tuple[str, str | None]] = []
        self.symbolic_links: list[str] = []
        self.execution_level = execution_level
        self.synchronization_scope = synchronization_scope
        self.lock = CallbackLock(f"device lock of stack {self.stack.name}",
                                 passive=execution_level == WdfExecutionLevelPassive)
        self.started = False
        self.self_managed_io_started = False
        self.removed = False
        self.idle_settings: WDF_DEVICE_POWER_POLICY_IDLE_SETTINGS | None = None
        self.wake_settings: WDF_DEVICE_POWER_POLICY_WAKE_SETTINGS | None = None
        self.DESCRIPTION = f"{'filter' if self.filter else 'function'} device in stack {self.stack.name!r}"
        self.children = {}
        # DMA and hardware (dma_enabler.py, interrupt.py, hw_resources.py)
        self.hardware = self.stack.hardware        # the PDO's hardware: resources, registers, DMA platform
        self.alignment_requirement = 0             # DEVICE_OBJECT.AlignmentRequirement (boundary - 1)
        self.dma_enablers: list[Any] = []
        self.dma_packet_transaction: Any = None    # FxDevice::AcquireDmaPacketTransaction
        self.interrupts: list[Any] = []
        self.preparing_hardware = False
        self.resources_raw: int | None = None          # WDFCMRESLIST handles, made at the first start
        self.resources_translated: int | None = None

    def file_callback_lock(self) -> CallbackLock | None:
        """File-object callbacks share the device's lock only under device scope with the passive
        execution level (a spin lock could not be held at the PASSIVE_LEVEL they need)."""
        if (self.synchronization_scope == WdfSynchronizationScopeDevice
                and self.execution_level == WdfExecutionLevelPassive):
            return self.lock
        return None

    # -- the PnP/power sequence -------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> int:
        callback = getattr(self.callbacks, name)
        if callback is None:
            return 0
        dispatcher = self.fx.io_manager.dispatcher
        result = dispatcher.invoke(self.fx, callback, (self.handle, *args), PASSIVE_LEVEL,
                                   f"{name} of {self.describe()}")
        return int(result or 0)

    def start(self) -> int:
        """PrepareHardware (with the raw and translated resource lists), D0Entry, the interrupts
        connect (EvtInterruptEnable), D0EntryPostInterruptsEnabled, queues, SelfManagedIoInit; a
        failure status stops the start."""
        from .hw_resources import resource_lists

        raw, translated = resource_lists(self)
        for name, args in (("EvtDevicePrepareHardware", (raw, translated)),
                           ("EvtDeviceD0Entry", (WdfPowerDeviceD3Final,)),
                           ("EvtDeviceD0EntryPostInterruptsEnabled", (WdfPowerDeviceD3Final,))):
            if name == "EvtDeviceD0EntryPostInterruptsEnabled":
                status = self.connect_interrupts()
                if status & 0x80000000:
                    return status
            self.preparing_hardware = name == "EvtDevicePrepareHardware"
            try:
                status = self._call(name, *args)
            finally:
                self.preparing_hardware = False
            if status & 0x80000000:
                self.fx._log(f"{name} of {self.describe()} failed 0x{status:08X}: the device does not start")
                return status
        self.started = True
        for queue in self.queues:
            if queue.power_managed:
                queue.power_start()
        status = self._call("EvtDeviceSelfManagedIoRestart" if self.self_managed_io_started
                            else "EvtDeviceSelfManagedIoInit")
        self.self_managed_io_started = True
        return status

    def connect_interrupts(self) -> int:
        """Each WDFINTERRUPT gets its resource and connects (EvtInterruptEnable at DIRQL)."""
        from .hw_resources import assign_interrupts

        assign_interrupts(self)
        for interrupt in self.interrupts:
            status = interrupt.connect()
            if status & 0x80000000:
                return status
        return 0

    def disconnect_interrupts(self) -> None:
        for interrupt in reversed(self.interrupts):
            interrupt.disconnect()

    def remove(self) -> None:
        """The graceful removal sequence (the docstring of this module), then delete the object."""
        if self.removed:
            return
        self.removed = True
        if self.started:
            self._call("EvtDeviceSelfManagedIoSuspend")
            for queue in self.queues:
                if queue.power_managed:
                    queue.power_stop()
            self._call("EvtDeviceD0ExitPreInterruptsDisabled", WdfPowerDeviceD3Final)
            self.disconnect_interrupts()
            self._call("EvtDeviceD0Exit", WdfPowerDeviceD3Final)
        self._call("EvtDeviceReleaseHardware", self.resources_translated)
        for queue in self.queues:
            if queue.power_managed:
                queue.purge_for_remove()
        if self.self_managed_io_started:
            self._call("EvtDeviceSelfManagedIoFlush")
        for queue in self.queues:
            if not queue.power_managed:
                queue.purge_for_remove()
        if self.self_managed_io_started:
            self._call("EvtDeviceSelfManagedIoCleanup")
        self.started = False
        fx = self.fx
        with fx.io_manager.dispatcher.at(PASSIVE_LEVEL):
            fx._deleting_site = None
            FxObject.delete(self, ("<PnP manager: device removed>", 0))


class FileObject(FxObject):
    """WDFFILEOBJECT: one open of the device (the guest's open() of /dev/wdfioN)."""

    WDF_TYPE = FX_TYPE_FILEOBJECT
    HANDLE_NAME = "WDFFILEOBJECT"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_FILEOBJECT})
    NO_DELETE_DDI = True

    def __init__(self, fx: Any, site: CallSite | None, device: Device, name: str) -> None:
        FxObject.__init__(self, fx, site)
        self.device = device
        self.file_name = name
        self.DESCRIPTION = f"file object of {device.describe()}"


def effective_constraints(attributes: WDF_OBJECT_ATTRIBUTES | None, parent_level: int,
                          parent_scope: int) -> tuple[int, int]:
    """(execution level, synchronization scope) with InheritFromParent resolved."""
    level = attributes.ExecutionLevel if attributes is not None else WdfExecutionLevelInheritFromParent
    scope = attributes.SynchronizationScope if attributes is not None else WdfSynchronizationScopeInheritFromParent
    if level == WdfExecutionLevelInheritFromParent:
        level = parent_level
    if scope == WdfSynchronizationScopeInheritFromParent:
        scope = parent_scope
    return level, scope


# FxDriver's own constraints, what every device inherits unless told otherwise.
DRIVER_EXECUTION_LEVEL = WdfExecutionLevelDispatch
DRIVER_SYNCHRONIZATION_SCOPE = WdfSynchronizationScopeNone


@dataclass
class DeviceStack:
    """Devices attached to one another, bottom (the function device) first, under one name."""

    name: str
    devices: list[Device] = field(default_factory=list)
    hardware: Any = None   # the PDO's DeviceHardware (hw_resources.py), None: no resources

    @property
    def top(self) -> Device:
        return self.devices[-1]

    @property
    def bottom(self) -> Device:
        return self.devices[0]

    @property
    def direct_io(self) -> bool:
        """The stack's buffer type: the function device's (filters take the lower driver's)."""
        return self.bottom.io_type == WdfDeviceIoDirect
