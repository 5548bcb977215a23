"""Descriptor validation: a copied SQE -> a transfer plan, or a refusal with a reason.

Everything in a descriptor comes from an untrusted guest. The checks run in
one written-out order (docs/device-abi.md lists it) on a private copy of the
descriptor, and on a private copy of an indirect segment table, so the guest
cannot change what was validated. A plan only ever holds views of guest RAM
that were checked to lie wholly inside one RAM range, under the DMA mask.

A plan is built in two tiers, because a scattered 1 MiB transfer has 256
segments, every Python-level step per segment costs about a tenth of a 4 KiB
memcpy, and the DMA engine must stay near memcpy speed. The fast tier proves
with a few C-level passes over the whole list (min/max of the addresses, one
bytes comparison for the usual all-pages-alike lengths) that *every* check
passes; it cannot name a culprit, so whatever it cannot prove goes to the
exact tier, which runs the checks one by one in the written order and names
the first failure. Where both accept, they make the same plan
(tests/unit/device/test_descriptor_validation.py checks this as a property).

Before both, a long list of whole, page-aligned 4 KiB segments (what an MDL's
PFN array becomes: the commonest scatter/gather list) is a *page plan*: numpy
checks the list in a few whole-array operations and turns it into row numbers
of a ``(pages, 4096)`` array over each RAM window, so the engine copies it
with one ``numpy.take`` (gather) or one fancy assignment (scatter), a C loop
with no Python step per page. It too only proves; anything it cannot prove
goes on to the tiers above (test_page_plans.py holds it to the exact tier).
"""

from __future__ import annotations

import functools
import operator
import struct
import sys
from dataclasses import dataclass
from itertools import repeat
from typing import Sequence

import numpy as np

from device_model.abi import (
    DATA_SIZE, MAX_INLINE_SEGMENTS, MAX_SEGMENTS, MAX_TRANSFER, SEGMENT_FORMAT, SEGMENT_SIZE,
    SQE_FORMAT,
    SQE_HEAD_SIZE, DescriptorFlag, ErrorReason, Opcode,
)
from wdfhil.physical_memory import PAGE_SIZE, PhysicalMemory

_SQE_HEAD = struct.Struct(SQE_FORMAT)
_SQE_AND_FIRST_SEGMENT = struct.Struct(SQE_FORMAT + SEGMENT_FORMAT.lstrip("<"))
_INDIRECT = int(DescriptorFlag.INDIRECT)
_KNOWN_FLAGS = _INDIRECT
_OPCODES = {int(op): op for op in Opcode}
_NOP = Opcode.NOP
_WRITE = Opcode.WRITE
FULL_DMA_MASK = (1 << 64) - 1
_ADDRESS_LIMIT = 1 << 64
_U32 = 0xFFFFFFFF
_SEGMENT = struct.Struct(SEGMENT_FORMAT)
# The fast tier reads a segment table as native u64 pairs: (gpa, length | reserved << 32).
_NATIVE_LITTLE_ENDIAN = sys.byteorder == "little"
# A segment table as (gpa, length | reserved << 32) pairs. Masked with _PAGE_CHECK, a
# whole aligned page reads (0, PAGE_SIZE): a page list is a prefix of _PAGE_LIST_IMAGE.
_SEGMENT_WORDS = np.dtype("<u8")
_PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
_PAGE_CHECK = np.array([PAGE_SIZE - 1, (1 << 64) - 1] * MAX_SEGMENTS, _SEGMENT_WORDS)
_PAGE_LIST_IMAGE = np.array([0, PAGE_SIZE] * MAX_SEGMENTS, _SEGMENT_WORDS).tobytes()
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce
# Below this many segments the per-call cost of numpy (~10 us) exceeds the per-segment
# Python steps it saves (bench/dma.py --page-lists measures the crossover).
PAGE_PLAN_MIN_SEGMENTS = 16


@dataclass(frozen=True)
class Refusal:
    """Why a descriptor was not executed: the reason code and the offending field."""

    request_id: int
    reason: ErrorReason
    field: str
    value: int
    message: str

    def __str__(self) -> str:
        return f"request {self.request_id}: {self.reason.name}: {self.field}={self.value:#x}: {self.message}"


