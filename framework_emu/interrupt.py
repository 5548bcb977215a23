"""WDFINTERRUPT: the ISR at the device's IRQL, the DPC at DISPATCH_LEVEL (fxinterrupt*.cpp).

One logical processor: an interrupt is taken when the device triggers its
line, unless the processor runs at or above the interrupt's DIRQL or the
driver holds the interrupt lock (WdfInterruptAcquireLock, Synchronize, an
EvtInterruptEnable/Disable in progress); then it stays pending and is taken
when the lock is released or from the dispatcher. The ISR runs at DIRQL
holding the interrupt lock; WdfInterruptQueueDpcForIsr queues the DPC once
(a second queueing before it ran returns FALSE), and the DPC runs from the
dispatcher at DISPATCH_LEVEL -- under the device's callback lock when the
interrupt has AutomaticSerialization and the device's synchronization scope
is the device (posted again while another callback holds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .attributes import WdfSynchronizationScopeDevice
from .bugcheck import WDF_VERIFIER_FATAL_ERROR, wdf_violation
from .callsite import CallSite, driver_site, format_site
from .hw_resources import CM_PARTIAL_RESOURCE_DESCRIPTOR, DEFAULT_DEVICE_IRQL
from .irql import DISPATCH_LEVEL
from .objects import CREATED, FX_TYPE_OBJECT, FxObject

if TYPE_CHECKING:
    from .device import Device

FX_TYPE_INTERRUPT = 0x1027
SIZEOF_WDF_INTERRUPT_CONFIG = 0x60   # x64, KMDF 1.13 and later
WdfUseDefault = 2


@dataclass
class WDF_INTERRUPT_CONFIG:
    """WDF_INTERRUPT_CONFIG_INIT(config, EvtInterruptIsr, EvtInterruptDpc)."""

    EvtInterruptIsr: Callable[..., bool] | None = None
    EvtInterruptDpc: Callable[..., Any] | None = None
    SpinLock: int | None = None
    ShareVector: int = WdfUseDefault
    FloatingSave: bool = False
    AutomaticSerialization: bool = False
    EvtInterruptEnable: Callable[..., int] | None = None
    EvtInterruptDisable: Callable[..., int] | None = None
    EvtInterruptWorkItem: Callable[..., Any] | None = None
    InterruptRaw: CM_PARTIAL_RESOURCE_DESCRIPTOR | None = None
    InterruptTranslated: CM_PARTIAL_RESOURCE_DESCRIPTOR | None = None
    WaitLock: int | None = None
    PassiveHandling: bool = False
    ReportInactiveOnPowerDown: int = WdfUseDefault
    CanWakeDevice: bool = False
    Size: int = SIZEOF_WDF_INTERRUPT_CONFIG


def WDF_INTERRUPT_CONFIG_INIT(EvtInterruptIsr: Callable[..., bool] | None,
                              EvtInterruptDpc: Callable[..., Any] | None) -> WDF_INTERRUPT_CONFIG:
    return WDF_INTERRUPT_CONFIG(EvtInterruptIsr=EvtInterruptIsr, EvtInterruptDpc=EvtInterruptDpc)


class Interrupt(FxObject):
    """WDFINTERRUPT (parent: its device)."""

    WDF_TYPE = FX_TYPE_INTERRUPT
    HANDLE_NAME = "WDFINTERRUPT"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_INTERRUPT})

    def __init__(self, fx: Any, site: CallSite | None, device: "Device", config: WDF_INTERRUPT_CONFIG) -> None:
        FxObject.__init__(self, fx, site)
        self.device = device
        self.config = config
        self.translated = config.InterruptTranslated
        self.irql = DEFAULT_DEVICE_IRQL
        self.connected = False
        self.lock_holder: CallSite | None = None
        self.lock_old_irql = 0
        self.pending = 0
        self.dpc_queued = False
        self.isr_count = 0
        self.dpc_count = 0
        self.DESCRIPTION = f"interrupt of {device.describe()}"

    # -- connection (the device's power-up and power-down) -------------------------------------

    def assign(self, translated: CM_PARTIAL_RESOURCE_DESCRIPTOR | None) -> None:
        if translated is not None:
            self.translated = translated
        if self.translated is not None and self.translated.u.Interrupt is not None:
            self.irql = self.translated.u.Interrupt.Level or DEFAULT_DEVICE_IRQL

    def connect(self) -> int:
        """IoConnectInterruptEx, then EvtInterruptEnable at DIRQL under the interrupt lock."""
        hardware = self.device.hardware
        if hardware is None or hardware.interrupt is None:
            return 0
        self.connected = True
        hardware.interrupt_line.connect(self.trigger)
        status = self._under_lock("EvtInterruptEnable", self.config.EvtInterruptEnable)
        self._take_pending()
        return status

    def disconnect(self) -> int:
        if not self.connected:
            return 0
        status = self._under_lock("EvtInterruptDisable", self.config.EvtInterruptDisable)
        self.connected = False
        hardware = self.device.hardware
        if hardware is not None:
            hardware.interrupt_line.disconnect()
        return status

    def _under_lock(self, name: str, callback: Callable[..., Any] | None) -> int:
        if callback is None:
            return 0
        dispatcher = self.fx.io_manager.dispatcher
        self.lock_holder = (f"<{name}>", 0)
        try:
            return int(dispatcher.invoke(self.fx, callback, (self.handle, self.device.handle), self.irql,
                                         f"{name} of {self.describe()}") or 0)
        finally:
            self.lock_holder = None

    # -- the ISR ------------------------------------------------------------------------------------

    def trigger(self) -> None:
        """The line fired: take it now, or leave it pending. From outside any callback (the
        runtime's event loop) the DPC and whatever it starts run before this returns, as an
        IoManager call drains its work."""
        self.pending += 1
        self._take_pending()
        manager = self.fx.io_manager
        if manager.dispatcher.depth == 0:
            manager.run()

    def _can_take(self) -> bool:
        return self.connected and self.lock_holder is None and self.fx._irql.current < self.irql

    def _take_pending(self) -> None:
        while self.pending and self._can_take():
            self.pending -= 1
            self._run_isr()
        if self.pending and self.connected and self.lock_holder is None:
            # masked by the current IRQL: taken once the processor comes down (from the dispatcher)
            self.fx.io_manager.dispatcher.post(self._take_pending, 0, f"pending interrupt of {self.describe()}")

    def _run_isr(self) -> None:
        dispatcher = self.fx.io_manager.dispatcher
        self.isr_count += 1
        self.lock_holder = ("<EvtInterruptIsr>", 0)
        try:
            dispatcher.invoke(self.fx, self.config.EvtInterruptIsr, (self.handle, 0), self.irql,
                              f"EvtInterruptIsr of {self.describe()}")
        finally:
            self.lock_holder = None

    # -- the DPC --------------------------------------------------------------------------------------

    def queue_dpc(self) -> bool:
        """WdfInterruptQueueDpcForIsr: FALSE if the DPC is already queued."""
        if self.dpc_queued:
            return False
        self.dpc_queued = True
        self.fx.io_manager.dispatcher.post(self._run_dpc, DISPATCH_LEVEL, f"EvtInterruptDpc of {self.describe()}")
        return True

    def dpc_lock(self) -> Any:
        if self.config.AutomaticSerialization and self.device.synchronization_scope == WdfSynchronizationScopeDevice:
            return self.device.lock
        return None

    def _run_dpc(self) -> None:
        dispatcher = self.fx.io_manager.dispatcher
        lock = self.dpc_lock()
        if lock is not None and lock.holder is not None:
            dispatcher.post(self._run_dpc, DISPATCH_LEVEL, f"EvtInterruptDpc of {self.describe()} (lock busy)")
            return
        self.dpc_queued = False
        if self.config.EvtInterruptDpc is None or self.state is not CREATED:
            return
        self.dpc_count += 1
        dispatcher.invoke(self.fx, self.config.EvtInterruptDpc, (self.handle, self.device.handle), DISPATCH_LEVEL,
                          f"EvtInterruptDpc of {self.describe()}", lock)

    # -- the interrupt lock ---------------------------------------------------------------------------

    def acquire_lock(self, call: str) -> None:
        if self.lock_holder is not None:
            raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, self.handle, 0, 0,
                                f"{call}: the interrupt lock of {self.describe()} is already held (by"
                                f" {format_site(self.lock_holder)}); a spin lock acquired twice on one processor"
                                " deadlocks", details=self.format_history())
        self.lock_old_irql = self.fx._irql.raise_to(self.irql)
        self.lock_holder = driver_site() or ("<driver>", 0)

    def release_lock(self, call: str) -> None:
        if self.lock_holder is None:
            raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, self.handle, 0, 0,
                                f"{call}: the interrupt lock of {self.describe()} is not held")
        self.lock_holder = None
        self.fx._irql.lower_to(self.lock_old_irql)
        self._take_pending()
