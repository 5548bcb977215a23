"""The scenario validator on good and bad files: every error names file, line and field."""

from __future__ import annotations

import pytest

from orchestrator.scenario import (BUILTIN_SCENARIOS_DIR, builtin_scenarios, default_scenarios,
                                   is_scenario_file, load_scenario, resolve_scenarios)
from wdfhil.errors import ConfigError

from bad_scenarios import BAD, GOOD


def write(tmp_path, text, name="case.scenario.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_file_loads_with_defaults(tmp_path):
    scenario = load_scenario(write(tmp_path, GOOD))
    assert scenario.name == "case"
    assert scenario.guests == ("pc-256m",)
    assert [s.kind for s in scenario.steps][:3] == ["alloc", "fill", "write"]
    alloc = scenario.steps[0].args
    assert (alloc["size"], alloc["offset"], alloc["where"], alloc["merge"]) == (4096, 100, "low", True)
    assert scenario.steps[2].args["count"] == 3 and scenario.steps[2].line == 14
    assert scenario.device["dma_bits"] == 32 and scenario.device["personality"] == "echo"
    assert scenario.expect["refusals"] == {"SEGMENT_NOT_IN_RAM": 1}
    assert scenario.uses_framework


def test_defaults_when_device_and_expect_are_left_out(tmp_path):
    scenario = load_scenario(write(tmp_path, "description: d\nsteps:\n  - device_info: {}\n"))
    assert scenario.guests == ("pc-256m",)
    assert scenario.device["dma_bits"] == 64 and scenario.device["segment_align"] == 1
    assert scenario.expect["findings"] == [] and not scenario.expect["ignore_warnings"]
    assert scenario.steps[0].args["status"] == "READY"


@pytest.mark.parametrize("case_id,text,line,field,words,_schema", BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_named_by_file_line_and_field(tmp_path, case_id, text, line, field, words,
                                                    _schema):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    error = caught.value
    assert error.file == str(path)
    assert error.line == line, str(error)
    assert error.field == field, str(error)
    assert words in str(error), str(error)
    assert str(error).startswith(f"{path}:{line}: ")


def test_hostile_yaml_is_a_config_error(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh"))
    with pytest.raises(ConfigError):
        load_scenario(write(tmp_path, bomb))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_scenario(write(tmp_path, "- a\n- b\n"))


def test_every_builtin_scenario_is_valid_and_shipped_as_package_data():
    paths = builtin_scenarios()
    assert paths and all(p.parent == BUILTIN_SCENARIOS_DIR for p in paths)
    for path in paths:
        load_scenario(path)
    guests = {g for p in paths for g in load_scenario(p).guests}
    assert {"pc-256m", "q35-1g", "q35-3g-highmem", "q35-iommu"} <= guests
    baselines = {load_scenario(p).guests for p in paths if "baseline" in load_scenario(p).tags}
    assert {("pc-256m",), ("q35-1g",), ("q35-3g-highmem",), ("q35-iommu",)} <= baselines


def test_the_default_set_holds_the_demo_checks_on_the_default_guest():
    names = {load_scenario(p).name for p in default_scenarios()}
    assert {"device-ready", "framework-memory-guest-view", "device-dma-into-framework-memory",
            "echo-roundtrip", "stale-dma", "hostile-descriptor",
            "verifier-buffer-after-completion", "baseline-pc-256m", "driver-echo",
            "driver-filter-over-echo", "driver-dma-busmaster", "driver-guest-program",
            "bug-buffer-touched-after-completion", "bug-request-never-completed",
            "bug-memory-used-after-delete", "bug-overrun"} == names
    assert all(load_scenario(p).guests == ("pc-256m",) for p in default_scenarios())


def test_collection_rule_is_the_file_name(tmp_path):
    assert is_scenario_file(tmp_path / "x.scenario.yaml")
    for name in ("x.yaml", "scenario.yaml", "matrix.yaml", "x.scenario.yml", "x.scenario.yaml.bak"):
        assert not is_scenario_file(tmp_path / name)


def test_resolve_names_folders_and_files(tmp_path):
    assert resolve_scenarios(["echo-roundtrip"]) == [BUILTIN_SCENARIOS_DIR /
                                                     "echo-roundtrip.scenario.yaml"]
    (tmp_path / "sub").mkdir()
    one = write(tmp_path / "sub", GOOD, "one.scenario.yaml")
    write(tmp_path, "not: a scenario\n", "other.yaml")
    assert resolve_scenarios([tmp_path]) == [one]
    with pytest.raises(ConfigError, match="no scenario file or built-in scenario"):
        resolve_scenarios(["no-such-scenario"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.scenario.yaml file"):
        resolve_scenarios([tmp_path / "empty"])


def test_a_fault_rule_target_reaches_the_busmaster_fault_plan(tmp_path):
    from device_model.faults import FaultKind, FaultTarget
    from orchestrator.guest_sessions import fault_plan

    path = tmp_path / "ring.scenario.yaml"
    path.write_text("description: x\ndevice:\n  personality: busmaster\n  faults:\n    seed: 4\n"
                    "    rules:\n      - {kind: short_transfer, target: completion, max_count: 1}\n"
                    "      - {kind: bit_flip}\n"
                    "driver: {class: samples.dma_busmaster:DmaBusMasterDriver}\n"
                    "steps:\n  - device_info: {}\n")
    plan = fault_plan(load_scenario(path))
    assert [(r.kind, r.target) for r in plan.rules] == [
        (FaultKind.SHORT_TRANSFER, FaultTarget.COMPLETION), (FaultKind.BIT_FLIP, FaultTarget.DATA)]