@dataclass(slots=True)
class PageRows:
    """Whole pages of one RAM window in a page plan: ``pages[rows[i]]`` is segment
    ``positions[i]`` of the list (``positions`` None: segment i, all in this window)."""

    pages: np.ndarray
    rows: np.ndarray
    positions: np.ndarray | None = None


@dataclass(slots=True)
class TransferPlan:
    """A validated transfer: where in device memory, and the guest runs to copy.

    The runs are coalesced: ``views[i]`` is the guest RAM of ``lengths[i]``
    bytes at guest-physical ``gpas[i]``, a zero-copy view that validation
    bounded to one RAM range.

    A page plan (``page_rows`` not None) has no views: ``gpas`` (a uint64
    array) and ``lengths`` are per page, in list order, not coalesced, and the
    engine copies the rows (``runs`` makes views of them, for tests). Faults
    and the trace's CRC apply to what the rows copied (``DmaEngine.execute``).
    """

    opcode: Opcode
    request_id: int
    device_offset: int
    length: int
    gpas: Sequence[int]
    lengths: Sequence[int]
    views: list[memoryview]
    nseg: int
    page_rows: list[PageRows] | None = None

    @property
    def runs(self) -> list[tuple[int, int, memoryview]]:
        """(gpa, length, view) per coalesced run; per page, in list order, for a page plan."""
        if self.page_rows is None:
            return list(zip(self.gpas, self.lengths, self.views))
        views: list[memoryview] = [memoryview(b"")] * self.nseg
        for part in self.page_rows:
            positions = range(self.nseg) if part.positions is None else part.positions.tolist()
            for i, row in zip(positions, part.rows.tolist()):
                views[i] = memoryview(part.pages[row])
        return list(zip(list(map(int, self.gpas)), self.lengths, views))


