"""The emulated processor's current IRQL.

There is one logical processor: the IRQL is a number the driver raises and
lowers around its work, and the verifier compares it with each call's
maximum. Lowering back to PASSIVE_LEVEL runs work that the framework had to
defer (the dispose list of objects whose cleanup must run at PASSIVE_LEVEL),
as the framework's dispose work item would.
"""

from __future__ import annotations

import enum
from typing import Callable

from .bugcheck import IRQL_NOT_GREATER_OR_EQUAL, IRQL_NOT_LESS_OR_EQUAL, BugCheck


class KIRQL(enum.IntEnum):
    PASSIVE_LEVEL = 0
    APC_LEVEL = 1
    DISPATCH_LEVEL = 2
    CMCI_LEVEL = 5
    CLOCK_LEVEL = 13
    IPI_LEVEL = 14
    HIGH_LEVEL = 15


PASSIVE_LEVEL = KIRQL.PASSIVE_LEVEL
APC_LEVEL = KIRQL.APC_LEVEL
DISPATCH_LEVEL = KIRQL.DISPATCH_LEVEL
HIGH_LEVEL = KIRQL.HIGH_LEVEL

LEVEL_NAMES = {0: "PASSIVE_LEVEL", 1: "APC_LEVEL", 2: "DISPATCH_LEVEL", 15: "HIGH_LEVEL"}


def irql_name(level: int) -> str:
    return LEVEL_NAMES.get(int(level), f"DIRQL {int(level)}")


class ProcessorIrql:
    """Current IRQL with the kernel's raise/lower rules.

    KeRaiseIrql to a lower level bug-checks IRQL_NOT_GREATER_OR_EQUAL (0x9);
    KeLowerIrql to a higher level bug-checks IRQL_NOT_LESS_OR_EQUAL (0xA) [I].
    """

    def __init__(self) -> None:
        self.current = 0
        self._at_passive: list[Callable[[], None]] = []

    def raise_to(self, new: int) -> int:
        new = int(new)
        if not 0 <= new <= HIGH_LEVEL:
            raise BugCheck(IRQL_NOT_GREATER_OR_EQUAL, (new, self.current, 0, 0),
                           f"KeRaiseIrql to invalid IRQL {new}")
        if new < self.current:
            raise BugCheck(IRQL_NOT_GREATER_OR_EQUAL, (new, self.current, 0, 0),
                           f"KeRaiseIrql to {irql_name(new)} from the higher {irql_name(self.current)}")
        old = self.current
        self.current = new
        return old

    def lower_to(self, new: int) -> None:
        new = int(new)
        if not 0 <= new <= HIGH_LEVEL or new > self.current:
            raise BugCheck(IRQL_NOT_LESS_OR_EQUAL, (new, self.current, 0, 0),
                           f"KeLowerIrql to {irql_name(new)} from the lower {irql_name(self.current)}")
        self.current = new
        if new == PASSIVE_LEVEL:
            self.run_deferred()

    def defer_until_passive(self, work: Callable[[], None]) -> None:
        """Queue work that must run at PASSIVE_LEVEL (it runs when the IRQL gets there)."""
        self._at_passive.append(work)

    def run_deferred(self) -> None:
        while self._at_passive and self.current == PASSIVE_LEVEL:
            self._at_passive.pop(0)()
