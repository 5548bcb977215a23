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


class FaultTarget(str, enum.Enum):
    """Which of a request's DMA accesses a rule hits. The echo device only moves data; the
    bus-master device also fetches each descriptor from its ring and writes its completion
    record back, both by DMA, and a rule may corrupt those instead."""

    DATA = "data"                  # the transfer itself
    DESCRIPTOR = "descriptor"      # the bus-master's fetch of the descriptor from its ring
    COMPLETION = "completion"      # the bus-master's write-back of the completion record


#: What a rule may do to a descriptor fetch or a completion write-back: corrupt one bit of
#: what is moved, or move only ``fraction`` of it (the rest of a fetch reads as zeros, the
#: rest of a record is not written).
STRUCTURE_FAULTS = frozenset({FaultKind.SHORT_TRANSFER, FaultKind.BIT_FLIP})


@dataclass(frozen=True)
class FaultRule:
    """One kind of fault, for some requests, with some probability.

    ``request_ids`` None means any request; ``opcodes`` None means WRITE and
    READ (data faults never apply to NOP); ``max_count`` caps injections.
    ``target``: which DMA access (:class:`FaultTarget`; not ``data``: BIT_FLIP and
    SHORT_TRANSFER only).
    """

    kind: FaultKind
    request_ids: frozenset[int] | None = None
    probability: float = 1.0
    opcodes: frozenset[Opcode] | None = None
    max_count: int | None = None
    delay_us: int = 1000
    fraction: float = 0.5
    target: FaultTarget = FaultTarget.DATA

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "target", FaultTarget(self.target))
        except ValueError:
            raise ConfigError(f"must be one of {[t.value for t in FaultTarget]}", field="target",
                              value=self.target) from None
        if self.target is not FaultTarget.DATA and self.kind not in STRUCTURE_FAULTS:
            raise ConfigError(f"a {self.target.value} fault is one of "
                              f"{sorted(k.value for k in STRUCTURE_FAULTS)}", field="kind", value=self.kind.value)
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
        allowed = {"kind", "request_ids", "probability", "opcodes", "max_count", "delay_us", "fraction",
                   "target"}
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
                    fraction=float(item.get("fraction", 0.5)),
                    target=item.get("target", FaultTarget.DATA))
            except ConfigError as exc:
                raise ConfigError(exc.reason, field=f"{where}.{exc.field}", value=exc.value) from None
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"bad value: {exc}", field=where, value=dict(item)) from None
            rules.append(rule)
        return cls(rules, seed=seed)

    def decide(self, request_id: int, opcode: Opcode,
               target: FaultTarget = FaultTarget.DATA) -> dict[FaultKind, FaultRule]:
        """The faults to inject into this access of this request (at most one rule per kind)."""
        chosen: dict[FaultKind, FaultRule] = {}
        with self._lock:
            for i, rule in enumerate(self.rules):
                if rule.kind in chosen or rule.target is not target or not rule.matches(request_id, opcode):
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

    def corrupt(self, target: FaultTarget, request_id: int, opcode: Opcode,
                data: bytes) -> tuple[bytes, list[InjectedFault]]:
        """``data`` as a descriptor fetch or a completion write-back (``target``) moves it under
        this plan: unchanged, one bit flipped, or cut to ``fraction`` (a fetch's missing rest
        reads as zeros; a write-back's caller writes only ``len()`` of the result); and the
        faults injected (recorded here; the caller traces them)."""
        faults = self.decide(request_id, opcode, target) if self.rules else {}
        if not faults:
            return data, []
        out = bytearray(data)
        injected = []
        if FaultKind.BIT_FLIP in faults:
            bit = self.random_below(len(out) * 8)
            out[bit >> 3] ^= 1 << (bit & 7)
            injected.append(self.record(FaultKind.BIT_FLIP, request_id, opcode, target=target.value, bit=bit))
        if FaultKind.SHORT_TRANSFER in faults:
            moved = int(len(out) * faults[FaultKind.SHORT_TRANSFER].fraction)
            injected.append(self.record(FaultKind.SHORT_TRANSFER, request_id, opcode, target=target.value,
                                        asked=len(out), transferred=moved))
            if target is FaultTarget.DESCRIPTOR:
                out[moved:] = bytes(len(out) - moved)
            else:
                del out[moved:]
        return bytes(out), injected
