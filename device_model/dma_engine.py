"""The DMA engine of the echo device: copies between guest RAM and device memory.

It executes only :class:`TransferPlan` objects, whose guest views validation
already bounded, so the engine itself can never reach outside guest RAM or the
device's data region. A single run is one memoryview slice assignment (one
memcpy). Many runs cost one Python-level step each, so the engine picks the
cheapest step per direction (measured with bench/dma.py, docs/device-model.md):

- device memory -> many guest runs (READ): one ``preadv`` on the device
  memory's file; the kernel walks the list of guest views.
- many guest runs -> device memory (WRITE): ``mmap.write`` of each guest view,
  driven from C (``deque(map(...))``), into a mapping of just the data region;
  it beats both ``pwritev`` (the kernel's per-page cost on a memfd) and a
  Python loop of slice assignments.

Without the file (unit tests over a bytearray) both directions loop over slices.

A page plan (whole 4 KiB pages, validated as rows of a RAM window's page
array) is one numpy call: ``numpy.take`` of the rows into the device pages
(WRITE), a fancy assignment of the device pages to the rows (READ); numpy's
loop is in C, so 256 scattered pages cost about one 1 MiB memcpy.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from device_model.abi import Opcode
from device_model.descriptors import PageRows, TransferPlan
from wdfhil.physical_memory import PAGE_SHIFT as _PAGE_SHIFT, PAGE_SIZE
from device_model.trace import TO_DEVICE, TO_GUEST, crc32_of

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_WRITE = Opcode.WRITE
SCATTER_MIN_RUNS = 4       # below this, slice assignments beat a system call


@dataclass(slots=True)
class TransferResult:
    """What the engine did: bytes moved, the guest ranges touched, their CRC-32."""

    transferred: int
    gpas: Sequence[int]
    lengths: Sequence[int]
    crc32: int | None
    direction: str
    flipped_bit: int | None = None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """(gpa, length) of each guest run touched."""
        return list(zip(self.gpas, self.lengths))


class DmaEngine:
    """Moves data for WRITE (guest -> device) and READ (device -> guest).

    ``data`` is the device's data memory; ``fd``/``fd_offset``, when given,
    are the file behind it (the BAR2 memfd) and where ``data`` starts in it:
    the engine then maps that range once more for itself (a file position of
    its own, bounded to the data region) and reads the file with ``preadv``.
    :meth:`close` unmaps it.
    """

    def __init__(self, data: memoryview, fd: int | None = None, fd_offset: int = 0) -> None:
        self.data = data
        self.fd = fd
        self.fd_offset = fd_offset
        self._mapping: mmap.mmap | None = None
        if fd is not None:
            self._mapping = mmap.mmap(fd, len(data), mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE, offset=fd_offset)
        # The data region as bytes for page plans; over a slice of ``data``, so a
        # caller may still release ``data`` itself (close() drops the array).
        self._data_bytes: np.ndarray | None = np.frombuffer(data[:], np.uint8)

    def close(self) -> None:
        self._data_bytes = None
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None

    def execute(self, plan: TransferPlan, *, limit: int | None = None,
                flip_bit: int | None = None, checksum: bool = False) -> TransferResult:
        """Copy the plan's runs; ``limit`` stops after that many bytes (short
        transfer), ``flip_bit`` inverts that bit of the bytes moved (corruption),
        ``checksum`` computes the CRC-32 of the bytes as they landed.

        Faults and the checksum act on the copy's result, never choose the copy:
        a page plan is copied by numpy with them as without them (a short transfer
        copies a prefix of the pages, the flip and the CRC look at what landed)."""
        if plan.page_rows is not None:
            return self._execute_pages(plan, limit, flip_bit, checksum)
        gpas, lengths, views, moved = plan.gpas, plan.lengths, plan.views, plan.length
        if limit is not None:
            gpas, lengths, views = truncate_runs(gpas, lengths, views, limit)
            moved = sum(lengths)
        start = plan.device_offset
        write = plan.opcode is _WRITE
        if len(views) == 1:                         # one run: one memcpy
            if write:
                self.data[start:start + moved] = views[0]
            else:
                views[0][:] = self.data[start:start + moved]
        elif write:
            self._gather(views, lengths, start)
        else:
            self._scatter(views, lengths, start, moved)
        flipped = None
        if flip_bit is not None and moved:
            flipped = flip_bit % (moved * 8)
            self._flip(write, start, views, flipped)
        crc = None
        if checksum:
            crc = crc32_of([self.data[start:start + moved]] if write else views)
        return TransferResult(moved, gpas, lengths, crc, TO_DEVICE if write else TO_GUEST, flipped)

    def _execute_pages(self, plan: TransferPlan, limit: int | None, flip_bit: int | None,
                       checksum: bool) -> TransferResult:
        """A page plan: the numpy copy, then what faults and the trace ask of its result."""
        write = plan.opcode is _WRITE
        start, page_rows = plan.device_offset, plan.page_rows
        assert page_rows is not None
        if limit is None and flip_bit is None and not checksum:     # the production path
            self._copy_pages(page_rows, write, start, plan.nseg)
            return TransferResult(plan.length, plan.gpas, plan.lengths, None,
                                  TO_DEVICE if write else TO_GUEST)
        moved = plan.length if limit is None else max(0, min(limit, plan.length))
        full, part = divmod(moved, PAGE_SIZE)
        self._copy_pages(page_rows, write, start, full)
        if part:                                    # a short transfer ends inside a page
            page = _page_at(page_rows, full)
            at = start + full * PAGE_SIZE
            if write:
                self.data[at:at + part] = page[:part].data
            else:
                page[:part] = np.frombuffer(self.data[at:at + part], np.uint8)
        flipped = None
        if flip_bit is not None and moved:
            flipped = flip_bit % (moved * 8)
            byte, mask = flipped >> 3, 1 << (flipped & 7)
            if write:
                self.data[start + byte] ^= mask
            else:
                _page_at(page_rows, byte >> _PAGE_SHIFT)[byte & (PAGE_SIZE - 1)] ^= mask
        crc = None
        if checksum:
            # What landed is the device's bytes unless a READ named a page twice (the
            # last listing wins) or a bit was flipped in the guest: then gather it.
            if write or (flipped is None and _distinct_pages(page_rows)):
                crc = zlib.crc32(self.data[start:start + moved])
            else:
                landed = _gather_pages(page_rows, plan.nseg)
                crc = zlib.crc32(landed.reshape(-1)[:moved].data)
        gpas, lengths = page_runs(plan, moved)
        return TransferResult(moved, gpas, lengths, crc, TO_DEVICE if write else TO_GUEST, flipped)

    def _copy_pages(self, page_rows: list[PageRows], write: bool, start: int, count: int) -> None:
        """The first ``count`` listed guest pages <-> the device's bytes at ``start``,
        in list order.

        mode="clip" because take() with the default mode first copies into a
        buffer (to raise on a bad index before writing); validation already
        proved every row lies in its window."""
        assert self._data_bytes is not None, "the engine is closed"
        if count <= 0:
            return
        device = self._data_bytes[start:start + count * PAGE_SIZE].reshape(-1, PAGE_SIZE)
        if len(page_rows) == 1 and page_rows[0].positions is None:
            part = page_rows[0]
            rows = part.rows if count == len(part.rows) else part.rows[:count]
            if write:
                np.take(part.pages, rows, axis=0, out=device, mode="clip")
            else:
                part.pages[rows] = device
            return
        for part in page_rows:                  # pages in more than one RAM window
            positions, rows = part.positions, part.rows
            if positions is None:
                positions = np.arange(len(rows))
            keep = positions < count
            if not keep.all():
                positions, rows = positions[keep], rows[keep]
            if write:
                device[positions] = part.pages[rows]
            else:
                part.pages[rows] = device[positions]

    def _gather(self, views: list[memoryview], lengths: Sequence[int], start: int) -> None:
        """Guest runs -> device memory at ``start``."""
        if self._mapping is not None:
            self._mapping.seek(start)
            deque(map(self._mapping.write, views), 0)   # each write advances the position
        else:
            data, d = self.data, start
            for view, n in zip(views, lengths):
                data[d:d + n] = view
                d += n

    def _scatter(self, views: list[memoryview], lengths: Sequence[int], start: int,
                 moved: int) -> None:
        """Device memory at ``start`` -> guest runs."""
        if self.fd is not None and len(views) >= SCATTER_MIN_RUNS:
            self._preadv(views, start, moved)
        else:
            data, d = self.data, start
            for view, n in zip(views, lengths):
                view[:] = data[d:d + n]
                d += n

    def _preadv(self, views: list[memoryview], start: int, moved: int) -> None:
        """``moved`` bytes of the file from ``start`` into ``views``, IOV_MAX views per
        call; a short read (not expected from a memfd, but allowed by preadv) resumes
        where it stopped."""
        assert self.fd is not None
        offset, left = self.fd_offset + start, moved
        while True:
            n = os.preadv(self.fd, views if len(views) <= IOV_MAX else views[:IOV_MAX], offset)
            left -= n
            if not left:
                return
            if n <= 0:
                raise OSError(f"preadv from device memory stopped {left} bytes short")
            offset += n
            views = skip_bytes(views, n)

    def _flip(self, write: bool, start: int, views: list[memoryview], bit: int) -> None:
        byte, mask = bit >> 3, 1 << (bit & 7)
        if write:
            self.data[start + byte] ^= mask
            return
        for view in views:
            if byte < len(view):
                view[byte] ^= mask
                return
            byte -= len(view)

    @staticmethod
    def fill_guest(plan: TransferPlan, byte: int) -> list[tuple[int, int]]:
        """Overwrite the plan's guest buffers with ``byte`` (a stale DMA); the ranges."""
        if plan.page_rows is not None:
            for part in plan.page_rows:
                part.pages[part.rows] = byte
            return list(zip(*page_runs(plan, plan.length)))
        for view in plan.views:
            view[:] = bytes([byte]) * len(view)
        return list(zip(plan.gpas, plan.lengths))


