"""End to end: DriverSession, the few lines a driver developer writes (docs/writing-a-driver.md,
"Running it against a real guest"), on a booted pc guest."""

from __future__ import annotations

import pytest

from orchestrator.agent_client import IoResult, Step, Verification
from orchestrator.driver_session import DriverSession
from samples.echo import EchoDriver

pytestmark = pytest.mark.e2e


def test_the_documented_example(guest_image):
    driver = EchoDriver(direct_io=True)
    with DriverSession("pc-256m", guest_image, driver=driver) as s:
        results = s.agent.run(
            Step.alloc("src", 5000, offset=4000), Step.fill("src", 7), Step.io_write("src"),
            Step.alloc("dst", 5000, offset=123), Step.io_read("dst"), Step.verify("dst", 7))
        assert IoResult.from_result(results[4]).result == 5000
        assert Verification.from_result(results[5]).match
        assert s.findings == []
        assert s.runtime.call(lambda: driver.events[:2]) == ["SelfManagedIoInit", "FileCreate"]
    assert s.report is not None and s.report.clean, str(s.report)
    assert "FileClose" in driver.events
