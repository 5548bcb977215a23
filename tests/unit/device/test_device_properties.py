"""Property tests: whatever a hostile guest puts in a descriptor, the device never
raises, never touches memory outside the validated segments (nor outside guest
RAM and device memory), and always completes the request with a status."""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from device_model.abi import (
    DATA_SIZE, MAX_INLINE_SEGMENTS, RING_ENTRIES, RING_ERROR_REQUEST_ID, SQE_FORMAT, SQE_SIZE,
    CompletionStatus, Descriptor, DescriptorFlag, DeviceStatus, ErrorReason, Opcode, Segment, pack_segment,
)
from device_model.descriptors import DescriptorValidator, RamWindows, Refusal, TransferPlan
from device_model.dma_engine import DmaEngine
from wdfhil.physical_memory import InProcessMemory

from device_helpers import GIB, HIGH, LOW, MIB, holey_memory

U64 = (1 << 64) - 1
TABLE_GPA = 0x80000          # where hostile indirect tables are written

# Addresses a hostile guest would try: edges of both RAM ranges, the hole, the top.
edge_gpas = st.sampled_from([
    0, 16, LOW[1] - 4096, LOW[1] - 1, LOW[1], 2 * GIB, 3 * GIB, 4 * GIB - 16, HIGH[0],
    HIGH[0] + 4096, HIGH[1] - 4096, HIGH[1] - 1, HIGH[1], 1 << 40, U64 - 4095, U64])
gpas = st.one_of(edge_gpas, st.integers(0, U64), st.integers(0, LOW[1]),
                 st.integers(HIGH[0], HIGH[1]))
lengths = st.one_of(st.sampled_from([0, 1, 16, 4096, MIB, (1 << 32) - 1]),
                    st.integers(1, 8192), st.integers(0, (1 << 32) - 1))
reserved_words = st.integers(0, 3).map(lambda x: 0xDEAD if x == 3 else 0)

@st.composite
def edge_segments(draw) -> Segment:
    """Segments that end past a RAM range or start just before one (in the hole)."""
    start, end = draw(st.sampled_from([LOW, HIGH]))
    base = draw(st.sampled_from([start, end]))
    gpa = max(0, base + draw(st.integers(-8192, 4096)))
    return Segment(gpa, draw(st.integers(1, 16384)))


segments = st.one_of(edge_segments(), st.builds(Segment, gpas, lengths, reserved_words))


