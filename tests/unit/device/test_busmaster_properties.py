"""Hostile rings, register values and descriptors against an independent reference,
all of guest RAM and device memory compared.

The reference for a descriptor's checks 4-7 and its copy is the echo fuzz test's
(written from docs/device-abi.md, apart from ``descriptors.py``); this file adds,
from the bus-master section of the same document, the ring checks, the
descriptor's own fields (steps 1-3), the walk from head to tail and the
completion record. The device runs in its real thread; after the doorbell, every
byte of guest RAM and of device memory must equal the reference's images, and
the registers its verdict.

With remapping on an identity translation that splits at every 4 KiB page (an
IOMMU that maps everything where it is), the device must decide exactly as
without: the translated path's own checks are held to the same reference. Only
the ring differs: a translated ring's RAM is checked per descriptor slot, not
as a whole.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from device_model.abi import DATA_SIZE, ErrorReason
from device_model.busmaster import BusMasterDevice
from device_model.busmaster_abi import BmControl, BmStatus, BusMasterReason, register_offset
from wdfhil.physical_memory import InProcessMemory

from test_descriptor_fuzz import EDGES, RANGES, Reference

U64 = (1 << 64) - 1
GIB = 1 << 30
WATCHED = 1 << 20                                          # device memory compared, each end
GEOMETRIES = [(64, 1), (32, 1), (20, 1), (64, 512)]     # (address_bits, segment_align)


def identity_pages(address: int, length: int) -> list[tuple[int, int]]:
    pieces, at, end = [], address, address + length
    while at < end:
        n = min(end, (at | 4095) + 1) - at
        pieces.append((at, n))
        at += n
    return pieces


# ---- the reference (bus-master part) ------------------------------------------------------

def u(raw: bytes, offset: int, size: int) -> int:
    return int.from_bytes(raw[offset:offset + size], "little")


def decide(ref: Reference, raw: bytes):
    """A bus-master descriptor: steps 1-3 on its own fields, then the echo's checks
    of the same request as an SQE."""
    opcode, flags, nseg, request_id = u(raw, 0, 2), u(raw, 2, 2), u(raw, 4, 4), u(raw, 8, 8)
    device_offset, length, address = u(raw, 16, 4), u(raw, 20, 4), u(raw, 24, 8)
    if opcode not in (0, 1, 2):
        return ErrorReason.BAD_OPCODE, None
    if flags not in (0, 1):
        return ErrorReason.BAD_FLAGS, None
    if u(raw, 32, 8) or u(raw, 40, 8):
        return ErrorReason.RESERVED_FIELD, None
    if opcode == 0:
        if flags:
            return ErrorReason.BAD_FLAGS, None
        if nseg:
            return ErrorReason.BAD_SEGMENT_COUNT, None
        if length:
            return ErrorReason.LENGTH_MISMATCH, None
        if address:
            return ErrorReason.RESERVED_FIELD, None
        return ErrorReason.NONE, (0, 0, [])
    if not 1 <= nseg <= (4096 if flags else 1):
        return ErrorReason.BAD_SEGMENT_COUNT, None
    head = struct.pack("<HHIQQQQQ", opcode, flags, nseg, request_id, device_offset, length,
                       address if flags else 0, 0)
    inline = b"" if flags else struct.pack("<QII", address, length, 0)
    return ref.decide((head + inline).ljust(256, b"\0"))


def run_reference(ref: Reference, base: int, size: int, tail: int, translated: bool):
    """(halt reason or None, head, completions written) of one doorbell."""
    if base % 64:
        return BusMasterReason.RING_CONFIG, 0, 0
    if not (0 < size <= 4096 and size & (size - 1) == 0):
        return BusMasterReason.RING_CONFIG, 0, 0
    ring = size * 64
    if base + ring > 1 << 64:
        return ErrorReason.SEGMENT_NOT_IN_RAM, 0, 0
    if base + ring - 1 > ref.dma_mask:
        return ErrorReason.SEGMENT_ABOVE_DMA_MASK, 0, 0
    if not translated and ref.range_of(base, ring) is None:
        return ErrorReason.SEGMENT_NOT_IN_RAM, 0, 0
    if tail >= size:
        return ErrorReason.RING_INDEX, 0, 0
    head = written = 0
    while head != tail:
        slot = base + head * 64
        if ref.range_of(slot, 64) is None:          # only when translated
            return ErrorReason.SEGMENT_NOT_IN_RAM, head, written
        raw = ref.read_guest(slot, 48)
        reason, plan = decide(ref, raw)
        event(f"descriptor: {reason.name}")
        moved = ref.execute(*plan) if plan is not None else 0
        status = 0 if plan is not None else 2
        start = ref.range_of(slot, 64)
        ref.ram[start][slot + 48 - start:slot + 64 - start] = struct.pack(
            "<IIII", 1, status, int(reason), moved)
        written += 1
        head = (head + 1) % size
    return None, head, written


# ---- the cases ---------------------------------------------------------------------------

in_ram = st.one_of(*(st.integers(a, b - 1) for a, b in RANGES))
addresses = st.one_of(in_ram.map(lambda a: a & ~4095), in_ram, st.sampled_from(EDGES),
                      st.integers(0, U64))
lengths = st.one_of(st.sampled_from([512, 4096, 16, 1, 8192, 0]), st.integers(1, 0x3000))


@st.composite
def segment_tables(draw):
    segments = draw(st.lists(st.tuples(addresses, lengths, st.sampled_from([0, 0, 0, 0, 0, 0, 1])),
                             min_size=0, max_size=20))
    return segments


@st.composite
def bus_master_descriptors(draw, tables: list):
    """Descriptor bytes: honest, with a hostile field, or random."""
    kind = draw(st.sampled_from(["inline", "table", "inline", "table", "nop", "random"]))
    if kind == "random":
        return draw(st.binary(min_size=48, max_size=48))
    opcode = draw(st.sampled_from([1, 2]) if draw(honest) else st.integers(0, 0xFFFF))
    flags = (1 if kind == "table" else 0) if draw(honest) else draw(st.integers(0, 0xFFFF))
    offset = draw(st.integers(0, 0x10000) if draw(honest)
                  else st.sampled_from([DATA_SIZE - 16, DATA_SIZE, 0xFFFFFFFF]))
    reserved = 0 if draw(honest) else draw(st.sampled_from([1, 1 << 63]))
    if kind == "nop":
        return struct.pack("<HHIQIIQQQ", 0, 0, 0, 7, offset, 0, 0, reserved, 0)
    if kind == "table":
        table_gpa, segments = draw(st.sampled_from(tables)) if tables else (0x8000, [])
        nseg = len(segments) if draw(honest) else draw(st.integers(0, 4097))
        total = sum(n for _g, n, _r in segments)
        length = (total if draw(honest) else draw(lengths)) & 0xFFFFFFFF
        return struct.pack("<HHIQIIQQQ", opcode, flags, nseg, 7, offset, length, table_gpa,
                           reserved, 0)
    nseg = 1 if draw(honest) else draw(st.sampled_from([0, 2]))
    return struct.pack("<HHIQIIQQQ", opcode, flags, nseg, 7, offset, draw(lengths),
                       draw(addresses), 0, reserved)


honest = st.sampled_from([True, True, True, True, True, False])


@st.composite
def cases(draw):
    if draw(honest):
        ring_base = draw(st.sampled_from([0x8000, 0x150000, 4 * GIB + 0x8000]))
    else:           # some cross the end of a RAM range, or start outside
        ring_base = draw(st.one_of(st.sampled_from(EDGES + [0x9FF00, 0x1FFF00]), addresses))
    if draw(honest):
        ring_size = draw(st.sampled_from([8, 2, 4, 16, 64, 1]))
    else:
        ring_size = draw(st.sampled_from([0, 3, 8192, 0xFFFFFFFF]))
    table_spots = draw(st.lists(st.sampled_from([0x30000, 0x160000, 4 * GIB + 0x20000, 0x9FFF0,
                                                 0x30008, 0x1FFFF0]), min_size=1, max_size=3,
                                unique=True))
    tables = [(gpa, draw(segment_tables())) for gpa in table_spots]
    # A ring of n slots holds n - 1 descriptors (head == tail is empty).
    count = min(ring_size - 1, 12) if 0 < ring_size <= 4096 else 4
    descriptors = draw(st.lists(bus_master_descriptors(tables), min_size=min(1, count),
                                max_size=count))
    if draw(honest):
        tail = len(descriptors) % max(ring_size, 1)
    else:
        tail = draw(st.integers(0, 0xFFFFFFFF))
    return ring_base, ring_size, tables, descriptors, tail, draw(st.integers(0, 2**32))


def write_if_ram(memory: InProcessMemory, gpa: int, data: bytes) -> None:
    if data and 0 <= gpa and memory.contains(gpa, len(data)):
        memory.write(gpa, data)


@pytest.mark.parametrize("translated", [False, True], ids=["physical", "remapped"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[f"{b}bit-align{a}" for b, a in GEOMETRIES])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_hostile_rings_and_descriptors_do_exactly_what_the_reference_does(geometry, translated,
                                                                         case):
    bits, align = geometry
    ring_base, ring_size, tables, descriptors, tail, seed = case
    memory = InProcessMemory(ranges=RANGES)
    rng = random.Random(seed)
    for start, end in RANGES:
        memory.write(start, rng.randbytes(end - start))
    for gpa, segments in tables:
        write_if_ram(memory, gpa, b"".join(struct.pack("<QII", g & U64, n, r)
                                           for g, n, r in segments))
    for i, raw in enumerate(descriptors):
        write_if_ram(memory, ring_base + 64 * i, raw.ljust(64, b"\0"))
    ref = Reference({start: bytearray(memory.read(start, end - start)) for start, end in RANGES},
                    bytearray(DATA_SIZE), (1 << bits) - 1, align)
    expected_halt, expected_head, expected_written = run_reference(
        ref, ring_base, ring_size, tail, translated)
    event(f"halt: {getattr(expected_halt, 'name', None)}")
    event(f"completions: {min(expected_written, 3)}+")

    with BusMasterDevice(None, address_bits=bits, segment_align=align,
                         translate=identity_pages if translated else None) as device:
        device.attach_guest_ram(memory)

        def write(name: str, value: int) -> None:
            device.register_write(register_offset(name), 4, value)

        def read(name: str) -> int:
            return device.register_read(register_offset(name), 4)

        write("ring_base_lo", ring_base & 0xFFFFFFFF)
        write("ring_base_hi", ring_base >> 32)
        write("ring_size", ring_size)
        write("control", BmControl.ENABLE)
        write("ring_tail", tail)
        device.drain()
        halted = bool(read("status") & BmStatus.HALTED)
        got = (read("error") if halted else None, read("ring_head"), read("completed"))
        # The descriptors aim device_offset at the first and the last MiB of device
        # memory only; reading all 15 MiB would cost more than the rest of a case.
        store = device.read_data(0, WATCHED) + device.read_data(DATA_SIZE - WATCHED, WATCHED)
        assert device.errors == []
    assert got == (expected_halt, expected_head, expected_written)
    for start, end in RANGES:
        assert memory.read(start, end - start) == bytes(ref.ram[start]), f"RAM at {start:#x}"
    assert store == bytes(ref.store[:WATCHED]) + bytes(ref.store[DATA_SIZE - WATCHED:])
    assert not any(ref.store[WATCHED:DATA_SIZE - WATCHED])


# ---- hostile register sequences -------------------------------------------------------------

WRITABLE = ["control", "ring_base_lo", "ring_base_hi", "ring_size", "ring_tail", "int_status",
            "int_mask"]
RESET_VALUES = {"control": 0, "status": 0, "error": 0, "ring_base_lo": 0, "ring_base_hi": 0,
                "ring_size": 0, "ring_head": 0, "ring_tail": 0, "int_status": 0,
                "int_mask": 3, "completed": 0, "last_error": 0}
register_writes = st.lists(st.tuples(
    st.sampled_from(WRITABLE),
    st.one_of(st.sampled_from([0, 1, 2, 3, 8, 16, 0x8000, 0x150000, 0xFFFFFFFF]),
              st.integers(0, 0xFFFFFFFF))), min_size=1, max_size=25)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(honest_start=honest, writes=register_writes, seed=st.integers(0, 2**32),
       translated=st.booleans(), bits=st.sampled_from([64, 32]))
def test_any_register_writes_leave_the_device_consistent_and_reset_recovers(
        honest_start, writes, seed, translated, bits):
    """Whatever a driver writes (random sequences over every writable register,
    random descriptors in the rings it may point at), the device has no internal
    error, its registers stay consistent, it touches nothing but guest RAM it
    validated (InProcessMemory raises otherwise), and RESET brings every register
    back."""
    memory = InProcessMemory(ranges=RANGES)
    rng = random.Random(seed)
    for start, end in RANGES:
        memory.write(start, rng.randbytes(end - start))
    calls: list[int] = []
    with BusMasterDevice(None, address_bits=bits, on_interrupt=calls.append,
                         translate=identity_pages if translated else None) as device:
        device.attach_guest_ram(memory)

        def read(name: str) -> int:
            return device.register_read(register_offset(name), 4)

        if honest_start:      # a working ring first, so that the writes meet a live device
            writes = [("ring_base_lo", 0x8000), ("ring_size", 16), ("int_mask", 0),
                      ("control", 1), ("ring_tail", 5)] + writes
        for name, value in writes:
            device.register_write(register_offset(name), 4, value)
            if rng.random() < 0.3:
                device.drain()   # sometimes let the device act between two writes
        device.drain()
        assert device.errors == []
        status, error = read("status"), read("error")
        assert bool(status & BmStatus.HALTED) == (error != 0)
        assert bool(status & BmStatus.ENABLED) == bool(read("control") & BmControl.ENABLE)
        event(f"completed: {min(read('completed'), 2)}+, error: {error:#x}")
        assert read("ring_head") < max(read("ring_size"), 1)
        assert all(pending and not pending & ~3 for pending in calls)
        device.register_write(register_offset("control"), 4, BmControl.RESET)
        assert {name: read(name) for name in RESET_VALUES} == RESET_VALUES
        device.drain()
        assert device.errors == []
