"""The pytest plugin: what it collects (and what not), markers, selection, the
collection error of a bad file, ordering, and the JUnit XML pytest writes for
scenario items. The runner is replaced by canned results here (no guest);
tests/e2e/test_scenarios.py runs the same path on a real guest."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

# Loaded here so pytester's in-process runs find them loaded (numpy cannot be
# imported twice in one process, and pytester drops modules a run imported).
import orchestrator.scenario_runner  # noqa: F401
from canned_runner import real_runner_afterwards  # noqa: F401  (autouse: the real runner back)

pytest_plugins = ["pytester"]

SCENARIO = "description: {name}\nguests: {guests}\ntags: {tags}\nsteps:\n  - device_info: {{}}\n"

CANNED_RUNNER = '''
import orchestrator.scenario_runner as runner

def canned(scenario, guest, sessions):
    failing = "bad" in scenario.name
    result = runner.ScenarioResult(
        scenario.name, str(scenario.path), guest, "FAIL" if failing else "PASS",
        findings=["[error] MemAfterReqCompletedWriteA on in at x.scenario.yaml:8: used after"]
        if failing else [], seconds=0.25)
    if failing:
        result.problems.append("unexpected finding: [error] MemAfterReqCompletedWriteA on in")
    return result

runner.run_scenario = canned
'''


def scenario(pytester, name, guests="[pc-256m]", tags="[]"):
    pytester.makefile(".scenario.yaml", **{name: SCENARIO.format(name=name, guests=guests,
                                                                 tags=tags)})


def collected(result):
    return sorted(line for line in result.outlines if "::" in line)


def test_only_scenario_files_are_collected(pytester):
    scenario(pytester, "one")
    pytester.makefile(".yaml", config="description: not a scenario\nsteps: 3\n")
    pytester.makefile(".yml", **{"two.scenario": "garbage: ["})
    pytester.makepyfile(test_plain="def test_x():\n    pass\n")
    result = pytester.runpytest("--co", "-q")
    assert collected(result) == ["one.scenario.yaml::one[pc-256m]", "test_plain.py::test_x"]
    assert result.ret == 0


def test_items_per_guest_markers_and_tags_select(pytester):
    scenario(pytester, "both", guests="[pc-256m, q35-1g]", tags="[dma]")
    scenario(pytester, "other", guests="[q35-1g]")
    pytester.makepyfile(test_plain="def test_x():\n    pass\n")
    assert collected(pytester.runpytest("--co", "-q", "-m", "guest_q35_1g")) == [
        "both.scenario.yaml::both[q35-1g]", "other.scenario.yaml::other[q35-1g]"]
    assert collected(pytester.runpytest("--co", "-q", "-m", "not e2e")) == ["test_plain.py::test_x"]
    assert collected(pytester.runpytest("--co", "-q", "-m", "scenario", "-k", "dma")) == [
        "both.scenario.yaml::both[pc-256m]", "both.scenario.yaml::both[q35-1g]"]
    assert collected(pytester.runpytest("--co", "-q", "--wdfhil-guest", "q35-iommu")) == [
        "both.scenario.yaml::both[q35-iommu]", "other.scenario.yaml::other[q35-iommu]",
        "test_plain.py::test_x"]


def test_items_are_grouped_by_guest_so_they_share_a_boot(pytester):
    scenario(pytester, "a1", guests="[pc-256m, q35-1g]")
    scenario(pytester, "a2", guests="[pc-256m]")
    scenario(pytester, "a3", guests="[q35-1g]")
    lines = [line for line in pytester.runpytest("--co", "-q").outlines if "::" in line]
    assert [line.split("[")[1] for line in lines] == ["pc-256m]", "pc-256m]", "q35-1g]", "q35-1g]"]


def test_an_invalid_scenario_is_a_collection_error_with_file_line_field(pytester):
    pytester.makefile(".scenario.yaml", broken="description: x\nsteps:\n  - alloc: {buffer: a}\n")
    result = pytester.runpytest("-q", "--junitxml=out.xml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    path = pytester.path / "broken.scenario.yaml"
    assert (f"invalid scenario: {path}:3: field 'steps[0].alloc.size': required field is "
            f"missing") in result.stdout.str()
    suite = ET.parse(pytester.path / "out.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1"
    assert "steps[0].alloc.size" in suite.find("testcase").find("error").text


def test_junit_xml_has_a_testcase_per_item_with_verdict_and_failure(pytester):
    pytester.makeconftest(CANNED_RUNNER)
    scenario(pytester, "good")
    scenario(pytester, "bad")
    result = pytester.runpytest("-q", "--junitxml=out.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*wdfhil verdicts*", "FAIL*bad*pc-256m*", "PASS*good*",
                                 "1 passed, 1 failed"])
    suite = ET.parse(pytester.path / "out.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == {"good[pc-256m]", "bad[pc-256m]"}
    assert cases["good[pc-256m]"].get("classname") == "good.scenario.yaml"
    props = {p.get("name"): p.get("value")
             for p in cases["bad[pc-256m]"].find("properties").findall("property")}
    assert props["verdict"] == "FAIL" and props["guest"] == "pc-256m"
    assert props["finding"].startswith("[error] MemAfterReqCompletedWriteA")
    failure = cases["bad[pc-256m]"].find("failure")
    assert "unexpected finding" in failure.get("message")
    assert "FAIL bad on pc-256m" in failure.text
    assert cases["good[pc-256m]"].find("failure") is None


def test_with_xdist_items_are_grouped_per_guest_for_loadgroup(pytester):
    pytest.importorskip("xdist")
    pytester.makeconftest(
        "def pytest_collection_modifyitems(items):\n"
        "    for item in items:\n"
        "        print('GROUP', item.name, [m.args for m in item.iter_markers('xdist_group')])\n")
    scenario(pytester, "both", guests="[pc-256m, q35-1g]")
    result = pytester.runpytest("--co", "-q", "-s", "-p", "xdist", "-n", "0")
    assert "GROUP both[pc-256m] [('pc-256m',)]" in result.outlines
    assert "GROUP both[q35-1g] [('q35-1g',)]" in result.outlines


def test_wdfhil_report_writes_the_items_report_folder(pytester):
    pytester.makeconftest(CANNED_RUNNER)
    scenario(pytester, "good")
    scenario(pytester, "bad")
    result = pytester.runpytest("-q", "--wdfhil-report", "rep")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    folder = pytester.path / "rep"
    result.stdout.fnmatch_lines(["1 passed, 1 failed", f"report: {folder / 'report.html'}*"])
    results = json.loads((folder / "results.json").read_text())
    verdicts = {r["scenario"]: r["verdict"] for r in results["results"]}
    assert verdicts == {"good": "PASS", "bad": "FAIL"}
    suite = ET.parse(folder / "junit.xml").getroot()
    assert "bad" in ET.tostring(suite, encoding="unicode")
    html = (folder / "report.html").read_text()
    assert "MemAfterReqCompletedWriteA" in html and "good" in html
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_without_wdfhil_report_no_folder_is_written(pytester):
    pytester.makeconftest(CANNED_RUNNER)
    scenario(pytester, "good")
    assert pytester.runpytest("-q").ret == 0
    assert not (pytester.path / "wdfhil-reports").exists()
    assert [p.name for p in pytester.path.iterdir() if p.is_dir() and p.name.startswith("rep")] == []
