"""Guest I/O through a driver on q35 with RAM above 4 GiB (q35-3g-highmem), with
DriverSession: a program's buffers below and above 4 GiB, unaligned and page-crossing,
reach the echo sample as MDLs over their very frames (above 4 GiB too), the driver's
pools live in the config's pool window, and QEMU's own view (QMP xp) of the guest's read
buffer agrees. One boot.
"""

from __future__ import annotations

import pytest

from device_model.abi import TransferMethod
from device_model.request_echo import IOCTL_ECHO
from orchestrator.agent_client import IoResult, Step, Verification
from orchestrator.driver_session import DriverSession

from driver_io_drivers import MethodEchoDriver
from guest_helpers import write_read_across_4g

pytestmark = pytest.mark.e2e

FOUR_GIB = 1 << 32


@pytest.fixture(scope="module")
def session(guest_image):
    driver = MethodEchoDriver(direct_io=True)
    with DriverSession("q35-3g-highmem", guest_image, driver=driver) as s:
        s.driver = driver
        yield s
        assert s.device.errors == []
    assert s.report.clean, str(s.report)


def mdls(session, count: int) -> list:
    return session.runtime.call(lambda: list(session.driver.mdls[-count:]))


@pytest.mark.parametrize("source_where,target_where", [("high", "low"), ("low", "high")])
def test_write_read_across_4g(session, source_where, target_where):
    src, dst = write_read_across_4g(session, source_where, target_where)
    (write, write_pfns, *_), (read, read_pfns, *_) = mdls(session, 2)
    assert (write, read) == ("write", "read")
    assert [p << 12 for p in write_pfns] == list(src.frames) and len(write_pfns) == 258
    assert [p << 12 for p in read_pfns] == list(dst.frames)
    high = write_pfns if source_where == "high" else read_pfns
    assert all(p << 12 >= FOUR_GIB for p in high)


def test_out_direct_ioctl_into_pages_above_4g(session):
    results = session.agent.run(
        Step.alloc("in", 5000, offset=10), Step.fill("in", 3),
        Step.alloc("out", 5000, offset=4000, where="high"), Step.memset("out", 0),
        Step.io_call("ioctl", IOCTL_ECHO[TransferMethod.OUT_DIRECT], input="in", output="out"),
        Step.verify("out", 3))
    call = IoResult.from_result(results[4])
    assert (call.status, call.information) == (0, 5000)
    assert Verification.from_result(results[5]).match
    ((what, pfns, offset, count, _va),) = mdls(session, 1)
    assert what == "ioctl" and (offset, count) == (4000, 5000)
    assert pfns and all(p << 12 >= FOUR_GIB for p in pfns)
    assert session.findings == []
