"""What a scenario run produced: :class:`ScenarioResult` (verdict, steps,
findings, refusals, notes) and the verdict table. Kept apart from the runner so
that reports, bundles and the pytest plugin read results without importing the
machinery that boots guests.

Verdicts: PASS when every step saw what it expects and the findings,
refusals and injected faults are exactly the expected ones; FAIL otherwise;
ERROR when the platform itself broke (the guest did not boot, an agent
command failed).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"


@dataclass
class StepResult:
    index: int
    kind: str
    line: int
    ok: bool
    detail: str
    seconds: float
    # Wall-clock start (time.time(), the DMA trace's clock), so a report can put the
    # step on the same timeline as the device's records. The runner makes a result
    # right when the step ends, so the start is "now minus its duration" when not given.
    started: float | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = time.time() - self.seconds

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "line": self.line, "ok": self.ok,
                "detail": self.detail, "seconds": round(self.seconds, 6),
                "started": self.started}          # exact: a JSON float round-trips


@dataclass
class ScenarioResult:
    scenario: str
    path: str
    guest: str
    verdict: str
    problems: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)      # timing bounds, leak report...
    seconds: float = 0.0
    boot_seconds: float | None = None                   # None: ran on a guest already up
    brief: str = ""                                     # summary() when only that is known
    # What the run left behind for reports and bundles (orchestrator.evidence.Evidence):
    # structured findings, the device's trace, the pool map; None when nothing ran.
    evidence: Any = None

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def summary(self) -> str:
        """One line for the verdict table: why it failed, or what it did."""
        if self.brief:
            return self.brief
        if self.problems:
            return self.problems[0]
        return f"{len(self.steps)} steps" + (f", {len(self.findings)} finding(s) as expected"
                                             if self.findings else "")

    def explain(self) -> str:
        """Everything a reader needs when it failed."""
        lines = [f"{self.verdict} {self.scenario} on {self.guest} ({self.path})"]
        lines += [f"  problem: {p}" for p in self.problems]
        for step in self.steps:
            lines.append(f"  {'ok  ' if step.ok else 'FAIL'} step {step.index} {step.kind} "
                         f"(line {step.line}, {step.seconds:.3f} s): {step.detail}")
        lines += [f"  finding: {f}" for f in self.findings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "path": self.path, "guest": self.guest,
                "verdict": self.verdict, "problems": self.problems,
                "steps": [s.to_json() for s in self.steps], "findings": self.findings,
                "refusals": self.refusals, "faults": self.faults, "notes": self.notes,
                "seconds": round(self.seconds, 3), "boot_seconds": self.boot_seconds,
                "evidence": self.evidence.to_json() if self.evidence is not None else None}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> "ScenarioResult":
        """A result as :meth:`to_json` wrote it (a child's or a shard's results file)."""
        from orchestrator.evidence import Evidence

        item = dict(item)
        steps = [StepResult(**s) for s in item.pop("steps", [])]
        evidence = item.pop("evidence", None)
        return cls(**item, steps=steps,
                   evidence=Evidence.from_json(evidence) if evidence is not None else None)


def format_table(results: list[ScenarioResult], header: str = "") -> str:
    """The verdict table: one line a scenario and guest, then the totals
    (``header``: e.g. the image's provenance, under the title)."""
    if not results:
        return "no scenario ran"
    name_w = max(len(r.scenario) for r in results)
    guest_w = max(len(r.guest) for r in results)
    lines = ["", "wdfhil verdicts", "=" * 15, *([header] if header else [])]
    for r in results:
        lines.append(f"{r.verdict:<5} {r.scenario:<{name_w}}  {r.guest:<{guest_w}}  "
                     f"{r.seconds:6.2f} s  {r.summary()}")
    counts = collections.Counter(r.verdict for r in results)
    lines.append(f"{counts[PASS]} passed, {counts[FAIL] + counts[ERROR]} failed")
    return "\n".join(lines)
