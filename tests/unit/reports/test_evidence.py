"""The evidence a scenario run leaves: the verifier's records, the device's
trace records on the run's clock, the pool map that judges transfers into the
window, and nothing left behind."""

from __future__ import annotations

import json

import pytest

from orchestrator.evidence import finding_signature
from orchestrator.scenario_result import ScenarioResult

from report_runs import REQUEST_AFTER_COMPLETION, line_of, recorded_run


def test_findings_are_the_verifiers_records_with_sites_and_history(failing_result):
    result = failing_result
    assert result.verdict == "FAIL"
    rules = [f["rule"] for f in result.evidence.findings]
    assert rules == ["MemAfterReqCompletedWriteA", "ParentObjectCheck"]
    bug = result.evidence.findings[0]
    assert bug["severity"] == "error" and bug["object"]["name"] == "in"
    assert bug["object"]["kind"] == "WDFMEMORY"
    assert bug["site"] == {"file": result.path, "line": 6}
    assert [(h["event"], h["site"]["line"]) for h in bug["history"]] == [
        ("request presented", 3), ("retrieved", 4), ("request completed", 5)]
    assert finding_signature(bug) == ("MemAfterReqCompletedWriteA", "error", "in",
                                      "fx.scenario.yaml", 6)


def test_the_device_trace_of_the_run_is_on_the_runs_clock(failing_result):
    ev = failing_result.evidence
    assert [e["type"] for e in ev.events] == ["dma", "completion", "interrupt"]
    assert all(0 <= e["t"] <= ev.ended - ev.started for e in ev.events)
    first_step = failing_result.steps[0]
    assert ev.started <= first_step.started <= ev.ended


def test_the_pool_map_names_objects_and_flags_the_write_after_free(failing_result):
    pool = failing_result.evidence.pool
    req = next(a for a in pool["allocations"] if a["name"] == "req")
    spare = next(a for a in pool["allocations"] if a["name"] == "spare")
    assert req["size"] == 8 and req["tag"] == "IoSB"
    assert req["header"] == [req["gpa"] - 16, 16]            # the small block's pool header
    assert req["slack"] == [req["gpa"] + 8, 8]               # to the 16-byte unit's end
    assert spare["header"] is None and spare["slack"][1] == 8192 - 6000   # whole pages
    assert req["findings"] == [0] and req["freed"] is not None
    [transfer] = pool["transfers"]
    assert transfer["offending"] and transfer["why"] == "touches req after it was freed"


def test_a_transfer_into_a_live_object_is_not_offending_but_one_over_its_header_is(tmp_path):
    live = REQUEST_AFTER_COMPLETION.replace(
        "  - WdfMemoryCreate: {memory: spare, size: 6000, pool_type: NonPagedPool, tag: Spar}\n",
        "  - WdfMemoryCreate: {memory: buf, size: 64, pool_type: NonPagedPool, tag: Buff}\n")

    def writes(session, result, recorder):
        buf = next(a for a in recorder.pool.allocations.values()
                   if a["site"]["line"] == line_of(result, "buf"))
        # While the framework still held it (the driver unloaded after the run, so
        # make the record's time the allocation's own):
        trace = session.device.trace
        trace.write({"time": buf["allocated"] + 1e-6, "type": "dma", "request_id": 1,
                     "opcode": "READ", "direction": "to_guest", "ranges": [[buf["gpa"], 64]],
                     "device_offset": 0, "length": 64, "crc32": 0})
        trace.write({"time": buf["allocated"] + 2e-6, "type": "dma", "request_id": 2,
                     "opcode": "READ", "direction": "to_guest",
                     "ranges": [[buf["gpa"] - 8, 16]], "device_offset": 0, "length": 16,
                     "crc32": 0})
    result = recorded_run(tmp_path, live, during=writes)
    inside, over = result.evidence.pool["transfers"]
    assert not inside["offending"] and inside["why"] is None
    assert over["offending"] and over["why"] == "touches the pool header of buf"


def test_json_round_trip_keeps_the_evidence_but_not_the_files(failing_result):
    item = json.loads(json.dumps(failing_result.to_json()))
    again = ScenarioResult.from_json(item)
    assert again.evidence.to_json() == failing_result.evidence.to_json()
    assert [s.to_json() for s in again.steps] == [s.to_json() for s in failing_result.steps]
    assert again.evidence.files == {}
    assert sorted(failing_result.evidence.files) == ["console.log", "pool-window.bin",
                                                     "qemu.log", "trace.jsonl"]


def test_a_passing_run_keeps_no_files_and_the_recorder_leaves_nothing(tmp_path):
    passing = REQUEST_AFTER_COMPLETION + ("expect:\n  ignore_warnings: true\n  findings:\n"
                                          "    - {rule: MemAfterReqCompletedWriteA, object: in}\n")
    seen = {}

    def look(session, result, recorder):
        seen["folder"] = recorder._folder
        seen["trace"] = session.device.trace
    result = recorded_run(tmp_path, passing, during=look)
    assert result.verdict == "PASS", result.explain()
    assert result.evidence.files == {}
    assert not seen["folder"].exists()                      # the per-scenario trace folder
    assert seen["trace"].closed
    assert result.evidence.run["image"]["digest"] == "ab" * 32


def test_evidence_that_cannot_be_taken_does_not_break_the_verdict(tmp_path):
    def break_it(session, result, recorder):
        session.vm = None                                    # the VM went away under it
    result = recorded_run(tmp_path, REQUEST_AFTER_COMPLETION, during=break_it)
    assert result.verdict == "FAIL"
    assert "evidence not collected" in result.evidence.run["error"]


def test_ctrl_c_during_a_scenario_only_cleans_up(tmp_path):
    seen = {"guest commands": []}

    def interrupt(session, result, recorder):
        seen["folder"] = recorder._folder
        seen["result"] = result
        session.vm.run = lambda *a, **k: seen["guest commands"].append(a)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        recorded_run(tmp_path, REQUEST_AFTER_COMPLETION, during=interrupt)
    assert not seen["folder"].exists()
    assert seen["guest commands"] == []                     # no dmesg while unwinding
    assert seen["result"].evidence.run == {"error": "interrupted (KeyboardInterrupt)"}


def test_a_drivers_bug_check_is_a_record_with_its_code():
    from framework_emu import BugCheck
    from orchestrator.evidence import finding_json
    from orchestrator.scenario_driver import BugCheckFinding

    record = finding_json(BugCheckFinding(BugCheck(0x50, (0xFFFF, 1, 0, 0),
                                                   "PAGE_FAULT_IN_NONPAGED_AREA at d.py:52")))
    assert (record["rule"], record["severity"], record["code"]) == ("BugCheck", "error", 0x50)
    assert record["message"].endswith("PAGE_FAULT_IN_NONPAGED_AREA at d.py:52")
    assert record["history"] == [] and record["object"] is None
