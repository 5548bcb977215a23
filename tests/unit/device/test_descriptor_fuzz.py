"""Hostile-descriptor fuzzing against an independent reference, whole memory compared.

Each case is one descriptor (honest, hostile in a field or a segment, a page list
that takes the page-plan path, or random bytes) submitted to the real device
thread through the ivshmem protocol. A reference written apart from
``device_model/descriptors.py`` (deliberately simple and slow: fields sliced out
one by one, the checks of docs/device-abi.md in their written order, a byte copy
per segment) says what the completion must be and what the copy must do to its
own images of guest RAM and device memory; after every case all of guest RAM and
all of device memory are compared byte for byte with those images.

A CI run does ``DEFAULT_CASES`` cases (a few seconds); ``WDFHIL_FUZZ_CASES=100000``
runs the full campaign and ``WDFHIL_FUZZ_SEED`` picks another sequence. A failure
names the seed and the case number, which replay it.
"""

from __future__ import annotations

import ctypes
import os
import random
import struct

import numpy as np
import pytest

from device_model.abi import (
    DATA_SIZE, MAX_INLINE_SEGMENTS, MAX_SEGMENTS, MAX_TRANSFER, SQE_SIZE, CompletionStatus,
    DeviceStatus, ErrorReason,
)
from device_model.device import EchoDevice
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from wdfhil.physical_memory import InProcessMemory

DEFAULT_CASES = 1500
CASES = int(os.environ.get("WDFHIL_FUZZ_CASES", DEFAULT_CASES))
SEED = int(os.environ.get("WDFHIL_FUZZ_SEED", 20261205))

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
# Low RAM with the legacy window cut out, then RAM above 4 GiB: three RAM ranges.
RANGES = [(0, 0xA0000), (0x100000, 0x200000), (4 * GIB, 4 * GIB + MIB)]
U64 = (1 << 64) - 1
# (dma_mask, segment_align) of the devices the cases are spread over.
GEOMETRIES = [(U64, 1), (U64, 1), ((1 << 32) - 1, 1), ((1 << 20) - 1, 1), (U64, 512),
              (U64, 4096)]

# ---- the reference -----------------------------------------------------------------------
# Written from docs/device-abi.md, not from descriptors.py: no shared code, no shortcuts.

NOP, WRITE, READ = 0, 1, 2
INDIRECT = 1


def u(raw: bytes, offset: int, size: int) -> int:
    return int.from_bytes(raw[offset:offset + size], "little")


