"""The DMA engine of the echo device: copies between guest RAM and device memory.

It executes only :class:`TransferPlan` objects, which hold views of guest RAM
that validation already bounded, so the engine itself can never reach
outside guest RAM or the device's data region. Copies are memoryview slice
assignments (one memcpy each, no intermediate bytes) over runs that
validation already coalesced.
"""

from __future__ import annotations

from dataclasses import dataclass

from device_model.abi import Opcode
from device_model.descriptors import TransferPlan
from device_model.trace import TO_DEVICE, TO_GUEST, crc32_of


@dataclass
class TransferResult:
    """What the engine did: bytes moved, the guest ranges touched, their CRC-32."""

    transferred: int
    ranges: list[tuple[int, int]]
    crc32: int | None
    direction: str
    flipped_bit: int | None = None


class DmaEngine:
    """Moves data for WRITE (guest -> device) and READ (device -> guest)."""

    def __init__(self, data: memoryview) -> None:
        self.data = data

    def execute(self, plan: TransferPlan, *, limit: int | None = None,
                flip_bit: int | None = None, checksum: bool = False) -> TransferResult:
        """Copy the plan's runs; ``limit`` stops after that many bytes (short
        transfer), ``flip_bit`` inverts that bit of the bytes moved (corruption),
        ``checksum`` computes the CRC-32 of the bytes as they landed."""
        runs = plan.runs if limit is None else truncate_runs(plan.runs, limit)
        data = self.data
        d = plan.device_offset
        if plan.opcode is Opcode.WRITE:
            for _gpa, n, win, off in runs:
                data[d:d + n] = win[off:off + n]
                d += n
            direction = TO_DEVICE
        else:
            for _gpa, n, win, off in runs:
                win[off:off + n] = data[d:d + n]
                d += n
            direction = TO_GUEST
        moved = d - plan.device_offset
        flipped = None
        if flip_bit is not None and moved:
            flipped = flip_bit % (moved * 8)
            self._flip(plan, runs, flipped)
        crc = None
        if checksum:
            if plan.opcode is Opcode.WRITE:
                crc = crc32_of([data[plan.device_offset:plan.device_offset + moved]])
            else:
                crc = crc32_of(win[off:off + n] for _gpa, n, win, off in runs)
        return TransferResult(moved, [(gpa, n) for gpa, n, _w, _o in runs], crc, direction, flipped)

    def _flip(self, plan: TransferPlan, runs: list[tuple[int, int, memoryview, int]], bit: int) -> None:
        byte, mask = bit >> 3, 1 << (bit & 7)
        if plan.opcode is Opcode.WRITE:
            self.data[plan.device_offset + byte] ^= mask
            return
        for _gpa, n, win, off in runs:
            if byte < n:
                win[off + byte] ^= mask
                return
            byte -= n

    @staticmethod
    def fill_guest(runs: list[tuple[int, int, memoryview, int]], byte: int) -> list[tuple[int, int]]:
        """Overwrite the guest side of ``runs`` with ``byte`` (a stale DMA)."""
        touched = []
        for gpa, n, win, off in runs:
            win[off:off + n] = bytes([byte]) * n
            touched.append((gpa, n))
        return touched


def truncate_runs(runs: list[tuple[int, int, memoryview, int]],
                  limit: int) -> list[tuple[int, int, memoryview, int]]:
    """The prefix of ``runs`` that covers the first ``limit`` bytes."""
    out = []
    for gpa, n, win, off in runs:
        if limit <= 0:
            break
        take = min(n, limit)
        out.append((gpa, take, win, off))
        limit -= take
    return out
