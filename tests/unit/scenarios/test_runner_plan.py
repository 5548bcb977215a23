"""The runner's pure parts: the order that boots least, the verdict table, timing
notes (printed, never a failure), results surviving JSON (the -j children), the
children's --only filters."""

from __future__ import annotations

import json

from orchestrator.scenario import load_scenario
from orchestrator.matrix_parallel import _child_only
from orchestrator.scenario_result import FAIL, PASS, ScenarioResult, StepResult, format_table
from orchestrator.scenario_runner import _timing_notes, plan_runs

BODY = "description: {name}\nguests: {guests}\n{device}steps:\n  - device_info: {{}}\n{expect}"
FAULTS = "device:\n  faults:\n    rules:\n      - {kind: drop_interrupt}\n"


def make(tmp_path, name, guests="[pc-256m]", device="", expect=""):
    path = tmp_path / f"{name}.scenario.yaml"
    path.write_text(BODY.format(name=name, guests=guests, device=device, expect=expect))
    return load_scenario(path)


def test_plan_groups_by_guest_then_device_with_faults_first(tmp_path):
    a = make(tmp_path, "a", "[pc-256m, q35-1g]")
    b = make(tmp_path, "b", "[q35-1g]", device=FAULTS)
    c = make(tmp_path, "c", device="device:\n  dma_bits: 32\n")
    d = make(tmp_path, "d", device=FAULTS)
    order = [(s.name, g) for s, g in plan_runs([a, b, c, d])]
    assert order == [("c", "pc-256m"), ("d", "pc-256m"), ("a", "pc-256m"),
                     ("b", "q35-1g"), ("a", "q35-1g")]
    assert [(s.name, g) for s, g in plan_runs([a, b], ["q35-iommu"])] == [
        ("b", "q35-iommu"), ("a", "q35-iommu")]


def test_table_and_totals():
    ok = ScenarioResult("one", "x", "pc-256m", PASS, steps=[StepResult(0, "fill", 3, True, "", 0.1)],
                        seconds=1.5)
    bad = ScenarioResult("two-longer", "y", "q35-1g", FAIL, problems=["y:4: verify: differs"],
                         seconds=0.25)
    lines = format_table([ok, bad], "image X").splitlines()
    assert lines[1:4] == ["wdfhil verdicts", "=" * 15, "image X"]
    assert lines[4] == "PASS  one         pc-256m    1.50 s  1 steps"
    assert lines[5] == "FAIL  two-longer  q35-1g     0.25 s  y:4: verify: differs"
    assert lines[-1] == "1 passed, 1 failed"


def test_timing_bounds_are_notes_never_problems(tmp_path):
    scenario = make(tmp_path, "t", expect="expect:\n  timing: {scenario_s: 0.5, step_s: 10}\n")
    result = ScenarioResult("t", "", "pc-256m", PASS, seconds=3.0, boot_seconds=1.0,
                            steps=[StepResult(0, "device_info", 5, True, "", 0.2)])
    _timing_notes(scenario, result)
    assert result.notes == ["timing: scenario 2.00 s, bound 0.5 s: OVER (not a failure)",
                            "timing: slowest step 0 device_info 0.200 s, bound 10.0 s: within"]
    assert result.verdict == PASS and not result.problems


def test_results_survive_json_as_the_matrix_children_send_them():
    result = ScenarioResult("n", "p", "g", FAIL, problems=["x"], findings=["f"],
                            steps=[StepResult(1, "read", 7, False, "short", 0.5)],
                            refusals={"DEVICE_RANGE": 1}, seconds=2.0)
    item = json.loads(json.dumps(result.to_json()))
    steps = [StepResult(**s) for s in item.pop("steps")]
    again = ScenarioResult(**item, steps=steps)
    assert again == result


def test_children_get_the_users_filters_narrowed_to_their_guest():
    assert _child_only("q35-1g", []) == ["--only", "guest=q35-1g"]
    assert _child_only("q35-1g", ["tag=demo", "guest=pc-256m"]) == [
        "--only", "tag=demo,guest=q35-1g"]
    assert _child_only("pc-256m", ["guest=pc-256m,scenario=a"]) == [
        "--only", "guest=pc-256m,scenario=a"]
