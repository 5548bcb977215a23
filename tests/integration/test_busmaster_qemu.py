"""The bus-master device on the RAM of a real, paused QEMU (pc, 4 GiB: RAM above
4 GiB exists): a ring, descriptors and buffers in guest RAM, data moved both
ways and completions written back, checked with QEMU's own ``xp``; a 32-bit
device refusing a buffer above 4 GiB leaves it untouched."""

from __future__ import annotations

import struct

from device_model.abi import CompletionStatus, ErrorReason
from device_model.busmaster import BusMasterDevice
from device_model.busmaster_abi import BmControl, BmDescriptor, BmOpcode, register_offset
from orchestrator.hotplug import ivshmem_device_args
from orchestrator.ram_layout import read_ram_layout
from wdfhil.guest_ram import GuestRam

from device_paused_qemu import PausedQemu

GIB = 1 << 30
RING, SOURCE, TARGET, HIGH = 0x200000, 0x300000, 0x400000, 4 * GIB + 0x1000


def test_bus_master_dma_into_the_ram_of_a_real_qemu(tmp_path):
    run = tmp_path / "dev"
    run.mkdir(mode=0o700)
    calls: list[int] = []
    with BusMasterDevice(run, address_bits=32, on_interrupt=calls.append) as device, \
            PausedQemu("pc", "4G", ivshmem_device_args(device.socket_path)) as qemu:
        with GuestRam.open(qemu.ram_file, read_ram_layout(qemu)) as ram:
            device.attach_guest_ram(ram)
            try:
                pattern = struct.pack("<16I", *range(0xB0000000, 0xB0000010))
                ram.write(SOURCE, pattern)
                for i, descriptor in enumerate([
                        BmDescriptor(BmOpcode.TO_DEVICE, 1, 64, SOURCE),
                        BmDescriptor(BmOpcode.FROM_DEVICE, 2, 64, TARGET),
                        BmDescriptor(BmOpcode.FROM_DEVICE, 3, 64, HIGH)]):
                    ram.write(RING + 64 * i, descriptor.pack())

                def write(name: str, value: int) -> None:
                    device.register_write(register_offset(name), 4, value)

                write("ring_base_lo", RING)
                write("ring_size", 4)
                write("int_mask", 0)
                write("control", BmControl.ENABLE)
                write("ring_tail", 3)
                device.drain()
                assert qemu.read_words(TARGET, 16) == list(range(0xB0000000, 0xB0000010))
                assert qemu.read_words(HIGH, 16) == [0] * 16      # above a 32-bit device's reach
                records = [qemu.read_words(RING + 64 * i + 48, 4) for i in range(3)]
                assert records == [[1, CompletionStatus.OK, 0, 64], [1, CompletionStatus.OK, 0, 64],
                                   [1, CompletionStatus.ERROR, ErrorReason.SEGMENT_ABOVE_DMA_MASK, 0]]
                assert calls and device.register_read(register_offset("ring_head"), 4) == 3
            finally:
                device.detach_guest_ram()
        assert device.errors == []
