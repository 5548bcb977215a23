"""The one small interface through which the framework and the device touch guest memory.

The framework never holds a Python object for "a buffer": it holds guest-
physical addresses and reads or writes them through a :class:`PhysicalMemory`.
Unit tests plug in :class:`InProcessMemory`; everything else plugs in the
VM's shared guest RAM (:class:`wdfhil.guest_ram.GuestRam`), so the same framework code
runs against the real memory of a real guest. The device model DMAs through the
same interface, which is why it lives in the shared layer: the framework and
the device both use guest memory and neither imports the other.
"""

from __future__ import annotations

import abc
from typing import Iterable

from wdfhil.errors import WdfhilError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
FOUR_GIB = 1 << 32  # where RAM above the PCI hole starts; 32-bit DMA's limit


class PhysicalMemoryError(WdfhilError):
    """An access to a guest-physical range that is not backed by RAM."""


class PhysicalMemory(abc.ABC):
    """Guest-physical memory: a set of RAM ranges that can be read, written and viewed.

    Addresses are guest-physical. A range may not straddle two RAM ranges
    (e.g. the end of low RAM and the PCI hole); implementations raise
    :class:`PhysicalMemoryError` for anything outside RAM, never touching
    other memory.
    """

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Total bytes of RAM (the sum of :meth:`ram_ranges`)."""

    @abc.abstractmethod
    def ram_ranges(self) -> list[tuple[int, int]]:
        """The RAM ranges as (start, end) guest-physical pairs, end exclusive, sorted."""

    @abc.abstractmethod
    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy writable view of ``length`` bytes at ``gpa`` (one RAM range)."""

    def read(self, gpa: int, length: int) -> bytes:
        """Copy ``length`` bytes out of RAM at ``gpa``."""
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into RAM at ``gpa``."""
        data = memoryview(data).cast("B")
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, length: int, byte: int) -> None:
        """Set ``length`` bytes at ``gpa`` to ``byte`` (guard bytes, poison)."""
        self.view(gpa, length)[:] = bytes([byte]) * length

    def contains(self, gpa: int, length: int) -> bool:
        """Whether ``[gpa, gpa+length)`` lies wholly inside one RAM range."""
        if gpa < 0 or length < 0:
            return False
        end = gpa + length
        return any(start <= gpa and end <= stop for start, stop in self.ram_ranges())

    @staticmethod
    def pfn(gpa: int) -> int:
        """Page frame number of a guest-physical address (what MDLs and devices use)."""
        return gpa >> PAGE_SHIFT

    def check_range(self, gpa: int, length: int) -> None:
        """Raise PhysicalMemoryError unless ``[gpa, gpa+length)`` is inside one RAM range."""
        if not self.contains(gpa, length):
            raise PhysicalMemoryError(
                f"guest-physical range 0x{gpa:x}+0x{length:x} is not inside RAM "
                f"(RAM: {', '.join(f'0x{a:x}-0x{b:x}' for a, b in self.ram_ranges())})")


class InProcessMemory(PhysicalMemory):
    """RAM that is a Python bytearray: guest-physical 0..size, for unit tests and demos.

    ``ranges`` may describe a layout with a hole (e.g. low RAM plus RAM above
    4 GiB) to test code that must cope with it; the backing then holds the
    ranges back to back, as QEMU's RAM file does.
    """

    def __init__(self, size: int | None = None, *,
                 ranges: Iterable[tuple[int, int]] | None = None) -> None:
        if ranges is None:
            if size is None or size <= 0 or size % PAGE_SIZE:
                raise ValueError(f"size must be a positive multiple of {PAGE_SIZE}, got {size!r}")
            ranges = [(0, size)]
        self._ranges = sorted((int(a), int(b)) for a, b in ranges)
        offsets, total, last_end = [], 0, -1
        for start, end in self._ranges:
            if start % PAGE_SIZE or end % PAGE_SIZE or end <= start or start < last_end:
                raise ValueError(f"bad RAM range 0x{start:x}-0x{end:x}")
            offsets.append(total)
            total += end - start
            last_end = end
        if size is not None and size != total:
            raise ValueError(f"size {size} does not match the ranges' total {total}")
        self._offsets = offsets
        self._size = total
        self._backing = bytearray(total)
        self._whole = memoryview(self._backing)

    @property
    def size(self) -> int:
        return self._size

    def ram_ranges(self) -> list[tuple[int, int]]:
        return list(self._ranges)

    def view(self, gpa: int, length: int) -> memoryview:
        for (start, end), offset in zip(self._ranges, self._offsets):
            if start <= gpa and gpa + length <= end and length >= 0:
                base = offset + gpa - start
                return self._whole[base:base + length]
        self.check_range(gpa, length)
        raise AssertionError("unreachable")
