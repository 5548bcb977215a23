"""The DMA engine on its own (copies, truncation, checksums) and the trace it feeds."""

from __future__ import annotations

import mmap
import os
import zlib

import pytest

from device_model.abi import BAR2_SIZE, DATA_OFFSET, DATA_SIZE, Descriptor, DescriptorFlag, Opcode, Segment, pack_segment
from device_model.descriptors import DescriptorValidator, RamWindows, TransferPlan
from device_model.dma_engine import DmaEngine
from wdfhil.guest_ram import GuestRam, RamLayout
from device_model.ivshmem_server import create_shared_memory
from device_model.trace import TO_DEVICE, TO_GUEST, read_trace

from device_helpers import HIGH, holey_memory

TABLE_GPA = 0x80000


def plan_for(validator, opcode, segments, device_offset=0) -> TransferPlan:
    d = Descriptor(opcode, 0, len(segments), 1, device_offset, sum(s.length for s in segments))
    plan = validator.validate(d.pack(segments))
    assert isinstance(plan, TransferPlan), plan
    return plan


def test_engine_round_trip_with_checksums():
    memory = holey_memory()
    validator = DescriptorValidator(RamWindows(memory))
    store = bytearray(DATA_SIZE)
    engine = DmaEngine(memoryview(store))
    payload = os.urandom(3000)
    memory.write(0x100, payload[:1000])
    memory.write(HIGH[0], payload[1000:])
    w = engine.execute(plan_for(validator, Opcode.WRITE, [Segment(0x100, 1000), Segment(HIGH[0], 2000)],
                                device_offset=77), checksum=True)
    assert (w.transferred, w.direction, w.crc32) == (3000, TO_DEVICE, zlib.crc32(payload))
    assert store[77:3077] == payload and store[76] == 0 and store[3077] == 0
    r = engine.execute(plan_for(validator, Opcode.READ, [Segment(HIGH[1] - 3000, 3000)],
                                device_offset=77), checksum=True)
    assert (r.direction, r.crc32, r.ranges) == (TO_GUEST, zlib.crc32(payload), [(HIGH[1] - 3000, 3000)])
    assert memory.read(HIGH[1] - 3000, 3000) == payload


def test_engine_limit_stops_mid_run_and_flip_hits_the_destination():
    memory = holey_memory()
    validator = DescriptorValidator(RamWindows(memory))
    store = bytearray(DATA_SIZE)
    store[:64] = b"\xff" * 64
    engine = DmaEngine(memoryview(store))
    plan = plan_for(validator, Opcode.READ, [Segment(0x1000, 16), Segment(0x3000, 16), Segment(0x5000, 16)])
    result = engine.execute(plan, limit=20, flip_bit=8 * 17 + 3)
    assert result.transferred == 20 and result.ranges == [(0x1000, 16), (0x3000, 4)]
    assert memory.read(0x1000, 16) == b"\xff" * 16
    assert memory.read(0x3000, 5) == b"\xff\xf7\xff\xff\x00"
    assert memory.read(0x5000, 16) == bytes(16)


def test_engine_on_a_shared_file_mapping(tmp_path):
    """GuestRam over a real shared file: what the engine does is in the file."""
    path = tmp_path / "ram"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    with GuestRam.open(path, RamLayout.single(1 << 20)) as ram:
        windows = RamWindows(ram)
        validator = DescriptorValidator(windows)
        store = bytearray(DATA_SIZE)
        store[:8] = b"FROMDEV!"
        DmaEngine(memoryview(store)).execute(plan_for(validator, Opcode.READ, [Segment(0x4000, 8)]))
        windows.release()
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert mapped[0x4000:0x4008] == b"FROMDEV!"
        mapped.close()


def test_trace_records_every_transfer(device, driver, memory, tmp_path):
    memory.write(0x2000, b"A" * 4096)
    table = [Segment(0x2000, 2048), Segment(0x2800, 2048)]
    memory.write(0x9000, b"".join(pack_segment(s) for s in table))
    driver.request(Descriptor(Opcode.WRITE, DescriptorFlag.INDIRECT, 2, 11, 0x40, 4096, 0x9000))
    driver.request(Descriptor(Opcode.READ, 0, 1, 12, 0x40, 4096), [Segment(HIGH[0], 4096)])
    driver.request(Descriptor(Opcode.READ, 0, 1, 13, 0, 16), [Segment(3 << 30, 16)])
    device.close()   # flushes and closes the trace
    records = list(read_trace(tmp_path / "trace.jsonl"))
    dma = [r for r in records if r["type"] == "dma"]
    assert [(r["request_id"], r["opcode"], r["direction"], r["ranges"], r["length"],
             r["device_offset"]) for r in dma] == [
        (11, "WRITE", TO_DEVICE, [[0x2000, 4096]], 4096, 0x40),   # coalesced
        (12, "READ", TO_GUEST, [[HIGH[0], 4096]], 4096, 0x40)]
    assert dma[0]["crc32"] == dma[1]["crc32"] == zlib.crc32(b"A" * 4096)
    assert all(isinstance(r["time"], float) for r in records)
    refused = [r for r in records if r["type"] == "refused"]
    assert [(r["request_id"], r["reason"], r["field"]) for r in refused] == [
        (13, "SEGMENT_NOT_IN_RAM", "segments[0].gpa")]
    completions = [(r["request_id"], r["status"]) for r in records if r["type"] == "completion"]
    assert completions == [(11, "OK"), (12, "OK"), (13, "ERROR")]
    events = [r["event"] for r in records if r["type"] == "event"]
    assert events[:2] == ["guest_ram_attached", "peer_connected"]


