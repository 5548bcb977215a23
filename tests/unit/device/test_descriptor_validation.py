"""Descriptor validation: every refusal reason with its field, and what a valid plan holds."""

from __future__ import annotations

import os

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from device_model.abi import (
    DATA_SIZE, MAX_INLINE_SEGMENTS, MAX_SEGMENTS, MAX_TRANSFER, Descriptor, DescriptorFlag,
    ErrorReason, Opcode, Segment, pack_segment,
)
from device_model.descriptors import DescriptorValidator, RamWindows, Refusal, TransferPlan

from device_helpers import GIB, HIGH, LOW, MIB, holey_memory

W, R, NOP = Opcode.WRITE, Opcode.READ, Opcode.NOP
IND = DescriptorFlag.INDIRECT


@pytest.fixture
def validator():
    ram = RamWindows(holey_memory())
    return DescriptorValidator(ram)


def sqe(opcode=W, length=None, segments=(), *, flags=0, nseg=None, request_id=42,
        device_offset=0, indirect_gpa=0, reserved=0) -> bytes:
    segments = list(segments)
    if length is None:
        length = sum(s.length for s in segments)
    if nseg is None:
        nseg = len(segments)
    return Descriptor(opcode, flags, nseg, request_id, device_offset, length,
                      indirect_gpa, reserved).pack(segments if not flags & IND else None)


def refused(result, reason: ErrorReason, field: str) -> None:
    assert isinstance(result, Refusal), result
    assert (result.reason, result.field) == (reason, field), str(result)
    assert result.request_id == 42


@pytest.mark.parametrize("raw,reason,field", [
    (sqe(opcode=7, length=4096, segments=[Segment(0, 4096)]), ErrorReason.BAD_OPCODE, "opcode"),
    (sqe(flags=0x80, segments=[Segment(0, 4096)]), ErrorReason.BAD_FLAGS, "flags"),
    (sqe(reserved=1, segments=[Segment(0, 4096)]), ErrorReason.RESERVED_FIELD, "reserved"),
    (sqe(NOP, length=0, nseg=1), ErrorReason.BAD_SEGMENT_COUNT, "nseg"),
    (sqe(NOP, length=8), ErrorReason.LENGTH_MISMATCH, "length"),
    (sqe(NOP, flags=IND, length=0), ErrorReason.BAD_FLAGS, "flags"),
    (sqe(NOP, length=0, indirect_gpa=0x1000), ErrorReason.RESERVED_FIELD, "indirect_gpa"),
    (sqe(W, length=4096, nseg=0), ErrorReason.BAD_SEGMENT_COUNT, "nseg"),
    (sqe(W, length=4096, nseg=MAX_INLINE_SEGMENTS + 1), ErrorReason.BAD_SEGMENT_COUNT, "nseg"),
    (sqe(W, flags=IND, length=4096, nseg=MAX_SEGMENTS + 1, indirect_gpa=0x1000),
     ErrorReason.BAD_SEGMENT_COUNT, "nseg"),
    (sqe(W, length=0, segments=[Segment(0, 4096)]), ErrorReason.LENGTH_MISMATCH, "length"),
    (sqe(W, length=MAX_TRANSFER + 1, nseg=1), ErrorReason.TRANSFER_TOO_LARGE, "length"),
    (sqe(W, device_offset=DATA_SIZE - 4095, segments=[Segment(0, 4096)]),
     ErrorReason.DEVICE_RANGE, "device_offset"),
    (sqe(W, device_offset=(1 << 64) - 1, segments=[Segment(0, 4096)]),
     ErrorReason.DEVICE_RANGE, "device_offset"),
    (sqe(W, segments=[Segment(0, 4096)], indirect_gpa=0x2000), ErrorReason.RESERVED_FIELD,
     "indirect_gpa"),
    (sqe(W, segments=[Segment(0, 4096), Segment(0x2000, 16, reserved=3)]),
     ErrorReason.RESERVED_FIELD, "segments[1].reserved"),
    (sqe(W, length=4096, segments=[Segment(0, 4096), Segment(0x2000, 0)]),
     ErrorReason.ZERO_SEGMENT, "segments[1].length"),
    (sqe(W, segments=[Segment(MIB - 16, 32)]), ErrorReason.SEGMENT_NOT_IN_RAM, "segments[0].gpa"),
    (sqe(W, segments=[Segment(2 * GIB, 32)]), ErrorReason.SEGMENT_NOT_IN_RAM, "segments[0].gpa"),
    (sqe(W, segments=[Segment(0, 16), Segment(HIGH[1] - 8, 16)]),
     ErrorReason.SEGMENT_NOT_IN_RAM, "segments[1].gpa"),
    (sqe(W, segments=[Segment((1 << 64) - 16, 32)]), ErrorReason.SEGMENT_NOT_IN_RAM,
     "segments[0].gpa"),
    (sqe(W, length=100, segments=[Segment(0, 64)]), ErrorReason.LENGTH_MISMATCH, "length"),
], ids=lambda p: p.name if isinstance(p, ErrorReason) else "" if isinstance(p, bytes) else p)
def test_refusals_name_reason_and_field(validator, raw, reason, field):
    refused(validator.validate(raw), reason, field)


