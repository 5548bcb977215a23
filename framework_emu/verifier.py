"""The verifier: rule findings, and what happens when one fires.

A :class:`Finding` is a structured record: the rule, its severity, the
object (handle, kind, tag), the driver's own file:line of the offending
call, and the object's history (created where, deleted or completed where).

Two modes:

- ``"bugcheck"`` (default): a finding the rule treats as fatal stops the
  emulated machine with a WDF_VIOLATION (0x10D) whose parameter 1 is 0x3
  (verifier fatal error) unless the rule names another bug check; the
  finding rides on the exception. Warnings, and checks where the real
  framework returns a status instead (IRQL of WdfMemoryCreate), are recorded.
- ``"record"``: every finding is recorded and the call goes on as the real
  machine would (touching freed memory, returning stale data).

Findings are deduplicated per (rule, call site): a loop that repeats the
same mistake yields one finding with a count.

The verifier also keeps the buffers of completed requests in quarantine for
a while instead of returning them to the pool, so that a later access to
one is recognised deterministically (BufAfterReqCompleted*) instead of
silently reading memory that someone else got.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .bugcheck import WDF_VERIFIER_FATAL_ERROR, WDF_VIOLATION, BadAccess, BugCheck, wdf_violation
from .callsite import CallSite, format_site
from .pooltag import format_tag

if TYPE_CHECKING:
    from .objects import FxObject

MODES = ("bugcheck", "record")
QUARANTINE_REQUESTS = 64  # completed requests whose buffers stay out of the pool


@dataclass
class Finding:
    rule: str
    severity: str                      # "error" or "warning"
    message: str
    site: CallSite | None = None       # the driver's offending call
    handle: int | None = None
    object_kind: str | None = None
    tag: bytes | None = None
    history: list[tuple[str, CallSite | None]] = field(default_factory=list)
    count: int = 1
    status: int | None = None          # what the call returned because of it, if anything
    access: BadAccess | None = None    # where the offending memory access went, if one did

    def __str__(self) -> str:
        lines = [f"[{self.severity}] {self.rule} at {format_site(self.site)}: {self.message}"]
        if self.handle is not None or self.object_kind:
            what = self.object_kind or "object"
            if self.handle is not None:
                what += f" 0x{self.handle:x}"
            if self.tag:
                what += f" tag '{format_tag(self.tag)}'"
            lines.append(f"    {what}")
        for event, site in self.history:
            lines.append(f"    {event} at {format_site(site)}")
        if self.count > 1:
            lines.append(f"    (seen {self.count} times at this call site)")
        return "\n".join(lines)


def finding_for(rule: str, severity: str, message: str, site: CallSite | None,
                obj: "FxObject | None" = None, *, status: int | None = None,
                history: list[tuple[str, CallSite | None]] | None = None) -> Finding:
    """A finding about ``obj`` (its handle, kind, tag and history filled in)."""
    if obj is None:
        return Finding(rule, severity, message, site, status=status, history=history or [])
    return Finding(rule, severity, message, site, handle=obj.handle, object_kind=obj.HANDLE_NAME,
                   tag=obj.tag or None, history=history if history is not None else obj.history(),
                   status=status)


@dataclass
class QuarantinedBuffer:
    start: int
    end: int
    request: "FxObject"                 # the completed request
    release: Callable[[], None]         # gives the memory back to the pool


class Verifier:
    """Findings, the mode, and the quarantine of completed requests' buffers."""

    def __init__(self, enabled: bool, mode: str) -> None:
        if mode not in MODES:
            from .errors import ArgumentError

            raise ArgumentError(f"verifier_mode is one of {', '.join(MODES)}", field="verifier_mode", value=mode)
        self.enabled = enabled
        self.mode = mode
        self.findings: list[Finding] = []
        self._by_site: dict[tuple[str, CallSite | None], Finding] = {}
        self.parent_warned: dict[CallSite | None, Finding] = {}  # ParentObjectCheck by call site (hot path)
        self._starts: list[int] = []
        self._quarantine: dict[int, QuarantinedBuffer] = {}
        self._quarantine_order: collections.deque[list[int]] = collections.deque()

    def report(self, finding: Finding, *, fatal: bool,
               bugcheck: tuple[int, tuple[int, int, int, int]] | None = None) -> Finding:
        """Record ``finding``; raise a BugCheck if it is fatal and the mode says so."""
        key = (finding.rule, finding.site)
        known = self._by_site.get(key)
        if known is not None:
            known.count += 1
            finding = known
        else:
            self._by_site[key] = finding
            self.findings.append(finding)
        if fatal and self.mode == "bugcheck":
            code, params = bugcheck or (WDF_VIOLATION, (WDF_VERIFIER_FATAL_ERROR, finding.handle or 0, 0, 0))
            details = "\n".join(str(finding).splitlines()[1:])
            if code == WDF_VIOLATION:
                raise wdf_violation(params[0], params[1], params[2], params[3],
                                    f"{finding.rule}: {finding.message} (at {format_site(finding.site)})",
                                    finding=finding, details=details)
            raise BugCheck(code, params, f"{finding.rule}: {finding.message} (at {format_site(finding.site)})",
                           finding=finding, details=details)
        return finding

    def parent_object_check(self, site: CallSite | None, memory: "FxObject") -> None:
        """ParentObjectCheck: WdfMemoryCreate without a parent, one finding per call site
        (counted). Looked up by site first: this runs on every such WdfMemoryCreate."""
        known = self.parent_warned.get(site)
        if known is not None:
            known.count += 1
            return
        self.parent_warned[site] = self.report(Finding(
            "ParentObjectCheck", "warning",
            "WdfMemoryCreate without a ParentObject: the memory lives until the driver unloads",
            site, handle=memory.handle, object_kind=memory.HANDLE_NAME, tag=memory.tag), fatal=False)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def clear(self) -> None:
        self.findings.clear()
        self._by_site.clear()
        self.parent_warned.clear()

    # -- quarantine of completed requests' buffers --------------------------------------

    def quarantine(self, request: "FxObject", ranges: list[tuple[int, int]],
                   release: Callable[[int], None]) -> None:
        """Keep ``ranges`` (va, size) of a completed request out of the pool for a while (a request
        with none takes no place: the last QUARANTINE_REQUESTS requests *with buffers* are kept)."""
        if not ranges:
            return
        starts = []
        for va, size in ranges:
            entry = QuarantinedBuffer(va, va + max(size, 1), request, lambda va=va: release(va))
            self._quarantine[va] = entry
            bisect.insort(self._starts, va)
            starts.append(va)
        self._quarantine_order.append(starts)
        while len(self._quarantine_order) > QUARANTINE_REQUESTS:
            self._evict(self._quarantine_order.popleft())

    def _evict(self, starts: list[int]) -> None:
        for va in starts:
            entry = self._quarantine.pop(va)
            del self._starts[bisect.bisect_left(self._starts, va)]
            entry.release()

    def release_range(self, va: int, length: int) -> None:
        """Give back quarantined buffers overlapping ``[va, va+length)``: their owner reused the
        memory legitimately (a guest kernel handing the same buffer to its next request)."""
        hit = [start for start in self._starts if start < va + max(length, 1) and self._quarantine[start].end > va]
        if not hit:
            return
        for group in self._quarantine_order:
            group[:] = [start for start in group if start not in hit]
        for start in hit:
            entry = self._quarantine.pop(start)
            del self._starts[bisect.bisect_left(self._starts, start)]
            entry.release()

    def release_quarantine(self) -> None:
        """Give every quarantined buffer back (driver unload)."""
        while self._quarantine_order:
            self._evict(self._quarantine_order.popleft())

    def quarantined(self, va: int, length: int = 1) -> QuarantinedBuffer | None:
        """The quarantined buffer that ``[va, va+length)`` touches, if any."""
        starts = self._starts
        if not starts:
            return None
        i = bisect.bisect_right(starts, va + max(length, 1) - 1) - 1
        if i < 0:
            return None
        entry = self._quarantine[starts[i]]
        return entry if entry.end > va else None