def _page_at(page_rows: list[PageRows], index: int) -> np.ndarray:
    """The guest page (a writable row) listed at ``index`` of a page plan."""
    for part in page_rows:
        if part.positions is None:
            return part.pages[int(part.rows[index])]
        hit = int(np.searchsorted(part.positions, index))
        if hit < len(part.positions) and part.positions[hit] == index:
            return part.pages[int(part.rows[hit])]
    raise IndexError(index)


def _distinct_pages(page_rows: list[PageRows]) -> bool:
    """No guest page listed twice (rows of different windows never coincide)."""
    return all(np.unique(part.rows).size == part.rows.size for part in page_rows)


def _gather_pages(page_rows: list[PageRows], count: int) -> np.ndarray:
    """A copy of the listed guest pages, in list order (for a checksum)."""
    out = np.empty((count, PAGE_SIZE), np.uint8)
    for part in page_rows:
        if part.positions is None:
            np.take(part.pages, part.rows, axis=0, out=out, mode="clip")
        else:
            out[part.positions] = part.pages[part.rows]
    return out


def page_runs(plan: TransferPlan, moved: int) -> tuple[list[int], list[int]]:
    """(gpas, lengths) of the first ``moved`` bytes of a page plan, pages that continue
    one another in the same RAM window merged: the runs the view path would name."""
    assert plan.page_rows is not None
    count = -(-moved // PAGE_SIZE)
    if count == 0:
        return [], []
    gpas = [int(g) for g in plan.gpas[:count]]
    window = [0] * count
    for w, part in enumerate(plan.page_rows):
        if part.positions is not None:
            for i in part.positions.tolist():
                if i < count:
                    window[i] = w
    out_g, out_n = [gpas[0]], [PAGE_SIZE]
    for i in range(1, count):
        if gpas[i] == out_g[-1] + out_n[-1] and window[i] == window[i - 1]:
            out_n[-1] += PAGE_SIZE
        else:
            out_g.append(gpas[i])
            out_n.append(PAGE_SIZE)
    out_n[-1] -= count * PAGE_SIZE - moved
    return out_g, out_n


def truncate_runs(gpas: Sequence[int], lengths: Sequence[int], views: list[memoryview],
                  limit: int) -> tuple[list[int], list[int], list[memoryview]]:
    """The prefix of the runs that covers the first ``limit`` bytes."""
    out_g, out_n, out_v = [], [], []
    for gpa, n, view in zip(gpas, lengths, views):
        if limit <= 0:
            break
        take = min(n, limit)
        out_g.append(gpa)
        out_n.append(take)
        out_v.append(view[:take])
        limit -= take
    return out_g, out_n, out_v


def skip_bytes(views: list[memoryview], count: int) -> list[memoryview]:
    """What is left of ``views`` after their first ``count`` bytes (fewer than all)."""
    i = 0
    while count >= len(views[i]):
        count -= len(views[i])
        i += 1
    return [views[i][count:], *views[i + 1:]]
