"""The one logical processor that runs the drivers' callbacks, deterministically.

Concurrency model (docs/writing-a-driver.md): one CPU, no threads. Work
the real framework would run later or elsewhere (a queue presenting its
next request after a completion, a cancel notification, a timer's DPC, a
passive-level work item) is *posted* here and runs, in posting order, when
the dispatcher is drained: at the end of every I/O manager entry point
(submit, cancel, close, advance_time, ...) and whenever a driver waits
(a synchronous send, WdfIoQueueStopSynchronously, WdfTimerStop with wait).
Time is an emulated clock that moves only when the runtime advances it or
a wait needs it to (the next timer due), so a run is the same every time.

A callback is invoked at the IRQL the framework gives it, holding the
object's callback lock when its synchronization scope asks for one (a
spin lock raises to DISPATCH_LEVEL, a passive-level "mutex" does not).
When that lock is already held (the driver is inside another callback of
the same scope), the work is posted instead of running re-entrantly, as
the framework defers it.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from .bugcheck import BugCheck
from .callsite import format_site
from .errors import FrameworkStateError
from .irql import DISPATCH_LEVEL, PASSIVE_LEVEL, ProcessorIrql, irql_name
from .verifier import Finding

IRQL_UNEXPECTED_VALUE = 0xC8
TICKS_PER_MS = 10_000  # the kernel's 100-ns units
MAX_WAIT_STEPS = 100_000


class CallbackLock:
    """FxCallbackSpinLock / FxCallbackMutexLock: the presentation lock of a device or queue."""

    def __init__(self, name: str, passive: bool) -> None:
        self.name = name
        self.passive = passive
        self.holder: "str | object | None" = None   # what holds it (text, or an object whose str() is)

    @property
    def level(self) -> int:
        """The IRQL callbacks run at under this lock (a spin lock raises to DISPATCH_LEVEL)."""
        return PASSIVE_LEVEL if self.passive else DISPATCH_LEVEL


class _AtLevel:
    """Dispatcher.at's context manager: a class, not @contextlib.contextmanager, because every
    callback and posted item enters one (a generator's setup is ~3 % of a 4 KiB read)."""

    __slots__ = ("dispatcher", "level", "old")

    def __init__(self, dispatcher: "Dispatcher", level: int) -> None:
        self.dispatcher = dispatcher
        self.level = level
        self.old = 0

    def __enter__(self) -> None:
        dispatcher = self.dispatcher
        irql = dispatcher.irql
        self.old = irql.current
        irql.current = self.level
        dispatcher.depth += 1

    def __exit__(self, *exc: object) -> None:
        dispatcher = self.dispatcher
        irql = dispatcher.irql
        dispatcher.depth -= 1
        irql.current = self.old
        if self.old == PASSIVE_LEVEL:
            irql.run_deferred()


@dataclass(order=True)
class _Due:
    when: int
    seq: int
    fire: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class Dispatcher:
    """Posted work, the emulated clock and its timers, and callback invocation."""

    def __init__(self, irql: ProcessorIrql) -> None:
        self.irql = irql
        self.now = 0  # 100-ns ticks since the machine started
        self._work: collections.deque[tuple[Callable[[], None], int, str]] = collections.deque()
        self._timers: list[_Due] = []
        self._seq = itertools.count()
        self.depth = 0   # callbacks in progress
        self.findings: list[Finding] = []

    # -- posted work --------------------------------------------------------------------------

    def post(self, work: Callable[[], None], level: int, what: str) -> None:
        """Run ``work`` at ``level`` when the dispatcher is next drained."""
        self._work.append((work, int(level), what))

    def run(self) -> int:
        """Drain the posted work (what it posts runs too); the number of items run."""
        count = 0
        while self._work:
            work, level, _what = self._work.popleft()
            with self.at(level):
                work()
            count += 1
        return count

    @property
    def idle(self) -> bool:
        return not self._work

    # -- the clock ----------------------------------------------------------------------------

    def schedule(self, when: int, fire: Callable[[], None]) -> _Due:
        due = _Due(int(when), next(self._seq), fire)
        heapq.heappush(self._timers, due)
        return due

    def next_due(self) -> int | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    def advance_to(self, when: int) -> None:
        """Move the clock to ``when``, firing every timer due on the way (in time order)."""
        while True:
            self.run()
            due = self.next_due()
            if due is None or due > when:
                break
            entry = heapq.heappop(self._timers)
            self.now = max(self.now, entry.when)
            entry.fire()
        self.now = max(self.now, when)
        self.run()

    def wait_until(self, done: Callable[[], bool], deadline: int | None, what: str) -> bool:
        """Run posted work and timers until ``done()``; False if the deadline passed first.

        With no deadline and nothing left that could make progress, the wait
        would hang the real machine: FrameworkStateError says what it waited for."""
        for _ in range(MAX_WAIT_STEPS):
            self.run()
            if done():
                return True
            due = self.next_due()
            if due is None or (deadline is not None and due > deadline):
                if deadline is not None:
                    self.now = max(self.now, deadline)
                    self.run()
                    return done()
                raise FrameworkStateError(f"{what} would wait forever: nothing left to run can end the wait")
            self.advance_to(due)
        raise FrameworkStateError(f"{what}: still waiting after {MAX_WAIT_STEPS} timer expirations")

    # -- invoking driver callbacks ------------------------------------------------------------

    def at(self, level: int) -> "_AtLevel":
        """Run a block at ``level`` (a DPC, a work item, a callback), restoring the IRQL after."""
        return _AtLevel(self, int(level))

    def invoke(self, fx: Any, callback: Callable[..., Any], args: tuple, level: int, what: "str | object",
               lock: CallbackLock | None = None) -> Any:
        """Call a driver callback at ``level`` holding ``lock``; the callback must return at the
        IRQL it was called at (else IRQL_UNEXPECTED_VALUE 0xC8 [I])."""
        previous = None
        if lock is not None:
            previous = lock.holder  # nested only where the framework itself calls back under the lock
            lock.holder = what
            level = max(level, lock.level)
        try:
            with self.at(level):
                result = callback(*args)
                if self.irql.current != level:
                    site = None
                    func = getattr(callback, "__func__", callback)
                    code = getattr(func, "__code__", None)
                    if code is not None:
                        site = (code.co_filename, code.co_firstlineno)
                    raise BugCheck(IRQL_UNEXPECTED_VALUE, (self.irql.current, level, 0, 0),
                                   f"{what} returned at {irql_name(self.irql.current)}; it was called at"
                                   f" {irql_name(level)} ({format_site(site)})")
                return result
        finally:
            if lock is not None:
                lock.holder = previous
