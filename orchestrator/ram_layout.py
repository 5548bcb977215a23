"""Where QEMU will put a guest's RAM, known before QEMU runs.

QEMU splits the RAM of the ``pc`` and ``q35`` machines in two: the part
below 4 GiB ends where the PCI hole begins, and the rest is mapped from
4 GiB up; the shared RAM file holds both parts back to back. A guest config
must know this split before any QEMU runs, to check that its pool window
lies inside RAM and clear of what QEMU loads at boot. :class:`RamSplit`
computes it the way QEMU 7.2 does. Once a VM runs, QEMU's own answer
(``info mtree``, read by ``device_model.guest_ram``) is the authority; the
unit tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from wdfhil.units import format_size

FOUR_GIB = 1 << 32

# hw/i386/pc_piix.c: RAM of 3.5 GiB or more is split at 3 GiB, less stays low.
_PC_LOWMEM_LIMIT = 0xE0000000
_PC_LOWMEM_SPLIT = 0xC0000000
# hw/i386/pc_q35.c: RAM of 2.75 GiB or more is split at 2 GiB, less stays low.
_Q35_LOWMEM_LIMIT = 0xB0000000
_Q35_LOWMEM_SPLIT = 0x80000000

# QEMU's x86_load_linux puts the initrd at (initrd_max - size) & ~4095, where
# initrd_max is the kernel header's initrd_addr_max (0x7fffffff on x86-64
# kernels) capped at below_4g - acpi_data_size - 1 (hw/i386/x86.c).
_ACPI_DATA_SIZE = 0x20000 + 0x8000
DEFAULT_INITRD_ADDR_MAX = 0x7FFFFFFF
# SeaBIOS relocates itself and its tables into the top of low RAM.
_FIRMWARE_TOP_RESERVE = 1 << 20

MACHINES = ("pc", "q35")


@dataclass(frozen=True)
class RamSplit:
    """How many bytes of RAM sit below 4 GiB and how many from 4 GiB up."""

    below_4g: int
    above_4g: int

    @classmethod
    def for_machine(cls, machine: str, size: int) -> "RamSplit":
        """The split QEMU 7.2 makes for ``machine`` with ``size`` bytes of RAM."""
        if machine == "pc":
            limit, split = _PC_LOWMEM_LIMIT, _PC_LOWMEM_SPLIT
        elif machine == "q35":
            limit, split = _Q35_LOWMEM_LIMIT, _Q35_LOWMEM_SPLIT
        else:
            raise ValueError(f"unknown machine {machine!r} (known: {', '.join(MACHINES)})")
        if size <= 0:
            raise ValueError(f"RAM size must be positive, got {size}")
        below = split if size >= limit else size
        return cls(below_4g=below, above_4g=size - below)

    @property
    def size(self) -> int:
        return self.below_4g + self.above_4g

    def ranges(self) -> list[tuple[int, int]]:
        """``(guest-physical start, length)`` of each RAM part, in order; the
        RAM file holds them back to back in the same order."""
        parts = [(0, self.below_4g)]
        if self.above_4g:
            parts.append((FOUR_GIB, self.above_4g))
        return parts

    def file_offset(self, gpa: int, size: int = 1) -> int:
        """Offset in the RAM file of ``gpa``; ``[gpa, gpa+size)`` must lie in one part."""
        offset = 0
        for start, length in self.ranges():
            if start <= gpa and gpa + size <= start + length:
                return offset + gpa - start
            offset += length
        raise ValueError(f"guest-physical range {gpa:#x}+{size:#x} is not inside guest RAM "
                         f"({self.describe()})")

    def holds(self, gpa: int, size: int) -> bool:
        """Whether ``[gpa, gpa+size)`` lies inside one RAM part."""
        return any(start <= gpa and gpa + size <= start + length
                   for start, length in self.ranges())

    def initrd_region(self, initrd_size: int,
                      initrd_addr_max: int = DEFAULT_INITRD_ADDR_MAX) -> tuple[int, int]:
        """``[start, end)`` of low RAM that QEMU's initrd and the firmware's
        relocated tables occupy at boot: a pool window there would be
        overwritten before the kernel reserves it."""
        initrd_max = min(initrd_addr_max, self.below_4g - _ACPI_DATA_SIZE - 1)
        start = (initrd_max - initrd_size) & ~0xFFF
        start = max(0, min(start, self.below_4g - _FIRMWARE_TOP_RESERVE))
        return start, self.below_4g

    def describe(self) -> str:
        return " and ".join(f"{start:#x}-{start + length:#x} ({format_size(length)})"
                            for start, length in self.ranges())
