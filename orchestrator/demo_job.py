"""The default job that ``wdfhil demo`` (``make demo``) runs end to end.

Build the default image, boot the default guest with the echo device, then
run a fixed set of checks that each exercise the whole path (framework ->
guest RAM -> device -> guest's own view -> QEMU's view) and print a report.
The YAML scenario runner will take these over; until then they are the
default scenarios, written as small functions so each reads as a recipe.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Callable, TextIO

from device_model.abi import CompletionStatus, ErrorReason, Opcode, Segment
from device_model.faults import FaultKind, FaultPlan, FaultRule
from framework_emu import IRP_MJ_WRITE, NTSTATUS, Framework, PoolType, format_site
from framework_emu.dma_adapter import mdl_spans
from orchestrator.agent_client import CompletionRecord, Step, Verification, pattern_bytes
from orchestrator.dma_port import DeviceDmaAdapter, device_segments
from orchestrator.dma_session import DmaSession, echo_roundtrip
from wdfhil.physical_memory import PAGE_SIZE

DEFAULT_GUEST = "pc-256m"
STALE_REQUEST_ID = 0x57A1E
STALE_DELAY_US = 500_000


class CheckFailed(AssertionError):
    """A default check saw something other than what it expects."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    seconds: float


def check_device_ready(session: DmaSession, fx: Framework) -> str:
    header = session.agent.info()["header"]
    expect(header["status_name"] == "READY", f"device status {header['status_name']}")
    return f"guest driver bound /dev/wdfhil0, device ABI {header['abi_version']}, status READY"


def check_framework_memory_seen_by_guest(session: DmaSession, fx: Framework) -> str:
    size, seed = 8192, 11
    status, memory, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, size)
    expect(status == NTSTATUS.STATUS_SUCCESS, f"WdfMemoryCreate: {status:#x}")
    try:
        expect(fx.WdfMemoryCopyFromBuffer(memory, 0, pattern_bytes(seed, size), size)
               == NTSTATUS.STATUS_SUCCESS, "WdfMemoryCopyFromBuffer failed")
        gpa = fx.va_to_gpa(va)
        results = session.agent.run(Step.phys("pool", gpa, size), Step.verify("pool", seed))
        verdict = Verification.from_result(results[1])
        expect(verdict.match, f"guest read back something else at {gpa:#x}: {verdict}")
        return (f"WdfMemoryCreate({size}) at guest-physical {gpa:#x} in the pool window; "
                f"the guest read the pattern through /dev/mem")
    finally:
        fx.WdfObjectDelete(memory)


def check_device_dma_into_framework_memory(session: DmaSession, fx: Framework) -> str:
    size, seed, device_offset = 10_000, 23, 0x10000
    status, memory, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 3 * PAGE_SIZE)
    expect(status == NTSTATUS.STATUS_SUCCESS, f"WdfMemoryCreate: {status:#x}")
    mdl = fx.IoAllocateMdl(va + 300, size)
    try:
        fx.MmBuildMdlForNonPagedPool(mdl)
        adapter = DeviceDmaAdapter(session.device)
        sg = adapter.map(mdl_spans(fx.MmGetMdlPfnArray(mdl), fx.MmGetMdlByteOffset(mdl),
                                   fx.MmGetMdlByteCount(mdl)), to_device=False)
        segments = device_segments(sg)
        try:
            results = session.agent.run(Step.device_fill(device_offset, size, seed),
                                        Step.submit(Opcode.READ, device_offset, segments))
        finally:
            adapter.unmap(sg)
        done = CompletionRecord.from_result(results[1])
        expect(done.status is CompletionStatus.OK and done.transferred == size,
               f"device READ completed {done}")
        seen = bytearray(size)
        expect(fx.WdfMemoryCopyToBuffer(memory, 300, seen, size) == NTSTATUS.STATUS_SUCCESS,
               "WdfMemoryCopyToBuffer failed")
        expect(bytes(seen) == pattern_bytes(seed, size), "framework memory differs after DMA")
        return (f"MDL of {size} bytes at byte offset 300 -> {len(fx.MmGetMdlPfnArray(mdl))} PFNs "
                f"-> {len(segments)} segment(s); the device DMAed into them, the framework read it back")
    finally:
        fx.IoFreeMdl(mdl)
        fx.WdfObjectDelete(memory)


def check_echo_roundtrip(session: DmaSession, fx: Framework) -> str:
    trip = echo_roundtrip(session, size=10_000, seed=42, source_offset=777, target_offset=3333,
                          merge=False, device_offset=100)
    expect(trip.ok, f"round trip failed: write {trip.write}, read {trip.read}, "
                    f"guest verify {trip.guest_verify}")
    return (f"unaligned page-crossing buffers ({len(trip.source.segments)} + "
            f"{len(trip.target.segments)} segments): WRITE then READ, verified by the guest "
            f"and through QMP xp")


