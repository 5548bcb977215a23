"""Page plans: long lists of whole 4 KiB pages, checked and copied by numpy.

A page plan is only a faster way to do what the other tiers do: the same
descriptors accepted, the same refusals, the same bytes landing, nothing else
touched, a duplicate guest page in a READ written last-wins as a list-order
copy writes it, and guest RAM still unmappable once the device lets go."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from device_model.abi import (
    DATA_SIZE, CompletionStatus, Descriptor, DescriptorFlag, ErrorReason, Opcode, Segment,
    pack_segment,
)
from device_model.descriptors import (
    PAGE_PLAN_MIN_SEGMENTS, DescriptorValidator, RamWindows, Refusal, TransferPlan,
)
from device_model.device import EchoDevice
from device_model.dma_engine import DmaEngine
from device_model.faults import FaultKind, FaultPlan, FaultRule
from wdfhil.guest_ram import GuestRam, RamLayout, RamRange
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from device_model.trace import read_trace
from wdfhil.physical_memory import PAGE_SIZE

from device_helpers import GIB, HIGH, LOW, MIB, holey_memory

W, R = Opcode.WRITE, Opcode.READ
IND = DescriptorFlag.INDIRECT
TABLE_GPA = LOW[1] - 32 * PAGE_SIZE        # room for 8192 entries' worth of table
FULL_MASK = (1 << 64) - 1

LOW_IMAGE = os.urandom(LOW[1] - LOW[0])
HIGH_IMAGE = os.urandom(HIGH[1] - HIGH[0])
DEVICE_IMAGE = os.urandom(DATA_SIZE)


def guest(table: bytes = b""):
    """Holey guest RAM with the fixed random contents, and the indirect table."""
    memory = holey_memory()
    memory.write(LOW[0], LOW_IMAGE)
    memory.write(HIGH[0], HIGH_IMAGE)
    if table:
        memory.write(TABLE_GPA, table)
    return memory


def indirect(opcode: Opcode, segments: list[Segment], length: int | None = None,
             device_offset: int = 0) -> tuple[bytes, bytes]:
    """(descriptor, table) of an indirect list at TABLE_GPA."""
    if length is None:
        length = sum(s.length for s in segments)
    table = b"".join(pack_segment(s) for s in segments)
    raw = Descriptor(opcode, IND, len(segments), 42, device_offset, length, TABLE_GPA).pack()
    return raw, table


def run(raw: bytes, table: bytes, *, page_plans: bool, dma_mask: int = FULL_MASK,
        segment_align: int = 1):
    """Validate and execute on fresh guest RAM and device memory:
    (plan or refusal, guest RAM low, guest RAM high, device memory) afterwards."""
    memory = guest(table)
    ram = RamWindows(memory)
    validator = DescriptorValidator(ram, dma_mask=dma_mask, segment_align=segment_align,
                                    page_plans=page_plans)
    device = bytearray(DEVICE_IMAGE)
    engine = DmaEngine(memoryview(device))
    result = validator.validate(raw)
    if isinstance(result, TransferPlan):
        engine.execute(result)
    outcome = (result, memory.read(LOW[0], LOW[1] - LOW[0]),
               memory.read(HIGH[0], HIGH[1] - HIGH[0]), bytes(device))
    engine.close()
    ram.release()
    return outcome


def page_in(rng_range: tuple[int, int], index: int) -> int:
    start, end = rng_range
    return start + index % ((end - start) // PAGE_SIZE) * PAGE_SIZE


# ---- the properties ----------------------------------------------------------------

@st.composite
def page_lists(draw) -> tuple[list[Segment], int, int]:
    """(segments, length field, device_offset): page lists in low RAM, high RAM or
    both, some pages repeated; in a third of them one or two hostile entries:
    unaligned, past the end of a range, in the hole, near 2**64, reserved bits,
    another length."""
    ranges = draw(st.sampled_from([[LOW], [HIGH], [LOW, HIGH]]))
    segments: list[Segment] = []
    for _ in range(draw(st.integers(PAGE_PLAN_MIN_SEGMENTS, 300))):
        if segments and draw(st.integers(0, 7)) == 0:
            gpa = draw(st.sampled_from(segments)).gpa                  # a duplicate
        else:
            gpa = page_in(draw(st.sampled_from(ranges)), draw(st.integers(0, 255)))
        segments.append(Segment(gpa, PAGE_SIZE))
    hostile = draw(st.integers(0, 2)) == 0
    for _ in range(draw(st.integers(1, 2)) if hostile else 0):
        i = draw(st.integers(0, len(segments) - 1))
        gpa = segments[i].gpa
        segments[i] = Segment(*draw(st.sampled_from([
            (gpa + 8, PAGE_SIZE, 0), (gpa + 2048, PAGE_SIZE, 0), (LOW[1], PAGE_SIZE, 0),
            (HIGH[1], PAGE_SIZE, 0), (LOW[1] - 2048, PAGE_SIZE, 0), (2 * GIB, PAGE_SIZE, 0),
            ((1 << 64) - PAGE_SIZE, PAGE_SIZE, 0), (gpa, PAGE_SIZE, 1), (gpa, PAGE_SIZE, 1 << 31),
            (gpa, 2048, 0), (gpa, 8192, 0), (gpa, 0, 0)])))
    length = sum(s.length for s in segments)
    if hostile and draw(st.booleans()):
        length += draw(st.sampled_from([-PAGE_SIZE, PAGE_SIZE, -1]))
    offset = draw(st.sampled_from([0, 1, 17, PAGE_SIZE - 1, PAGE_SIZE, MIB + 3,
                                   DATA_SIZE - length] * 3 + [DATA_SIZE - length + 1]))
    return segments, length, max(0, offset)


LIMITS = st.sampled_from([(FULL_MASK, 1)] * 4 + [((1 << 32) - 1, 1), (HIGH[0] + 0x7FFFF, 1),
                          (FULL_MASK, PAGE_SIZE), (FULL_MASK, 2 * PAGE_SIZE), (0xFFF, 1)])


@settings(max_examples=120, deadline=None)
@given(page_lists(), st.sampled_from([W, R]), LIMITS)
def test_page_plans_decide_and_copy_exactly_as_the_other_tiers(case, opcode, limits):
    """Same acceptance, same refusal (reason, field, value), same bytes in guest RAM
    and device memory afterwards."""
    segments, length, offset = case
    dma_mask, align = limits
    raw, table = indirect(opcode, segments, length, offset)
    fast = run(raw, table, page_plans=True, dma_mask=dma_mask, segment_align=align)
    exact = run(raw, table, page_plans=False, dma_mask=dma_mask, segment_align=align)
    fast_plan, exact_plan = fast[0], exact[0]
    kind = ("page plan" if isinstance(fast_plan, TransferPlan) and fast_plan.page_rows
            else type(fast_plan).__name__)
    event(f"{kind}; other tiers: {type(exact_plan).__name__}")
    if isinstance(exact_plan, Refusal):
        assert fast_plan == exact_plan
    else:
        assert isinstance(fast_plan, TransferPlan)
        assert exact_plan.page_rows is None
        assert (fast_plan.opcode, fast_plan.length, fast_plan.device_offset) == (
            exact_plan.opcode, exact_plan.length, exact_plan.device_offset)
    assert fast[1:] == exact[1:]


@settings(max_examples=80, deadline=None)
@given(page_lists(), st.sampled_from([W, R]))
def test_a_page_plan_touches_nothing_but_its_pages(case, opcode):
    """Against a model: a READ changes exactly the listed guest pages (the last
    listing of a page wins); a WRITE changes only [offset, offset + length) of
    device memory, to the listed pages in order; nothing else changes."""
    segments, length, offset = case
    raw, table = indirect(opcode, segments, length, offset)
    plan, low, high, device = run(raw, table, page_plans=True)
    if not (isinstance(plan, TransferPlan) and plan.page_rows):
        return
    event(f"page plan in {len(plan.page_rows)} RAM window(s)")
    guest_before = {LOW[0]: bytearray(LOW_IMAGE), HIGH[0]: bytearray(HIGH_IMAGE)}
    device_before = bytearray(DEVICE_IMAGE)
    table_before = guest_before[LOW[0]]
    table_before[TABLE_GPA:TABLE_GPA + len(table)] = table

    def locate(gpa: int) -> tuple[bytearray, int]:
        base = HIGH[0] if gpa >= HIGH[0] else LOW[0]
        return guest_before[base], gpa - base

    for i, s in enumerate(segments):
        image, at = locate(s.gpa)
        where = offset + i * PAGE_SIZE
        if opcode is W:
            device_before[where:where + PAGE_SIZE] = image[at:at + PAGE_SIZE]
        else:
            image[at:at + PAGE_SIZE] = DEVICE_IMAGE[where:where + PAGE_SIZE]
    assert low == bytes(guest_before[LOW[0]])
    assert high == bytes(guest_before[HIGH[0]])
    assert device == bytes(device_before)


# ---- examples ----------------------------------------------------------------------

def test_a_page_list_becomes_one_page_plan_and_moves_the_right_pages():
    segments = [Segment(page_in(LOW, 7 * i + 3), PAGE_SIZE) for i in range(64)]
    raw, table = indirect(W, segments, device_offset=5)
    plan, _low, _high, device = run(raw, table, page_plans=True)
    assert isinstance(plan, TransferPlan) and plan.page_rows is not None
    assert len(plan.page_rows) == 1 and plan.page_rows[0].positions is None
    assert [(g, n) for g, n, _v in plan.runs] == [(s.gpa, PAGE_SIZE) for s in segments]
    for i, s in enumerate(segments):
        assert device[5 + i * PAGE_SIZE:5 + (i + 1) * PAGE_SIZE] == LOW_IMAGE[s.gpa:s.gpa + PAGE_SIZE]


def test_pages_in_two_ram_ranges_are_one_plan_in_two_windows():
    segments = [Segment(page_in(HIGH if i % 3 else LOW, i), PAGE_SIZE) for i in range(40)]
    raw, table = indirect(R, segments)
    plan, low, high, _device = run(raw, table, page_plans=True)
    assert isinstance(plan, TransferPlan) and plan.page_rows is not None
    assert len(plan.page_rows) == 2
    for i, s in enumerate(segments):
        got = (high[s.gpa - HIGH[0]:][:PAGE_SIZE] if s.gpa >= HIGH[0]
               else low[s.gpa:s.gpa + PAGE_SIZE])
        assert got == DEVICE_IMAGE[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]


def test_a_read_naming_a_page_twice_leaves_the_last_copy():
    """numpy does not document the order of a fancy assignment with repeated
    indices; page plans rely on it being the list order (as preadv and the
    slice loop write). This pins it."""
    pages = [page_in(LOW, i) for i in range(20)]
    listed = pages + pages[::-1] + pages[5:9] * 3 + [pages[0]]
    raw, table = indirect(R, [Segment(g, PAGE_SIZE) for g in listed])
    plan, low, _high, _device = run(raw, table, page_plans=True)
    assert isinstance(plan, TransferPlan) and plan.page_rows is not None
    last = {g: i for i, g in enumerate(listed)}
    for g, i in last.items():
        assert low[g:g + PAGE_SIZE] == DEVICE_IMAGE[i * PAGE_SIZE:(i + 1) * PAGE_SIZE], hex(g)


@pytest.mark.parametrize("bad,reason,field", [
    (Segment(page_in(LOW, 3) + 8, PAGE_SIZE), None, None),      # planned by the other tiers
    (Segment(2 * GIB, PAGE_SIZE), ErrorReason.SEGMENT_NOT_IN_RAM, "indirect[17].gpa"),
    (Segment(LOW[1], PAGE_SIZE), ErrorReason.SEGMENT_NOT_IN_RAM, "indirect[17].gpa"),
    (Segment(page_in(LOW, 3), PAGE_SIZE, 4), ErrorReason.RESERVED_FIELD, "indirect[17].reserved"),
    (Segment(page_in(HIGH, 3), PAGE_SIZE), ErrorReason.SEGMENT_ABOVE_DMA_MASK, "indirect[17].gpa"),
])
def test_one_bad_page_in_a_long_list_is_named_by_the_exact_tier(bad, reason, field):
    segments = [Segment(page_in(LOW, i), PAGE_SIZE) for i in range(40)]
    segments[17] = bad
    raw, table = indirect(W, segments)
    plan = run(raw, table, page_plans=True, dma_mask=(1 << 32) - 1)[0]
    if reason is None:
        assert isinstance(plan, TransferPlan) and plan.page_rows is None
    else:
        assert isinstance(plan, Refusal) and (plan.reason, plan.field) == (reason, field), plan


def run_faulted(raw: bytes, table: bytes, *, page_plans: bool, limit: int | None,
                flip_bit: int | None, stale: bool):
    """Validate and execute with a short transfer / bit flip / checksum, then maybe a
    stale DMA: (plan, what the engine reported, guest low, guest high, device)."""
    memory = guest(table)
    ram = RamWindows(memory)
    device = bytearray(DEVICE_IMAGE)
    engine = DmaEngine(memoryview(device))
    plan = DescriptorValidator(ram, page_plans=page_plans).validate(raw)
    assert isinstance(plan, TransferPlan), plan
    done = engine.execute(plan, limit=limit, flip_bit=flip_bit, checksum=True)
    report = (done.transferred, [(int(g), n) for g, n in done.ranges], done.crc32,
              done.flipped_bit, done.direction)
    if stale:
        report += (engine.fill_guest(plan, 0x5A),)
    outcome = (plan, report, memory.read(LOW[0], LOW[1] - LOW[0]),
               memory.read(HIGH[0], HIGH[1] - HIGH[0]), bytes(device))
    engine.close()
    ram.release()
    return outcome


@st.composite
def valid_page_lists(draw) -> list[Segment]:
    ranges = draw(st.sampled_from([[LOW], [HIGH], [LOW, HIGH]]))
    segments: list[Segment] = []
    for _ in range(draw(st.integers(PAGE_PLAN_MIN_SEGMENTS, 120))):
        if segments and draw(st.integers(0, 5)) == 0:
            gpa = draw(st.sampled_from(segments)).gpa                  # a duplicate
        elif segments and draw(st.integers(0, 3)) == 0:
            gpa = segments[-1].gpa + PAGE_SIZE                         # continues: one run
            if not any(a <= gpa < b for a, b in ranges):
                gpa = page_in(ranges[0], 0)
        else:
            gpa = page_in(draw(st.sampled_from(ranges)), draw(st.integers(0, 255)))
        segments.append(Segment(gpa, PAGE_SIZE))
    return segments


@settings(max_examples=100, deadline=None)
@given(valid_page_lists(), st.sampled_from([W, R]), st.data())
def test_faults_and_checksum_on_a_page_plan_act_exactly_as_on_views(segments, opcode, data):
    """A short transfer, a flipped bit, the trace's CRC and a stale DMA on a page plan
    (the numpy copy) leave the same bytes everywhere and report the same bytes
    moved, runs, CRC and bit as on the view path."""
    length = len(segments) * PAGE_SIZE
    limit = data.draw(st.one_of(st.none(), st.integers(0, length - 1),
                                st.sampled_from([PAGE_SIZE, 3 * PAGE_SIZE + 1])))
    flip = data.draw(st.one_of(st.none(), st.integers(0, length * 8 - 1)))
    stale = data.draw(st.booleans())
    raw, table = indirect(opcode, segments, device_offset=data.draw(st.sampled_from([0, 3, MIB])))
    pages = run_faulted(raw, table, page_plans=True, limit=limit, flip_bit=flip, stale=stale)
    views = run_faulted(raw, table, page_plans=False, limit=limit, flip_bit=flip, stale=stale)
    assert pages[0].page_rows is not None and views[0].page_rows is None
    event(f"page plan in {len(pages[0].page_rows)} window(s)")
    assert pages[1] == views[1]
    assert pages[2:] == views[2:]


def test_the_device_plans_pages_with_trace_and_faults_armed(tmp_path):
    """Trace and faults no longer switch the copy path: the validator makes page plans."""
    plan = FaultPlan([FaultRule(FaultKind.BIT_FLIP, request_ids=frozenset({1}))])
    with EchoDevice(tmp_path, fault_plan=plan, trace_path=tmp_path / "t.jsonl") as device:
        device.attach_guest_ram(holey_memory())
        assert device._validator is not None and device._validator.page_plans
        device.detach_guest_ram()


def test_a_fault_test_runs_the_page_plan_path(tmp_path):
    """A bit flip armed on a running, traced device, on a 32-page scattered READ: the
    transfer is a page plan (stats.page_plans), exactly one bit of the landed data
    differs, and the trace's CRC is that of the bytes as they landed."""
    memory = holey_memory()
    pages = [page_in(LOW, 5 * i + 40) for i in range(32)]
    memory.write(TABLE_GPA, b"".join(pack_segment(Segment(g, PAGE_SIZE)) for g in pages))
    payload = os.urandom(32 * PAGE_SIZE)
    with EchoDevice(tmp_path, trace_path=tmp_path / "t.jsonl") as device, \
            IvshmemClient.connect(device.socket_path) as client:
        device.attach_guest_ram(memory)
        driver = HostDriver(client)
        try:
            device.memory.data[:len(payload)] = payload
            device.arm_faults(FaultPlan([FaultRule(FaultKind.BIT_FLIP)], seed=3))
            done = driver.request(Descriptor(R, IND, 32, 9, 0, len(payload), TABLE_GPA))
            assert (done.status, done.transferred) == (CompletionStatus.OK, len(payload))
        finally:
            driver.close()
        assert device.stats.page_plans == 1
        landed = b"".join(memory.read(g, PAGE_SIZE) for g in pages)
        diff = [i for i in range(len(payload)) if landed[i] != payload[i]]
        (fault,) = device.fault_plan.injected
        assert diff == [fault.detail["bit"] // 8]
        device.close()
    (dma,) = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "dma"]
    assert dma["crc32"] == zlib.crc32(landed) and dma["fault"] == "bit_flip"
    assert dma["ranges"] == [[g, PAGE_SIZE] for g in pages]


