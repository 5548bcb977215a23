"""Hot-plug on a pc guest booted without the device: the driver binds a device
that arrives later, survives its removal while a process has it open and
mapped, refuses an ivshmem device that is not a wdfhil device, and binds a
new one afterwards. One boot for the whole module.
"""

from __future__ import annotations

import pytest

from orchestrator.hotplug import unplug_device
from orchestrator.agent_client import Step
from orchestrator.dma_session import DmaSession, echo_roundtrip
from wdfhil.errors import GuestError

pytestmark = pytest.mark.e2e

HOSTILE_ID = "not-wdfhil"
HOSTILE_MEM = "not-wdfhil-mem"


@pytest.fixture(scope="module")
def session(guest_image):
    with DmaSession("pc-256m", guest_image, device_at_boot=False) as s:
        yield s


def kernel_trouble(session) -> list[str]:
    dmesg = session.vm.run("dmesg").stdout
    return [line for line in dmesg.splitlines()
            if any(word in line for word in ("BUG", "Oops", "WARNING", "general protection"))]


def test_hotplugged_device_does_dma_and_goes_away_cleanly(session):
    assert session.device is None
    with session.hotplug() as plugged:
        trip = echo_roundtrip(session, size=6000, seed=3, source_offset=2000,
                              target_offset=100, agent=plugged.agent, device=plugged.device)
        assert trip.ok, (trip.write, trip.read, trip.guest_verify)
        with plugged.agent.serve() as agent:
            assert agent.command("info")["header"]["status_name"] == "READY"  # open + mapped
            plugged.unplug()                    # the driver's remove() with the file open
            with pytest.raises(GuestError, match="gone"):
                agent.command("info")
            assert agent.command("version")["ok"]   # the agent process survived
    assert "wdfhil" not in session.vm.run("ls /sys/class/wdfhil").stdout
    assert kernel_trouble(session) == []


def test_driver_refuses_an_ivshmem_device_without_the_wdfhil_header(session):
    qmp = session.vm.qmp
    qmp.command("object-add", **{"qom-type": "memory-backend-ram", "id": HOSTILE_MEM,
                                 "size": 1 << 20})
    try:
        qmp.command("device_add", driver="ivshmem-plain", id=HOSTILE_ID, memdev=HOSTILE_MEM)
        try:
            found = session.vm.run(
                "for i in $(seq 100); do dmesg | grep -q 'not a wdfhil device' && break; "
                "sleep 0.1; done; dmesg | grep 'wdfhil_pci'").stdout
        finally:
            unplug_device(qmp, device_id=HOSTILE_ID, chardev_id=None)
    finally:
        qmp.command("object-del", id=HOSTILE_MEM)
    assert "BAR2 magic is 0x00000000" in found and "not a wdfhil device" in found
    assert "wdfhil" not in session.vm.run("ls /sys/class/wdfhil").stdout
    assert kernel_trouble(session) == []


def test_a_dead_device_server_is_a_timeout_not_a_hang(session):
    with session.hotplug() as plugged:
        plugged.agent.command("nop")
        plugged.device.close()      # the host side dies; QEMU keeps the PCI function
        with pytest.raises(GuestError, match="no answer from the device within 2000 ms"):
            plugged.agent.command("nop timeout=2000")
    assert kernel_trouble(session) == []


def test_a_new_device_binds_after_the_old_one_left(session):
    with session.hotplug() as plugged:
        assert plugged.guest_path == "/dev/wdfhil0"     # the minor was given back
        results = plugged.agent.run(Step.alloc("x", 100), Step.fill("x", 1),
                                    Step.write("x", 0), Step.pingpong(3, warmup=0))
        assert results[2]["completion"]["status"] == "OK"
        assert results[3]["count"] == 3
    assert kernel_trouble(session) == []
