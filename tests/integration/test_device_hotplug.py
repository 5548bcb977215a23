"""QMP hot-plug of the device into a real, paused QEMU (no guest OS), and the
device surviving its peer leaving and a new one arriving."""

from __future__ import annotations

import pytest

from device_model.abi import BAR2_SIZE, PCI_DEVICE_ID, PCI_VENDOR_ID
from device_model.device import EchoDevice
from orchestrator.hotplug import (
    ROOT_PORT_ID, find_pci_function, hotplug_device, list_pci_functions, peripheral_ids,
    ivshmem_device_args, root_port_args, unplug_device,
)
from wdfhil.errors import DeviceProtocolError

from device_paused_qemu import PausedQemu

# Native PCIe hot-plug on the root port: an unpowered slot releases a device at
# once, so unplug completes without a guest OS (ACPI hot-plug would wait for one).
Q35_ARGS = [*root_port_args(), "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]


def bars_numbered(qemu: PausedQemu) -> bool:
    """Firmware has numbered the buses (so query-pci can see behind the root port)."""
    return any(bar.address not in (-1, 0) for f in list_pci_functions(qemu) for bar in f.bars.values())


@pytest.mark.parametrize("machine,extra", [("pc", []), ("q35", Q35_ARGS)])
def test_hotplug_shows_the_function_and_connects_a_peer(device, machine, extra):
    with PausedQemu(machine, "256M", extra) as qemu:
        qemu.run_until(lambda: bars_numbered(qemu))
        assert device.peers == []
        function = hotplug_device(qemu, device.socket_path)
        peer = device.wait_for_peer(30)
        assert function is not None and function.qdev_id == "wdfhil0"
        assert (function.vendor, function.device) == (PCI_VENDOR_ID, PCI_DEVICE_ID)
        assert function.bars[2].size == BAR2_SIZE
        assert (function.bus != 0) == (machine == "q35")       # behind wdfhil-rp0 on q35
        assert device.header()["guest_peer"] == peer
        chardevs = {c["label"] for c in qemu.command("query-chardev")}
        assert "wdfhil0-chr" in chardevs


def test_q35_unplug_and_replug_gets_a_new_peer(device):
    with PausedQemu("q35", "256M", Q35_ARGS) as qemu:
        assert ROOT_PORT_ID in peripheral_ids(qemu)
        hotplug_device(qemu, device.socket_path)
        first = device.wait_for_peer(30)
        unplug_device(qemu)
        device.wait_for_no_peer(first, 30)
        assert "wdfhil0" not in peripheral_ids(qemu)
        assert "wdfhil0-chr" not in {c["label"] for c in qemu.command("query-chardev")}
        hotplug_device(qemu, device.socket_path)
        second = device.wait_for_peer(30)
        assert second != first and device.peers == [second]
        assert device.header()["guest_peer"] == second


def test_pc_unplug_without_a_guest_says_why(device):
    """On pc, ACPI hot-unplug needs the guest OS to eject the device: with none
    running, unplug must fail with an explanation, not hang."""
    with PausedQemu("pc", "256M") as qemu:
        hotplug_device(qemu, device.socket_path)
        peer = device.wait_for_peer(30)
        with pytest.raises(DeviceProtocolError, match="ACPI"):
            unplug_device(qemu, timeout=1.0)
        assert device.peers == [peer]


def test_second_device_is_a_second_peer(device, tmp_path):
    """Two ivshmem devices (two EchoDevices) in one VM: separate servers, separate peers."""
    other_dir = tmp_path / "other"
    other_dir.mkdir(mode=0o700)
    with EchoDevice(other_dir, dma_mask=0xFFFFFFFF) as other, \
            PausedQemu("pc", "256M", ivshmem_device_args(device.socket_path)) as qemu:
        device.wait_for_peer(30)
        hotplug_device(qemu, other.socket_path, device_id="wdfhil1", chardev_id="wdfhil1-chr")
        other.wait_for_peer(30)
        ids = {f.qdev_id for f in list_pci_functions(qemu)}
        assert {"wdfhil0", "wdfhil1"} <= ids
        assert find_pci_function(qemu, "wdfhil1").bars[2].size == BAR2_SIZE
        assert other.header()["dma_mask"] == 0xFFFFFFFF


def test_failed_device_add_removes_its_chardev(device):
    with PausedQemu("q35", "256M") as qemu:      # no root port: the named bus does not exist
        with pytest.raises(DeviceProtocolError, match="device_add"):
            hotplug_device(qemu, device.socket_path, bus="no-such-bus")
        assert "wdfhil0-chr" not in {c["label"] for c in qemu.command("query-chardev")}
        unplug_device(qemu)                      # nothing left to remove: a no-op