def check_stale_dma_detected(session: DmaSession, fx: Framework) -> str:
    size = 5000
    with session.agent.serve() as agent:
        agent.command(Step.alloc("victim", size, offset=100))
        agent.command(Step.memset("victim", 0))
        agent.command(Step.device_fill(0x40000, size, 77))
        done = CompletionRecord.from_result(
            agent.command(Step.read("victim", 0x40000, request_id=STALE_REQUEST_ID)))
        at_completion = Verification.from_result(agent.command(Step.verify("victim", 77)))
        watched = Verification.from_result(agent.command(Step.watch("victim", 77,
                                                                    timeout_ms=30_000)))
    expect(done.status is CompletionStatus.OK, f"READ completed {done}")
    expect(at_completion.match, "buffer was wrong already at completion")
    expect(watched.changed and not watched.match, "the stale DMA was not seen by the guest")
    injected = [f for f in session.device.fault_plan.injected if f.kind is FaultKind.STALE_DMA]
    expect(len(injected) == 1, f"injected stale DMAs: {injected}")
    return (f"device wrote the buffer {STALE_DELAY_US // 1000} ms after completing request "
            f"{STALE_REQUEST_ID:#x}; the guest saw {watched.mismatches} bytes change")


def check_hostile_descriptor_refused(session: DmaSession, fx: Framework) -> str:
    ram_end = max(end for _start, end in session.ram.ram_ranges())
    done = CompletionRecord.from_result(session.agent.command(
        Step.submit(Opcode.WRITE, 0, [Segment(ram_end + 0x100000, PAGE_SIZE)])))
    expect(done.status is CompletionStatus.ERROR and done.reason is ErrorReason.SEGMENT_NOT_IN_RAM,
           f"completion {done}")
    return "a segment past the end of guest RAM got an error completion (SEGMENT_NOT_IN_RAM)"


def check_verifier_finds_buffer_after_completion(session: DmaSession, fx: Framework) -> str:
    request = fx.present_request(IRP_MJ_WRITE, input_data=b"payload!", output_length=0)
    status, memory = fx.WdfRequestRetrieveInputMemory(request.handle)
    expect(status == NTSTATUS.STATUS_SUCCESS, f"WdfRequestRetrieveInputMemory: {status:#x}")
    fx.WdfRequestComplete(request.handle, NTSTATUS.STATUS_SUCCESS)
    before = len(fx.findings)
    fx.WdfMemoryCopyToBuffer(memory, 0, bytearray(8), 8)        # the bug under test
    new = [f for f in fx.findings[before:] if f.severity == "error"]
    expect(bool(new), "the verifier did not report the touch after completion")
    return f"{new[0].rule}: reported at {format_site(new[0].site)}"


CHECKS: list[tuple[str, Callable[[DmaSession, Framework], str]]] = [
    ("device bound in the guest", check_device_ready),
    ("framework memory, guest's view", check_framework_memory_seen_by_guest),
    ("device DMA into framework memory", check_device_dma_into_framework_memory),
    ("echo round trip, guest + QMP views", check_echo_roundtrip),
    ("stale DMA reproduced and detected", check_stale_dma_detected),
    ("hostile descriptor refused", check_hostile_descriptor_refused),
    ("verifier: buffer after completion", check_verifier_finds_buffer_after_completion),
]


def run_default_job(image, *, guest: str = DEFAULT_GUEST, out: TextIO) -> list[CheckResult]:
    """Boot ``guest`` with the echo device, run every check, return the results."""
    plan = FaultPlan([FaultRule(FaultKind.STALE_DMA, request_ids=frozenset({STALE_REQUEST_ID}),
                                delay_us=STALE_DELAY_US)])
    results: list[CheckResult] = []
    started = time.monotonic()
    with DmaSession(guest, image, fault_plan=plan) as session:
        print(f"booted {guest} ({session.vm.accelerator}) with the echo device in "
              f"{time.monotonic() - started:.1f} s; pool window "
              f"{session.vm.config.pool.base:#x}+{session.vm.config.pool.size:#x}", file=out, flush=True)
        results += _run_checks(session, out)
    return results


def _run_checks(session: DmaSession, out: TextIO) -> list[CheckResult]:
    """Every check against one framework instance on the guest's pool window.

    The framework lives only inside this call, so no view of guest RAM
    outlives it when the session unmaps guest RAM."""
    fx = Framework(session.ram, service_name="WDFEcho", verifier_mode="record",
                   pool_window=session.vm.config.pool.window)
    results: list[CheckResult] = []
    for name, check in CHECKS:
        begin = time.monotonic()
        try:
            detail, passed = check(session, fx), True
        except CheckFailed as exc:
            detail, passed = str(exc), False
        except Exception as exc:  # a crash in one check must not hide the others
            detail, passed = f"{type(exc).__name__}: {exc}", False
            traceback.print_exc(file=out)
        results.append(CheckResult(name, passed, detail, time.monotonic() - begin))
        print(f"  {'PASS' if passed else 'FAIL'}  {name}", file=out, flush=True)
    leaks = fx.unload_driver()
    print(f"driver unloaded: {leaks}".rstrip(), file=out, flush=True)
    return results


def format_report(results: list[CheckResult], provenance: str = "") -> str:
    """The verdict table; ``provenance`` (the image's kernel and package versions)
    heads it, so a report says what the guest was built from."""
    width = max(len(r.name) for r in results)
    lines = ["", "wdfhil report", "=" * 13, *([provenance] if provenance else [])]
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.name:<{width}}  {r.seconds:6.2f} s  {r.detail}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return "\n".join(lines)
