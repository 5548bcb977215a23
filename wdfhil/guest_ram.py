"""Guest RAM of a running VM, mapped from its shared RAM file, as PhysicalMemory.

QEMU keeps guest RAM in one ``memory-backend-file`` (``share=on``) but shows
it to the guest in pieces: RAM below 4 GiB up to the PCI hole and the rest
from 4 GiB up. A :class:`RamLayout` says where each piece starts and where it
lives in the file; the VM layer reads it from QEMU itself
(``orchestrator.ram_layout.read_ram_layout``). Guest RAM is shared by the
framework (its pools) and the device (its DMA), so it lives in the shared
layer and neither of them imports the other.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from wdfhil.errors import DeviceProtocolError
from wdfhil.physical_memory import FOUR_GIB, PAGE_SIZE, PhysicalMemory, PhysicalMemoryError


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
        # (start, end, file offset - gpa) per range: view() runs several times per guest I/O
        # request, so it finds the range without attribute lookups or a call to the layout
        self._spans = tuple((r.gpa, r.end, r.file_offset - r.gpa) for r in layout.ranges)

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
        whole = self._whole
        if whole is None:
            raise PhysicalMemoryError(f"guest RAM {self.path} is closed")
        if length >= 0:
            end = gpa + length
            for start, stop, delta in self._spans:
                if start <= gpa and end <= stop:
                    return whole[gpa + delta:end + delta]
        offset = self.layout.file_offset(gpa, length)    # raises: not inside one range
        return whole[offset:offset + length]

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