def test_nop_is_a_plan_without_runs(validator):
    plan = validator.validate(sqe(NOP, length=0))
    assert isinstance(plan, TransferPlan) and plan.opcode is NOP and plan.runs == []


def test_segments_in_both_ram_ranges_and_coalescing(validator):
    segments = [Segment(0x1000, 0x1000), Segment(0x2000, 0x1000), Segment(4 * GIB, 0x800),
                Segment(4 * GIB + 0x800, 0x800), Segment(0x8000, 0x10)]
    plan = validator.validate(sqe(R, segments=segments, device_offset=0x100))
    assert isinstance(plan, TransferPlan)
    assert [(g, n) for g, n, _v in plan.runs] == [
        (0x1000, 0x2000), (4 * GIB, 0x1000), (0x8000, 0x10)]
    assert plan.length == 0x3010 and plan.device_offset == 0x100 and plan.nseg == 5


def test_contiguous_segments_across_the_hole_are_not_merged():
    # Two RAM ranges that touch in guest-physical space but are separate windows.
    from wdfhil.physical_memory import InProcessMemory
    v = DescriptorValidator(RamWindows(InProcessMemory(ranges=[(0, 0x2000), (0x2000, 0x4000)])))
    plan = v.validate(sqe(W, segments=[Segment(0x1000, 0x1000), Segment(0x2000, 0x1000)]))
    assert [(g, n) for g, n, _v in plan.runs] == [(0x1000, 0x1000), (0x2000, 0x1000)]


def write_table(memory, gpa, segments):
    memory.write(gpa, b"".join(pack_segment(s) for s in segments))


def test_indirect_table_is_copied_then_validated():
    memory = holey_memory()
    v = DescriptorValidator(RamWindows(memory))
    segments = [Segment(0x10000 + i * 0x2000, 0x1000) for i in range(100)]
    write_table(memory, 0x8000, segments)
    raw = sqe(W, flags=IND, nseg=100, length=100 * 0x1000, indirect_gpa=0x8000)
    plan = v.validate(raw)
    assert isinstance(plan, TransferPlan) and len(plan.runs) == 100
    # The guest rewriting the table after validation changes nothing in the plan.
    write_table(memory, 0x8000, [Segment(2 * GIB, 0x1000)] * 100)
    assert plan.runs[0][0] == 0x10000


@pytest.mark.parametrize("gpa,nseg,why", [
    (0x8008, 1, "aligned"), (MIB - 16, 2, "inside guest RAM"), (3 * GIB, 1, "inside guest RAM"),
])
def test_bad_indirect_tables(gpa, nseg, why):
    memory = holey_memory()
    v = DescriptorValidator(RamWindows(memory))
    result = v.validate(sqe(W, flags=IND, nseg=nseg, length=16, indirect_gpa=gpa))
    refused(result, ErrorReason.INDIRECT_TABLE, "indirect_gpa")
    assert why in result.message


