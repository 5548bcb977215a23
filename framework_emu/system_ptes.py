"""System-PTE mappings: kernel virtual ranges that map arbitrary page frames.

The direct map (``va = kva_base + gpa``) can only show memory that is
physically contiguous. A direct-I/O request's MDL lists the guest caller's
page frames, which are scattered; MmGetSystemAddressForMdlSafe maps them
into one virtually contiguous range in system-PTE space, as the Windows
memory manager does. Reads and writes through such a range are split page
by page onto the right frames.

Virtual addresses are never reused (every mapping gets fresh pages, with one
unmapped guard page after it), so touching a range after it was unmapped is
always recognised: a PAGE_FAULT_IN_NONPAGED_AREA that says which mapping it
was and where it went away.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory

from .bugcheck import PAGE_FAULT_IN_NONPAGED_AREA, BadAccess, BugCheck
from .callsite import CallSite, driver_site, format_site
from .errors import ArgumentError

SYSTEM_PTE_BASE = 0xFFFF_B000_0000_0000  # above any direct-map address of a guest we emulate
SYSTEM_PTE_LIMIT = 0xFFFF_C000_0000_0000
_UNMAPPED_KEPT = 4096


@dataclass
class PteMapping:
    """One mapping: ``len(pfns)`` pages from ``base`` (page aligned)."""

    base: int
    pfns: tuple[int, ...]
    what: str
    mapped_at: CallSite | None
    unmapped_at: CallSite | None = None
    # where the range ends: base and frames never change, and every access through the
    # mapping compares against it (twice per 4 KiB read), so it is a field, not a property
    end: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.end = self.base + (len(self.pfns) << PAGE_SHIFT)


class SystemPteSpace:
    """The kernel's system-PTE region, shared by every framework instance of one machine."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self._memory = memory
        # A machine's RAM layout is fixed while it runs: kept here, a frame check is a compare
        # or two, not PhysicalMemory.contains's list copy and generator (~5 % of a 4 KiB read).
        self._ram = tuple((int(start), int(end)) for start, end in memory.ram_ranges())
        self._next = SYSTEM_PTE_BASE
        self._starts: list[int] = []
        self._live: dict[int, PteMapping] = {}
        self._gone: dict[int, PteMapping] = {}

    def first_not_ram(self, pfns: "tuple[int, ...] | list[int]") -> int | None:
        """The first of ``pfns`` whose page is not wholly guest RAM (None: all are)."""
        ram = self._ram
        for pfn in pfns:
            gpa = pfn << PAGE_SHIFT
            for start, end in ram:
                if start <= gpa and gpa + PAGE_SIZE <= end:
                    break
            else:
                return pfn
        return None

    @staticmethod
    def holds(va: int) -> bool:
        return SYSTEM_PTE_BASE <= va < SYSTEM_PTE_LIMIT

    def map(self, pfns: list[int] | tuple[int, ...], what: str, site: CallSite | None = None) -> int:
        """Map the frames (in order) and return the page-aligned base of the new range."""
        pfns = tuple(map(int, pfns))
        if not pfns:
            raise ArgumentError("a mapping needs at least one page frame", field="pfns", value=pfns)
        bad = self.first_not_ram(pfns)
        if bad is not None:
            raise ArgumentError(f"page frame 0x{bad:x} is not guest RAM", field="pfns", value=bad)
        base = self._next
        self._next = base + ((len(pfns) + 1) << PAGE_SHIFT)  # one guard page after each mapping
        mapping = PteMapping(base, pfns, what, site)
        self._live[base] = mapping
        bisect.insort(self._starts, base)
        return base

    def unmap(self, va: int, site: CallSite | None = None) -> None:
        """MmUnmapLockedPages: the mapping that contains ``va`` goes away."""
        mapping = self._find(va)
        if mapping is None:
            return
        del self._live[mapping.base]
        del self._starts[bisect.bisect_left(self._starts, mapping.base)]
        mapping.unmapped_at = site or ("<framework>", 0)
        self._gone[mapping.base] = mapping
        if len(self._gone) > 2 * _UNMAPPED_KEPT:
            self._gone = dict(list(self._gone.items())[-_UNMAPPED_KEPT:])

    def _find(self, va: int) -> PteMapping | None:
        i = bisect.bisect_right(self._starts, va) - 1
        if i < 0:
            return None
        mapping = self._live[self._starts[i]]
        return mapping if va < mapping.end else None

    def _fault(self, va: int, length: int, write: bool, start: int | None = None,
               total: int | None = None) -> BugCheck:
        """The page fault at ``va`` (``length`` bytes left) of an access of ``total``
        bytes from ``start``; its BadAccess names the mapping the access ran past
        (and its guard page) or the unmapped one it touched."""
        site = driver_site()
        gone = next((m for m in reversed(self._gone.values()) if m.base <= va < m.end), None)
        why = "not mapped"
        start, total = (va, length) if start is None or total is None else (start, total)
        access = None
        if gone is not None:
            why = (f"the {gone.what} mapped at {format_site(gone.mapped_at)}, unmapped at"
                   f" {format_site(gone.unmapped_at)}")
            access = BadAccess(start, total, write, f"{gone.what} (unmapped)", gone.base, gone.end,
                               site=site)
        else:
            before = self._find(va - PAGE_SIZE)          # the guard page after it holds va
            if before is not None and before.end <= va < before.end + PAGE_SIZE:
                why = f"past the end of the {before.what} (its guard page)"
                access = BadAccess(start, total, write, before.what, before.base, before.end,
                                   (before.end, before.end + PAGE_SIZE), "guard page", site)
        return BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (va, int(write), 0, 0),
                        f"{'write to' if write else 'read from'} 0x{va:x}+0x{length:x} in system-PTE space:"
                        f" {why} (at {format_site(site)})", access=access)

    def segments(self, va: int, length: int, write: bool = False) -> list[tuple[int, int]]:
        """(gpa, length) pieces of ``[va, va+length)``, physically contiguous pieces merged."""
        out: list[tuple[int, int]] = []
        start, total = va, length
        mapping = self._find(va)
        while length > 0:
            if mapping is None or not mapping.base <= va < mapping.end:
                raise self._fault(va, length, write, start, total)
            index = (va - mapping.base) >> PAGE_SHIFT
            offset = va & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - offset, length)
            gpa = (mapping.pfns[index] << PAGE_SHIFT) + offset
            if out and out[-1][0] + out[-1][1] == gpa:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((gpa, n))
            va += n
            length -= n
        return out

    def pfns_of(self, va: int, length: int) -> list[int]:
        """The frames behind a mapped range, page by page (to build an MDL over it)."""
        first = va & ~(PAGE_SIZE - 1)
        pages = ((va & (PAGE_SIZE - 1)) + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        return [self.segments(first + (i << PAGE_SHIFT), 1)[0][0] >> PAGE_SHIFT for i in range(pages)]

    def read(self, va: int, length: int) -> bytes:
        return b"".join(bytes(self._memory.view(gpa, n)) for gpa, n in self.segments(va, length))

    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        done = 0
        for gpa, n in self.segments(va, len(data), True):
            self._memory.view(gpa, n)[:] = data[done:done + n]
            done += n

    def view(self, va: int, length: int, write: bool = False) -> memoryview:
        """A zero-copy view, possible only where the range's frames are contiguous."""
        pieces = self.segments(va, length, write)
        if len(pieces) > 1:
            raise ArgumentError(f"0x{va:x}+0x{length:x} maps {len(pieces)} separate frame runs: use fx.read /"
                                f" fx.write (or RtlCopyMemory) rather than one view", field="va", value=va)
        if not pieces:
            return memoryview(b"")
        return self._memory.view(pieces[0][0], length)
