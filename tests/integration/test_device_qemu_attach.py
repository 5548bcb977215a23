"""The device attached at boot to a real, paused QEMU (pc and q35, no guest OS):
the ivshmem handshake, the PCI function and its BARs, BAR2 as QEMU maps it,
and guest RAM read through the device's mapping versus QEMU's own ``xp``."""

from __future__ import annotations

import struct

import pytest

from device_model.abi import (
    ABI_VERSION, BAR0_IV_POSITION, BAR2_SIZE, HEADER_FIELDS, MAGIC, PCI_DEVICE_ID, PCI_VENDOR_ID,
    RING_ENTRIES,
)
from orchestrator.hotplug import ivshmem_device_args
from orchestrator.ram_layout import read_ram_layout
from wdfhil.guest_ram import GuestRam
from orchestrator.hotplug import find_pci_function

from device_paused_qemu import PausedQemu

MIB, GIB = 1 << 20, 1 << 30


@pytest.mark.parametrize("machine,memory,expected", [
    ("pc", "256M", [(0, 0xA0000), (MIB, 256 * MIB)]),
    ("q35", "1G", [(0, 0xA0000), (MIB, GIB)]),
    ("q35", "3G", [(0, 0xA0000), (MIB, 2 * GIB), (4 * GIB, 5 * GIB)]),
    ("pc", "4G", [(0, 0xA0000), (MIB, 3 * GIB), (4 * GIB, 5 * GIB)]),
])
def test_guest_ram_matches_what_qemu_shows(device, machine, memory, expected):
    with PausedQemu(machine, memory, ivshmem_device_args(device.socket_path)) as qemu:
        layout = read_ram_layout(qemu)
        with GuestRam.open(qemu.ram_file, layout) as ram:
            assert ram.ram_ranges() == expected
            probes = [0x1000, 0x9F000, MIB, expected[1][1] - 16]
            if len(expected) > 2:
                probes += [4 * GIB, 4 * GIB + 0x1234_0000, expected[2][1] - 16]
            for i, gpa in enumerate(probes):
                words = [0xC0DE0000 + i, 0x12345678, gpa & 0xFFFFFFFF, gpa >> 32]
                ram.write(gpa, struct.pack("<4I", *words))
                assert qemu.read_words(gpa, 4) == words, hex(gpa)


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_handshake_bars_and_bar2_as_qemu_maps_it(device, machine):
    with PausedQemu(machine, "256M", ivshmem_device_args(device.socket_path)) as qemu:
        peer = device.wait_for_peer(30)
        function = find_pci_function(qemu)
        assert function is not None and function.qdev_id == "wdfhil0"
        assert (function.vendor, function.device) == (PCI_VENDOR_ID, PCI_DEVICE_ID)
        assert function.bars[2].size == BAR2_SIZE and function.bars[2].mem_64
        assert function.bars[0].size == 256
        # The firmware assigns the BARs; then QEMU's view of BAR2 is the device's memory.
        qemu.run_until(lambda: find_pci_function(qemu).bars[2].address not in (-1, 0))
        function = find_pci_function(qemu)
        bar2, bar0 = function.bars[2].address, function.bars[0].address
        header = qemu.read_words(bar2, 8)
        assert header[0] == MAGIC and header[1] == ABI_VERSION
        assert header[HEADER_FIELDS["ring_entries"][0] // 4] == RING_ENTRIES
        # The device writes BAR2 and QEMU sees it at once (one shared mapping).
        device.memory.data[:8] = b"WDFHIL!!"
        data_offset = device.header()["data_offset"]
        assert qemu.read_words(bar2 + data_offset, 2) == list(struct.unpack("<2I", b"WDFHIL!!"))
        # IVPosition: the peer id the server gave this QEMU.
        assert qemu.read_words(bar0 + BAR0_IV_POSITION, 1) == [peer]
        assert device.header()["guest_peer"] == peer


def test_peer_leaves_with_qemu_and_a_new_qemu_is_served(device):
    with PausedQemu("pc", "256M", ivshmem_device_args(device.socket_path)) as first:
        first_peer = device.wait_for_peer(30)
        first.kill()
        device.wait_for_no_peer(first_peer, 30)
    with PausedQemu("q35", "256M", ivshmem_device_args(device.socket_path)) as second:
        second_peer = device.wait_for_peer(30)
        assert second_peer != first_peer
        assert device.peers == [second_peer]
        assert device.header()["guest_peer"] == second_peer
        assert find_pci_function(second) is not None
