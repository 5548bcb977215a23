"""Scenario items under pytest write a reproduction bundle of each failing
scenario with ``--wdfhil-bundles DIR`` (named in the JUnit properties). The
runner is replaced by canned results carrying evidence (no guest)."""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET

import orchestrator.scenario_runner  # noqa: F401  (loaded once: see test_pytest_plugin.py)
from canned_runner import real_runner_afterwards  # noqa: F401  (autouse: the real runner back)

pytest_plugins = ["pytester"]


CANNED = '''
import time
import orchestrator.scenario_runner as runner
from orchestrator.evidence import Evidence

def canned(scenario, guest, sessions):
    failing = "bad" in scenario.name
    result = runner.ScenarioResult(scenario.name, str(scenario.path), guest,
                                   "FAIL" if failing else "PASS", seconds=0.1)
    result.evidence = Evidence(started=time.time(), ended=time.time(),
                               run={"guest": {"name": guest, "machine": "pc"}},
                               files={"qemu.log": b"log"} if failing else {})
    if failing:
        result.problems.append("it failed")
    return result

runner.run_scenario = canned
'''


def test_failing_items_write_bundles_named_in_junit(pytester, tmp_path):
    for name in ("good", "bad"):
        pytester.makefile(".scenario.yaml", **{name: f"description: {name}\nsteps:\n"
                                                     "  - device_info: {}\n"})
    pytester.makeconftest(CANNED)
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest("-q", f"--wdfhil-bundles={tmp_path / 'bundles'}",
                                f"--junitxml={junit}")
    result.assert_outcomes(passed=1, failed=1)
    [bundle] = (tmp_path / "bundles").iterdir()
    assert bundle.name == "bad-pc-256m.bundle.tar.gz"
    with tarfile.open(bundle) as tar:
        assert {"manifest.json", "scenario/bad.scenario.yaml", "qemu.log"} <= set(tar.getnames())
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}
    assert props["bundle"] == str(bundle)
