"""What a scenario run produced, kept for reports and reproduction bundles:
:class:`Evidence` (structured findings, the device's trace records, the pool
map, how the run was made) and :class:`EvidenceRecorder`, which gathers it
while the scenario runs.

The findings of a run are strings in the verdict table; a report wants them as
the verifier's records (rule, object, call site, history) and wants to show
*where* things happened: which transfers the device made and when (its DMA
trace, on the same wall clock as the steps), and which pool allocations the
framework had when a finding or a transfer hit the pool window. The recorder
gets those from public hooks only: the device's ``trace`` (a per-scenario
:class:`~device_model.trace.DmaTrace` when the session runs without one), the
pool's ``on_allocate``/``on_free`` lists, and the framework's findings list.
Nothing here holds guest-RAM views past :meth:`EvidenceRecorder.finish`, so
the session can unmap guest RAM afterwards.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdfhil.private_dirs import make_private_dir, remove_tree

if TYPE_CHECKING:
    from framework_emu import Framework
    from orchestrator.dma_session import DmaSession
    from orchestrator.scenario import Scenario
    from orchestrator.scenario_result import ScenarioResult

# A scenario can make the device write many records (every refused descriptor is one);
# reports show the first ones and say how many were left out.
MAX_EVENTS = 5000
# Bundles hold the pool window's pages that the run allocated, up to this much.
MAX_POOL_DUMP = 16 << 20
PAGE = 4096
POOL_HEADER = 16      # framework_emu.pool.POOL_HEADER_SIZE: before every small block
SMALL_LIMIT = PAGE - POOL_HEADER
# Step arguments that name what a step allocates (the pool map labels allocations with them).
_NAMING_ARGS = ("memory", "request", "buffer", "object")


def site_json(site: Any) -> dict[str, Any] | None:
    """A framework call site (filename, line) as ``{"file", "line"}``."""
    if not site:
        return None
    filename, line = site
    return {"file": str(filename), "line": int(line)}


def format_site_json(site: dict[str, Any] | None) -> str:
    """``file:line`` of :func:`site_json`'s form (the file's name only)."""
    if not site:
        return "<unknown>"
    return f"{Path(site['file']).name}:{site['line']}"


def finding_json(finding: Any, name: str | None = None) -> dict[str, Any]:
    """A finding as plain data: rule, severity, message, object (``name``: the
    scenario's name for it), call site and history, count, status, and the bug
    check ``code`` of a driver's BugCheck finding."""
    from framework_emu.pooltag import format_tag

    handle, kind = getattr(finding, "handle", None), getattr(finding, "object_kind", None)
    tag = getattr(finding, "tag", None)
    obj = None
    if handle is not None or kind or name:
        obj = {"name": name, "kind": kind, "handle": handle,
               "tag": format_tag(tag) if tag else None}
    out = {"rule": finding.rule, "severity": finding.severity, "message": finding.message,
           "site": site_json(getattr(finding, "site", None)), "object": obj,
           "history": [{"event": event, "site": site_json(site)}
                       for event, site in (getattr(finding, "history", None) or [])],
           "count": getattr(finding, "count", 1), "status": getattr(finding, "status", None)}
    if getattr(finding, "code", None) is not None:
        out["code"] = finding.code
    access = getattr(finding, "access", None) or getattr(getattr(finding, "bugcheck", None),
                                                         "access", None)
    if access is not None:
        out["access"] = access_json(access)
        out["site"] = out["site"] or site_json(access.site)   # a page fault's only site
    return out


def access_json(access: Any) -> dict[str, Any]:
    """Where an offending CPU access went (framework_emu.BadAccess) as plain data,
    with the address space and, through the direct map (``va = kva_base + gpa``),
    the guest-physical address, so the pool map can place it in the window too."""
    from framework_emu.core import KVA_DIRECT_MAP_BASE
    from framework_emu.system_ptes import SYSTEM_PTE_BASE, SystemPteSpace

    out = access.to_json()
    direct = KVA_DIRECT_MAP_BASE <= access.address < SYSTEM_PTE_BASE
    out["space"] = ("direct map" if direct else "system-PTE space"
                    if SystemPteSpace.holds(access.address) else "kernel address")
    out["gpa"] = access.address - KVA_DIRECT_MAP_BASE if direct else None
    return out


def finding_signature(finding: dict[str, Any]) -> tuple:
    """What makes two runs' findings "the same" (replay): rule, severity, object
    name and the call site's file name and line (not its folder: a bundle is
    unpacked elsewhere)."""
    site = finding.get("site") or {}
    obj = finding.get("object") or {}
    return (finding["rule"], finding["severity"], obj.get("name"),
            Path(site.get("file", "")).name, site.get("line"))


@dataclass
class Evidence:
    """Everything a report or a bundle shows about one scenario run, as plain
    data (``to_json``/``from_json`` round-trip). ``files`` (logs, the trace file,
    the pool dump) are kept in memory for a bundle and never go into JSON."""

    started: float                      # wall clock (time.time()) when the scenario began
    ended: float
    findings: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)   # device trace, "t" relative
    events_dropped: int = 0
    pool: dict[str, Any] | None = None  # window, allocations, transfers into it
    run: dict[str, Any] = field(default_factory=dict)            # guest, image, QEMU, seeds
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"started": self.started, "ended": self.ended, "findings": self.findings,
                "events": self.events, "events_dropped": self.events_dropped,
                "pool": self.pool, "run": self.run}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> "Evidence":
        return cls(started=item["started"], ended=item["ended"],
                   findings=list(item.get("findings", [])), events=list(item.get("events", [])),
                   events_dropped=item.get("events_dropped", 0), pool=item.get("pool"),
                   run=dict(item.get("run", {})))