def indirect_plan(memory, validator, opcode, segments, device_offset=0) -> TransferPlan:
    """A plan for ``segments`` listed in an indirect table in guest RAM."""
    memory.write(TABLE_GPA, b"".join(pack_segment(s) for s in segments))
    d = Descriptor(opcode, DescriptorFlag.INDIRECT, len(segments), 1, device_offset,
                   sum(s.length for s in segments), TABLE_GPA)
    plan = validator.validate(d.pack())
    assert isinstance(plan, TransferPlan), plan
    return plan


@pytest.fixture
def memfd_engine():
    """An engine over a real BAR2 memfd, built as EchoDevice builds it: (engine, data)."""
    fd = create_shared_memory("test-bar2", BAR2_SIZE)
    bar2 = mmap.mmap(fd, BAR2_SIZE)
    data = memoryview(bar2)[DATA_OFFSET:]
    engine = DmaEngine(data, fd=fd, fd_offset=DATA_OFFSET)
    try:
        yield engine, data
    finally:
        engine.close()
        data.release()
        bar2.close()
        os.close(fd)


def scattered_segments(count: int) -> list[Segment]:
    """``count`` segments of assorted lengths, none continuing another, in both RAM ranges."""
    low = [Segment(0x1000 + i * 0x40, 0x10 + i % 7) for i in range(count // 2)]
    high = [Segment(HIGH[0] + 0x10 + i * 0x30, 0x18) for i in range(count - count // 2)]
    return low + high


@pytest.mark.parametrize("count", [13, 1500])      # 1500 > IOV_MAX: batches of preadv
def test_vectored_path_matches_the_slice_path(memfd_engine, count):
    """Many runs go through mmap writes / preadv on the BAR2 memfd; same bytes as
    slice copies, also with a short transfer and a flipped bit."""
    vectored, data = memfd_engine
    memory = holey_memory()
    validator = DescriptorValidator(RamWindows(memory))
    segments = scattered_segments(count)
    for s in segments:
        memory.write(s.gpa, os.urandom(s.length))
    expected = b"".join(memory.read(s.gpa, s.length) for s in segments)
    w = vectored.execute(indirect_plan(memory, validator, Opcode.WRITE, segments, device_offset=5),
                         checksum=True)
    assert w.transferred == len(expected) and w.crc32 == zlib.crc32(expected)
    assert bytes(data[5:5 + len(expected)]) == expected and data[4] == 0
    assert data[5 + len(expected)] == 0
    targets = [Segment(HIGH[1] - (i + 1) * 0x40, s.length) for i, s in enumerate(segments)]
    r = vectored.execute(indirect_plan(memory, validator, Opcode.READ, targets, device_offset=5),
                         limit=len(expected) * 2 // 3, flip_bit=0)
    got = b"".join(memory.read(t.gpa, t.length) for t in targets)
    assert r.transferred == len(expected) * 2 // 3
    assert got[:r.transferred] == bytes([expected[0] ^ 1]) + expected[1:r.transferred]
    assert got[r.transferred:] == bytes(len(expected) - r.transferred)


def test_a_short_preadv_resumes_where_it_stopped(memfd_engine, monkeypatch):
    """preadv may read less than asked; the engine carries on from that byte."""
    engine, data = memfd_engine
    memory = holey_memory()
    validator = DescriptorValidator(RamWindows(memory))
    payload = os.urandom(4000)
    data[:4000] = payload
    real_preadv, calls = os.preadv, []

    def at_most_333_bytes(fd, views, offset):
        calls.append(offset)
        left, part = 333, []
        for view in views:
            if left == 0:
                break
            part.append(view[:left])
            left -= len(part[-1])
        return real_preadv(fd, part, offset)

    monkeypatch.setattr(os, "preadv", at_most_333_bytes)
    targets = [Segment(0x2000 + i * 0x100, 0x80) for i in range(31)] + [Segment(0x8000, 32)]
    engine.execute(indirect_plan(memory, validator, Opcode.READ, targets))
    assert b"".join(memory.read(t.gpa, t.length) for t in targets) == payload
    assert len(calls) == 13 and calls[1] - calls[0] == 333
