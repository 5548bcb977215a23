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
from orchestrator import qemu_fds
from orchestrator.agent_client import Step
from orchestrator.dma_session import DmaSession
from wdfhil.errors import DeviceProtocolError

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
        guest_io_works(plugged)
    assert kernel_trouble(session) == []


def guest_io_works(plugged) -> None:
    RequestEndpoint(plugged.device, EchoIoHandler().on_request)
    io_path = plugged.guest_path.replace("wdfhil", "wdfio")
    answer = plugged.agent.run(Step.io_open(io_path), Step.io_stress(2, 20, 100))[1]
    assert (answer["done"], answer["failed"]) == (40, 0)


def test_replug_at_once_then_guest_io(session):
    """QEMU 7.2 leaves the MSI-X eventfd handlers of an unplugged ivshmem behind (TCG);
    a device added before QEMU closed the old one's BAR2 memfd got shifted fd numbers,
    one stale handler watched its request doorbell, and guest I/O crashed QEMU (SIGSEGV).
    The unplug now waits for that close, so a re-plug at once is safe."""
    for _ in range(2):
        with session.hotplug() as plugged:
            guest_io_works(plugged)
    assert session.vm.running
    assert kernel_trouble(session) == []


def test_replug_onto_a_stale_handler_is_refused(session, tmp_path):
    """An fd QEMU opened between two plugs shifts the next device's fds so that a stale
    handler's number holds its request doorbell: refused with a clear error before the
    guest rings it, QEMU alive; once that fd is gone a plug works again."""
    if session.vm.accelerator == "kvm":
        pytest.skip("with KVM irqfds ivshmem leaves no fd handlers behind")
    with session.hotplug() as plugged:     # a known layout of fd numbers to leave behind
        pass
    qmp = session.vm.qmp
    pid = session.vm.qemu_pid
    before = qemu_fds.open_numbers(pid)
    qmp.command("object-add", **{"qom-type": "memory-backend-memfd", "id": "extra-fd",
                                 "size": 4096})
    (extra,) = qemu_fds.open_numbers(pid) - before
    assert extra < min(session.stale_vector_fds().numbers)   # below the stale ones
    try:
        with pytest.raises(DeviceProtocolError, match="still carry the MSI-X handler"):
            session.hotplug().plug()
        assert session.vm.running
    finally:
        qmp.command("object-del", id="extra-fd")
    deadline = time.monotonic() + WAIT_S    # QEMU frees RAM blocks after an RCU period
    while extra in qemu_fds.open_numbers(pid):
        assert time.monotonic() < deadline, "QEMU kept the memfd"
        time.sleep(0.01)
    with session.hotplug() as plugged:
        guest_io_works(plugged)
    assert session.vm.running
    assert kernel_trouble(session) == []
