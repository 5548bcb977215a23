"""For pytester tests whose conftest replaces ``run_scenario`` with canned results:
pytester keeps ``orchestrator.scenario_runner`` loaded (it is imported before, and
numpy cannot be imported twice in one process), so the replacement would outlive
the test and every scenario item run later in the same process (the built-in
scenarios of the suite) would get canned results. Use the fixture in such a
module: ``from canned_runner import real_runner_afterwards``."""

from __future__ import annotations

import pytest

import orchestrator.scenario_runner


@pytest.fixture(autouse=True)
def real_runner_afterwards():
    real = orchestrator.scenario_runner.run_scenario
    yield
    orchestrator.scenario_runner.run_scenario = real