# -- gathering it ------------------------------------------------------------------------
class PoolRecorder:
    """Every pool allocation the frameworks made during the scenario (the runner's
    and each driver's: they carve the same pool window), with when it was made and
    freed (the pools' own hooks; no framework is kept)."""

    def __init__(self, base: int, size: int) -> None:
        self.base, self.size = base, size
        self.allocations: dict[int, dict[str, Any]] = {}      # serial (ours) -> record
        self._live: dict[tuple[int, int], int] = {}            # (pool, va) -> serial
        self._watched: set[int] = set()

    def watch(self, pool: Any) -> None:
        if id(pool) in self._watched:
            return
        self._watched.add(id(pool))
        key, kva_base = id(pool), pool.kva_base
        pool.on_allocate.append(lambda allocation: self._allocated(key, kva_base, allocation))
        pool.on_free.append(lambda allocation: self._freed(key, allocation))

    def _allocated(self, key: int, kva_base: int, allocation: Any) -> None:
        from framework_emu.pooltag import format_tag

        gpa = allocation.va - kva_base
        small = 0 < allocation.size <= SMALL_LIMIT
        if small:
            align = 64 if allocation.pool_type & 4 else 16      # cache-aligned pool types
            header = [gpa - POOL_HEADER, POOL_HEADER]
            end = gpa + -(-allocation.size // align) * align
        else:
            header = None
            end = gpa + -(-max(allocation.size, 1) // PAGE) * PAGE
        serial = len(self.allocations) + 1
        self.allocations[serial] = {
            "serial": serial, "gpa": gpa, "size": allocation.size,
            "tag": format_tag(allocation.tag), "pool_type": allocation.pool_type,
            "site": site_json(allocation.site), "allocated": time.time(), "freed": None,
            # What is not the caller's: the pool header before a small block and the
            # slack up to the block's (or page's) end. A transfer there is an overrun.
            "header": header, "slack": [gpa + allocation.size, end - gpa - allocation.size],
            "name": None}
        self._live[(key, allocation.va)] = serial

    def _freed(self, key: int, allocation: Any) -> None:
        serial = self._live.pop((key, allocation.va), None)
        if serial is not None:
            self.allocations[serial]["freed"] = time.time()


@dataclass
class WindowOnly:
    """The pool window of a scenario that made no framework allocation."""

    base: int
    size: int
    allocations: dict[int, dict[str, Any]] = field(default_factory=dict)


class EvidenceRecorder:
    """Gathers one scenario's :class:`Evidence` from its session.

    ``begin`` when the scenario starts (a trace file of its own goes into the
    device unless the session already traces), ``watch_framework`` when the
    runner creates the framework, ``finish`` once the verdict is known (the
    session is still up: logs and the pool window are read then)."""

    def __init__(self, scenario: "Scenario", session: "DmaSession") -> None:
        self.scenario = scenario
        self.session = session
        self.started = time.time()
        self._folder: Path | None = None
        self._trace = None              # our DmaTrace, if we installed one
        self._trace_path: Path | None = None
        self.pool: PoolRecorder | None = None
        self._findings: list[dict[str, Any]] = []
        self._traced: list[Any] = []     # devices writing into our trace
        self.begin()

    def begin(self) -> None:
        from device_model.trace import DmaTrace

        device = self.session.device
        if device is None:
            return
        existing = device.trace
        if existing is not None and not existing.closed:
            self._trace_path = existing.path        # the session's own trace: read our slice
            return
        # A run folder (0700, with this process's liveness lock: `wdfhil vm sweep`
        # removes it if the process is killed before finish()).
        self._folder = make_private_dir("wdfhil-evidence-")
        self._trace_path = self._folder / "trace.jsonl"
        self._trace = DmaTrace(self._trace_path)
        device.trace = self._trace
        self._traced.append(device)

    def watch_framework(self, fx: "Framework") -> None:
        """Called by the runner right after it creates the framework of the
        framework steps: its pool allocations go on the map."""
        if self.pool is None:
            self.pool = PoolRecorder(*self.session.config.pool.window)
        self.pool.watch(fx.pool)

    def watch_driver(self, driver: Any) -> None:
        """Called by the runner once the scenario's driver stack started: its
        frameworks' pools go on the map, and a bus-master device of its own
        writes into the scenario's trace too."""
        for fx in getattr(driver.runtime, "frameworks", []):
            self.watch_framework(fx)
        busmaster = getattr(driver, "busmaster", None)
        if busmaster is not None and self._trace is not None and busmaster.device.trace is None:
            busmaster.device.trace = self._trace
            self._traced.append(busmaster.device)

    def findings_made(self, findings: list[tuple[Any, str | None]]) -> None:
        """Called by the runner with its findings (framework steps' and the
        driver's) and the scenario's name for each one's object."""
        self._findings = [finding_json(finding, name) for finding, name in findings]

    def finish(self, result: "ScenarioResult") -> Evidence:
        """The evidence of the finished scenario; also ends our trace and removes
        our files. ``files`` are filled when the scenario did not pass. Called
        from the runner's ``finally``: when Ctrl-C (or an exit) is unwinding,
        only the clean-up runs, nothing is asked of the guest."""
        unwinding = sys.exc_info()[1]
        try:
            if unwinding is not None and not isinstance(unwinding, Exception):
                return Evidence(started=self.started, ended=time.time(),
                                run={"error": f"interrupted ({type(unwinding).__name__})"})
            return self._collect(result)
        except Exception as exc:    # a report must not turn a verdict into a crash
            return Evidence(started=self.started, ended=time.time(),
                            run={"error": f"evidence not collected: {exc!r}"})
        finally:
            self._release()

    def _release(self) -> None:
        """End our trace and remove our folder, with Ctrl-C and SIGTERM held: a second
        signal (a user pressing Ctrl-C twice, ``wdfhil matrix`` stopping its children
        after the terminal's SIGINT reached them) must not leave the folder behind."""
        from orchestrator.cleanup import signals_deferred

        with signals_deferred():
            self._release_now()

    def _release_now(self) -> None:
        if self._trace is not None:
            from device_model.trace import DmaTrace

            # Never None again under a device thread (it reads the attribute without
            # a lock): a closed sink takes our place and ignores writes.
            sink = DmaTrace(os.devnull)
            sink.close()
            for device in self._traced:
                if device.trace is self._trace:
                    device.trace = sink
            self._traced = []
            self._trace.close()
            self._trace = None
        if self._folder is not None:
            remove_tree(self._folder)
            self._folder = None
        self.pool = None

    def _collect(self, result: "ScenarioResult") -> Evidence:
        ended = time.time()
        if self._trace is not None:
            self._trace.flush()
        records = self._read_trace(self.started, ended)
        evidence = Evidence(started=self.started, ended=ended)
        evidence.findings = list(self._findings)
        evidence.events_dropped = max(0, len(records) - MAX_EVENTS)
        evidence.events = [{**r, "t": round(r["time"] - self.started, 6)}
                           for r in records[:MAX_EVENTS]]
        pool = self.pool
        if pool is None and self.session.config is not None:
            # No framework ran, but the device may still have written into the pool
            # window (pool_buffer steps): the map then shows the transfers alone.
            pool = WindowOnly(*self.session.config.pool.window)
        if pool is not None:
            evidence.pool = pool_map(pool, self.scenario, evidence.findings, records,
                                     self.started)
            if self.pool is None and not evidence.pool["transfers"]:
                evidence.pool = None
        evidence.run = self._run_facts()
        if result.verdict != "PASS":
            evidence.files = self._files(records, evidence)
        return evidence

    def _read_trace(self, since: float, until: float) -> list[dict[str, Any]]:
        from device_model.trace import read_trace

        if self._trace_path is None or not Path(self._trace_path).exists():
            return []
        return [r for r in read_trace(self._trace_path)
                if since - 0.001 <= r.get("time", 0.0) <= until + 0.001]

    def _run_facts(self) -> dict[str, Any]:
        """How the run was made: guest config, accelerator, QEMU, image, seeds."""
        session, vm = self.session, self.session.vm
        image = session.image
        device = self.session.device
        faults = self.scenario.device.get("faults") or {}
        return {
            "guest": guest_config_json(session.config),
            "accelerator": getattr(vm, "accelerator", None),
            "qemu_argv": list(vm.command_line) if vm is not None else [],
            "image": {"name": image.name, "digest": image.digest,
                      "provenance": image.provenance, "kernel": image.kernel_release,
                      "recipe": session.config.image,
                      "packages": image.package_versions},
            "device": {"dma_mask": getattr(device, "dma_mask", None),
                       "segment_align": getattr(device, "segment_align", None)},
            "seeds": {"faults": faults.get("seed", 0),
                      "steps": {str(s.index): s.args["seed"] for s in self.scenario.steps
                                if "seed" in s.args}},
        }

    def _files(self, records: list[dict[str, Any]], evidence: Evidence) -> dict[str, bytes]:
        """Logs, the trace and the pool window's used pages, for a bundle."""
        import json

        from orchestrator.vm import CONSOLE_LOG, QEMU_LOG

        vm = self.session.vm
        files: dict[str, bytes] = {}
        for name in (QEMU_LOG, CONSOLE_LOG):
            try:
                files[name] = (vm.run_dir / name).read_bytes()
            except (OSError, RuntimeError):
                pass
        try:                 # the guest kernel's own log (the console is kept quiet)
            files["guest-dmesg.txt"] = vm.run("dmesg", timeout=30).stdout.encode()
        except Exception:    # a dead guest: the console log is what there is
            pass
        files["trace.jsonl"] = "".join(json.dumps(r) + "\n" for r in records).encode()
        pool = evidence.pool
        if pool and pool["allocations"] and self.session.ram is not None:
            start = min(a["gpa"] for a in pool["allocations"]) // PAGE * PAGE
            end = max(a["gpa"] + a["size"] for a in pool["allocations"])
            end = min(-(-end // PAGE) * PAGE, start + MAX_POOL_DUMP)
            try:
                files["pool-window.bin"] = self.session.ram.read(start, end - start)
                pool["dump"] = {"gpa": start, "length": end - start, "file": "pool-window.bin"}
            except Exception as exc:       # the guest is gone: the bundle says so
                pool["dump"] = {"error": str(exc)}
        return files


def guest_config_json(config: Any) -> dict[str, Any]:
    """A GuestConfig as the YAML mapping that loads back to it (a bundle's guest)."""
    return {"name": config.name, "description": config.description, "machine": config.machine,
            "memory": config.memory, "cpus": config.cpus, "accelerator": config.accelerator,
            "iommu": config.iommu, "kernel_args": list(config.kernel_args),
            "pool": {"base": config.pool.base, "size": config.pool.size},
            **({"image": config.image} if config.image else {})}


# -- the pool map ------------------------------------------------------------------------------
def _overlaps(a_start: int, a_len: int, b_start: int, b_len: int) -> bool:
    return a_start < b_start + b_len and b_start < a_start + a_len


def pool_map(recorder: "PoolRecorder | WindowOnly", scenario: "Scenario", findings: list[dict[str, Any]],
             records: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """The pool window with the scenario's allocations (named after the steps
    that made them), the allocations findings are about, and every device
    transfer into the window, flagged when it touched memory that was not a live
    allocation then (a freed block, a pool header, slack: the offending transfer)."""
    steps_by_line = {step.line: step for step in scenario.steps}
    allocations = sorted(recorder.allocations.values(), key=lambda a: a["serial"])
    for alloc in allocations:
        step = steps_by_line.get((alloc["site"] or {}).get("line")) \
            if alloc["site"] and Path(alloc["site"]["file"]) == Path(scenario.path) else None
        if step is not None:
            alloc["name"] = next((str(step.args[k]) for k in _NAMING_ARGS if k in step.args),
                                 None)
            alloc["step"] = step.index
        alloc["findings"] = []
    for number, finding in enumerate(findings):
        sites = [finding.get("site")] + [h.get("site") for h in finding.get("history", [])]
        lines = {(Path(s["file"]).name, s["line"]) for s in sites if s}
        for alloc in allocations:
            site = alloc["site"]
            if site and (Path(site["file"]).name, site["line"]) in lines:
                alloc["findings"].append(number)
    base, size = recorder.base, recorder.size
    transfers = []
    for record in records:
        if record.get("type") not in ("dma", "fault"):
            continue
        inside = [[gpa, n] for gpa, n in record.get("ranges", []) if _overlaps(gpa, n, base, size)]
        if not inside:
            continue
        when = record.get("time", 0.0)
        why = _offence(inside, allocations, when)
        if record.get("type") == "fault":
            why = why or f"injected fault {record.get('kind')}"
        transfers.append({"t": round(when - started, 6), "type": record["type"],
                          "request_id": record.get("request_id"),
                          "direction": record.get("direction"), "ranges": inside,
                          "offending": why is not None, "why": why})
    for alloc in allocations:
        for key in ("allocated", "freed"):
            if alloc[key] is not None:
                alloc[key] = round(alloc[key] - started, 6)
    return {"base": base, "size": size, "allocations": allocations, "transfers": transfers}


def _offence(ranges: list[list[int]], allocations: list[dict[str, Any]], when: float) -> str | None:
    """Why a transfer into the pool window is wrong, or None: every byte it
    touched must be inside an allocation live at that moment."""
    live = [a for a in allocations
            if a["allocated"] <= when and (a["freed"] is None or a["freed"] > when)]
    for gpa, length in ranges:
        for alloc in allocations:
            if alloc["header"] and _overlaps(gpa, length, *alloc["header"]):
                return f"touches the pool header of {alloc['name'] or alloc['tag']}"
        covered = sorted((max(gpa, a["gpa"]), min(gpa + length, a["gpa"] + a["size"]))
                         for a in live if _overlaps(gpa, length, a["gpa"], a["size"]))
        cursor = gpa
        for start, end in covered:
            if start > cursor:
                break
            cursor = max(cursor, end)
        if cursor < gpa + length:
            freed = next((a for a in allocations if a["freed"] is not None and a["freed"] <= when
                          and _overlaps(cursor, 1, a["gpa"], a["size"])), None)
            if freed is not None:
                return f"touches {freed['name'] or freed['tag']} after it was freed"
            return f"touches {cursor:#x}, which no live allocation holds"
    return None