def test_page_plans_through_the_device_on_a_ram_file_then_it_unmaps(tmp_path):
    """The real device thread, GuestRam on a file: a scattered WRITE then READ of
    64 pages through the ivshmem protocol; afterwards the RAM file unmaps (the
    page arrays went with the detach)."""
    size = 2 * MIB
    path = tmp_path / "ram"
    with open(path, "wb") as f:
        f.truncate(size)
    ram = GuestRam.open(path, RamLayout(ranges=(RamRange(gpa=0, size=size, file_offset=0),)))
    pages = [0x10000 + i * 3 * PAGE_SIZE for i in range(64)]
    for i, g in enumerate(pages):
        ram.write(g, bytes([i + 1]) * PAGE_SIZE)
    table_gpa = 0x1000
    ram.write(table_gpa, b"".join(pack_segment(Segment(g, PAGE_SIZE)) for g in pages))
    with EchoDevice(tmp_path) as device, IvshmemClient.connect(device.socket_path) as client:
        device.attach_guest_ram(ram)
        driver = HostDriver(client)
        try:
            n = len(pages) * PAGE_SIZE
            done = driver.request(Descriptor(W, IND, len(pages), 1, 100, n, table_gpa))
            assert (done.status, done.transferred) == (CompletionStatus.OK, n)
            assert device.read_data(100, n) == b"".join(bytes([i + 1]) * PAGE_SIZE
                                                        for i in range(len(pages)))
            for g in pages:
                ram.write(g, b"\0" * PAGE_SIZE)
            done = driver.request(Descriptor(R, IND, len(pages), 2, 100, n, table_gpa))
            assert (done.status, done.transferred) == (CompletionStatus.OK, n)
            assert all(ram.read(g, PAGE_SIZE) == bytes([i + 1]) * PAGE_SIZE
                       for i, g in enumerate(pages))
            assert ram.read(0x10000 + PAGE_SIZE, PAGE_SIZE) == b"\0" * PAGE_SIZE
        finally:
            driver.close()
        assert device.stats.executed == 2 and device.errors == []
        device.detach_guest_ram()
        ram.close()          # raises DeviceProtocolError if a page array still held the map
        assert ram.closed
