"""The DMA engine of the echo device: copies between guest RAM and device memory.

It executes only :class:`TransferPlan` objects, whose guest views validation
already bounded, so the engine itself can never reach outside guest RAM or the
device's data region. Each run is one memoryview slice assignment (one
memcpy); scattering device memory into many guest runs is one ``preadv`` on
the device memory's file instead, where the kernel walks the list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from device_model.abi import Opcode
from device_model.descriptors import TransferPlan
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
    are the file behind it (the BAR2 memfd) and where ``data`` starts in it,
    used for scatter/gather in one system call.
    """

    def __init__(self, data: memoryview, fd: int | None = None, fd_offset: int = 0) -> None:
        self.data = data
        self.fd = fd
        self.fd_offset = fd_offset

    def execute(self, plan: TransferPlan, *, limit: int | None = None,
                flip_bit: int | None = None, checksum: bool = False) -> TransferResult:
        """Copy the plan's runs; ``limit`` stops after that many bytes (short
        transfer), ``flip_bit`` inverts that bit of the bytes moved (corruption),
        ``checksum`` computes the CRC-32 of the bytes as they landed."""
        gpas, lengths, views = plan.gpas, plan.lengths, plan.views
        if limit is not None:
            gpas, lengths, views = truncate_runs(gpas, lengths, views, limit)
        moved = sum(lengths)
        start = plan.device_offset
        write = plan.opcode is _WRITE
        if not write and self.fd is not None and len(views) >= SCATTER_MIN_RUNS:
            self._scatter(views, start, moved)
        elif write:
            data, d = self.data, start
            for view, n in zip(views, lengths):
                data[d:d + n] = view
                d += n
        else:
            data, d = self.data, start
            for view, n in zip(views, lengths):
                view[:] = data[d:d + n]
                d += n
        flipped = None
        if flip_bit is not None and moved:
            flipped = flip_bit % (moved * 8)
            self._flip(write, start, views, flipped)
        crc = None
        if checksum:
            crc = crc32_of([self.data[start:start + moved]] if write else views)
        return TransferResult(moved, gpas, lengths, crc, TO_DEVICE if write else TO_GUEST, flipped)

    def _scatter(self, views: list[memoryview], start: int, moved: int) -> None:
        """Device memory -> many guest runs with preadv (measured faster than a loop of
        slice copies into scattered pages; for the gather direction the loop wins)."""
        assert self.fd is not None
        offset = self.fd_offset + start
        done = 0
        for i in range(0, len(views), IOV_MAX):
            chunk = views[i:i + IOV_MAX]
            n = os.preadv(self.fd, chunk, offset + done)
            want = sum(map(len, chunk))
            if n != want:       # the data region lies inside the file: cannot happen
                raise OSError(f"short preadv from device memory: {n} of {want} bytes")
            done += n
        assert done == moved

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
        """Overwrite the plan's guest buffers with ``byte`` (a stale DMA)."""
        for view in plan.views:
            view[:] = bytes([byte]) * len(view)
        return list(zip(plan.gpas, plan.lengths))


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
