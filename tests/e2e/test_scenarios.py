"""Scenarios on a real guest: a baseline passes, failing ones fail with the
verdict and findings they should, and the same through pytest's --junitxml
(a child pytest collecting scenario files) and through ``wdfhil run``.

The files in scenario_files/ fail on purpose, so they are not named
*.scenario.yaml (the plugin would collect them into this suite)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.scenario import BUILTIN_SCENARIOS_DIR

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent / "scenario_files"
BASELINE = BUILTIN_SCENARIOS_DIR / "baseline-pc-256m.scenario.yaml"


@pytest.fixture(scope="module")
def pc(wdfhil_guest, guest_image):
    """pc-256m booted once for the module (before the tests: the leftover check
    of tests/conftest.py sees it as the module's, not a test's)."""
    return wdfhil_guest("pc-256m")


def test_baseline_passes_with_exactly_its_expected_finding(pc, wdfhil_run_scenario):
    result = wdfhil_run_scenario(BASELINE)
    assert result.verdict == "PASS", result.explain()
    assert result.boot_seconds is None               # ran on the module's guest
    assert [s.ok for s in result.steps] == [True] * 13
    assert len(result.findings) == 1
    assert result.findings[0].startswith("[warning] ParentObjectCheck on mem at ")
    assert f"{BASELINE.name}:14:" in result.findings[0]    # the step's own line
    assert any(n.startswith("timing: scenario") for n in result.notes)


def test_an_unexpected_finding_fails_the_scenario(pc, wdfhil_run_scenario):
    result = wdfhil_run_scenario(HERE / "unexpected-finding.yaml")
    assert result.verdict == "FAIL"
    assert all(s.ok for s in result.steps)           # every call went through (record mode)
    assert result.problems == [f"unexpected finding: {result.findings[0]}"]
    assert result.findings[0].startswith("[error] MemAfterReqCompletedWriteA on in at ")
    assert "unexpected-finding.yaml:9:" in result.findings[0]


def test_a_data_mismatch_fails_at_its_step(pc, wdfhil_run_scenario):
    result = wdfhil_run_scenario(HERE / "data-mismatch.yaml")
    assert result.verdict == "FAIL"
    assert [s.kind for s in result.steps] == ["alloc", "device_fill", "read", "verify"]
    assert not result.steps[-1].ok                    # stops at the failed step
    path = HERE / "data-mismatch.yaml"
    assert result.problems[0].startswith(f"{path}:8: verify: the guest found ")
    assert "different from pattern 2" in result.problems[0]


def test_junit_xml_from_a_child_pytest_on_scenario_files(tmp_path):
    shutil.copy(BASELINE, tmp_path / "baseline.scenario.yaml")
    shutil.copy(HERE / "unexpected-finding.yaml", tmp_path / "unexpected.scenario.yaml")
    (tmp_path / "notes.yaml").write_text("description: not collected\n")
    junit = tmp_path / "junit.xml"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path),
         f"--junitxml={junit}", "-m", "guest_pc_256m"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 passed, 1 failed" in child.stdout        # the verdict table
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"baseline[pc-256m]", "unexpected[pc-256m]"}
    failure = cases["unexpected[pc-256m]"].find("failure")
    assert "unexpected finding: [error] MemAfterReqCompletedWriteA" in failure.get("message")
    verdicts = {name: {p.get("name"): p.get("value") for p in case.iter("property")}["verdict"]
                for name, case in cases.items()}
    assert verdicts == {"baseline[pc-256m]": "PASS", "unexpected[pc-256m]": "FAIL"}


def test_wdfhil_run_exits_1_when_a_scenario_fails(tmp_path, capsys, guest_image):
    out = tmp_path / "results.json"
    code = main(["run", "device-ready", str(HERE / "data-mismatch.yaml"), "--json", str(out),
                 "--report-dir", str(tmp_path / "report")])
    assert code == 1
    printed = capsys.readouterr().out
    assert "1 passed, 1 failed" in printed
    results = json.loads(out.read_text())
    assert {r["scenario"]: r["verdict"] for r in results["results"]} == {
        "device-ready": "PASS", "data-mismatch": "FAIL"}
    assert (results["passed"], results["failed"]) == (1, 1)


@pytest.mark.wdfhil_guest("pc-256m")
def test_the_fixtures_example_of_the_docs(pc, wdfhil_session, wdfhil_framework, wdfhil_agent,
                                          wdfhil_device):
    """docs/scenarios.md's example test, on the module's guest."""
    from framework_emu import NTSTATUS, PoolType
    from orchestrator.agent_client import Step, Verification, pattern_bytes

    assert wdfhil_session is pc and wdfhil_device is pc.device
    fx = wdfhil_framework
    status, memory, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 4096)
    assert status == NTSTATUS.STATUS_SUCCESS
    fx.WdfMemoryCopyFromBuffer(memory, 0, pattern_bytes(7, 4096), 4096)
    results = wdfhil_agent.run(Step.phys("m", fx.va_to_gpa(va), 4096), Step.verify("m", 7))
    assert Verification.from_result(results[1]).match
    fx.WdfObjectDelete(memory)


def test_a_guest_program_is_copied_in_and_run(pc, wdfhil_run_scenario):
    result = wdfhil_run_scenario(HERE / "guest-program.yaml")
    assert result.verdict == "PASS", result.explain()
    assert [s.detail for s in result.steps] == ["guest-program.sh exited 0",
                                                "guest-program.sh exited 3"]


# ---- the driver under test and the guest-I/O steps --------------------------------------------
def _no_request_left(session) -> None:
    """After a driver scenario nothing is in flight or open on the guest's request ring."""
    endpoint = session.endpoint
    assert endpoint.in_flight == [] and endpoint.open_files == set()


