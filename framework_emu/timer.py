"""Timers (WDFTIMER, fxtimer.cpp), spin locks, wait locks and string objects.

A timer's EvtTimerFunc runs from its DPC at DISPATCH_LEVEL, or from a
work item at PASSIVE_LEVEL when the timer's attributes say
WdfExecutionLevelPassive (set explicitly: FxTimer::Initialize does not
inherit it). With AutomaticSerialization it holds its parent's callback
lock (the device's or the queue's, when their synchronization scope gives
them one). The emulated clock (io_dispatch.py) decides when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .callsite import CallSite
from .device import FX_TYPE_SPIN_LOCK, FX_TYPE_STRING, FX_TYPE_TIMER, FX_TYPE_WAIT_LOCK
from .io_dispatch import CallbackLock
from .irql import DISPATCH_LEVEL, PASSIVE_LEVEL
from .objects import CREATED, FX_TYPE_OBJECT, FxObject

if TYPE_CHECKING:
    from .io_dispatch import _Due

TICKS_PER_MS = 10_000


@dataclass
class WDF_TIMER_CONFIG:
    EvtTimerFunc: Callable[[int], Any] | None = None
    Period: int = 0                      # ms; 0: one-shot
    AutomaticSerialization: bool = True
    TolerableDelay: int = 0
    UseHighResolutionTimer: bool = False
    Size: int = 0x20


def WDF_TIMER_CONFIG_INIT(EvtTimerFunc: Callable[[int], Any]) -> WDF_TIMER_CONFIG:
    return WDF_TIMER_CONFIG(EvtTimerFunc=EvtTimerFunc)


def WDF_TIMER_CONFIG_INIT_PERIODIC(EvtTimerFunc: Callable[[int], Any], Period: int) -> WDF_TIMER_CONFIG:
    return WDF_TIMER_CONFIG(EvtTimerFunc=EvtTimerFunc, Period=Period)


class Timer(FxObject):
    """WDFTIMER."""

    WDF_TYPE = FX_TYPE_TIMER
    HANDLE_NAME = "WDFTIMER"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_TIMER})

    def __init__(self, fx: Any, site: CallSite | None, config: WDF_TIMER_CONFIG, passive: bool,
                 lock: CallbackLock | None) -> None:
        FxObject.__init__(self, fx, site)
        self.config = config
        self.passive = passive
        self.lock = lock
        self.due: "_Due | None" = None
        self.in_callback = False
        self.DESCRIPTION = f"{'periodic' if config.Period else 'one-shot'} timer"

    @property
    def level(self) -> int:
        return PASSIVE_LEVEL if self.passive else DISPATCH_LEVEL

    def start(self, due_time: int) -> bool:
        """KeSetTimerEx: (re)arm; True if it was already armed."""
        dispatcher = self.fx.io_manager.dispatcher
        was = self.cancel_due()
        when = dispatcher.now - due_time if due_time <= 0 else due_time
        self.due = dispatcher.schedule(max(when, dispatcher.now), self._expired)
        return was

    def cancel_due(self) -> bool:
        due = self.due
        self.due = None
        if due is None or due.cancelled:
            return False
        due.cancelled = True
        return True

    def _expired(self) -> None:
        """The DPC (or the work item) is queued when the timer expires; periodic timers re-arm."""
        dispatcher = self.fx.io_manager.dispatcher
        self.due = None
        if self.config.Period:
            self.due = dispatcher.schedule(dispatcher.now + self.config.Period * TICKS_PER_MS, self._expired)
        dispatcher.post(self._run_callback, self.level, f"EvtTimerFunc of {self.describe()}")

    def _run_callback(self) -> None:
        if self.state is not CREATED or self.config.EvtTimerFunc is None:
            return
        lock = self.lock
        dispatcher = self.fx.io_manager.dispatcher
        if lock is not None and lock.holder is not None:
            dispatcher.post(self._run_callback, self.level, f"EvtTimerFunc of {self.describe()} (lock busy)")
            return
        self.in_callback = True
        try:
            dispatcher.invoke(self.fx, self.config.EvtTimerFunc, (self.handle,), self.level,
                              f"EvtTimerFunc of {self.describe()}", lock)
        finally:
            self.in_callback = False

    def dispose(self) -> None:
        self.cancel_due()
        FxObject.dispose(self)

    def free_storage(self) -> None:  # also on WdfObjectDelete's one-step path, which skips dispose
        self.cancel_due()
        FxObject.free_storage(self)


class SpinLock(FxObject):
    WDF_TYPE = FX_TYPE_SPIN_LOCK
    HANDLE_NAME = "WDFSPINLOCK"
    DESCRIPTION = "spin lock"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_SPIN_LOCK})
    owner_site: CallSite | None = None
    old_irql = 0


class WaitLock(FxObject):
    WDF_TYPE = FX_TYPE_WAIT_LOCK
    HANDLE_NAME = "WDFWAITLOCK"
    DESCRIPTION = "wait lock"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_WAIT_LOCK})
    owner_site: CallSite | None = None


class FxString(FxObject):
    WDF_TYPE = FX_TYPE_STRING
    HANDLE_NAME = "WDFSTRING"
    DESCRIPTION = "string"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_STRING})

    def __init__(self, fx: Any, site: CallSite | None, value: str) -> None:
        FxObject.__init__(self, fx, site)
        self.value = value
