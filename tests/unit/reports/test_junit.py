"""JUnit XML of a run, validated against the Apache Ant JUnit schema that CI
engines read (vendored: JUnit.xsd, its source in its header)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from orchestrator.report_junit import junit_xml
from orchestrator.scenario_result import ScenarioResult, StepResult

SCHEMA = xmlschema.XMLSchema(Path(__file__).with_name("JUnit.xsd"))


def results(failing_result):
    ok = ScenarioResult("baseline", "b.scenario.yaml", "pc-256m", "PASS", seconds=1.5,
                        steps=[StepResult(0, "device_info", 3, True, "READY", 0.2)])
    broken = ScenarioResult("dma", "d.scenario.yaml", "q35-1g", "ERROR", seconds=0.5,
                            problems=["the guest did not come up: \x1b[1mboom\x00"])
    return [ok, failing_result, broken]


def test_the_junit_file_is_valid_and_counts_each_verdict(failing_result):
    text = junit_xml(results(failing_result))
    SCHEMA.validate(text)                           # raises with the offending element
    root = ET.fromstring(text)
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"wdfhil.pc-256m", "wdfhil.q35-1g"}
    pc = suites["wdfhil.pc-256m"]
    assert (pc.get("tests"), pc.get("failures"), pc.get("errors")) == ("2", "1", "0")
    failure = pc.find("testcase[@name='fx']/failure")
    assert failure.get("type") == "ScenarioFailed"
    assert "MemAfterReqCompletedWriteA" in failure.get("message")
    assert "fx.scenario.yaml:6" in failure.text               # the explanation, file:line
    assert pc.find("testcase[@name='baseline']/failure") is None
    error = suites["wdfhil.q35-1g"].find("testcase/error")
    assert error.get("type") == "PlatformError" and "\\x1b" in error.get("message")


def test_the_schema_check_is_real():
    """A document lacking what the schema requires fails it (the test above can fail)."""
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        SCHEMA.validate("<testsuites><testsuite name='x'/></testsuites>")
