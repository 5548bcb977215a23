"""Framework steps and verdicts on in-process memory (no guest): the framework
parts of the runner, held to the emulated framework as it changes. The session
is a stand-in with RAM, a pool window, an idle device and an agent that no
framework-only scenario talks to; the same steps on a real guest are in
tests/e2e/test_scenarios.py and the built-in scenarios."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from device_model.faults import FaultPlan
from orchestrator.scenario import load_scenario
from orchestrator.scenario_result import FAIL, PASS, ScenarioResult
from orchestrator.scenario_runner import ScenarioRun
from wdfhil.physical_memory import InProcessMemory

POOL = (16 << 20, 16 << 20)


class NoAgent:
    def serve(self):
        return contextlib.nullcontext(self)

    def command(self, line, timeout=None):
        raise AssertionError(f"a framework-only scenario sent {line!r} to the guest")


def run(tmp_path, text):
    path = tmp_path / "fx.scenario.yaml"
    path.write_text(text)
    scenario = load_scenario(path)
    session = SimpleNamespace(ram=InProcessMemory(64 << 20), agent=NoAgent(),
                              device=SimpleNamespace(fault_plan=FaultPlan()),
                              vm=SimpleNamespace(config=SimpleNamespace(
                                  pool=SimpleNamespace(window=POOL))))
    result = ScenarioResult(scenario.name, str(path), "in-process", "ERROR")
    ScenarioRun(scenario, session, result).run()
    return path, result


REQUEST_AFTER_COMPLETION = """\
description: memory of a completed request touched
steps:
  - request: {request: req, type: write, input_size: 8, seed: 5}
  - WdfRequestRetrieveInputMemory: {request: req, memory: in}
  - WdfMemoryCopyToBuffer: {memory: in, length: 8, seed: 5}
  - WdfRequestComplete: {request: req}
  - WdfMemoryCopyToBuffer: {memory: in, length: 8}
"""


def test_a_finding_names_the_object_and_the_scenario_line(tmp_path):
    path, result = run(tmp_path, REQUEST_AFTER_COMPLETION + "expect:\n  findings:\n"
                       "    - {rule: MemAfterReqCompletedWriteA, object: in, severity: error}\n")
    assert result.verdict == PASS, result.explain()
    assert result.findings == [result.findings[0]]
    assert result.findings[0].startswith("[error] MemAfterReqCompletedWriteA on in at ")
    assert f"{path.name}:7:" in result.findings[0]     # the step's line, not the runner's


def test_an_unexpected_finding_fails_and_a_missing_one_is_named(tmp_path):
    _path, result = run(tmp_path, REQUEST_AFTER_COMPLETION + "expect:\n  findings:\n"
                        "    - {rule: DoubleCompletion, object: req}\n")
    assert result.verdict == FAIL
    assert result.problems[0].startswith("unexpected finding: [error] MemAfterReqCompletedWriteA")
    assert result.problems[1].endswith(":10: expected finding not reported: DoubleCompletion on req")


def test_memory_round_trip_and_warnings(tmp_path):
    text = ("description: fill and read back\nsteps:\n"
            "  - WdfMemoryCreate: {memory: m, size: 3000, tag: Scn1}\n"
            "  - WdfMemoryCopyFromBuffer: {memory: m, offset: 100, length: 2000, seed: 9}\n"
            "  - WdfMemoryCopyToBuffer: {memory: m, offset: 100, length: 2000, seed: 9}\n"
            "  - WdfObjectDelete: {object: m}\n")
    _path, result = run(tmp_path, text)
    assert result.verdict == FAIL                          # the parentless memory's warning
    assert result.problems[0].startswith("unexpected finding: [warning] ParentObjectCheck on m")
    _path, result = run(tmp_path, text + "expect:\n  ignore_warnings: true\n")
    assert result.verdict == PASS, result.explain()
    assert [s.ok for s in result.steps] == [True] * 4


def test_wrong_pattern_and_wrong_status_fail_at_their_step(tmp_path):
    path, result = run(tmp_path, "description: x\nsteps:\n"
                       "  - WdfMemoryCreate: {memory: m, size: 64}\n"
                       "  - WdfMemoryCopyFromBuffer: {memory: m, seed: 1}\n"
                       "  - WdfMemoryCopyToBuffer: {memory: m, seed: 2}\n"
                       "  - WdfObjectDelete: {object: m}\n"
                       "expect:\n  ignore_warnings: true\n")
    assert result.verdict == FAIL
    assert result.problems == [f"{path}:5: WdfMemoryCopyToBuffer: m+0 does not hold pattern 2"]
    assert len(result.steps) == 3 and not result.steps[-1].ok
    _path, result = run(tmp_path, "description: x\nsteps:\n"
                        "  - WdfMemoryCreate: {memory: m, size: 64, pool_type: PagedPool,\n"
                        "                      status: STATUS_INVALID_PARAMETER}\n")
    assert result.verdict == FAIL
    assert "WdfMemoryCreate returned STATUS_SUCCESS, expected STATUS_INVALID_PARAMETER" in \
        result.problems[0]