def test_indirect_segment_errors_name_the_table_entry():
    memory = holey_memory()
    v = DescriptorValidator(RamWindows(memory))
    write_table(memory, 0x8000, [Segment(0, 16), Segment(0x20, 16), Segment(2 * GIB, 16)])
    result = v.validate(sqe(W, flags=IND, nseg=3, length=48, indirect_gpa=0x8000))
    refused(result, ErrorReason.SEGMENT_NOT_IN_RAM, "indirect[2].gpa")


def test_dma_mask_keeps_a_32_bit_device_below_4g():
    memory = holey_memory()
    v = DescriptorValidator(RamWindows(memory), dma_mask=(1 << 32) - 1)
    assert isinstance(v.validate(sqe(W, segments=[Segment(LOW[1] - 16, 16)])), TransferPlan)
    refused(v.validate(sqe(W, segments=[Segment(0, 16), Segment(HIGH[0], 16)])),
            ErrorReason.SEGMENT_ABOVE_DMA_MASK, "segments[1].gpa")
    write_table(memory, HIGH[0], [Segment(0, 16)])
    refused(v.validate(sqe(W, flags=IND, nseg=1, length=16, indirect_gpa=HIGH[0])),
            ErrorReason.INDIRECT_TABLE, "indirect_gpa")


def test_segment_alignment():
    v = DescriptorValidator(RamWindows(holey_memory()), segment_align=512)
    assert isinstance(v.validate(sqe(W, segments=[Segment(0x200, 0x400)])), TransferPlan)
    refused(v.validate(sqe(W, segments=[Segment(0x200, 0x200), Segment(0x1001, 0x200)])),
            ErrorReason.SEGMENT_ALIGNMENT, "segments[1].gpa")
    refused(v.validate(sqe(W, segments=[Segment(0x200, 0x201)])),
            ErrorReason.SEGMENT_ALIGNMENT, "segments[0].length")


# ---- the two tiers of planning agree ----------------------------------------------
# The fast tier (whole-list tests, for long page lists) may only say "every check
# passes" when the exact tier, running each check in order, says so too, and its
# plan must be the same: same runs, views of the same guest memory.

@st.composite
def segment_lists(draw) -> tuple[list[Segment], int]:
    """(segments, length field): mostly honest page lists and mixed lists, near the
    edges of the RAM ranges, some segments continuing the previous one; now and
    then a hostile value (reserved bits, zero length, the hole, the top, a sum off
    by one)."""
    ranges = draw(st.sampled_from([[LOW], [HIGH], [LOW, HIGH]]))
    size = draw(st.sampled_from([1, 16, 512, 4096, 5000]))
    uniform = draw(st.booleans())
    hostile = draw(st.integers(0, 3)) == 0
    segments: list[Segment] = []
    for _ in range(draw(st.integers(1, 40))):
        n = size if uniform else draw(st.sampled_from([size, 16, 4096, 100, 8192]))
        if segments and draw(st.integers(0, 3)) == 0:
            gpa = (segments[-1].gpa + segments[-1].length) % (1 << 64)    # continues the last
        else:
            start, end = draw(st.sampled_from(ranges))
            gpa = draw(st.integers(start, end - n))
            if draw(st.booleans()):
                gpa &= ~15
        reserved = 0
        if hostile and draw(st.integers(0, 9)) == 0:
            gpa, n, reserved = draw(st.sampled_from([
                (gpa, n, 1 << 16), (gpa, 0, 0), (gpa, (1 << 32) - 1, 0), (2 * GIB, n, 0),
                (end - n + 1, n, 0), ((1 << 64) - 16, 32, 0), (max(0, start - 8), n, 0)]))
        segments.append(Segment(gpa, n, reserved))
    length = sum(s.length for s in segments)
    if hostile:
        length += draw(st.sampled_from([0, 0, -1, 1]))
    return segments, length