class Reference:
    """Guest RAM and device memory as plain bytearrays, and the rules applied to them."""

    def __init__(self, ram: dict[int, bytearray], store: bytearray, dma_mask: int, align: int):
        self.ram, self.store, self.dma_mask, self.align = ram, store, dma_mask, align

    def range_of(self, gpa: int, length: int) -> int | None:
        """Start of the RAM range holding [gpa, gpa + length) wholly, or None."""
        for start, end in RANGES:
            if start <= gpa and gpa + length <= end:
                return start
        return None

    def read_guest(self, gpa: int, length: int) -> bytes:
        start = self.range_of(gpa, length)
        assert start is not None
        return bytes(self.ram[start][gpa - start:gpa - start + length])

    def decide(self, raw: bytes):
        """(ErrorReason, None) or (NONE, (opcode, device_offset, [(gpa, length), ...]))."""
        opcode, flags, nseg = u(raw, 0, 2), u(raw, 2, 2), u(raw, 4, 4)
        device_offset, length = u(raw, 16, 8), u(raw, 24, 8)
        indirect_gpa, reserved = u(raw, 32, 8), u(raw, 40, 8)
        if opcode not in (NOP, WRITE, READ):
            return ErrorReason.BAD_OPCODE, None
        if flags not in (0, INDIRECT):
            return ErrorReason.BAD_FLAGS, None
        if reserved != 0:
            return ErrorReason.RESERVED_FIELD, None
        if opcode == NOP:
            if flags != 0:
                return ErrorReason.BAD_FLAGS, None
            if nseg != 0:
                return ErrorReason.BAD_SEGMENT_COUNT, None
            if length != 0:
                return ErrorReason.LENGTH_MISMATCH, None
            if indirect_gpa != 0:
                return ErrorReason.RESERVED_FIELD, None
            return ErrorReason.NONE, (NOP, device_offset, [])
        most = MAX_SEGMENTS if flags == INDIRECT else MAX_INLINE_SEGMENTS
        if not 1 <= nseg <= most:
            return ErrorReason.BAD_SEGMENT_COUNT, None
        if length == 0:
            return ErrorReason.LENGTH_MISMATCH, None
        if length > MAX_TRANSFER:
            return ErrorReason.TRANSFER_TOO_LARGE, None
        if device_offset + length > DATA_SIZE:
            return ErrorReason.DEVICE_RANGE, None
        if flags == INDIRECT:
            table_length = 16 * nseg
            if indirect_gpa % 16 != 0:
                return ErrorReason.INDIRECT_TABLE, None
            if indirect_gpa + table_length - 1 > self.dma_mask:
                return ErrorReason.INDIRECT_TABLE, None
            if self.range_of(indirect_gpa, table_length) is None:
                return ErrorReason.INDIRECT_TABLE, None
            table = self.read_guest(indirect_gpa, table_length)
        else:
            if indirect_gpa != 0:
                return ErrorReason.RESERVED_FIELD, None
            table = raw[48:48 + 16 * nseg]
        segments = [(u(table, 16 * i, 8), u(table, 16 * i + 8, 4), u(table, 16 * i + 12, 4))
                    for i in range(nseg)]
        # Each check over the whole list before the next check (docs/device-abi.md, step 6).
        for _gpa, _n, res in segments:
            if res != 0:
                return ErrorReason.RESERVED_FIELD, None
        for _gpa, n, _res in segments:
            if n == 0:
                return ErrorReason.ZERO_SEGMENT, None
        for gpa, n, _res in segments:
            if gpa % self.align != 0 or n % self.align != 0:
                return ErrorReason.SEGMENT_ALIGNMENT, None
        for gpa, n, _res in segments:
            if gpa + n > 1 << 64:
                return ErrorReason.SEGMENT_NOT_IN_RAM, None
        for gpa, n, _res in segments:
            if gpa + n - 1 > self.dma_mask:
                return ErrorReason.SEGMENT_ABOVE_DMA_MASK, None
        for gpa, n, _res in segments:
            if self.range_of(gpa, n) is None:
                return ErrorReason.SEGMENT_NOT_IN_RAM, None
        total = 0
        for _gpa, n, _res in segments:
            total += n
        if total != length:
            return ErrorReason.LENGTH_MISMATCH, None
        return ErrorReason.NONE, (opcode, device_offset, [(g, n) for g, n, _r in segments])

    def execute(self, opcode: int, device_offset: int, segments: list[tuple[int, int]]) -> int:
        """Byte copies, segment after segment in list order; the bytes moved."""
        at = device_offset
        for gpa, n in segments:
            start = self.range_of(gpa, n)
            assert start is not None
            guest = self.ram[start]
            if opcode == WRITE:
                self.store[at:at + n] = guest[gpa - start:gpa - start + n]
            else:
                guest[gpa - start:gpa - start + n] = self.store[at:at + n]
            at += n
        return at - device_offset


# ---- the cases --------------------------------------------------------------------------

EDGES = [0, 0x9F000, 0x9FFF0, 0xA0000, 0xFF000, 0x100000, 0x1FF000, 0x1FFFF0, 0x200000, 2 * GIB,
         4 * GIB - 16, 4 * GIB, 4 * GIB + MIB - 4096, 4 * GIB + MIB - 16, 4 * GIB + MIB, 1 << 40,
         U64 - 4095, U64]