def test_a_bug_reproduction_passes_with_the_drivers_exact_finding(pc, wdfhil_run_scenario):
    result = wdfhil_run_scenario(BUILTIN_SCENARIOS_DIR / "bug-buffer-touched-after-completion.scenario.yaml")
    assert result.verdict == "PASS", result.explain()
    (finding,) = result.findings
    assert finding.startswith("[error] BufAfterReqCompletedReadA on WDFREQUEST at ")
    assert "buggy_drivers.py:24" in finding                    # the driver's own line
    _no_request_left(pc)


def test_a_drivers_unexpected_finding_fails_and_the_expected_one_is_named(pc, wdfhil_run_scenario):
    path = HERE / "driver-wrong-finding.yaml"
    result = wdfhil_run_scenario(path)
    assert result.verdict == "FAIL"
    assert all(s.ok for s in result.steps)
    assert result.problems[0].startswith("unexpected finding: [error] BufAfterReqCompletedReadA "
                                         "on WDFREQUEST at ")
    assert result.problems[1] == (f"{path}:9: expected finding not reported: "
                                  f"BufAfterReqCompletedWriteA on WDFREQUEST")
    _no_request_left(pc)


def test_a_short_read_fails_at_its_step(pc, wdfhil_run_scenario):
    path = HERE / "driver-short-read.yaml"
    result = wdfhil_run_scenario(path)
    assert result.verdict == "FAIL"
    assert [s.ok for s in result.steps] == [True, True, True, False]
    assert result.problems == [f"{path}:8: io_read: read of 3000 bytes: returned 2999, expected 3000"]
    _no_request_left(pc)


def test_a_driver_that_does_not_start_fails_the_scenario_at_the_driver(pc, wdfhil_run_scenario):
    path = HERE / "driver-does-not-start.yaml"
    result = wdfhil_run_scenario(path)
    assert result.verdict == "FAIL"
    assert result.steps == []
    assert result.problems[0].startswith(f"{path}:3: driver: it did not start: ")
    _no_request_left(pc)


def test_a_request_never_completed_is_found_and_the_guests_call_ends_enodev(pc, wdfhil_run_scenario):
    path = BUILTIN_SCENARIOS_DIR / "bug-request-never-completed.scenario.yaml"
    result = wdfhil_run_scenario(path)
    assert result.verdict == "PASS", result.explain()
    assert result.steps[1].detail == "read issued; the driver holds it"
    assert f"{path}:8: io_read (wait: false) ended: ENODEV" in result.notes
    assert any(n.startswith("driver: READ request ") and "was never completed" in n
               and "buggy_drivers.py" in n for n in result.notes)
    _no_request_left(pc)


def test_wait_false_on_a_call_the_driver_completes_at_once_ends_the_step(pc, wdfhil_run_scenario,
                                                                         tmp_path):
    path = tmp_path / "held.yaml"
    path.write_text("description: not held after all\ndriver: {class: samples.echo:EchoDriver}\n"
                    "steps:\n  - alloc: {buffer: b, size: 100}\n  - io_read: {buffer: b, wait: false}\n")
    result = wdfhil_run_scenario(path)
    assert result.verdict == "PASS", result.explain()
    assert result.steps[1].detail == "read issued; it ended without being held"
    assert f"{path}:5: io_read (wait: false) ended: 0 bytes" in result.notes   # nothing written yet
    _no_request_left(pc)


def test_in_bugcheck_mode_the_fatal_finding_stops_the_drivers_machine(pc, wdfhil_run_scenario,
                                                                      tmp_path):
    """The finding, then the bug check it caused; the read it happened in ends ENODEV too
    (its completion never left the stopped machine), and so does every later call."""
    drivers = BUILTIN_SCENARIOS_DIR / "buggy_drivers.py"
    path = tmp_path / "bugcheck.yaml"
    path.write_text(f"description: bug-check mode\ndriver:\n  class: {drivers}:TouchAfterCompleteDriver\n"
                    "  verifier: bugcheck\nsteps:\n  - alloc: {buffer: b, size: 300}\n"
                    "  - io_read: {buffer: b, errno: ENODEV}\n  - io_read: {buffer: b, errno: ENODEV}\n"
                    "expect:\n  findings:\n"
                    "    - {rule: BufAfterReqCompletedReadA, object_kind: WDFREQUEST, at: buggy_drivers.py}\n"
                    "    - {rule: BugCheck, code: 0x10D, at: BufAfterReqCompletedReadA}\n")
    result = wdfhil_run_scenario(path)
    assert result.verdict == "PASS", result.explain()
    assert len(result.findings) == 2
    _no_request_left(pc)
