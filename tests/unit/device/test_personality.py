"""The device core with a personality other than the echo: the seam a bus-master
personality will use (its own request format, the core's segment validation,
engine, faults and trace), and the segment-list service held to the SQE path."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from device_model.abi import (
    CompletionStatus, Descriptor, DescriptorFlag, ErrorReason, Opcode, Segment, pack_segment,
)
from device_model.descriptors import DescriptorValidator, RamWindows, Refusal, TransferPlan
from device_model.device_core import DeviceCore
from device_model.faults import FaultKind, FaultPlan, FaultRule
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from device_model.personality import Personality
from device_model.trace import read_trace

from device_helpers import GIB, HIGH, LOW, holey_memory

TABLE_GPA = 0x80000


class ListPersonality(Personality):
    """A toy personality: an SQE whose bytes 0..7 are the opcode and whose bytes
    8.. are (gpa u64, length u64) pairs until a zero length; the device offset is
    always 0. It reaches guest RAM only through the core's DMA service."""

    def __init__(self) -> None:
        super().__init__()
        self.resets = 0
        self.ram_events: list[bool] = []

    def reset(self) -> None:
        self.resets += 1

    def guest_ram_changed(self, attached: bool) -> None:
        self.ram_events.append(attached)

    def submit(self, raw: bytes) -> None:
        core = self.core
        opcode = struct.unpack_from("<Q", raw, 0)[0]
        pairs = []
        for off in range(8, len(raw) - 15, 16):
            gpa, n = struct.unpack_from("<QQ", raw, off)
            if n == 0:
                break
            pairs.append((gpa, n))
        plan = core.plan_segments(Opcode(opcode), 77, 0, pairs, where="list[{}]")
        if isinstance(plan, Refusal):
            core.refuse(plan)
            return
        core.complete(77, core.perform(plan), plan)


def toy_request(opcode: Opcode, pairs: list[tuple[int, int]]) -> bytes:
    return struct.pack("<Q", opcode) + b"".join(struct.pack("<QQ", g, n) for g, n in pairs)


def test_a_second_personality_uses_the_core_dma_service(tmp_path):
    memory = holey_memory()
    memory.write(0x3000, b"\x11" * 100)
    memory.write(HIGH[0], b"\x22" * 50)
    personality = ListPersonality()
    plan = FaultPlan([FaultRule(FaultKind.SHORT_TRANSFER, fraction=0.5, max_count=1)])
    with DeviceCore(personality, tmp_path, fault_plan=plan,
                    trace_path=tmp_path / "t.jsonl") as core, \
            IvshmemClient.connect(core.socket_path) as client:
        core.attach_guest_ram(memory)
        driver = HostDriver(client)
        try:
            assert personality.resets == 1 and personality.ram_events == [True]
            short = driver.request_raw(toy_request(Opcode.WRITE, [(0x3000, 100), (HIGH[0], 50)]))
            assert (short.status, short.transferred) == (CompletionStatus.SHORT, 75)
            done = driver.request_raw(toy_request(Opcode.WRITE, [(0x3000, 100), (HIGH[0], 50)]))
            assert (done.request_id, done.status, done.transferred) == (77, CompletionStatus.OK, 150)
            assert core.read_data(0, 150) == b"\x11" * 100 + b"\x22" * 50
            bad = driver.request_raw(toy_request(Opcode.READ, [(2 * GIB, 16)]))
            assert (bad.status, bad.reason) == (CompletionStatus.ERROR, ErrorReason.SEGMENT_NOT_IN_RAM)
            driver.reset()
            assert personality.resets == 2
        finally:
            driver.close()
        assert core.errors == []
        core.close()
    records = list(read_trace(tmp_path / "t.jsonl"))
    assert [r["field"] for r in records if r["type"] == "refused"] == ["list[0].gpa"]
    assert [r["length"] for r in records if r["type"] == "dma"] == [75, 150]


segment = st.tuples(
    st.one_of(st.sampled_from([0, LOW[1] - 4096, LOW[1], 2 * GIB, HIGH[0], HIGH[1] - 16]),
              st.integers(0, LOW[1]), st.integers(HIGH[0], HIGH[1]),
              st.integers(0, (1 << 64) - 1)).map(lambda g: g & ~15 if g % 3 else g),
    st.one_of(st.sampled_from([0, 1, 16, 4096]), st.integers(1, 20000)))


@settings(max_examples=200, deadline=None)
@given(st.lists(segment, min_size=1, max_size=40), st.sampled_from([Opcode.WRITE, Opcode.READ]),
       st.sampled_from([((1 << 64) - 1, 1), ((1 << 32) - 1, 1), ((1 << 64) - 1, 16)]),
       st.integers(0, 4096))
def test_segment_lists_are_decided_as_the_same_list_in_an_sqe(segments, opcode, limits, offset):
    """plan_segments' validator entry point accepts, refuses (reason and field) and
    plans exactly as an indirect SQE carrying the same list."""
    dma_mask, align = limits
    memory = holey_memory()
    memory.write(TABLE_GPA, b"".join(pack_segment(Segment(g, n)) for g, n in segments))
    ram = RamWindows(memory)
    validator = DescriptorValidator(ram, dma_mask=dma_mask, segment_align=align)
    length = sum(n for _g, n in segments)
    raw = Descriptor(opcode, DescriptorFlag.INDIRECT, len(segments), 9, offset, length,
                     TABLE_GPA).pack()
    via_sqe = validator.validate(raw)
    via_list = validator.validate_segments(opcode, 9, offset, segments, where="indirect[{}]")
    if isinstance(via_sqe, Refusal):
        assert via_list == via_sqe
    else:
        assert isinstance(via_list, TransferPlan)
        assert [(int(g), n) for g, n, _v in via_list.runs] == [
            (int(g), n) for g, n, _v in via_sqe.runs]
        assert (via_list.length, via_list.device_offset, via_list.nseg) == (
            via_sqe.length, via_sqe.device_offset, via_sqe.nseg)
    ram.release()