class CaseMaker:
    """Descriptors, mostly honest with a few hostile parts, from one seeded generator."""

    def __init__(self, rng: random.Random, align: int, dma_mask: int) -> None:
        self.rng, self.align = rng, align
        # Honest buffers lie where the device can reach them (as a driver honouring
        # the DMA mask allocates them); hostile ones go anywhere.
        self.reachable = [(a, b) for a, b in RANGES if b - 1 <= dma_mask] or RANGES[:1]
        # Whole pages on every edge a page list can cross: RAM ranges and the DMA mask.
        self.edge_pages = sorted({p & U64 for a, b in RANGES for p in (a, a - 4096, b, b - 4096)})
        self.mask_pages = [(dma_mask + 1) & U64, (dma_mask + 1 - 4096) & U64]

    def some_range(self) -> tuple[int, int]:
        return self.rng.choice(self.reachable if self.chance(90) else RANGES)

    def chance(self, percent: float) -> bool:
        return self.rng.random() * 100 < percent

    def honest_segment(self, most: int = 16 * KIB) -> tuple[int, int]:
        r = self.rng
        start, end = self.some_range()
        a = max(self.align, 1)
        n = max(a, r.randrange(1, most + 1) // a * a)
        gpa = r.randrange(start, end - n + 1) // a * a
        return gpa, n

    def page_list(self) -> list[tuple[int, int]]:
        r = self.rng
        start, end = self.some_range()
        pages = [start + r.randrange((end - start) // 4096) * 4096
                 for _ in range(r.randrange(16, 80))]
        if self.chance(40):
            pages[r.randrange(len(pages))] = r.choice(
                self.mask_pages if self.chance(50) else self.edge_pages)
        if self.chance(30):
            other_start, other_end = r.choice(RANGES)
            pages[r.randrange(len(pages))] = other_start + r.randrange(
                (other_end - other_start) // 4096) * 4096
        return [(g, 4096) for g in pages]

    def hostile_segment(self) -> tuple[int, int, int]:
        r = self.rng
        kind = r.randrange(7)
        if kind == 0:
            return (r.choice(EDGES) + r.randrange(-64, 64)) & U64, r.choice([1, 16, 4096, 8192]), 0
        if kind == 1:
            return r.randrange(1 << 64), r.choice([r.randrange(1 << 32), r.randrange(1, 4096)]), 0
        if kind == 2:
            g, n = self.honest_segment()
            return g, n, r.choice([1, 0x8000_0000, 0xFFFF_FFFF])
        if kind == 3:
            g, _n = self.honest_segment()
            return g, 0, 0
        if kind == 4:
            start, end = r.choice(RANGES)
            return end - r.randrange(1, 4096), r.randrange(1, 8192), 0
        if kind == 5:
            g, n = self.honest_segment()
            return g + r.randrange(1, 8), n, 0
        return U64 - r.randrange(4096), r.randrange(1, 8192), 0

    def make(self) -> tuple[bytes, tuple[int, bytes] | None]:
        """(SQE bytes, (table gpa, table bytes) to write into guest RAM first, or None)."""
        r = self.rng
        if self.chance(3):
            return bytes(r.randrange(256) for _ in range(SQE_SIZE)), None
        opcode = r.choice([WRITE, READ] * 9 + [NOP, r.randrange(1 << 16)])
        if opcode == NOP and self.chance(80):
            raw = struct.pack("<HHIQQQQQ", NOP, 0, 0, r.randrange(1 << 64), r.randrange(1 << 20),
                              0, 0, 0)
            return raw.ljust(SQE_SIZE, b"\0"), None
        indirect = self.chance(50)
        if indirect and self.chance(35):
            segments = [(g, n, 0) for g, n in self.page_list()]
        else:
            count = r.randrange(1, (40 if indirect else MAX_INLINE_SEGMENTS) + 1)
            segments = [(*self.honest_segment(), 0) for _ in range(count)]
        if self.chance(30):
            for _ in range(r.randrange(1, 3)):
                segments[r.randrange(len(segments))] = self.hostile_segment()
        nseg = len(segments)
        length = sum(n for _g, n, _r in segments)
        device_offset = r.randrange(0, max(1, DATA_SIZE - length + 1)) if length <= DATA_SIZE else 0
        if self.chance(70):
            device_offset = r.randrange(0, 64 * KIB)       # keep most copies in one area
            if device_offset + length > DATA_SIZE:
                device_offset = 0
        flags, indirect_gpa, reserved = (INDIRECT if indirect else 0), 0, 0
        table = b"".join(struct.pack("<QII", g, n, res) for g, n, res in segments)
        placed = None
        if indirect:
            start, end = RANGES[0]
            indirect_gpa = r.randrange(start, end - len(table)) // 16 * 16
            placed = (indirect_gpa, table)
        if self.chance(8):                                  # one header field made hostile
            field = r.randrange(6)
            if field == 0:
                flags = r.randrange(1 << 16)
            elif field == 1:
                nseg = r.choice([0, nseg + 1, nseg - 1, MAX_INLINE_SEGMENTS + 1, MAX_SEGMENTS + 1,
                                 r.randrange(1 << 32)])
            elif field == 2:
                length = r.choice([0, length + 1, max(0, length - 1), MAX_TRANSFER + 1,
                                   r.randrange(1 << 64)])
            elif field == 3:
                device_offset = r.choice([DATA_SIZE - length + 1, DATA_SIZE, r.randrange(1 << 64)])
            elif field == 4:
                indirect_gpa = r.choice(EDGES) + r.choice([0, 8, 16])
            else:
                reserved = r.randrange(1, 1 << 64)
        device_offset &= U64
        length &= U64
        nseg &= (1 << 32) - 1
        head = struct.pack("<HHIQQQQQ", opcode, flags, nseg, r.randrange(1 << 64), device_offset,
                           length, indirect_gpa & U64, reserved)
        inline = b"" if flags & INDIRECT else table[:16 * MAX_INLINE_SEGMENTS]
        return (head + inline).ljust(SQE_SIZE, b"\0")[:SQE_SIZE], placed


# ---- the run ----------------------------------------------------------------------------

_memcmp = ctypes.CDLL(None).memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def same_bytes(a, b) -> bool:
    """Byte-for-byte equality of two equally long buffers (libc memcmp: a 15 MiB
    comparison per case must not cost a copy)."""
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    return len(x) == len(y) and _memcmp(x.ctypes.data, y.ctypes.data, len(x)) == 0


def first_difference(a, b) -> int:
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    return int(np.flatnonzero(x != y)[0])


def run_campaign(tmp_path, geometry_index: int, cases: int, seed: int) -> dict[str, int]:
    dma_mask, align = GEOMETRIES[geometry_index]
    rng = random.Random(seed * 100 + geometry_index)
    memory = InProcessMemory(ranges=RANGES)
    ram = {}
    for start, end in RANGES:
        image = rng.randbytes(end - start)
        memory.write(start, image)
        ram[start] = bytearray(image)
    store = bytearray(DATA_SIZE)
    reference = Reference(ram, store, dma_mask, align)
    maker = CaseMaker(rng, align, dma_mask)
    outcomes: dict[str, int] = {}
    run_dir = tmp_path / f"run{geometry_index}"
    run_dir.mkdir(mode=0o700)
    with EchoDevice(run_dir, dma_mask=dma_mask, segment_align=align) as device, \
            IvshmemClient.connect(device.socket_path) as client:
        device.attach_guest_ram(memory)
        driver = HostDriver(client)
        try:
            store[:] = device.memory.data          # the device starts zeroed; say so anyway
            for case in range(cases):
                raw, placed = maker.make()
                where = f"seed {seed}, geometry {geometry_index} {GEOMETRIES[geometry_index]}, case {case}"
                if placed is not None:
                    gpa, table = placed
                    memory.write(gpa, table)
                    start = reference.range_of(gpa, len(table))
                    ram[start][gpa - start:gpa - start + len(table)] = table
                reason, plan = reference.decide(raw)
                moved = reference.execute(*plan) if plan is not None and plan[0] != NOP else 0
                request_id = u(raw, 8, 8)
                done = driver.request_raw(raw, timeout=30)
                expected = ((request_id, CompletionStatus.ERROR, reason, 0) if plan is None
                            else (request_id, CompletionStatus.OK, ErrorReason.NONE, moved))
                got = (done.request_id, done.status, done.reason, done.transferred)
                assert got == expected, f"{where}: completion {got}, reference {expected}"
                for start, end in RANGES:
                    if not same_bytes(memory.view(start, end - start), ram[start]):
                        at = start + first_difference(memory.view(start, end - start), ram[start])
                        pytest.fail(f"{where}: guest RAM differs at {at:#x}")
                if not same_bytes(device.memory.data, store):
                    pytest.fail(f"{where}: device memory differs at "
                                f"{first_difference(device.memory.data, store):#x}")
                key = ErrorReason(reason).name if plan is None else (
                    "NOP" if plan[0] == NOP else "WRITE" if plan[0] == WRITE else "READ")
                outcomes[key] = outcomes.get(key, 0) + 1
        finally:
            driver.close()
        assert device.errors == []
        assert device.status == DeviceStatus.READY
        outcomes["page plans"] = device.stats.page_plans
    return outcomes


@pytest.mark.parametrize("geometry_index", range(len(GEOMETRIES)))
def test_hostile_descriptors_match_the_reference_over_all_memory(tmp_path, geometry_index):
    cases = -(-CASES // len(GEOMETRIES))
    outcomes = run_campaign(tmp_path, geometry_index, cases, SEED)
    print(f"geometry {GEOMETRIES[geometry_index]}: {cases} cases: {outcomes}")
    # The generator must reach both copy directions, page plans and refusals.
    assert outcomes.get("WRITE", 0) and outcomes.get("READ", 0)
    assert sum(v for k, v in outcomes.items() if k not in ("WRITE", "READ", "NOP", "page plans"))
    if cases >= 200:
        assert outcomes["page plans"] > 0
