"""Guest I/O on a hot-plugged device that goes away with a request in flight: the
caller gets ENODEV, the module keeps the request's pages pinned for good (the host
may still hold the request), the host abandons it, and the kernel stays clean.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from device_model.abi import IoMajor
from device_model.request_echo import EchoIoHandler
from device_model.request_ring import RequestEndpoint
from orchestrator.agent_client import Step
from orchestrator.dma_session import DmaSession

pytestmark = pytest.mark.e2e

WAIT_S = 120.0


@pytest.fixture(scope="module")
def session(guest_image):
    with DmaSession("pc-256m", guest_image, device_at_boot=False) as s:
        yield s


def kernel_trouble(session) -> list[str]:
    dmesg = session.vm.run("dmesg").stdout
    return [line for line in dmesg.splitlines()
            if any(word in line for word in ("BUG", "Oops", "WARNING", "general protection"))]


def test_unplug_with_a_request_in_flight(session):
    handler = EchoIoHandler(hold={IoMajor.WRITE})
    with session.hotplug() as plugged:
        endpoint = RequestEndpoint(plugged.device, handler.on_request, on_cancel=handler.on_cancel)
        io_path = plugged.guest_path.replace("wdfhil", "wdfio")
        sysfs = f"/sys/class/wdfhil/{plugged.guest_path.split('/')[-1]}"
        step = f"io-open {io_path}; " + Step.io_stress(1, 1, 9000, page_offset=100)
        session.vm.run(f"rm -f /tmp/hp.json; setsid /usr/bin/wdfhil-agent run {shlex.quote(step)} "
                       ">/tmp/hp.json 2>&1 </dev/null &").check()
        endpoint.wait_for(lambda: len(handler.held) == 1, WAIT_S, "the WRITE held")
        (request,) = handler.held
        assert int(session.vm.run(f"cat {sysfs}/io_pinned_pages").check()) == 3
        plugged.unplug()
    assert request.abandoned and handler.cancelled == [request.request_id]
    deadline = time.monotonic() + WAIT_S
    while not (text := session.vm.run("cat /tmp/hp.json").stdout.strip()):
        assert time.monotonic() < deadline, "the agent did not finish"
        time.sleep(0.2)
    stress = json.loads(text.splitlines()[-1])["results"][1]
    assert (stress["done"], stress["failed"]) == (0, 1)
    assert stress["failures"][0]["errno_name"] == "ENODEV"
    dmesg = session.vm.run("dmesg").stdout
    assert "removed with 1 guest I/O request(s) in flight: kept pinned" in dmesg
    assert kernel_trouble(session) == []
    # a new device works again
    with session.hotplug() as plugged:
        RequestEndpoint(plugged.device, EchoIoHandler().on_request)
        io_path = plugged.guest_path.replace("wdfhil", "wdfio")
        answer = plugged.agent.run(Step.io_open(io_path), Step.io_stress(2, 20, 100))[1]
        assert (answer["done"], answer["failed"]) == (40, 0)
    assert kernel_trouble(session) == []
