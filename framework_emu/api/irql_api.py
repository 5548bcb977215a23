"""The current IRQL: KeGetCurrentIrql, KeRaiseIrql, KeLowerIrql."""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..irql import DISPATCH_LEVEL


class IrqlApi:
    def KeGetCurrentIrql(self) -> int:
        return self._irql.current

    def KeRaiseIrql(self, NewIrql: int) -> int:
        """Raise to NewIrql and return the old IRQL (C: the OldIrql out parameter)."""
        return self._irql.raise_to(NewIrql)

    def KeLowerIrql(self, NewIrql: int) -> None:
        """Lower back; reaching PASSIVE_LEVEL runs deferred disposal."""
        self._irql.lower_to(NewIrql)

    def KeRaiseIrqlToDpcLevel(self) -> int:
        return self._irql.raise_to(DISPATCH_LEVEL)

    @contextlib.contextmanager
    def irql(self, level: int) -> Iterator[int]:
        """``with fx.irql(DISPATCH_LEVEL):`` raise for the block, lower after (also on error)."""
        old = self._irql.raise_to(level)
        try:
            yield old
        finally:
            if self._irql.current >= old:
                self._irql.lower_to(old)
