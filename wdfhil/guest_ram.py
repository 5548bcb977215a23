"""Guest RAM of a running VM, mapped from its shared RAM file, as PhysicalMemory.

QEMU keeps guest RAM in one ``memory-backend-file`` (``share=on``) but shows
it to the guest in pieces: RAM below 4 GiB up to the PCI hole
(``ram-below-4g``) and the rest from 4 GiB up (``ram-above-4g``). Where each
piece starts depends on machine type and RAM size, so the layout is read from
QEMU itself (``info mtree``) instead of being hard-coded, and every
guest-physical address is translated to a file offset through it.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from framework_emu.physical_memory import PAGE_SIZE, PhysicalMemory, PhysicalMemoryError
from wdfhil.errors import DeviceProtocolError

FOUR_GIB = 1 << 32
# Legacy VGA window and BIOS shadow (0xA0000-0xFFFFF): RAM in the file, but the
# guest sees VGA MMIO and ROM there (higher-priority regions in mtree), and no
# guest hands it to a device. Left out of the layout so DMA there is refused.
LEGACY_WINDOW = (0xA0000, 0x100000)


class QmpSession(Protocol):
    """What this package needs of a QMP connection: one synchronous command call."""

    def command(self, name: str, **args: Any) -> Any: ...


@dataclass(frozen=True)
class RamRange:
    """A guest-physical RAM range and where it lives in the RAM file."""

    gpa: int
    size: int
    file_offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass(frozen=True)
class RamLayout:
    """Guest-physical RAM ranges of a VM, sorted, and the RAM backend they alias."""

    ranges: tuple[RamRange, ...]
    backend: str = "ram0"
    backend_size: int = 0

    @property
    def size(self) -> int:
        return sum(r.size for r in self.ranges)

    @property
    def file_size_needed(self) -> int:
        return max(r.file_offset + r.size for r in self.ranges)

    @property
    def below_4g(self) -> int:
        """Bytes of RAM the backend maps below 4 GiB (the end of low RAM)."""
        return max((r.end for r in self.ranges if r.gpa < FOUR_GIB), default=0)

    def file_offset(self, gpa: int, length: int = 1) -> int:
        """File offset of ``[gpa, gpa+length)``; it must lie inside one range."""
        for r in self.ranges:
            if r.gpa <= gpa and gpa + length <= r.end and length >= 0:
                return r.file_offset + gpa - r.gpa
        raise PhysicalMemoryError(
            f"guest-physical range 0x{gpa:x}+0x{length:x} is not inside RAM ({self.describe()})")

    def describe(self) -> str:
        return ", ".join(f"0x{r.gpa:x}-0x{r.end:x}@file+0x{r.file_offset:x}" for r in self.ranges)

    @classmethod
    def single(cls, size: int) -> "RamLayout":
        """All RAM at guest-physical 0 (a bench or test backing, no PCI hole)."""
        return cls((RamRange(0, size, 0),), backend="file", backend_size=size)


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


def read_ram_layout(qmp: QmpSession) -> RamLayout:
    """Ask a running QEMU (QMP) for its RAM layout."""
    text = qmp.command("human-monitor-command", **{"command-line": "info mtree"})
    return parse_mtree(str(text))


class GuestRam(PhysicalMemory):
    """A VM's guest RAM: its shared RAM file mapped into this process.

    Reads and writes go straight to the memory the guest runs on (the file is
    ``share=on``). Only the ranges of the layout are reachable; anything else
    (PCI hole, past the end) raises PhysicalMemoryError without a touch.
    """

    def __init__(self, mapping: mmap.mmap, layout: RamLayout, path: str = "") -> None:
        self._mmap = mapping
        self._whole: memoryview | None = memoryview(mapping)
        self.layout = layout
        self.path = path
        self._ranges = [(r.gpa, r.end) for r in layout.ranges]

    @classmethod
    def open(cls, path: str | os.PathLike[str], layout: RamLayout) -> "GuestRam":
        """Map the RAM file at ``path`` (read-write, shared) for ``layout``."""
        for r in layout.ranges:
            if r.gpa % PAGE_SIZE or r.size % PAGE_SIZE or r.file_offset % PAGE_SIZE:
                raise DeviceProtocolError(f"RAM range is not page aligned: {r}")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            file_size = os.fstat(fd).st_size
            need = layout.file_size_needed
            if file_size < need:
                raise DeviceProtocolError(
                    f"RAM file {path} has {file_size} bytes but the layout "
                    f"({layout.describe()}) needs {need}")
            mapping = mmap.mmap(fd, need, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(mapping, layout, str(path))

    @property
    def size(self) -> int:
        return self.layout.size

    def ram_ranges(self) -> list[tuple[int, int]]:
        return list(self._ranges)

    def view(self, gpa: int, length: int) -> memoryview:
        if self._whole is None:
            raise PhysicalMemoryError(f"guest RAM {self.path} is closed")
        offset = self.layout.file_offset(gpa, length)
        return self._whole[offset:offset + length]

    @property
    def closed(self) -> bool:
        return self._whole is None

    def close(self) -> None:
        """Unmap. Views handed out must be released first (detach the device first)."""
        if self._whole is None:
            return
        self._whole.release()
        self._whole = None
        try:
            self._mmap.close()
        except BufferError as exc:
            raise DeviceProtocolError(
                f"guest RAM {self.path} is still in use (views are held; "
                "detach the device from guest RAM before closing it)") from exc

    def __enter__(self) -> "GuestRam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
