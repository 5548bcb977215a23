"""End to end on a pc guest: the guest DMAs through the echo device and checks
its own memory; the host checks the same bytes through QMP ``xp``.

One boot for the whole module (the device carries a fault plan that only
touches the request id the stale-DMA test uses).
"""

from __future__ import annotations

import pytest

from device_model.abi import ABI_VERSION, CompletionStatus, ErrorReason, Opcode, Segment
from device_model.faults import STALE_DMA_POISON, FaultKind, FaultPlan, FaultRule
from orchestrator.agent_client import (CompletionRecord, GuestBuffer, Step, Verification,
                                       pattern_bytes)
from orchestrator.dma_session import DmaSession, echo_roundtrip

pytestmark = pytest.mark.e2e

STALE_REQUEST_ID = 0x57A1E
STALE_DELAY_US = 1_000_000   # long enough to verify the good data first
NO_INTERRUPT_ID = 0xD0B1
DUPLICATE_ID = 0xD0B2


@pytest.fixture(scope="module")
def session(guest_image):
    plan = FaultPlan([
        FaultRule(FaultKind.STALE_DMA, request_ids=frozenset({STALE_REQUEST_ID}),
                  delay_us=STALE_DELAY_US),
        FaultRule(FaultKind.DROP_INTERRUPT, request_ids=frozenset({NO_INTERRUPT_ID}),
                  opcodes=frozenset({Opcode.NOP})),
        FaultRule(FaultKind.DUPLICATE_COMPLETION, request_ids=frozenset({DUPLICATE_ID}),
                  opcodes=frozenset({Opcode.NOP})),
    ])
    with DmaSession("pc-256m", guest_image, fault_plan=plan) as s:
        yield s


def test_module_bound_the_device_and_header_is_sane(session):
    info = session.agent.info()
    header = info["header"]
    assert header["status_name"] == "READY"
    assert header["device_peer"] == 0
    dmesg = session.vm.run("dmesg").stdout
    assert f"wdfhil0: ABI {ABI_VERSION}" in dmesg


def test_unaligned_scattered_roundtrip(session):
    trip = echo_roundtrip(session, size=10_000, seed=42, source_offset=777,
                          target_offset=3333, merge=False, device_offset=100)
    # Page-crossing, unaligned buffers: one segment per page they touch.
    assert [s.length for s in trip.source.segments] == [4096 - 777, 4096, 10_000 - 3319 - 4096]
    assert trip.source.gpa == trip.source.frames[0] + 777
    assert trip.target.gpa == trip.target.frames[0] + 3333
    assert trip.write.status is CompletionStatus.OK and trip.write.transferred == 10_000
    assert trip.read.status is CompletionStatus.OK and trip.read.transferred == 10_000
    assert trip.guest_verify.match, trip.guest_verify
    assert trip.device_bytes == trip.expected
    assert trip.host_target_bytes == trip.expected
    # The source as QEMU sees it too (the device read exactly these bytes).
    host_source = b"".join(session.read_physical(s.gpa, s.length) for s in trip.source.segments)
    assert host_source == trip.expected


def test_many_segments_go_through_an_indirect_table(session):
    trip = echo_roundtrip(session, size=70_000, seed=7, source_offset=5, target_offset=4000,
                          merge=False, device_offset=0x20000)
    assert len(trip.source.segments) > 13 and trip.write_indirect and trip.read_indirect
    assert trip.ok, (trip.write, trip.read, trip.guest_verify)


def test_guest_detects_a_stale_dma(session):
    """The device writes into the buffer after the READ completed: the guest's
    buffer verified fine at completion, then changes under it."""
    size = 5000
    with session.agent.serve() as agent:
        buffer = GuestBuffer.from_result(agent.command(Step.alloc("victim", size, offset=100)))
        agent.command(Step.memset("victim", 0))
        agent.command(Step.device_fill(0x40000, size, 77))
        done = CompletionRecord.from_result(
            agent.command(Step.read("victim", 0x40000, request_id=STALE_REQUEST_ID)))
        assert done.status is CompletionStatus.OK and done.request_id == STALE_REQUEST_ID
        at_completion = Verification.from_result(agent.command(Step.verify("victim", 77)))
        watched = Verification.from_result(agent.command(Step.watch("victim", 77,
                                                                    timeout_ms=30_000)))
        # While the buffer is still alive: QEMU sees the poison at the reported GPAs.
        poisoned = session.read_physical(buffer.segments[0].gpa, 16)
    injected = [f for f in session.device.fault_plan.injected if f.kind is FaultKind.STALE_DMA]
    assert [f.request_id for f in injected] == [STALE_REQUEST_ID]
    assert at_completion.match, at_completion         # good data at completion time
    assert watched.changed and not watched.match      # then corrupted under the guest
    assert watched.mismatches > 0
    assert poisoned == bytes([STALE_DMA_POISON]) * 16


def test_segment_outside_guest_ram_is_refused(session):
    ram_end = max(gpa + size for gpa, size in session.ram.ram_ranges())
    result = session.agent.command(Step.submit(Opcode.WRITE, 0, [Segment(ram_end + 0x100000, 4096)]))
    done = CompletionRecord.from_result(result)
    assert done.status is CompletionStatus.ERROR
    assert done.reason is ErrorReason.SEGMENT_NOT_IN_RAM
    assert session.agent.info()["header"]["last_error_name"] == "SEGMENT_NOT_IN_RAM"


def test_completion_without_interrupt_is_still_found(session):
    """Interrupts can be lost or merged: the agent reads cq_tail, never counts them."""
    results = session.agent.run(f"nop id={NO_INTERRUPT_ID}", f"nop id={DUPLICATE_ID}", "info")
    lost, duplicated = (CompletionRecord.from_result(r) for r in results[:2])
    assert lost.status is CompletionStatus.OK and lost.request_id == NO_INTERRUPT_ID
    assert duplicated.status is CompletionStatus.OK and duplicated.request_id == DUPLICATE_ID
    assert results[2]["stray_completions"] >= 1      # the duplicate, taken off the ring
    kinds = {(f.kind, f.request_id) for f in session.device.fault_plan.injected}
    assert {(FaultKind.DROP_INTERRUPT, NO_INTERRUPT_ID),
            (FaultKind.DUPLICATE_COMPLETION, DUPLICATE_ID)} <= kinds


def test_pingpong_reports_percentiles(session):
    result = session.agent.pingpong(50, warmup=5)
    assert result["count"] == 50
    assert 0 < result["min_us"] <= result["p50_us"] <= result["p99_us"] <= result["max_us"]


def test_pattern_matches_the_agent(session):
    """The host's copy of the fill pattern is the agent's (xp would otherwise lie)."""
    results = session.agent.run(Step.alloc("p", 600, offset=4000), Step.fill("p", 123456789))
    buffer = GuestBuffer.from_result(results[0])
    got = b"".join(session.read_physical(s.gpa, s.length) for s in buffer.segments)
    assert got == pattern_bytes(123456789, 600)
