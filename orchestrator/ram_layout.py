"""Where QEMU will put a guest's RAM, known before QEMU runs.

QEMU splits the RAM of the ``pc`` and ``q35`` machines in two: the part
below 4 GiB ends where the PCI hole begins, and the rest is mapped from
4 GiB up; the shared RAM file holds both parts back to back. A guest config
must know this split before any QEMU runs, to check that its pool window
lies inside RAM and clear of what QEMU loads at boot. :class:`RamSplit`
computes it the way QEMU 7.2 does. Once a VM runs, QEMU's own answer
(``info mtree``, read by :func:`read_ram_layout`) is the authority; the
unit tests check that the two agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from wdfhil.errors import DeviceProtocolError
from wdfhil.guest_ram import RamLayout, RamRange
from wdfhil.physical_memory import FOUR_GIB
from wdfhil.units import format_size


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

# Legacy VGA window and BIOS shadow (0xA0000-0xFFFFF): RAM in the file, but the
# guest sees VGA MMIO and ROM there (higher-priority regions in mtree), and no
# guest hands it to a device. Left out of the layout so DMA there is refused.
LEGACY_WINDOW = (0xA0000, 0x100000)


class QmpCommands(Protocol):
    """What reading the layout needs of a QMP connection: one synchronous command call."""

    def command(self, name: str, **args: Any) -> Any: ...


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


# One line of `info mtree`:  START-END (prio P, KIND): NAME [@TARGET TSTART-TEND]
_MTREE_LINE = re.compile(
    r"^\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+)\s+\(prio\s+-?\d+,\s*(?P<kind>[\w-]+)\):\s*"
    r"(?P<alias>alias\s+)?(?P<name>\S+)"
    r"(?:\s+@(?P<target>\S+)\s+(?P<tstart>[0-9a-fA-F]+)-(?P<tend>[0-9a-fA-F]+))?")
_SECTION = re.compile(r"^(address-space|memory-region):\s*(?P<name>.+?)\s*$")
_RAM_ALIASES = ("ram-below-4g", "ram-above-4g")
_RAM_BACKENDS = ("ram0", "pc.ram")


def parse_mtree(text: str) -> RamLayout:
    """The RAM layout from ``info mtree`` text (QEMU 7.2 pc and q35 tested).

    Uses the ``ram-below-4g``/``ram-above-4g`` aliases of the system address
    space; without aliases, a RAM region named ``ram0`` or ``pc.ram`` mapped
    directly in the system address space counts as RAM at its address.
    """
    sections: dict[str, list[re.Match[str]]] = {}
    current: list[re.Match[str]] | None = None
    for line in text.splitlines():
        head = _SECTION.match(line)
        if head:
            current = sections.setdefault(f"{head.group(1)}:{head.group('name')}", [])
            continue
        match = _MTREE_LINE.match(line)
        if match and current is not None:
            current.append(match)
    system = sections.get("address-space:memory") or sections.get("memory-region:system")
    if not system:
        raise DeviceProtocolError(
            "info mtree shows no 'address-space: memory' (or 'memory-region: system'): "
            f"cannot find guest RAM; mtree began with: {text[:300]!r}")
    ranges: list[RamRange] = []
    backend = ""
    for m in system:
        if m.group("alias") and m.group("name") in _RAM_ALIASES and m.group("target"):
            backend = m.group("target")
            start, end = int(m.group("start"), 16), int(m.group("end"), 16) + 1
            tstart = int(m.group("tstart"), 16)
            ranges.append(RamRange(start, end - start, tstart))
    if not ranges:
        for m in system:
            if not m.group("alias") and m.group("kind") == "ram" and m.group("name") in _RAM_BACKENDS:
                backend = m.group("name")
                start, end = int(m.group("start"), 16), int(m.group("end"), 16) + 1
                ranges.append(RamRange(start, end - start, 0))
    if not ranges:
        raise DeviceProtocolError(
            "info mtree shows neither ram-below-4g/ram-above-4g aliases nor a ram0/pc.ram "
            "region in the system address space: cannot find guest RAM")
    backend_size = 0
    for m in sections.get(f"memory-region:{backend}", []):
        if m.group("name") == backend and not m.group("alias"):
            backend_size = int(m.group("end"), 16) + 1 - int(m.group("start"), 16)
            break
    ranges = _without_legacy_window(sorted(ranges, key=lambda r: r.gpa))
    for a, b in zip(ranges, ranges[1:]):
        if a.end > b.gpa:
            raise DeviceProtocolError(f"info mtree shows overlapping RAM ranges: {a} and {b}")
    return RamLayout(tuple(ranges), backend=backend, backend_size=backend_size)


def _without_legacy_window(ranges: list[RamRange]) -> list[RamRange]:
    lo, hi = LEGACY_WINDOW
    out: list[RamRange] = []
    for r in ranges:
        if r.gpa < hi and r.end > lo:
            if r.gpa < lo:
                out.append(RamRange(r.gpa, lo - r.gpa, r.file_offset))
            if r.end > hi:
                out.append(RamRange(hi, r.end - hi, r.file_offset + hi - r.gpa))
        else:
            out.append(r)
    return out


def read_ram_layout(qmp: QmpCommands) -> RamLayout:
    """Ask a running QEMU (QMP) for its RAM layout."""
    text = qmp.command("human-monitor-command", **{"command-line": "info mtree"})
    return parse_mtree(str(text))
