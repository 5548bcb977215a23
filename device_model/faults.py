"""Seeded fault injection: which requests the device mistreats, and a record of it.

A driver's error paths only get tested if the device misbehaves on purpose,
reproducibly. A :class:`FaultPlan` holds rules (a fault kind, which requests,
a probability) and a seeded random generator; the device asks it once per
executed request and applies what it answers. Every injected fault is
recorded (here and in the DMA trace) so a failure can be tied to its cause,
and the same seed and the same request sequence inject the same faults.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from device_model.abi import Opcode
from wdfhil.errors import ConfigError

STALE_DMA_POISON = 0x5A   # what a stale DMA writes over the request's guest buffers


class FaultKind(str, enum.Enum):
    DELAY_COMPLETION = "delay_completion"          # post the completion delay_us later
    DROP_INTERRUPT = "drop_interrupt"              # post the completion, raise no interrupt for it
    SHORT_TRANSFER = "short_transfer"              # move only `fraction` of the bytes, status SHORT
    BIT_FLIP = "bit_flip"                          # flip one bit of the data moved, status OK
    STALE_DMA = "stale_dma"                        # delay_us after completing, write poison to the guest buffers
    DUPLICATE_COMPLETION = "duplicate_completion"  # post the completion twice


DATA_FAULTS = frozenset({FaultKind.SHORT_TRANSFER, FaultKind.BIT_FLIP, FaultKind.STALE_DMA})


@dataclass(frozen=True)
class FaultRule:
    """One kind of fault, for some requests, with some probability.

    ``request_ids`` None means any request; ``opcodes`` None means WRITE and
    READ (data faults never apply to NOP); ``max_count`` caps injections.
    """

    kind: FaultKind
    request_ids: frozenset[int] | None = None
    probability: float = 1.0
    opcodes: frozenset[Opcode] | None = None
    max_count: int | None = None
    delay_us: int = 1000
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError("must be between 0 and 1", field="probability", value=self.probability)
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError("must be in [0, 1)", field="fraction", value=self.fraction)
        if self.delay_us < 0:
            raise ConfigError("must be >= 0", field="delay_us", value=self.delay_us)
        if self.max_count is not None and self.max_count < 0:
            raise ConfigError("must be >= 0", field="max_count", value=self.max_count)

    def matches(self, request_id: int, opcode: Opcode) -> bool:
        if self.request_ids is not None and request_id not in self.request_ids:
            return False
        if self.opcodes is not None:
            return opcode in self.opcodes
        return opcode is not Opcode.NOP or self.kind not in DATA_FAULTS


@dataclass(frozen=True)
class InjectedFault:
    """A fault the device injected: what, to which request, with which details."""

    kind: FaultKind
    request_id: int
    opcode: str
    time: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": "fault", "time": self.time, "kind": self.kind.value,
                "request_id": self.request_id, "opcode": self.opcode, **self.detail}


class FaultPlan:
    """Rules plus a seeded generator; decides per request and records what it did."""

    def __init__(self, rules: Iterable[FaultRule] = (), *, seed: int = 0) -> None:
        self.rules = list(rules)
        self.seed = seed
        self.rng = random.Random(seed)
        self._counts = [0] * len(self.rules)
        self._injected: list[InjectedFault] = []
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, items: Iterable[Mapping[str, Any]], *, seed: int = 0) -> "FaultPlan":
        """Build from plain mappings (a scenario's YAML): kind, request_ids, probability,
        opcodes, max_count, delay_us, fraction. Bad entries raise ConfigError."""
        rules = []
        allowed = {"kind", "request_ids", "probability", "opcodes", "max_count", "delay_us", "fraction"}
        for index, item in enumerate(items):
            where = f"faults[{index}]"
            unknown = set(item) - allowed
            if unknown:
                raise ConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}",
                                  field=where, value=sorted(unknown))
            try:
                kind = FaultKind(item.get("kind"))
            except ValueError:
                raise ConfigError(f"kind must be one of {[k.value for k in FaultKind]}",
                                  field=f"{where}.kind", value=item.get("kind")) from None
            try:
                ids = item.get("request_ids")
                opcodes = item.get("opcodes")
                rule = FaultRule(
                    kind,
                    request_ids=None if ids is None else frozenset(int(i) for i in ids),
                    probability=float(item.get("probability", 1.0)),
                    opcodes=None if opcodes is None else frozenset(
                        Opcode[str(o).upper()] for o in opcodes),
                    max_count=None if item.get("max_count") is None else int(item["max_count"]),
                    delay_us=int(item.get("delay_us", 1000)),
                    fraction=float(item.get("fraction", 0.5)))
            except ConfigError as exc:
                raise ConfigError(exc.reason, field=f"{where}.{exc.field}", value=exc.value) from None
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"bad value: {exc}", field=where, value=dict(item)) from None
            rules.append(rule)
        return cls(rules, seed=seed)

    def decide(self, request_id: int, opcode: Opcode) -> dict[FaultKind, FaultRule]:
        """The faults to inject into this request (at most one rule per kind)."""
        chosen: dict[FaultKind, FaultRule] = {}
        with self._lock:
            for i, rule in enumerate(self.rules):
                if rule.kind in chosen or not rule.matches(request_id, opcode):
                    continue
                if rule.max_count is not None and self._counts[i] >= rule.max_count:
                    continue
                if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                    continue
                self._counts[i] += 1
                chosen[rule.kind] = rule
        return chosen

    def random_below(self, n: int) -> int:
        """A seeded choice in [0, n) (which bit to flip)."""
        with self._lock:
            return self.rng.randrange(n)

    def record(self, kind: FaultKind, request_id: int, opcode: Opcode, **detail: Any) -> InjectedFault:
        fault = InjectedFault(kind, request_id, opcode.name, time.time(), detail)
        with self._lock:
            self._injected.append(fault)
        return fault

    @property
    def injected(self) -> list[InjectedFault]:
        with self._lock:
            return list(self._injected)

    @property
    def active(self) -> bool:
        return bool(self.rules)