@st.composite
def honest_segments(draw) -> Segment:
    start, end = draw(st.sampled_from([LOW, HIGH]))
    gpa = draw(st.integers(start, end - 512)) & ~511    # aligned: the device may require 512
    return Segment(gpa, 512 * draw(st.integers(1, min(32, (end - gpa) // 512))))


FIELDS = ("opcode", "flags", "nseg", "length", "device_offset", "indirect_gpa", "reserved")


@st.composite
def descriptors(draw) -> tuple[bytes, list[Segment]]:
    """(SQE bytes, indirect table to place at TABLE_GPA): an honest descriptor with
    some fields (often none) and some segments (often none) made hostile."""
    rnd = random.Random(draw(st.integers(0, 1 << 32)))   # real odds: draws favour edge values

    def chance(percent: int) -> bool:
        return rnd.random() * 100 < percent

    corrupt = {name for name in FIELDS if chance(6)}
    indirect = chance(50)
    count = draw(st.integers(1, 40 if indirect else MAX_INLINE_SEGMENTS + 2))
    all_honest = chance(50)
    segs = [draw(honest_segments()) if all_honest or chance(80) else draw(segments)
            for _ in range(count)]

    def field(name, honest_value, hostile):
        return draw(hostile) if name in corrupt else honest_value

    opcode = field("opcode", Opcode.NOP if chance(10) else Opcode.WRITE if chance(50) else Opcode.READ,
                   st.integers(0, 0xFFFF))
    if opcode == Opcode.NOP and not corrupt:
        segs = []
    length = field("length", sum(s.length for s in segs), st.one_of(lengths, st.integers(0, U64)))
    flags = field("flags", int(DescriptorFlag.INDIRECT) if indirect and segs else 0,
                  st.integers(0, 0xFFFF))
    nseg = field("nseg", len(segs), st.integers(0, (1 << 32) - 1))
    room = max(0, DATA_SIZE - length)
    device_offset = field("device_offset", draw(st.integers(0, room)),
                          st.one_of(st.integers(0, DATA_SIZE), st.integers(0, U64)))
    indirect_gpa = field("indirect_gpa", TABLE_GPA if flags & DescriptorFlag.INDIRECT else 0, gpas)
    reserved = field("reserved", 0, st.integers(1, U64))
    request_id = draw(st.integers(0, U64))
    head = struct.pack(SQE_FORMAT, opcode, flags, nseg, request_id, device_offset, length,
                       indirect_gpa, reserved)
    inline = b"" if flags & DescriptorFlag.INDIRECT else b"".join(
        pack_segment(s) for s in segs[:MAX_INLINE_SEGMENTS])
    raw = (head + inline).ljust(SQE_SIZE, b"\0")[:SQE_SIZE]
    return raw, segs


any_sqe = st.one_of(descriptors(), descriptors(), descriptors(), st.tuples(st.binary(min_size=SQE_SIZE, max_size=SQE_SIZE),
                                             st.just([])))


def place_table(memory, table: list[Segment]) -> None:
    data = b"".join(pack_segment(s) for s in table)[:LOW[1] - TABLE_GPA]
    memory.write(TABLE_GPA, data)


def changed_pages(before: bytes, after: bytes) -> list[int]:
    return [i for i in range(0, len(before), 4096) if before[i:i + 4096] != after[i:i + 4096]]


def within_runs(memory, index_pages: list[int], runs) -> bool:
    """Every changed 4 KiB page of the backing overlaps some run (translated to backing offsets)."""
    ranges = memory.ram_ranges()
    offsets, total = [], 0
    for start, end in ranges:
        offsets.append((start, end, total))
        total += end - start
    spans = []
    for gpa, n, _v in runs:
        for start, end, base in offsets:
            if start <= gpa and gpa + n <= end:
                spans.append((base + gpa - start, base + gpa - start + n))
    return all(any(a < page + 4096 and page < b for a, b in spans) for page in index_pages)


@settings(max_examples=400, deadline=None)
@given(any_sqe, st.sampled_from([(U64, 1), (U64, 1), ((1 << 32) - 1, 1), (U64, 512)]))
def test_validator_and_engine_stay_inside_what_was_validated(sqe, limits):
    raw, table = sqe
    dma_mask, align = limits
    memory = holey_memory()
    place_table(memory, table)
    memory.write(HIGH[0], bytes(range(256)) * (MIB // 256))
    ram = RamWindows(memory)
    validator = DescriptorValidator(ram, dma_mask=dma_mask, segment_align=align)
    result = validator.validate(raw)
    assert isinstance(result, (TransferPlan, Refusal))
    if isinstance(result, Refusal):
        event(f"refused {result.reason.name}")
        assert isinstance(result.reason, ErrorReason) and result.reason != ErrorReason.NONE
        assert result.field
        return
    plan = result
    event(f"plan {plan.opcode.name}")
    assert plan.device_offset + plan.length <= DATA_SIZE
    assert sum(n for _g, n, _v in plan.runs) == plan.length
    for gpa, n, _v in plan.runs:
        assert n > 0 and memory.contains(gpa, n) and gpa + n - 1 <= dma_mask
        assert gpa % align == 0
    store = bytearray(b"\xEE" * DATA_SIZE)
    before_store = bytes(store)
    before_ram = memory.read(0, LOW[1]) + memory.read(HIGH[0], MIB)
    DmaEngine(memoryview(store)).execute(plan, checksum=True)
    after_ram = memory.read(0, LOW[1]) + memory.read(HIGH[0], MIB)
    if plan.opcode is Opcode.READ:
        assert within_runs(memory, changed_pages(before_ram, after_ram), plan.runs)
        assert bytes(store) == before_store
    else:
        assert after_ram == before_ram
        lo, hi = plan.device_offset, plan.device_offset + plan.length
        assert store[:lo] == before_store[:lo] and store[hi:] == before_store[hi:]
    ram.release()


def snapshot(memory) -> InProcessMemory:
    copy = holey_memory()
    copy.write(LOW[0], memory.read(LOW[0], LOW[1] - LOW[0]))
    copy.write(HIGH[0], memory.read(HIGH[0], HIGH[1] - HIGH[0]))
    return copy


def same_memory(a, b) -> bool:
    return all(a.read(start, end - start) == b.read(start, end - start) for start, end in (LOW, HIGH))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(any_sqe, min_size=1, max_size=20))
def test_device_does_exactly_what_validation_allows(device, driver, memory, batch):
    """Through the real device thread, a batch of hostile descriptors has exactly the
    effect of validating and executing them one by one on a copy: one completion each,
    in order, with a status; no other byte of guest RAM or device memory changes."""
    if batch[0][1]:
        place_table(memory, batch[0][1])
    model_memory = snapshot(memory)
    model_store = bytearray(device.read_data(0, DATA_SIZE))
    model_ram = RamWindows(model_memory)
    validator = DescriptorValidator(model_ram)
    engine = DmaEngine(memoryview(model_store))
    expected = []
    for raw, _table in batch:
        result = validator.validate(raw)
        if isinstance(result, Refusal):
            expected.append((result.request_id, CompletionStatus.ERROR, result.reason, 0))
        else:
            moved = engine.execute(result).transferred if result.opcode is not Opcode.NOP else 0
            expected.append((result.request_id, CompletionStatus.OK, ErrorReason.NONE, moved))
        driver.submit_raw(raw)
    model_ram.release()
    driver.ring()
    done = driver.wait_completions(len(batch), timeout=30)
    assert [(c.request_id, c.status, c.reason, c.transferred) for c in done] == expected
    assert same_memory(memory, model_memory)
    assert device.read_data(0, DATA_SIZE) == bytes(model_store)
    assert device.errors == []
    assert device.header()["status"] == DeviceStatus.READY


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(RING_ENTRIES + 1, (1 << 32) - 1))
def test_hostile_ring_index_fails_safe_and_reset_recovers(device, driver, distance):
    head = driver.header.get("sq_head")
    driver.header.set("sq_tail", (head + distance) & 0xFFFFFFFF)
    driver.ring()
    (c,) = driver.wait_completions(1)
    assert (c.request_id, c.reason) == (RING_ERROR_REQUEST_ID, ErrorReason.RING_INDEX)
    assert device.header()["status"] == DeviceStatus.FAILED
    driver.reset()
    assert driver.request(Descriptor(Opcode.NOP, 0, 0, 1, 0, 0)).status == CompletionStatus.OK
    assert device.errors == []
