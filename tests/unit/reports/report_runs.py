"""Scenario runs on in-process memory with the real runner, framework and
evidence recorder, for the report tests (no guest: the same reports of real
guests are checked by tests/e2e/test_reports.py). The session is a stand-in
with RAM, a guest config, an image record, a device whose only part used is
its trace attribute, and an agent no framework-only scenario talks to."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

from device_model.faults import FaultPlan
from orchestrator.evidence import EvidenceRecorder
from orchestrator.guest_config import PoolWindow, load_guest_config
from orchestrator.scenario import load_scenario
from orchestrator.scenario_result import ScenarioResult
from orchestrator.scenario_runner import ScenarioRun
from wdfhil.physical_memory import InProcessMemory

REQUEST_AFTER_COMPLETION = """\
description: memory of a completed request touched
steps:
  - request: {request: req, type: write, input_size: 8, seed: 5}
  - WdfRequestRetrieveInputMemory: {request: req, memory: in}
  - WdfRequestComplete: {request: req}
  - WdfMemoryCopyToBuffer: {memory: in, length: 8}
  - WdfMemoryCreate: {memory: spare, size: 6000, pool_type: NonPagedPool, tag: Spar}
"""


class NoAgent:
    def serve(self):
        return contextlib.nullcontext(self)

    def command(self, line, timeout=None):
        raise AssertionError(f"a framework-only scenario sent {line!r} to the guest")


def stand_in_session(tmp_path: Path):
    config = load_guest_config("pc-256m").with_changes(memory=96 << 20,
                                                       pool=PoolWindow(32 << 20, 16 << 20))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "qemu.log").write_text("qemu: started\n")
    (run_dir / "console.log").write_text("[    0.000000] Linux version 6.1\n")
    image = SimpleNamespace(name="debian12-cloud", digest="ab" * 32,
                            provenance="image debian12-cloud abababababab: kernel 6.1 (test)",
                            kernel_release="6.1.0-test", package_versions={"busybox": "1:1.35"})
    return SimpleNamespace(
        ram=InProcessMemory(96 << 20), agent=NoAgent(), image=image, config=config,
        device=SimpleNamespace(fault_plan=FaultPlan(), trace=None, dma_mask=(1 << 64) - 1,
                               segment_align=1),
        vm=SimpleNamespace(config=config, accelerator="tcg", run_dir=run_dir,
                           command_line=["qemu-system-x86_64", "-machine", "pc", "-m", "96M"]))


def recorded_run(tmp_path: Path, text: str, *, during=None) -> ScenarioResult:
    """Run scenario ``text`` with an EvidenceRecorder as run_scenario does;
    ``during(session, result, recorder)`` runs after the steps, before the evidence is
    taken (e.g. to write device trace records the pool map must judge)."""
    path = tmp_path / "fx.scenario.yaml"
    path.write_text(text)
    scenario = load_scenario(path)
    session = stand_in_session(tmp_path)
    result = ScenarioResult(scenario.name, str(path), "pc-256m", "ERROR")
    recorder = EvidenceRecorder(scenario, session)
    try:                                   # as orchestrator.scenario_runner.run_scenario
        ScenarioRun(scenario, session, result, recorder).run()
        if during is not None:
            during(session, result, recorder)
    finally:
        result.evidence = recorder.finish(result)
    return result


def stale_write_into(name: str, *, length: int = 8):
    """A ``during`` hook: the device writes ``length`` bytes over the allocation the
    scenario calls ``name`` (as a stale DMA after completion would), recorded in
    the device trace the recorder installed."""
    def during(session, result, recorder):
        alloc = next(a for a in recorder.pool.allocations.values()
                     if a["site"] and a["site"]["line"] == line_of(result, name))
        session.device.trace.dma(request_id=0x57A1E, opcode="READ", direction="to_guest",
                                 ranges=[(alloc["gpa"], length)], device_offset=0,
                                 length=length, crc32=0)
        session.device.trace.write({"type": "completion", "request_id": 0x57A1E,
                                    "status": "OK", "reason": "NONE", "transferred": length,
                                    "sequence": 1})
        session.device.trace.write({"type": "interrupt", "vector": 1})
    return during


def line_of(result: ScenarioResult, name: str) -> int:
    """The line of the step that makes the object ``name`` (request or memory)."""
    from orchestrator.scenario import load_scenario

    for step in load_scenario(result.path).steps:
        if name in (step.args.get("request"), step.args.get("memory")) and step.kind in (
                "request", "WdfMemoryCreate"):
            return step.line
    raise KeyError(name)


def buggy_driver_finding(driver_name: str, length: int) -> dict:
    """The finding record (orchestrator.evidence) of a built-in buggy driver
    (orchestrator/scenarios/buggy_drivers.py) loaded on an in-process guest and
    given one read of ``length`` bytes: its bug check, as a scenario reports it."""
    import importlib.util

    import pytest

    from framework_emu import BugCheck
    from orchestrator.evidence import finding_json
    from orchestrator.scenario import BUILTIN_SCENARIOS_DIR
    from orchestrator.scenario_driver import BugCheckFinding
    from samples.guest import InProcessGuest

    spec = importlib.util.spec_from_file_location("buggy_drivers",
                                                  BUILTIN_SCENARIOS_DIR / "buggy_drivers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    guest = InProcessGuest()
    fx = guest.iom.load_driver(getattr(module, driver_name)(), service_name="WDFBug",
                               verifier=True)
    guest.iom.add_device(fx, "wdfio0")
    with pytest.raises(BugCheck) as info:
        guest.read_file(guest.open("wdfio0"), length)
    return finding_json(BugCheckFinding(info.value))