class RamWindows:
    """Zero-copy views of each RAM range of a PhysicalMemory, made once per attach.

    Validating a segment is then a comparison against a few (start, end)
    pairs, and copying it is a slice of a window, with no per-segment call
    into the memory object.
    """

    def __init__(self, memory: PhysicalMemory) -> None:
        self.memory = memory
        self.windows: list[tuple[int, int, memoryview]] = [
            (start, end, memory.view(start, end - start)) for start, end in memory.ram_ranges()]
        # The whole pages of each window as rows of a 2-D array, for page plans:
        # (first page number, end page number, array). Each array holds a slice of
        # its window (not the window itself), so release() can always let go of
        # the windows; the memory unmaps once no plan holds an array either.
        self.page_windows: list[tuple[int, int, np.ndarray]] = []
        for start, end, view in self.windows:
            first, stop = -(-start // PAGE_SIZE), end // PAGE_SIZE
            if stop > first:
                skip = first * PAGE_SIZE - start
                rows = np.frombuffer(view[skip:skip + (stop - first) * PAGE_SIZE], np.uint8)
                self.page_windows.append((first, stop, rows.reshape(stop - first, PAGE_SIZE)))

    def find(self, gpa: int, end: int) -> int:
        """Index of the window holding ``[gpa, end)`` wholly, or -1."""
        for i, (start, stop, _view) in enumerate(self.windows):
            if start <= gpa and end <= stop:
                return i
        return -1

    def release(self) -> None:
        self.page_windows = []
        for _start, _end, view in self.windows:
            view.release()
        self.windows = []


class DescriptorValidator:
    """Checks descriptors against guest RAM, the DMA mask and the ABI limits."""

    def __init__(self, ram: RamWindows, *, dma_mask: int = FULL_DMA_MASK,
                 segment_align: int = 1, page_plans: bool = True) -> None:
        """``page_plans``: plan long 4 KiB page lists as rows (:class:`PageRows`);
        the device always does (faults and the trace act on a page plan's result);
        off only to reach the other tiers in tests and the bench."""
        if segment_align < 1 or segment_align & (segment_align - 1):
            raise ValueError(f"segment_align must be a power of two >= 1, got {segment_align}")
        self.ram = ram
        self.dma_mask = dma_mask
        self.segment_align = segment_align
        self.page_plans = page_plans
        # A page passes the DMA mask check iff its page number is at most this
        # (gpa + PAGE_SIZE - 1 <= dma_mask); -1: no page can.
        self._top_page = (dma_mask - (PAGE_SIZE - 1)) >> _PAGE_SHIFT if dma_mask >= PAGE_SIZE - 1 else -1

    def validate(self, raw: bytes) -> TransferPlan | Refusal:
        """Validate one private copy of an SQE (SQE_SIZE bytes)."""
        (opcode, flags, nseg, request_id, device_offset, length, indirect_gpa, reserved,
         gpa, n, seg_reserved) = _SQE_AND_FIRST_SEGMENT.unpack_from(raw, 0)
        op = _OPCODES.get(opcode)
        # The commonest descriptor, one inline segment, is proved to pass every check
        # in one expression (this runs right after the previous copy flushed the CPU
        # caches, so each step counts); anything else is checked in the written order.
        if (nseg == 1 and op is not _NOP and op is not None and 0 < n == length <= MAX_TRANSFER
                and not flags | reserved | indirect_gpa | seg_reserved
                and device_offset <= DATA_SIZE - n and not (gpa | n) & (self.segment_align - 1)
                and gpa + n - 1 <= self.dma_mask):
            plan = self._one_run(op, request_id, device_offset, gpa, n)
            if plan is not None:
                return plan
        return self.validate_in_order(raw)

    def validate_in_order(self, raw: bytes) -> TransferPlan | Refusal:
        """:meth:`validate` without its shortcut for one inline segment."""
        (opcode, flags, nseg, request_id, device_offset, length, indirect_gpa,
         reserved) = _SQE_HEAD.unpack_from(raw, 0)
        op = _OPCODES.get(opcode)
        if op is None:
            return Refusal(request_id, ErrorReason.BAD_OPCODE, "opcode", opcode, "unknown opcode")
        if flags & ~_KNOWN_FLAGS:
            return Refusal(request_id, ErrorReason.BAD_FLAGS, "flags", flags, "unknown flag bits")
        if reserved:
            return Refusal(request_id, ErrorReason.RESERVED_FIELD, "reserved", reserved,
                           "must be 0")
        indirect = bool(flags & _INDIRECT)
        if op is _NOP:
            if flags:
                return Refusal(request_id, ErrorReason.BAD_FLAGS, "flags", flags,
                               "a NOP takes no flags")
            if nseg:
                return Refusal(request_id, ErrorReason.BAD_SEGMENT_COUNT, "nseg", nseg,
                               "a NOP has no segments")
            if length:
                return Refusal(request_id, ErrorReason.LENGTH_MISMATCH, "length", length,
                               "a NOP moves no data")
            if indirect_gpa:
                return Refusal(request_id, ErrorReason.RESERVED_FIELD, "indirect_gpa", indirect_gpa,
                               "must be 0 without the INDIRECT flag")
            return TransferPlan(op, request_id, device_offset, 0, [], [], [], 0)
        limit = MAX_SEGMENTS if indirect else MAX_INLINE_SEGMENTS
        if nseg == 0 or nseg > limit:
            return Refusal(request_id, ErrorReason.BAD_SEGMENT_COUNT, "nseg", nseg,
                           f"must be 1..{limit} for {'an indirect' if indirect else 'an inline'} list")
        if length == 0:
            return Refusal(request_id, ErrorReason.LENGTH_MISMATCH, "length", length,
                           "must not be 0")
        if length > MAX_TRANSFER:
            return Refusal(request_id, ErrorReason.TRANSFER_TOO_LARGE, "length", length,
                           f"more than MAX_TRANSFER ({MAX_TRANSFER})")
        if device_offset > DATA_SIZE - length:
            return Refusal(request_id, ErrorReason.DEVICE_RANGE, "device_offset", device_offset,
                           f"device_offset + length ({length}) exceeds device memory ({DATA_SIZE})")
        if indirect:
            table_len = nseg * SEGMENT_SIZE
            if indirect_gpa % SEGMENT_SIZE:
                return Refusal(request_id, ErrorReason.INDIRECT_TABLE, "indirect_gpa", indirect_gpa,
                               f"not aligned to {SEGMENT_SIZE}")
            if indirect_gpa + table_len - 1 > self.dma_mask:
                return Refusal(request_id, ErrorReason.INDIRECT_TABLE, "indirect_gpa", indirect_gpa,
                               f"table ends above the DMA mask {self.dma_mask:#x}")
            w = self.ram.find(indirect_gpa, indirect_gpa + table_len)
            if w < 0:
                return Refusal(request_id, ErrorReason.INDIRECT_TABLE, "indirect_gpa", indirect_gpa,
                               f"table of {table_len} bytes is not inside guest RAM")
            start, _stop, view = self.ram.windows[w]
            off = indirect_gpa - start
            table = bytes(view[off:off + table_len])   # private copy: no TOCTOU
            where = "indirect[{}]"
        else:
            if indirect_gpa:
                return Refusal(request_id, ErrorReason.RESERVED_FIELD, "indirect_gpa", indirect_gpa,
                               "must be 0 without the INDIRECT flag")
            table = raw[SQE_HEAD_SIZE:SQE_HEAD_SIZE + nseg * SEGMENT_SIZE]
            where = "segments[{}]"
        return self._plan_table(op, request_id, device_offset, length, nseg, table, where)

    def validate_segments(self, opcode: Opcode, request_id: int, device_offset: int,
                          segments: Sequence[tuple[int, int]],
                          where: str = "segments[{}]") -> TransferPlan | Refusal:
        """Checks 3-7 of the written order for a segment list that did not come in an
        SQE (a personality's descriptor ring in guest RAM): (gpa, length) pairs, a
        WRITE or READ, the length their sum. Same tiers, same plans, same refusals
        (``where`` names the list in a refusal's field)."""
        op = Opcode(opcode)
        nseg = len(segments)
        if op is _NOP:
            raise ValueError("a segment list needs WRITE or READ")
        if nseg == 0 or nseg > MAX_SEGMENTS:
            return Refusal(request_id, ErrorReason.BAD_SEGMENT_COUNT, "nseg", nseg,
                           f"must be 1..{MAX_SEGMENTS}")
        length = sum(n for _g, n in segments)
        if length == 0:
            return Refusal(request_id, ErrorReason.LENGTH_MISMATCH, "length", length,
                           "must not be 0")
        if length > MAX_TRANSFER:
            return Refusal(request_id, ErrorReason.TRANSFER_TOO_LARGE, "length", length,
                           f"more than MAX_TRANSFER ({MAX_TRANSFER})")
        if device_offset > DATA_SIZE - length:
            return Refusal(request_id, ErrorReason.DEVICE_RANGE, "device_offset", device_offset,
                           f"device_offset + length ({length}) exceeds device memory ({DATA_SIZE})")
        for i, (gpa, n) in enumerate(segments):
            if not 0 <= gpa < _ADDRESS_LIMIT or not 0 <= n <= _U32:
                field, value = ("gpa", gpa) if not 0 <= gpa < _ADDRESS_LIMIT else ("length", n)
                return Refusal(request_id, ErrorReason.SEGMENT_NOT_IN_RAM,
                               where.format(i) + "." + field, value, "not a u64 gpa / u32 length")
        table = b"".join(_SEGMENT.pack(g, n, 0) for g, n in segments)
        return self._plan_table(op, request_id, device_offset, length, nseg, table, where)

    def _plan_table(self, op: Opcode, request_id: int, device_offset: int, length: int,
                    nseg: int, table: bytes, where: str) -> TransferPlan | Refusal:
        """The segment checks of a private table copy: page plan, fast tier, exact tier."""
        if nseg >= PAGE_PLAN_MIN_SEGMENTS and self.page_plans:
            plan = self._plan_pages(op, request_id, device_offset, length, nseg, table)
            if plan is not None:
                return plan
        plan = self._plan_fast(op, request_id, device_offset, length, nseg, table)
        if plan is not None:
            return plan
        return self._plan_exact(op, request_id, device_offset, length, nseg, table, where)

    def _plan_fast(self, op: Opcode, request_id: int, device_offset: int, length: int,
                   nseg: int, table: bytes) -> TransferPlan | None:
        """The plan if a few whole-list tests prove every segment check passes, else
        None (then the exact tier decides, and names the first failure).

        Sufficient, not necessary: with no reserved bits, no zero length, the
        lengths adding up, and the box [min gpa, max gpa + max length) under the
        DMA mask and inside one RAM window, each segment passes each check."""
        align = self.segment_align - 1
        if nseg == 1:
            gpa, n, reserved = _SEGMENT.unpack(table)
            if reserved or not n or n != length or (gpa | n) & align or gpa + n - 1 > self.dma_mask:
                return None
            return self._one_run(op, request_id, device_offset, gpa, n)
        if not _NATIVE_LITTLE_ENDIAN:
            return None
        words = memoryview(table).cast("Q")
        gpas: list[int] = words[0::2].tolist()
        length_words = words[1::2]                  # reserved << 32 | length, per segment
        packed = length_words.tobytes()
        uniform = packed == packed[:8] * nseg       # a page list: one length throughout
        if uniform:
            first = longest = length_words[0]
            if not 0 < first <= _U32 or first * nseg != length:
                return None
            lens = [first] * nseg
        else:
            lens = length_words.tolist()
            longest = max(lens)
            if longest > _U32 or 0 in lens or sum(lens) != length:
                return None
        if align and (functools.reduce(operator.or_, gpas)
                      | functools.reduce(operator.or_, lens)) & align:
            return None
        lo, hi = min(gpas), max(gpas) + longest     # hi bounds every segment's end
        if hi - 1 > self.dma_mask:
            return None
        for start, stop, view in self.ram.windows:
            if start <= lo and hi <= stop:
                break
        else:
            return None
        if uniform:
            joined = first in map(operator.sub, gpas[1:], gpas)
        else:
            joined = any(map(operator.eq, gpas[1:], map(operator.add, gpas, lens)))
        if joined:                                  # continuing segments: one run each
            gpas, ends, _ = _coalesce(gpas, list(map(operator.add, gpas, lens)), [0] * nseg)
            lens, uniform = list(map(operator.sub, ends, gpas)), False
        offsets = list(map(operator.sub, gpas, repeat(start))) if start else gpas
        if uniform:
            views = [view[o:o + first] for o in offsets]
        else:
            views = [view[o:o + n] for o, n in zip(offsets, lens)]
        return TransferPlan(op, request_id, device_offset, length, gpas, lens, views, nseg)

    def _plan_pages(self, op: Opcode, request_id: int, device_offset: int, length: int,
                    nseg: int, table: bytes) -> TransferPlan | None:
        """A page plan if whole-array tests prove that every segment is a whole,
        page-aligned 4 KiB page that passes every check, else None.

        Each page passes each check of the exact tier: reserved 0, length 4096
        and a page-aligned gpa (one comparison of the masked table; alignment
        to a page satisfies any segment_align up to a page and cannot wrap),
        page number at most the DMA mask's last whole page, and a page of one
        window (page numbers in [first, stop) of a window's whole pages).

        A READ that names a guest page twice: the fancy assignment writes rows
        in index order, so the last wins as in the other tiers' list-order
        copy. numpy's documentation does not promise that order for repeated
        indices; test_page_plans.py pins it, so a numpy that changes it fails
        there instead of in a guest."""
        if nseg << _PAGE_SHIFT != length or self.segment_align > PAGE_SIZE:
            return None
        words = np.frombuffer(table, _SEGMENT_WORDS)           # the private copy: no TOCTOU
        # One comparison for all of them: gpa & 4095 == 0, length | reserved << 32 == 4096.
        if (words & _PAGE_CHECK[:2 * nseg]).tobytes() != _PAGE_LIST_IMAGE[:nseg * SEGMENT_SIZE]:
            return None
        gpas = words[0::2]
        page = (gpas >> _PAGE_SHIFT).view(np.int64)          # < 2**52: exact as a row number
        lo, hi = int(_MIN(page)), int(_MAX(page))
        if hi > self._top_page:
            return None
        page_rows: list[PageRows] = []
        for first, stop, pages in self.ram.page_windows:
            if first <= lo and hi < stop:                     # the usual case: one window
                page_rows.append(PageRows(pages, page - first if first else page))
                break
        else:
            placed = 0
            for first, stop, pages in self.ram.page_windows:
                inside = (page >= first) & (page < stop)
                positions = np.flatnonzero(inside)
                if len(positions):
                    page_rows.append(PageRows(pages, page[positions] - first, positions))
                    placed += len(positions)
            if placed != nseg:                                # a page outside every window
                return None
        return TransferPlan(op, request_id, device_offset, length, gpas,
                            [PAGE_SIZE] * nseg, [], nseg, page_rows)

    def _one_run(self, op: Opcode, request_id: int, device_offset: int, gpa: int,
                 n: int) -> TransferPlan | None:
        """The plan of one checked segment if it lies in one RAM window, else None."""
        end = gpa + n
        for start, stop, view in self.ram.windows:
            if start <= gpa and end <= stop:
                return TransferPlan(op, request_id, device_offset, n, (gpa,), (n,),
                                    [view[gpa - start:end - start]], 1)
        return None

    def _plan_exact(self, op: Opcode, request_id: int, device_offset: int, length: int,
                    nseg: int, table: bytes, where: str) -> TransferPlan | Refusal:
        """Every check in the written order; the first failure is the refusal. Also
        plans what the fast tier could not prove, e.g. segments in two RAM ranges."""
        fields = _segment_struct(nseg).unpack(table)
        gpas, lens, reserved = fields[0::3], fields[1::3], fields[2::3]

        def refuse(reason: ErrorReason, index: int, field: str, value: int, message: str) -> Refusal:
            return Refusal(request_id, reason, where.format(index) + "." + field, value, message)

        if any(reserved):
            i = _first(reserved)
            return refuse(ErrorReason.RESERVED_FIELD, i, "reserved", reserved[i], "must be 0")
        if 0 in lens:
            i = lens.index(0)
            return refuse(ErrorReason.ZERO_SEGMENT, i, "length", 0, "a segment of length 0")
        align = self.segment_align
        if align > 1:
            for i, (g, n) in enumerate(zip(gpas, lens)):
                if (g | n) & (align - 1):
                    bad_field, bad = ("gpa", g) if g & (align - 1) else ("length", n)
                    return refuse(ErrorReason.SEGMENT_ALIGNMENT, i, bad_field, bad,
                                  f"not a multiple of the device's segment_align {align}")
        ends = list(map(operator.add, gpas, lens))
        hi = max(ends)
        if hi > _ADDRESS_LIMIT:
            i = next(i for i, e in enumerate(ends) if e > _ADDRESS_LIMIT)
            return refuse(ErrorReason.SEGMENT_NOT_IN_RAM, i, "gpa", gpas[i],
                          f"segment of {lens[i]} bytes wraps around the 64-bit address space")
        if hi - 1 > self.dma_mask:
            i = next(i for i, e in enumerate(ends) if e - 1 > self.dma_mask)
            return refuse(ErrorReason.SEGMENT_ABOVE_DMA_MASK, i, "gpa", gpas[i],
                          f"segment of {lens[i]} bytes ends above the DMA mask {self.dma_mask:#x}")
        windows = self.ram.windows
        w = self.ram.find(min(gpas), hi)
        seg_windows: list[int] | None = None
        if w < 0:
            seg_windows = []
            for i, (g, e) in enumerate(zip(gpas, ends)):
                w = self.ram.find(g, e)
                if w < 0:
                    return refuse(ErrorReason.SEGMENT_NOT_IN_RAM, i, "gpa", g,
                                  f"[{g:#x}, {e:#x}) is not wholly inside one guest RAM range")
                seg_windows.append(w)
        total = sum(lens)
        if total != length:
            return Refusal(request_id, ErrorReason.LENGTH_MISMATCH, "length", length,
                           f"the segments add up to {total} bytes")
        run_gpas, run_ends, run_windows = _coalesce(list(gpas), ends, seg_windows or [w] * nseg)
        views = [windows[w][2][g - windows[w][0]:e - windows[w][0]]
                 for g, e, w in zip(run_gpas, run_ends, run_windows)]
        run_lengths = list(map(operator.sub, run_ends, run_gpas))
        return TransferPlan(op, request_id, device_offset, length, run_gpas, run_lengths, views, nseg)


@functools.lru_cache(maxsize=64)
def _segment_struct(count: int) -> struct.Struct:
    """The struct of ``count`` segments back to back (gpa, length, reserved each)."""
    return struct.Struct("<" + SEGMENT_FORMAT.lstrip("<") * count)


def _first(values: tuple[int, ...]) -> int:
    return next(i for i, v in enumerate(values) if v)


def _coalesce(gpas: list[int], ends: list[int],
              windows: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Merge segments that continue one another in the same RAM window:
    (start gpas, end gpas, window indices) of the runs."""
    joins = list(map(operator.eq, gpas[1:], ends[:-1]))
    if not any(joins):
        return gpas, ends, windows
    run_gpas, run_ends, run_windows = [gpas[0]], [ends[0]], [windows[0]]
    for joined, g, e, w in zip(joins, gpas[1:], ends[1:], windows[1:]):
        if joined and w == run_windows[-1]:
            run_ends[-1] = e
        else:
            run_gpas.append(g)
            run_ends.append(e)
            run_windows.append(w)
    return run_gpas, run_ends, run_windows
