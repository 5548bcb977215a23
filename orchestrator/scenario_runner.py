"""Running one scenario on a booted guest: :func:`run_scenario` gives a
:class:`~orchestrator.scenario_result.ScenarioResult` with its verdict, each
problem named with the step's file:line first; :func:`run_scenarios` runs many
in the order that boots least (guests come from
:class:`~orchestrator.guest_sessions.GuestSessions`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import shlex
import time
from typing import TYPE_CHECKING, Any, Callable

from device_model.abi import CompletionStatus, Opcode, Segment
from framework_emu import BugCheck
from orchestrator.agent_client import (AgentSession, CompletionRecord, GuestBuffer, IoResult,
                                       Step, Verification, pattern_bytes)
from orchestrator.evidence import EvidenceRecorder
from orchestrator.guest_sessions import GuestSessions, device_settings, fault_plan
from orchestrator.scenario import Scenario, StepSpec
from orchestrator.scenario_driver import DriverStartError, ScenarioDriver
from orchestrator.scenario_result import ERROR, FAIL, PASS, ScenarioResult, StepResult
from wdfhil.errors import GuestError, WdfhilError

if TYPE_CHECKING:
    from framework_emu import Framework
    from orchestrator.dma_session import DmaSession


DRAIN_S = 60.0          # for the guest's CLOSE of the agent's file to reach the driver
HELD_S = 120.0          # for a request issued with wait: false to reach the driver


class StepFailed(AssertionError):
    """A step saw something other than what the scenario expects."""


# -- one scenario ------------------------------------------------------------------------
def run_scenario(scenario: Scenario, guest: str, sessions: GuestSessions) -> ScenarioResult:
    """Run ``scenario`` on ``guest`` (booting it if no fitting guest is up)."""
    started = time.monotonic()
    result = ScenarioResult(scenario.name, str(scenario.path), guest, ERROR)
    try:
        shared, result.boot_seconds = sessions.acquire(scenario, guest)
    except WdfhilError as exc:
        result.problems.append(f"the guest did not come up: {_first_line(exc)}")
        result.notes.append(str(exc))
        result.seconds = time.monotonic() - started
        return result
    recorder = EvidenceRecorder(scenario, shared.session)     # reports and bundles
    try:
        ScenarioRun(scenario, shared.session, result, recorder).run()
    finally:
        shared.scenarios_run += 1
        result.seconds = time.monotonic() - started
        result.evidence = recorder.finish(result)
        if result.verdict == ERROR and not shared.pinned:
            # The platform broke under it (a dead guest, an agent that did not answer):
            # the next scenario gets a fresh boot rather than this guest.
            sessions.release((shared.guest, shared.settings))
    _timing_notes(scenario, result)
    return result


def _site_text(finding: Any) -> str:
    """Where a finding was made (file:line in function); a bug check without a finding
    names its place in its own message."""
    from framework_emu import format_site

    if finding.site is not None:
        return format_site(finding.site)
    return finding.message if getattr(finding, "code", None) is not None else format_site(None)


def _status_name(status: int | None) -> str:
    from framework_emu import NTSTATUS

    try:
        return NTSTATUS((status or 0) & 0xFFFFFFFF).name
    except ValueError:
        return f"{status:#x}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _timing_notes(scenario: Scenario, result: ScenarioResult) -> None:
    """Bounds on timing are printed, never asserted: shared CI machines are noisy."""
    bounds = scenario.expect.get("timing") or {}
    if "scenario_s" in bounds:
        took = result.seconds - (result.boot_seconds or 0.0)
        within = "within" if took <= bounds["scenario_s"] else "OVER (not a failure)"
        result.notes.append(f"timing: scenario {took:.2f} s, bound {bounds['scenario_s']} s: {within}")
    if "step_s" in bounds and result.steps:
        slowest = max(result.steps, key=lambda s: s.seconds)
        within = "within" if slowest.seconds <= bounds["step_s"] else "OVER (not a failure)"
        result.notes.append(f"timing: slowest step {slowest.index} {slowest.kind} "
                            f"{slowest.seconds:.3f} s, bound {bounds['step_s']} s: {within}")


_IRP = {"read": "IRP_MJ_READ", "write": "IRP_MJ_WRITE", "ioctl": "IRP_MJ_DEVICE_CONTROL"}


class ScenarioRun:
    """The steps of one scenario against one session; fills ``result``."""

    def __init__(self, scenario: Scenario, session: "DmaSession", result: ScenarioResult,
                 recorder: EvidenceRecorder | None = None) -> None:
        self.scenario = scenario
        self.recorder = recorder
        self.session = session
        self.result = result
        self.agent: AgentSession | None = None
        self.buffers: dict[str, GuestBuffer] = {}
        self.fx: "Framework | None" = None
        self.objects: dict[str, int] = {}       # scenario name -> framework handle
        self.names: dict[int, str] = {}         # handle -> scenario name
        self.refusals: collections.Counter[str] = collections.Counter()
        self._temp = 0
        self._sites: dict[int, Callable[..., Any]] = {}
        self.driver: ScenarioDriver | None = None
        self._named: set[int] = set()
        self.allocs: dict[str, dict[str, Any]] = {}        # buffer -> its alloc step's args
        self.background: list[tuple[StepSpec, int, str]] = []   # (step, pid, answer file)

    # -- the run -------------------------------------------------------------------
    def run(self) -> None:
        result = self.result
        failed = False
        try:
            with contextlib.ExitStack() as stack:
                if self.scenario.driver is not None:
                    self.driver = self._start_driver(stack)
                    if self.driver is None:
                        result.verdict = FAIL
                        return
                with self.session.agent.serve() as agent:
                    self.agent = agent
                    failed = self._run_steps()
                self.agent = None
                if self.driver is not None:
                    self._finish_driver()
            self._finish_framework()
            self._compare_outcomes()
        except WdfhilError as exc:
            step = self.scenario.steps[len(result.steps)] if len(result.steps) < len(
                self.scenario.steps) else None
            where = f"{self._where(step)}: {step.kind}: " if step else ""
            result.problems.append(f"{where}{_first_line(exc)}")
            result.notes.append(str(exc))
            result.verdict = ERROR
            return
        finally:
            self.fx = None
            self.agent = None
        result.verdict = FAIL if (failed or result.problems) else PASS

    def _run_steps(self) -> bool:
        """Every step in order, each timed; stops at the first that fails (True then)."""
        result = self.result
        for step in self.scenario.steps:
            begin = time.monotonic()
            try:
                detail = getattr(self, f"_step_{step.kind}")(step, step.args)
                result.steps.append(StepResult(step.index, step.kind, step.line, True,
                                               detail or "", time.monotonic() - begin))
            except (StepFailed, BugCheck) as exc:
                if isinstance(exc, BugCheck):
                    exc = StepFailed(f"bug check: {_first_line(exc)}")
                result.steps.append(StepResult(step.index, step.kind, step.line, False,
                                               str(exc), time.monotonic() - begin))
                result.problems.append(f"{self._where(step)}: {step.kind}: {exc}")
                return True
        return False

    # -- the driver under test -----------------------------------------------------------
    def _start_driver(self, stack: contextlib.ExitStack) -> ScenarioDriver | None:
        """The driver stack on /dev/wdfio0, closed by ``stack`` whatever happens; None
        (and the problem noted) when the driver itself does not start."""
        driver = ScenarioDriver(self.scenario, self.session)
        try:
            driver.start()
        except DriverStartError as exc:
            where = f"{self.scenario.path}:{self.scenario.driver.source.line}"
            self.result.problems.append(f"{where}: driver: it did not start: {_first_line(exc)}")
            self.result.notes.append(str(exc))
            return None
        stack.callback(driver.close)
        stack.callback(self._end_background)
        if self.recorder is not None:
            self.recorder.watch_driver(driver)
        return driver

    def _finish_driver(self) -> None:
        """After the agent is gone: let the guest's CLOSE reach the driver, unload it (held
        requests end ENODEV), collect the background calls, note the report."""
        endpoint = self.driver.runtime.endpoint
        try:
            endpoint.wait_for(lambda: len(endpoint.open_files) <= len(self.background),
                              DRAIN_S, "the agent's file closed")
        except WdfhilError as exc:        # the report says which files were left open
            self.result.notes.append(f"closing the driver: {_first_line(exc)}")
        report = self.driver.close()
        self._end_background(kill=False)
        if report is None:
            return
        for error in report.errors:
            self.result.problems.append(f"the guest I/O runtime failed: {error.splitlines()[-1]}")
            self.result.notes.append(error)
        for never in report.never_completed:
            self.result.notes.append(f"driver: {never}")
        for leak in report.leaks:
            self.result.notes.append(f"driver: {leak}")
        if report.files_left_open:
            self.result.notes.append(f"driver: {report.files_left_open} guest file(s) were "
                                     f"still open when it was unloaded")

    def _where(self, step: StepSpec) -> str:
        return f"{self.scenario.path}:{step.line}"

    # -- framework calls made "from" the scenario's line ---------------------------
    def _call(self, step: StepSpec, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a framework entry point so that its call site (findings, object
        histories) is the scenario file's line of this step, not this module."""
        trampoline = self._sites.get(step.line)
        if trampoline is None:
            code = compile("\n" * (step.line - 1) + "def call(f, a, k): return f(*a, **k)\n",
                           str(self.scenario.path), "exec")
            namespace: dict[str, Any] = {}
            exec(code, namespace)
            trampoline = self._sites[step.line] = namespace["call"]
        return trampoline(function, args, kwargs)

    def _framework(self) -> "Framework":
        if self.fx is None:
            from framework_emu import Framework

            self.fx = Framework(self.session.ram, service_name="WDFScenario",
                                verifier_mode="record",
                                pool_window=self.session.vm.config.pool.window)
            if self.recorder is not None:
                self.recorder.watch_framework(self.fx)
        return self.fx

    def _finish_framework(self) -> None:
        if self.fx is None:
            return
        try:
            leaks = self.fx.unload_driver()
        except BugCheck as exc:
            self.result.problems.append(f"unloading the driver: bug check: {_first_line(exc)}")
            return
        text = str(leaks).strip()
        if text:
            self.result.notes.append(f"driver unloaded: {text}")

    # -- outcomes --------------------------------------------------------------------
    def _compare_outcomes(self) -> None:
        expect, result = self.scenario.expect, self.result
        findings = list(self.fx.findings) if self.fx is not None else []
        self._named = {id(f) for f in findings}     # the driver's handles have no names
        if self.driver is not None:
            findings += self.driver.findings()
        result.findings = [self._finding_text(f) for f in findings]
        if self.recorder is not None:
            self.recorder.findings_made([(f, self._name_of(f)) for f in findings])
        wanted = list(expect.get("findings", []))
        unmatched_actual = []
        for finding in findings:
            match = next((w for w in wanted if self._finding_matches(w, finding)), None)
            if match is not None:
                wanted.remove(match)
            elif not (finding.severity == "warning" and expect.get("ignore_warnings")):
                unmatched_actual.append(finding)
        for finding in unmatched_actual:
            result.problems.append(f"unexpected finding: {self._finding_text(finding)}")
        for want in wanted:
            what = want["rule"] + (f" on {want['object']}" if "object" in want else "") + (
                f" on {want['object_kind']}" if "object_kind" in want else "") + (
                f" code {want['code']:#x}" if "code" in want else "") + (
                f" at {want['at']}" if "at" in want else "")
            result.problems.append(f"{self.scenario.path}:{want.source.line}: expected finding "
                                   f"not reported: {what}")
        result.refusals = dict(sorted(self.refusals.items()))
        if expect.get("refusals"):
            wanted_refusals = {k: v for k, v in expect["refusals"].items() if v}
            if wanted_refusals != result.refusals:
                result.problems.append(f"refusals {result.refusals or 'none'}, expected "
                                       f"{wanted_refusals or 'none'}")
        faults = (self.driver.injected_faults() if self.scenario.busmaster and self.driver
                  else self.session.device.fault_plan.injected)
        injected = collections.Counter(f.kind.value for f in faults)
        result.faults = dict(sorted(injected.items()))
        if expect.get("faults"):
            wanted_faults = {k: v for k, v in expect["faults"].items() if v}
            if wanted_faults != result.faults:
                result.problems.append(f"injected faults {result.faults or 'none'}, expected "
                                       f"{wanted_faults or 'none'}")

    def _finding_matches(self, want: dict[str, Any], finding: Any) -> bool:
        if want["rule"] != finding.rule:
            return False
        if "severity" in want and want["severity"] != finding.severity:
            return False
        if "object" in want and self._name_of(finding) != want["object"]:
            return False
        if "object_kind" in want and finding.object_kind != want["object_kind"]:
            return False
        if "code" in want and getattr(finding, "code", None) != want["code"]:
            return False
        if "at" in want:      # the call site, or the message (a leak names where it was made)
            return want["at"] in _site_text(finding) or want["at"] in finding.message
        return True

    def _name_of(self, finding: Any) -> str | None:
        return self.names.get(finding.handle) if id(finding) in self._named else None

    def _finding_text(self, finding: Any) -> str:
        name = self._name_of(finding)
        what = f" on {name}" if name else (f" on {finding.object_kind}" if finding.object_kind
                                          else "")
        return f"[{finding.severity}] {finding.rule}{what} at {_site_text(finding)}: {finding.message}"

    # -- helpers -------------------------------------------------------------------------
    def _command(self, line: str, timeout: float | None = None) -> dict[str, Any]:
        return self.agent.command(line, timeout=timeout)

    def _expect_completion(self, done: CompletionRecord, length: int, refused: str | None,
                           short: bool = False) -> str:
        if done.status is CompletionStatus.ERROR:
            self.refusals[done.reason.name] += 1
        if refused is not None:
            if done.status is not CompletionStatus.ERROR or done.reason.name != refused:
                raise StepFailed(f"expected a refusal ({refused}), the device completed "
                                 f"{done.status.name} {done.reason.name}, {done.transferred} bytes")
            return f"refused: {refused}"
        if done.status is CompletionStatus.ERROR:
            raise StepFailed(f"the device refused it: {done.reason.name}")
        if short:
            if done.status is not CompletionStatus.SHORT:
                raise StepFailed(f"expected a SHORT completion, got {done.status.name}")
            return f"SHORT: {done.transferred} of {length} bytes"
        if done.status is not CompletionStatus.OK or done.transferred != length:
            raise StepFailed(f"completed {done.status.name} with {done.transferred} of "
                             f"{length} bytes")
        return f"OK, {length} bytes"

    def _temp_name(self) -> str:
        self._temp += 1
        return f"_s{self._temp}"


    # -- guest agent steps ---------------------------------------------------------------
    def _step_alloc(self, step: StepSpec, a: dict[str, Any]) -> str:
        buf = GuestBuffer.from_result(self._command(Step.alloc(
            a["buffer"], a["size"], offset=a["offset"], where=a["where"], merge=a["merge"])))
        self.buffers[a["buffer"]] = buf
        self.allocs[a["buffer"]] = a
        if "segments" in a and len(buf.segments) != a["segments"]:
            raise StepFailed(f"{len(buf.segments)} segments, expected {a['segments']}")
        place = "above 4 GiB" if buf.above_4g and not buf.below_4g else (
            "below 4 GiB" if buf.below_4g and not buf.above_4g else "across 4 GiB")
        return (f"{buf.size} bytes at gpa {buf.gpa:#x} (offset {buf.offset} in page, "
                f"{len(buf.frames)} page(s), {place}), {len(buf.segments)} segment(s)")

    def _step_pool_buffer(self, step: StepSpec, a: dict[str, Any]) -> str:
        base, size = self.session.vm.config.pool.window
        if a["pool_offset"] + a["size"] > size:
            raise StepFailed(f"pool_offset + size ({a['pool_offset'] + a['size']:#x}) is past "
                             f"the pool window's {size:#x} bytes")
        buf = GuestBuffer.from_result(self._command(Step.phys(a["buffer"], base + a["pool_offset"],
                                                              a["size"])))
        self.buffers[a["buffer"]] = buf
        return f"{buf.size} bytes of the pool window at gpa {buf.gpa:#x}"

    def _step_fill(self, step: StepSpec, a: dict[str, Any]) -> str:
        self._command(Step.fill(a["buffer"], a["seed"]))
        return f"pattern {a['seed']}"

    def _step_memset(self, step: StepSpec, a: dict[str, Any]) -> str:
        self._command(Step.memset(a["buffer"], a["byte"]))
        return f"byte {a['byte']:#04x}"

    def _transfer(self, a: dict[str, Any], build: Callable[..., str]) -> str:
        buf = self.buffers[a["buffer"]]
        detail = ""
        for _ in range(a["count"]):
            answer = self._command(build(a["buffer"], a["device_offset"],
                                         request_id=a.get("request_id"),
                                         indirect=a.get("indirect")))
            detail = self._expect_completion(CompletionRecord.from_result(answer), buf.size,
                                             a.get("refused"), a.get("short", False))
        return detail + (f" (x{a['count']})" if a["count"] > 1 else "")

    def _step_write(self, step: StepSpec, a: dict[str, Any]) -> str:
        return self._transfer(a, Step.write)

    def _step_read(self, step: StepSpec, a: dict[str, Any]) -> str:
        return self._transfer(a, Step.read)

    def _step_verify(self, step: StepSpec, a: dict[str, Any]) -> str:
        seen = Verification.from_result(self._command(Step.verify(a["buffer"], a["seed"])))
        want_match = a["expect"] == "match"
        if seen.match != want_match:
            raise StepFailed(f"the guest found {seen.mismatches} byte(s) of {seen.checked} "
                             f"different from pattern {a['seed']} (first at offset "
                             f"{seen.first_mismatch})" if want_match else
                             "the guest found the pattern intact, expected a mismatch")
        detail = f"guest: {seen.checked} bytes {'match' if seen.match else 'differ'}"
        if a["qmp"]:
            buf = self.buffers[a["buffer"]]
            host = b"".join(self.session.read_physical(s.gpa, s.length) for s in buf.segments)
            same = host == pattern_bytes(a["seed"], buf.size)
            if same != want_match:
                raise StepFailed("QEMU's view (QMP xp) disagrees with the guest's")
            detail += "; QEMU's view (QMP xp) agrees"
        return detail

    def _step_watch(self, step: StepSpec, a: dict[str, Any]) -> str:
        seen = Verification.from_result(self._command(
            Step.watch(a["buffer"], a["seed"], timeout_ms=a["timeout_ms"]),
            timeout=a["timeout_ms"] / 1000 + 60))
        changed = bool(seen.changed) and not seen.match
        if a["expect"] == "changed" and not changed:
            raise StepFailed(f"the buffer did not change within {a['timeout_ms']} ms "
                             f"(no stale DMA seen)")
        if a["expect"] == "unchanged" and changed:
            raise StepFailed(f"the buffer changed under the guest: {seen.mismatches} byte(s) "
                             f"(a stale DMA?)")
        return (f"changed: {seen.mismatches} byte(s) differ" if changed
                else f"unchanged for {a['timeout_ms']} ms")

    def _step_device_fill(self, step: StepSpec, a: dict[str, Any]) -> str:
        self._command(Step.device_fill(a["device_offset"], a["length"], a["seed"]))
        return f"{a['length']} bytes at device offset {a['device_offset']:#x}"

    def _step_device_verify(self, step: StepSpec, a: dict[str, Any]) -> str:
        seen = Verification.from_result(self._command(
            Step.device_verify(a["device_offset"], a["length"], a["seed"])))
        if seen.match != (a["expect"] == "match"):
            raise StepFailed(f"device memory {'differs' if not seen.match else 'matches'} "
                             f"({seen.mismatches} byte(s)), expected {a['expect']}")
        return f"device memory {'matches' if seen.match else 'differs'}"

    def _step_submit(self, step: StepSpec, a: dict[str, Any]) -> str:
        ram_end = max(end for _start, end in self.session.ram.ram_ranges())
        segments = [Segment(s["gpa"] if "gpa" in s else ram_end + s["after_ram_end"], s["length"])
                    for s in a["segments"]]
        answer = self._command(Step.submit(Opcode[a["opcode"]], a["device_offset"], segments,
                                           length=a.get("length")))
        length = a.get("length", sum(s.length for s in segments))
        return self._expect_completion(CompletionRecord.from_result(answer), length,
                                       a.get("refused"))

    def _step_device_info(self, step: StepSpec, a: dict[str, Any]) -> str:
        header = self._command("info")["header"]
        if header["status_name"] != a["status"]:
            raise StepFailed(f"device status {header['status_name']}, expected {a['status']}")
        return f"device ABI {header['abi_version']}, status {header['status_name']}"

    def _step_guest_program(self, step: StepSpec, a: dict[str, Any]) -> str:
        local = self.scenario.path.parent / a["path"]
        remote = f"/tmp/wdfhil-program-{step.index}-{local.name}"
        vm = self.session.vm
        vm.put(str(local), remote)
        command = " ".join(shlex.quote(w) for w in [remote, *a["args"]])
        try:
            ran = vm.run(f"chmod 0755 {shlex.quote(remote)} && {command}", timeout=a["timeout_s"])
        except Exception:
            vm.run(f"rm -f {shlex.quote(remote)}", timeout=30)
            raise
        # (Ctrl-C or SIGTERM: no more guest commands, the run stops and its guest goes;
        # an rm here took 30 s on the command channel the interrupted program held,
        # then replaced the interrupt by its timeout, and the run went on.)
        vm.run(f"rm -f {shlex.quote(remote)}", timeout=30)
        said = f"stdout {ran.stdout[-300:]!r} stderr {ran.stderr[-300:]!r}"
        if ran.exit_code != a["exit_code"]:
            raise StepFailed(f"{local.name} exited {ran.exit_code}, expected {a['exit_code']}; "
                             f"{said}")
        for stream in ("stdout", "stderr"):
            wanted = a.get(f"{stream}_contains")
            if wanted is not None and wanted not in getattr(ran, stream):
                raise StepFailed(f"{local.name}'s {stream} lacks {wanted!r}: {said}")
        return f"{local.name} exited {ran.exit_code}"

    # -- guest I/O on the driver's node ------------------------------------------------------
    def _io_rw(self, step: StepSpec, a: dict[str, Any], build: Callable[..., str]) -> str:
        what = step.kind.replace("io_", "")
        if not a["wait"]:
            return self._issue_held(step, a, build)
        buf = self.buffers[a["buffer"]]
        start = a.get("start", 0)
        length = a.get("length", buf.size - start)
        want = a.get("result", length)
        for _ in range(a["count"]):
            done = IoResult.from_result(self._command(build(
                a["buffer"], offset=a["offset"], start=a.get("start"), length=a.get("length"))))
            self._expect_io(done, a.get("errno"), f"{what} of {length} bytes", want)
        shown = f"{a['errno']}" if "errno" in a else f"{want} bytes"
        return (f"{what} at file offset {a['offset']}: {shown}"
                + (f" (x{a['count']})" if a["count"] > 1 else ""))

    @staticmethod
    def _expect_io(done: IoResult, errno: str | None, what: str, want: int) -> None:
        if errno is not None:
            if done.errno_name != errno:
                raise StepFailed(f"{what}: returned {done.result} "
                                 f"{done.errno_name or 'no error'}, expected {errno}")
        elif done.errno or done.result != want:
            raise StepFailed(f"{what}: returned {done.result}"
                             f"{' ' + done.errno_name if done.errno else ''}, expected {want}")

    def _step_io_write(self, step: StepSpec, a: dict[str, Any]) -> str:
        return self._io_rw(step, a, Step.io_write)

    def _step_io_read(self, step: StepSpec, a: dict[str, Any]) -> str:
        return self._io_rw(step, a, Step.io_read)

    def _step_io_ioctl(self, step: StepSpec, a: dict[str, Any]) -> str:
        from framework_emu import NTSTATUS

        code = a["code"]
        line = Step.io_call(a["major"], code, input=a.get("input"), output=a.get("output"),
                            in_start=a.get("in_start"), in_length=a.get("in_length"),
                            out_start=a.get("out_start"), out_length=a.get("out_length"))
        want = NTSTATUS[a["status"]]
        for _ in range(a["count"]):
            done = IoResult.from_result(self._command(line))
            if done.result != 0:
                raise StepFailed(f"IOCTL {code:#x}: the call failed ({done.errno_name})")
            if (done.status or 0) & 0xFFFFFFFF != want:
                raise StepFailed(f"IOCTL {code:#x} completed {_status_name(done.status)}, "
                                 f"expected {a['status']}")
            if "information" in a and done.information != a["information"]:
                raise StepFailed(f"IOCTL {code:#x} returned {done.information} bytes, "
                                 f"expected {a['information']}")
        return (f"IOCTL {code:#x} (method {code & 3}): {a['status']}, information "
                f"{done.information}" + (f" (x{a['count']})" if a["count"] > 1 else ""))

    def _step_io_stress(self, step: StepSpec, a: dict[str, Any]) -> str:
        answer = self._command(Step.io_stress(a["threads"], a["count"], a["size"],
                                              page_offset=a["page_offset"], mode=a["mode"],
                                              code=a.get("code"), offset=a.get("file_offset")),
                               timeout=a["timeout_s"])
        rounds = a["threads"] * a["count"]
        if (answer["done"], answer["failed"], answer["mismatches"]) != (rounds, 0, 0):
            raise StepFailed(f"{answer['done']} of {rounds} rounds done, {answer['failed']} "
                             f"failed, {answer['mismatches']} mismatched: "
                             f"{json.dumps(answer)[:300]}")
        return (f"{a['threads']} threads x {a['count']} rounds of {a['size']} bytes "
                f"({a['mode']}), all verified in the guest")

    # -- requests the driver may hold (wait: false) --------------------------------------------
    def _issue_held(self, step: StepSpec, a: dict[str, Any], build: Callable[..., str]) -> str:
        """The call from a second agent process in the background (its own buffer, made
        like the named one); the step ends when the driver holds one request more."""
        runtime = self.driver.runtime
        alloc = self.allocs[a["buffer"]]
        name = a["buffer"]
        commands = [Step.alloc(name, alloc["size"], offset=alloc["offset"], where=alloc["where"],
                               merge=alloc["merge"]), Step.fill(name, 0)]
        commands += [build(name, offset=a["offset"], start=a.get("start"), length=a.get("length"))
                     ] * a["count"]
        output = f"/tmp/wdfhil-held-{step.index}.json"
        before = runtime.in_flight()
        argv = self.session.agent._argv()
        started = self.session.vm.run(
            f"rm -f {output}; setsid {argv} run {shlex.quote('; '.join(commands))} "
            f">{output} 2>&1 </dev/null & echo $!", timeout=60)
        try:
            pid = int(started.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise GuestError("could not start a second guest agent process",
                             command=started.command, exit_code=started.exit_code,
                             stdout=started.stdout, stderr=started.stderr) from None
        self.background.append((step, pid, output))
        deadline = time.monotonic() + HELD_S
        next_look = time.monotonic() + 1.0
        while runtime.in_flight() <= before:     # the marker: the framework holds it
            now = time.monotonic()
            if now > next_look:                  # or the call already ended (not held)
                next_look = now + 1.0
                if self.session.vm.run(f"test -s {output}", timeout=30).exit_code == 0:
                    return f"{step.kind.replace('io_', '')} issued; it ended without being held"
            if now > deadline:
                raise StepFailed(f"the request did not reach the driver within {HELD_S:.0f} s")
            time.sleep(0.05)
        return f"{step.kind.replace('io_', '')} issued; the driver holds it"

    def _end_background(self, kill: bool = True) -> None:
        """Each background call's outcome as a note (after the driver is unloaded they
        have all ended); ``kill``: end them first (the run is being torn down)."""
        background, self.background = self.background, []
        vm = self.session.vm
        for step, pid, output in background:
            if kill:
                vm.run(f"kill -9 {pid} 2>/dev/null; rm -f {output}", timeout=30)
                continue
            answer = None
            deadline = time.monotonic() + HELD_S
            while answer is None and time.monotonic() < deadline:
                text = vm.run(f"cat {output} 2>/dev/null", timeout=30).stdout.strip()
                try:
                    answer = json.loads(text.splitlines()[-1]) if text else None
                except ValueError:
                    answer = None
                if answer is None:
                    time.sleep(0.2)
            vm.run(f"kill -9 {pid} 2>/dev/null; rm -f {output}", timeout=30)
            if answer is None:
                self.result.notes.append(f"{self._where(step)}: {step.kind} (wait: false) "
                                         f"did not end after the driver was unloaded")
                continue
            ends = [r for r in answer.get("results", []) if "errno_name" in r]
            outcome = ", ".join(r["errno_name"] or f"{r['result']} bytes" for r in ends)
            self.result.notes.append(f"{self._where(step)}: {step.kind} (wait: false) "
                                     f"ended: {outcome or answer.get('error', 'no answer')}")

    # -- framework steps -------------------------------------------------------------------
    def _status(self, got: int, want: str, call: str) -> None:
        from framework_emu import NTSTATUS

        if got != NTSTATUS[want]:
            raise StepFailed(f"{call} returned {_status_name(got)}, expected {want}")

    def _step_WdfMemoryCreate(self, step: StepSpec, a: dict[str, Any]) -> str:
        from framework_emu import PoolType

        fx = self._framework()
        tag = int.from_bytes(a["tag"].encode("latin-1").ljust(4, b"\0"), "little") if "tag" in a else 0
        status, memory, va = self._call(step, fx.WdfMemoryCreate, None, PoolType[a["pool_type"]],
                                        tag, a["size"])
        self._status(status, a["status"], "WdfMemoryCreate")
        if memory:
            self.objects[a["memory"]] = memory
            self.names[memory] = a["memory"]
            return f"{a['size']} bytes at gpa {fx.va_to_gpa(va):#x} (pool window)"
        return "refused as expected"

    def _range(self, step: StepSpec, a: dict[str, Any], *, need_va: bool = False
               ) -> tuple[int, int | None, int, int]:
        """(handle, va, offset, length) of the step's memory range. WdfMemoryGetBuffer
        is called only when the step needs the address or the size: it is itself a
        use of the object the verifier judges (at the step's line)."""
        handle = self.objects[a["memory"]]
        va = None
        length = a.get("length")
        if need_va or length is None:
            va, size = self._call(step, self._framework().WdfMemoryGetBuffer, handle)
            if length is None:
                length = size - a["offset"]
        return handle, va, a["offset"], length

    def _step_WdfMemoryCopyFromBuffer(self, step: StepSpec, a: dict[str, Any]) -> str:
        handle, _va, offset, length = self._range(step, a)
        status = self._call(step, self._framework().WdfMemoryCopyFromBuffer, handle, offset,
                            pattern_bytes(a["seed"], length), length)
        self._status(status, a["status"], "WdfMemoryCopyFromBuffer")
        return f"pattern {a['seed']} into {a['memory']}+{offset}, {length} bytes"

    def _step_WdfMemoryCopyToBuffer(self, step: StepSpec, a: dict[str, Any]) -> str:
        handle, _va, offset, length = self._range(step, a)
        seen = bytearray(length)
        status = self._call(step, self._framework().WdfMemoryCopyToBuffer, handle, offset, seen,
                            length)
        self._status(status, a["status"], "WdfMemoryCopyToBuffer")
        if "seed" in a and bytes(seen) != pattern_bytes(a["seed"], length):
            raise StepFailed(f"{a['memory']}+{offset} does not hold pattern {a['seed']}")
        return f"{length} bytes" + (f" hold pattern {a['seed']}" if "seed" in a else "")

    def _step_guest_reads_memory(self, step: StepSpec, a: dict[str, Any]) -> str:
        _handle, va, offset, length = self._range(step, a, need_va=True)
        gpa = self._framework().va_to_gpa(va) + offset
        name = self._temp_name()
        self._command(Step.phys(name, gpa, length))
        try:
            seen = Verification.from_result(self._command(Step.verify(name, a["seed"])))
        finally:
            self._command(Step.free(name))
        if seen.match != (a["expect"] == "match"):
            raise StepFailed(f"the guest read {a['memory']} at gpa {gpa:#x} through /dev/mem: "
                             f"{seen.mismatches} byte(s) differ from pattern {a['seed']}"
                             if not seen.match else "the guest found the pattern, expected not")
        return f"the guest read {length} bytes at gpa {gpa:#x} through /dev/mem"

    def _step_mdl_dma(self, step: StepSpec, a: dict[str, Any]) -> str:
        """The framework's way: an MDL over the memory, its spans mapped by the
        device's DMA port (orchestrator.dma_port) into the scatter/gather list."""
        from framework_emu.dma_adapter import DmaMappingError, mdl_spans
        from orchestrator.dma_port import DeviceDmaAdapter, device_segments

        fx = self._framework()
        _handle, va, offset, length = self._range(step, a, need_va=True)
        to_memory = a["direction"] == "to_memory"
        mdl = self._call(step, fx.IoAllocateMdl, va + offset, length)
        try:
            self._call(step, fx.MmBuildMdlForNonPagedPool, mdl)
            adapter = DeviceDmaAdapter(self.session.device)
            spans = mdl_spans(fx.MmGetMdlPfnArray(mdl), fx.MmGetMdlByteOffset(mdl),
                              fx.MmGetMdlByteCount(mdl))
            try:
                sg = adapter.map(spans, to_device=not to_memory)
            except DmaMappingError as exc:
                raise StepFailed(f"the DMA port refused the MDL: {exc}") from None
            try:
                segments = device_segments(sg)
                if "segments" in a and len(segments) != a["segments"]:
                    raise StepFailed(f"the MDL gave {len(segments)} segment(s), expected "
                                     f"{a['segments']}")
                opcode = Opcode.READ if to_memory else Opcode.WRITE
                answer = self._command(Step.submit(opcode, a["device_offset"], segments))
            finally:
                adapter.unmap(sg)
            detail = self._expect_completion(CompletionRecord.from_result(answer), length, None)
        finally:
            self._call(step, fx.IoFreeMdl, mdl)
        return (f"MDL of {len(spans)} page(s) -> {len(segments)} segment(s), "
                f"{opcode.name} {detail}")

    def _step_WdfObjectDelete(self, step: StepSpec, a: dict[str, Any]) -> str:
        handle = self.objects.pop(a["object"])
        self._call(step, self._framework().WdfObjectDelete, handle)
        return f"deleted {a['object']}"

    def _step_request(self, step: StepSpec, a: dict[str, Any]) -> str:
        import framework_emu

        fx = self._framework()
        major = getattr(framework_emu, _IRP[a["type"]])
        extra: dict[str, Any] = {}
        if a["type"] == "ioctl":
            extra = {"ioctl_code": framework_emu.CTL_CODE(0x8000, 0x800,
                                                          framework_emu.METHOD_BUFFERED,
                                                          framework_emu.FILE_ANY_ACCESS)}
        request = self._call(step, fx.present_request, major,
                             input_data=pattern_bytes(a["seed"], a["input_size"]),
                             output_length=a["output_size"], **extra)
        self.objects[a["request"]] = request.handle
        self.names[request.handle] = a["request"]
        return f"{a['type']} request, input {a['input_size']}, output {a['output_size']}"

    def _retrieve(self, step: StepSpec, a: dict[str, Any], which: str) -> str:
        fx = self._framework()
        call = getattr(fx, f"WdfRequestRetrieve{which}Memory")
        status, memory = self._call(step, call, self.objects[a["request"]])
        self._status(status, a["status"], f"WdfRequestRetrieve{which}Memory")
        if memory:
            self.objects[a["memory"]] = memory
            self.names[memory] = a["memory"]
        return f"{which.lower()} memory of {a['request']}"

    def _step_WdfRequestRetrieveInputMemory(self, step: StepSpec, a: dict[str, Any]) -> str:
        return self._retrieve(step, a, "Input")

    def _step_WdfRequestRetrieveOutputMemory(self, step: StepSpec, a: dict[str, Any]) -> str:
        return self._retrieve(step, a, "Output")

    def _step_WdfRequestComplete(self, step: StepSpec, a: dict[str, Any]) -> str:
        from framework_emu import NTSTATUS

        self._call(step, self._framework().WdfRequestComplete, self.objects[a["request"]],
                   NTSTATUS[a["status"]])
        return f"completed {a['request']} with {a['status']}"


# -- many scenarios ------------------------------------------------------------------------
def plan_runs(scenarios: list[Scenario], guests: list[str] | None = None) -> list[tuple[Scenario, str]]:
    """(scenario, guest) pairs in the order that boots least: by guest, then by device
    settings, scenarios with faults first on each (a device booted with a fault plan
    takes any later plan; one booted without cannot). ``guests`` overrides the
    scenarios' own lists."""
    pairs = [(s, g) for s in scenarios for g in (guests or s.guests)]
    first_seen = {g: i for i, (_s, g) in reversed(list(enumerate(pairs)))}
    return sorted(pairs, key=lambda p: (first_seen[p[1]], device_settings(p[0]),
                                        not fault_plan(p[0]).active))


def run_scenarios(pairs: list[tuple[Scenario, str]], sessions: GuestSessions,
                  on_result: Callable[[ScenarioResult], None] | None = None) -> list[ScenarioResult]:
    """Run the pairs in order; a guest is closed once no later pair needs it."""
    results = []
    for index, (scenario, guest) in enumerate(pairs):
        result = run_scenario(scenario, guest, sessions)
        results.append(result)
        if on_result is not None:
            on_result(result)
        later = {g for _s, g in pairs[index + 1:]}
        for key in list(sessions.sessions):
            if key[0] not in later:
                sessions.release(key)
    return results
