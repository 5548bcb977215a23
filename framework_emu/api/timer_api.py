"""Timers, locks, strings and the small calls drivers make around their I/O
(fxtimerapi.cpp, fxspinlockapi.cpp, fxwaitlockapi.cpp, fxstringapi.cpp, fxdriverapi.cpp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attributes import WDF_OBJECT_ATTRIBUTES, WdfExecutionLevelPassive
from ..bugcheck import WDF_VERIFIER_FATAL_ERROR, wdf_violation
from ..callsite import driver_site, format_site
from ..core import OUT
from ..device import FX_TYPE_SPIN_LOCK, FX_TYPE_STRING, FX_TYPE_TIMER, FX_TYPE_WAIT_LOCK, Device
from ..errors import FrameworkStateError
from ..io_request import STATUS_TIMEOUT
from ..irql import APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL
from ..ntstatus import NTSTATUS
from ..objects import FX_TYPE_OBJECT
from ..queue import IoQueue
from ..timer import WDF_TIMER_CONFIG, FxString
from ..timer import SpinLock as SpinLockObj
from ..timer import Timer as TimerObj
from ..timer import WaitLock as WaitLockObj
from ..verifier import Finding
from .validation import validate_object_attributes

STATUS_WDF_PARENT_NOT_SPECIFIED = 0xC0200212
STATUS_WDF_INCOMPATIBLE_EXECUTION_LEVEL = 0xC020020C
MAXLONG = 0x7FFFFFFF
EMULATED_KMDF_VERSION = (1, 33)


@dataclass
class WDF_DRIVER_VERSION_AVAILABLE_PARAMS:
    MajorVersion: int = 1
    MinorVersion: int = 0
    Size: int = 0x0C


class TimerApi:
    """WdfTimer*, WdfSpinLock*, WdfWaitLock*, WdfString*, and a few kernel routines."""

    def WdfTimerCreate(self, Config: WDF_TIMER_CONFIG, Attributes: WDF_OBJECT_ATTRIBUTES | None, *,
                       Timer: Any = OUT) -> tuple[int, int | None]:
        """-> (status, timer). A ParentObject is required (STATUS_WDF_PARENT_NOT_SPECIFIED) and must
        be a device or have one above it (STATUS_INVALID_DEVICE_REQUEST); Period above MAXLONG:
        STATUS_INVALID_PARAMETER; AutomaticSerialization with a passive-level parent lock and a
        dispatch-level timer: STATUS_WDF_INCOMPATIBLE_EXECUTION_LEVEL (FxTimer::_GetEffectiveLock)."""
        self._require_driver()
        if Attributes is None or not Attributes.ParentObject:
            return STATUS_WDF_PARENT_NOT_SPECIFIED, None
        parent = self._object(Attributes.ParentObject, FX_TYPE_OBJECT)
        if Config is None:
            raise self._null("Config")
        if Timer is None:
            raise self._null("Timer")
        self._check_dispatch("WdfTimerCreate")
        if Config.Size != 0x20:
            return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH, None
        if Config.Period > MAXLONG or Config.TolerableDelay > MAXLONG:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        status = validate_object_attributes(Attributes, 0x2)  # execution level allowed
        if status:
            return status, None
        owner = parent
        while owner is not None and not isinstance(owner, (Device, IoQueue)):
            owner = owner.parent
        if owner is None:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
        passive = Attributes.ExecutionLevel == WdfExecutionLevelPassive
        lock = None
        if Config.AutomaticSerialization:
            lock = owner.callback_lock() if isinstance(owner, IoQueue) else (
                owner.lock if owner.synchronization_scope == 2 else None)  # WdfSynchronizationScopeDevice
            if lock is not None and lock.passive and not passive:
                return STATUS_WDF_INCOMPATIBLE_EXECUTION_LEVEL, None
            if lock is not None and not lock.passive and passive:
                return STATUS_WDF_INCOMPATIBLE_EXECUTION_LEVEL, None
        site = driver_site()
        timer = TimerObj(self, site, Config, passive, lock)
        status = self._commit_new(timer, Attributes, parent, site)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, timer.handle

    def WdfTimerStart(self, Timer: int, DueTime: int) -> bool:
        """DueTime in 100-ns units, negative relative (WDF_REL_TIMEOUT_IN_MS); True if it was armed."""
        timer = self._object(Timer, FX_TYPE_TIMER)
        self._check_dispatch("WdfTimerStart")
        return timer.start(int(DueTime))

    def WdfTimerStop(self, Timer: int, Wait: bool) -> bool:
        """Disarm; with Wait, also let a queued callback finish (PASSIVE_LEVEL only, never from the
        timer's own callback: FxTimer::Stop's verifier checks). True if the timer was armed."""
        timer = self._object(Timer, FX_TYPE_TIMER)
        if Wait:
            if timer.in_callback:
                self._dbg_break("TimerStopWaitInCallback", f"WdfTimerStop(Wait=TRUE) from {timer.describe()}'s own"
                                " callback: deadlock", timer)
                return False
            if self._verifier_on and self._irql.current != PASSIVE_LEVEL:
                self._dbg_break("TimerStopWaitAbovePassive", "WdfTimerStop(Wait=TRUE) above PASSIVE_LEVEL", timer)
                return False
        was = timer.cancel_due()
        if Wait:
            self.io_manager.dispatcher.run()
        return was

    def WdfTimerGetParentObject(self, Timer: int) -> int:
        return self._object(Timer, FX_TYPE_TIMER).parent.handle

    # -- spin locks and wait locks ------------------------------------------------------------------

    def WdfSpinLockCreate(self, SpinLockAttributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                          SpinLock: Any = OUT) -> tuple[int, int | None]:
        self._require_driver()
        if SpinLock is None:
            raise self._null("SpinLock")
        self._check_dispatch("WdfSpinLockCreate")
        status = validate_object_attributes(SpinLockAttributes)
        if status:
            return status, None
        parent = None
        if SpinLockAttributes is not None and SpinLockAttributes.ParentObject:
            parent = self._object(SpinLockAttributes.ParentObject, FX_TYPE_OBJECT)
        site = driver_site()
        lock = _new(SpinLockObj, self, site)
        status = self._commit_new(lock, SpinLockAttributes, parent, site)
        return (status, None) if status else (NTSTATUS.STATUS_SUCCESS, lock.handle)

    def WdfSpinLockAcquire(self, SpinLock: int) -> None:
        """Raise to DISPATCH_LEVEL and own the lock; acquiring it again on the one CPU would spin
        forever: the verifier stops the machine instead [I]."""
        lock = self._object(SpinLock, FX_TYPE_SPIN_LOCK)
        site = driver_site()
        self._check_dispatch("WdfSpinLockAcquire")
        if lock.owner_site is not None:
            raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, lock.handle, 0, 0,
                                f"{lock.describe()} acquired at {format_site(site)} while already held (acquired at"
                                f" {format_site(lock.owner_site)}): deadlock on this processor")
        lock.old_irql = self._irql.raise_to(DISPATCH_LEVEL)
        lock.owner_site = site

    def WdfSpinLockRelease(self, SpinLock: int) -> None:
        lock = self._object(SpinLock, FX_TYPE_SPIN_LOCK)
        if lock.owner_site is None:
            raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, lock.handle, 0, 0,
                                f"{lock.describe()} released at {format_site(driver_site())} but not held")
        lock.owner_site = None
        self._irql.lower_to(lock.old_irql)

    def WdfWaitLockCreate(self, LockAttributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                          Lock: Any = OUT) -> tuple[int, int | None]:
        self._require_driver()
        if Lock is None:
            raise self._null("Lock")
        self._check_dispatch("WdfWaitLockCreate")
        status = validate_object_attributes(LockAttributes)
        if status:
            return status, None
        parent = None
        if LockAttributes is not None and LockAttributes.ParentObject:
            parent = self._object(LockAttributes.ParentObject, FX_TYPE_OBJECT)
        site = driver_site()
        lock = _new(WaitLockObj, self, site)
        status = self._commit_new(lock, LockAttributes, parent, site)
        return (status, None) if status else (NTSTATUS.STATUS_SUCCESS, lock.handle)

    def WdfWaitLockAcquire(self, Lock: int, Timeout: int | None = None) -> int:
        """STATUS_SUCCESS, or STATUS_TIMEOUT when a timeout was given and the lock stays held.
        PASSIVE_LEVEL unless Timeout is 0. Waiting forever for a lock held on this one CPU
        would hang the machine: FrameworkStateError."""
        lock = self._object(Lock, FX_TYPE_WAIT_LOCK)
        site = driver_site()
        if Timeout != 0:
            self._check_passive("WdfWaitLockAcquire")
        else:
            self._check_dispatch("WdfWaitLockAcquire")
        if lock.owner_site is not None:
            if Timeout is not None:
                return STATUS_TIMEOUT
            raise FrameworkStateError(f"WdfWaitLockAcquire at {format_site(site)} waits forever: {lock.describe()}"
                                      f" is held since {format_site(lock.owner_site)}")
        lock.owner_site = site
        return NTSTATUS.STATUS_SUCCESS

    def WdfWaitLockRelease(self, Lock: int) -> None:
        lock = self._object(Lock, FX_TYPE_WAIT_LOCK)
        if lock.owner_site is None:
            self._dbg_break("WaitLockNotHeld", f"WdfWaitLockRelease of {lock.describe()}, which is not held", lock)
            return
        lock.owner_site = None

    # -- strings ------------------------------------------------------------------------------------

    def WdfStringCreate(self, UnicodeString: str | None, StringAttributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                        String: Any = OUT) -> tuple[int, int | None]:
        self._require_driver()
        if String is None:
            raise self._null("String")
        self._check_passive("WdfStringCreate")
        status = validate_object_attributes(StringAttributes)
        if status:
            return status, None
        parent = None
        if StringAttributes is not None and StringAttributes.ParentObject:
            parent = self._object(StringAttributes.ParentObject, FX_TYPE_OBJECT)
        site = driver_site()
        string = FxString(self, site, UnicodeString or "")
        status = self._commit_new(string, StringAttributes, parent, site)
        return (status, None) if status else (NTSTATUS.STATUS_SUCCESS, string.handle)

    def WdfStringGetUnicodeString(self, String: int) -> str:
        return self._object(String, FX_TYPE_STRING).value

    # -- the driver, the verifier, the kernel ----------------------------------------------------------

    def WdfDriverIsVersionAvailable(self, Driver: int, VersionAvailableParams: WDF_DRIVER_VERSION_AVAILABLE_PARAMS
                                    ) -> bool:
        """The emulated framework is KMDF 1.33."""
        self._object(Driver, 0x1001)
        if VersionAvailableParams is None:
            raise self._null("VersionAvailableParams")
        want = (VersionAvailableParams.MajorVersion, VersionAvailableParams.MinorVersion)
        return want <= EMULATED_KMDF_VERSION

    def WdfVerifierDbgBreakPoint(self) -> None:
        """The driver's own "this should not happen": a finding at its call site."""
        self._verifier.report(Finding("WdfVerifierDbgBreakPoint", "error",
                                      "the driver called WdfVerifierDbgBreakPoint", driver_site()), fatal=False)

    def KeDelayExecutionThread(self, WaitMode: int, Alertable: bool, Interval: int) -> int:
        """Wait (APC_LEVEL at most): the emulated clock moves on, and timers due meanwhile fire."""
        if self._verifier_on and self._irql.current > APC_LEVEL:
            self._irql_violation("KeDelayExecutionThread", APC_LEVEL, driver_site(), fatal=True)
        dispatcher = self.io_manager.dispatcher
        delay = -Interval if Interval < 0 else max(Interval - dispatcher.now, 0)
        dispatcher.advance_to(dispatcher.now + delay)
        return NTSTATUS.STATUS_SUCCESS


def _new(cls: type, fx: Any, site: Any) -> Any:
    return cls(fx, site)