RANDOM_MEMORY = holey_memory()      # read only by the property below
RANDOM_MEMORY.write(LOW[0], os.urandom(LOW[1] - LOW[0]))
RANDOM_MEMORY.write(HIGH[0], os.urandom(HIGH[1] - HIGH[0]))


@settings(max_examples=400, deadline=None)
@given(segment_lists(), st.sampled_from([((1 << 64) - 1, 1), ((1 << 32) - 1, 1),
                                         ((1 << 64) - 1, 16), (HIGH[0] + 0xFFFF, 1)]))
def test_fast_tier_plans_exactly_what_the_exact_tier_allows(case, limits):
    segments, length = case
    dma_mask, align = limits
    memory = RANDOM_MEMORY
    ram = RamWindows(memory)
    v = DescriptorValidator(ram, dma_mask=dma_mask, segment_align=align)
    table = b"".join(pack_segment(s) for s in segments)
    args = (R, 42, 0, length, len(segments), table)
    exact = v._plan_exact(*args, "segments[{}]")
    fast = v._plan_fast(*args)
    event(f"fast tier {'plans' if fast else 'defers'}; exact tier {type(exact).__name__}")
    if fast is not None:
        assert isinstance(exact, TransferPlan), exact
        assert [(g, n) for g, n, _v in fast.runs] == [(g, n) for g, n, _v in exact.runs]
        for gpa, n, view in fast.runs:
            assert len(view) == n and bytes(view) == memory.read(gpa, n)
        assert (fast.length, fast.nseg, fast.opcode) == (exact.length, exact.nseg, exact.opcode)
    ram.release()


@st.composite
def one_segment_descriptors(draw) -> bytes:
    """Descriptors with one inline segment, each field now and then hostile."""
    def pick(honest, *hostile):
        return max(0, draw(st.sampled_from([honest] * 8 * len(hostile) + list(hostile))))

    start, end = draw(st.sampled_from([LOW, HIGH]))
    n = draw(st.sampled_from([1, 16, 512, 4096, MIB]))
    gpa = pick(draw(st.integers(start, end - min(n, end - start))),
               start - 1, end - n + 1, 2 * GIB, (1 << 64) - 16)
    n = pick(n, 0, (1 << 32) - 1, n + 1)
    segment = Segment(gpa, n, pick(0, 1))
    return sqe(pick(W, R, NOP, 9), length=pick(n, 0, n - 1, MAX_TRANSFER + 1),
               segments=[segment], flags=pick(0, IND, 4), nseg=pick(1, 0, 2),
               device_offset=pick(draw(st.integers(0, 64)), DATA_SIZE - n, DATA_SIZE - n + 1),
               indirect_gpa=pick(0, 0x1000), reserved=pick(0, 1))


@settings(max_examples=400, deadline=None)
@given(one_segment_descriptors(), st.sampled_from([((1 << 64) - 1, 1), ((1 << 32) - 1, 1),
                                                   ((1 << 64) - 1, 512)]))
def test_one_inline_segment_shortcut_decides_as_the_checks_in_order(raw, limits):
    dma_mask, align = limits
    ram = RamWindows(RANDOM_MEMORY)
    v = DescriptorValidator(ram, dma_mask=dma_mask, segment_align=align)
    quick, in_order = v.validate(raw), v.validate_in_order(raw)
    event(type(in_order).__name__)
    if isinstance(in_order, Refusal):
        assert quick == in_order
    else:
        assert isinstance(quick, TransferPlan)
        assert [(g, n, bytes(w)) for g, n, w in quick.runs] == [
            (g, n, bytes(w)) for g, n, w in in_order.runs]
        assert (quick.opcode, quick.request_id, quick.device_offset, quick.length) == (
            in_order.opcode, in_order.request_id, in_order.device_offset, in_order.length)
    ram.release()
