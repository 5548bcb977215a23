"""Guest I/O on q35 with RAM above 4 GiB (q35-3g-highmem): a program's buffers below
and above 4 GiB, unaligned and page-crossing, cross the request ring as the frames
they are; the host's echo handler moves the bytes through the validated runs, and
QEMU's own view (QMP xp) of the guest's read buffer agrees. One boot.
"""

from __future__ import annotations

import pytest

from device_model.abi import IoMajor, TransferMethod
from device_model.request_echo import IOCTL_ECHO, EchoIoHandler
from device_model.request_ring import RequestEndpoint
from orchestrator.agent_client import IoResult, Step, Verification
from orchestrator.dma_session import DmaSession

from guest_helpers import write_read_across_4g

pytestmark = pytest.mark.e2e

FOUR_GIB = 1 << 32


@pytest.fixture(scope="module")
def session(guest_image):
    with DmaSession("q35-3g-highmem", guest_image) as s:
        s.handler = EchoIoHandler()
        s.requests = []

        def on_request(request):
            s.requests.append(request)
            s.handler.on_request(request)
        s.endpoint = RequestEndpoint(s.device, on_request, on_cancel=s.handler.on_cancel)
        yield s
        assert s.device.errors == []


@pytest.mark.parametrize("source_where,target_where", [("high", "low"), ("low", "high")])
def test_write_read_across_4g(session, source_where, target_where):
    session.requests.clear()
    src, dst = write_read_across_4g(session, source_where, target_where)
    (write,) = [r for r in session.requests if r.major == IoMajor.WRITE]
    (read,) = [r for r in session.requests if r.major == IoMajor.READ]
    assert [p << 12 for p in write.pfns] == list(src.frames)
    assert [p << 12 for p in read.pfns] == list(dst.frames)
    assert len(write.pfns) == 258 and write.plan.indirect


def test_out_direct_ioctl_into_pages_above_4g(session):
    results = session.agent.run(
        Step.alloc("in", 5000, offset=10), Step.fill("in", 3),
        Step.alloc("out", 5000, offset=4000, where="high"), Step.memset("out", 0),
        Step.io_call("ioctl", IOCTL_ECHO[TransferMethod.OUT_DIRECT], input="in", output="out"),
        Step.verify("out", 3))
    call = IoResult.from_result(results[4])
    assert (call.status, call.information) == (0, 5000)
    assert Verification.from_result(results[5]).match
    ioctl = [r for r in session.requests if r.major == IoMajor.DEVICE_CONTROL][-1]
    assert ioctl.pfns and all(p << 12 >= FOUR_GIB for p in ioctl.pfns)
