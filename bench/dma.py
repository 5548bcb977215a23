"""DMA benchmark: the device's DMA engine as a ratio to memcpy, and doorbell round trips.

Every figure is printed next to a reference measured in the same run on the
same machine, so the ratios mean something on a loaded CI host:

- engine: descriptor validation + copy between a shared, mmap'ed RAM file in
  /dev/shm (as a VM's RAM file is) and the device's memfd BAR2, against one
  plain memcpy (memoryview slice assignment) of the same byte count between
  the same two mappings. Targets: 1 MiB contiguous >= 0.8, 1 MiB as 256
  scattered 4 KiB pages >= 0.3.
- host round trip: doorbell -> device thread -> completion interrupt, driven
  in-process through the real ivshmem protocol, against a bare eventfd
  ping-pong between two threads.
- guest round trip: doorbell -> completion interrupt measured inside a booted
  guest by the guest agent (``guest_round_trip``), against the same eventfd
  ping-pong; its target (p50 under 150 us under TCG) is printed, not asserted.

Run: ``python3 bench/dma.py`` (``--check`` exits 1 when a target is missed).
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import select
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from device_model.abi import (
    BAR2_SIZE, DATA_OFFSET, Descriptor, DescriptorFlag, Opcode, Segment, pack_segment,
)
from device_model.descriptors import DescriptorValidator, RamWindows, TransferPlan
from device_model.device import EchoDevice
from device_model.dma_engine import DmaEngine
from wdfhil.guest_ram import GuestRam, RamLayout
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from device_model.ivshmem_server import create_shared_memory

MIB = 1 << 20
PAGE = 4096
RAM_SIZE = 64 * MIB
TABLE_GPA = 0                   # the indirect table lives in the first page of "guest RAM"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    reference: float
    reference_name: str
    target: float | None = None    # minimum ratio (value/reference for throughput)
    paired_ratio: float | None = None   # measured pairwise; else value/reference
    nbytes: int | None = None           # bytes per operation (throughput lines)

    @property
    def ratio(self) -> float:
        if self.paired_ratio is not None:
            return self.paired_ratio
        return self.value / self.reference if self.reference else 0.0

    def line(self) -> str:
        verdict = ""
        if self.target is not None:
            verdict = f"  target >= {self.target:.2f}: {'ok' if self.ratio >= self.target else 'MISSED'}"
        per_op = f" ({self.nbytes / self.value / 1000:7.1f} us/op)" if self.nbytes else ""
        return (f"{self.name:<40} {self.value:7.2f} {self.unit:<4}{per_op} "
                f"ratio {self.ratio:5.2f} vs {self.reference_name} {self.reference:.2f} {self.unit}{verdict}")


BATCH_SECONDS = 0.005


def _batch_size(fn: Callable[[], object]) -> int:
    """Calls per batch so that a batch takes about BATCH_SECONDS."""
    fn()
    per_batch = 1
    while True:
        t = time.perf_counter()
        for _ in range(per_batch):
            fn()
        if time.perf_counter() - t > BATCH_SECONDS:
            return per_batch
        per_batch *= 2


def _time_batch(call: Callable[[], object], count: int) -> float:
    """CPU time per call of this thread: time spent descheduled (this host is
    shared with other busy processes) does not count, cache and memory stalls do."""
    t = time.thread_time_ns()
    for _ in range(count):
        call()
    return (time.thread_time_ns() - t) / count


def compare_rates(fn: Callable[[], object], reference: Callable[[], object], nbytes: int,
                  seconds: float) -> tuple[float, float, float]:
    """(GB/s of ``fn``, GB/s of ``reference``, ratio). Short batches of the two run
    back to back, so each pair sees the same machine load; the ratio is the
    median of the pairs' ratios, the rates come from the median times."""
    n_fn, n_ref = _batch_size(fn), _batch_size(reference)
    times: list[float] = []
    ref_times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        times.append(_time_batch(fn, n_fn))
        ref_times.append(_time_batch(reference, n_ref))
    ratio = statistics.median(r / t for r, t in zip(ref_times, times))
    return nbytes / statistics.median(times), nbytes / statistics.median(ref_times), ratio


class EngineRig:
    """A RAM file in /dev/shm mapped as GuestRam, the device's memfd BAR2, the engine."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="wdfhil-bench-ram-", dir="/dev/shm")
        try:
            os.ftruncate(fd, RAM_SIZE)
            self.ram = GuestRam.open(name, RamLayout.single(RAM_SIZE))
        finally:
            os.close(fd)
            os.unlink(name)                         # the mapping stays; nothing is left behind
        self.ram.view(0, RAM_SIZE)[:] = b"\x5a" * RAM_SIZE          # touch every page once
        self.shm_fd = create_shared_memory("wdfhil-bench-bar2", BAR2_SIZE)
        self.bar2 = mmap.mmap(self.shm_fd, BAR2_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.bar2_view = memoryview(self.bar2)
        self.data = self.bar2_view[DATA_OFFSET:DATA_OFFSET + 2 * MIB]
        self.data[:] = b"\xa5" * len(self.data)
        self.windows = RamWindows(self.ram)
        self.validator = DescriptorValidator(self.windows)
        # As EchoDevice builds it: with the memfd, so the vectored paths are measured.
        self.engine = DmaEngine(self.bar2_view[DATA_OFFSET:], fd=self.shm_fd, fd_offset=DATA_OFFSET)

    def descriptor(self, opcode: Opcode, segments: list[Segment]) -> bytes:
        length = sum(s.length for s in segments)
        if len(segments) <= 13:
            return Descriptor(opcode, 0, len(segments), 1, 0, length).pack(segments)
        self.ram.write(TABLE_GPA, b"".join(pack_segment(s) for s in segments))
        return Descriptor(opcode, DescriptorFlag.INDIRECT, len(segments), 1, 0, length,
                          TABLE_GPA).pack()

    def transfer(self, raw: bytes, checksum: bool = False) -> Callable[[], object]:
        validate, execute = self.validator.validate, self.engine.execute

        def run() -> object:
            plan = validate(raw)
            assert isinstance(plan, TransferPlan), plan
            return execute(plan, checksum=checksum)
        return run

    def memcpy(self, nbytes: int, to_device: bool) -> Callable[[], object]:
        whole = self.windows.windows[0][2]
        src, dst = (whole[MIB:MIB + nbytes], self.data[:nbytes]) if to_device else \
            (self.data[:nbytes], whole[MIB:MIB + nbytes])

        def run() -> None:
            dst[:] = src
        return run

    def close(self) -> None:
        self.windows.release()
        self.data.release()
        self.engine.data.release()
        self.engine.close()
        self.bar2_view.release()
        self.bar2.close()
        os.close(self.shm_fd)
        self.ram.close()


def engine_throughput(seconds: float) -> list[Result]:
    rig = EngineRig()
    try:
        rng = random.Random(1)
        pages = rng.sample(range(1, RAM_SIZE // PAGE), 256)        # no two adjacent: no coalescing
        pages = [p for p in pages if p + 1 not in pages and p - 1 not in pages][:256]
        while len(pages) < 256:
            p = rng.randrange(1, RAM_SIZE // PAGE)
            if all(abs(p - q) > 1 for q in pages):
                pages.append(p)
        contiguous = [Segment(MIB, MIB)]
        scattered = [Segment(p * PAGE, PAGE) for p in pages]
        small = [Segment(2 * MIB + PAGE, PAGE)]
        results = []
        for direction, opcode, to_device in (("WRITE", Opcode.WRITE, True), ("READ", Opcode.READ, False)):
            cases = [
                (f"{direction} 1 MiB contiguous", contiguous, MIB, False, 0.8),
                (f"{direction} 1 MiB as 256 scattered 4 KiB", scattered, MIB, False, 0.3),
                (f"{direction} 4 KiB", small, PAGE, False, None),
                (f"{direction} 1 MiB contiguous + trace CRC-32", contiguous, MIB, True, None),
                # Since the core/personality split the trace no longer switches page
                # plans off: the scattered list keeps the numpy copy, plus the CRC.
                (f"{direction} 256 scattered 4 KiB + trace CRC-32", scattered, MIB, True, None),
            ]
            for name, segments, nbytes, checksum, target in cases:
                rate, reference, ratio = compare_rates(
                    rig.transfer(rig.descriptor(opcode, segments), checksum=checksum),
                    rig.memcpy(nbytes, to_device), nbytes, seconds)
                ref_name = "memcpy 1 MiB" if nbytes == MIB else "memcpy 4 KiB"
                results.append(Result(name, rate, "GB/s", reference, ref_name, target, ratio, nbytes))
        return results
    finally:
        rig.close()


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def eventfd_ping_pong(count: int) -> list[float]:
    """Round trips (us) of a bare eventfd ping-pong between two Python threads."""
    ping, pong = os.eventfd(0), os.eventfd(0)
    stop = False

    def echo() -> None:
        while True:
            select.select([ping], [], [])
            os.eventfd_read(ping)
            if stop:
                return
            os.eventfd_write(pong, 1)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    samples = []
    try:
        for _ in range(count):
            t = time.perf_counter_ns()
            os.eventfd_write(ping, 1)
            select.select([pong], [], [])
            os.eventfd_read(pong)
            samples.append((time.perf_counter_ns() - t) / 1000)
    finally:
        stop = True
        os.eventfd_write(ping, 1)
        thread.join()
        os.close(ping)
        os.close(pong)
    return samples


def host_round_trip(count: int) -> list[Result]:
    """NOP doorbell -> completion interrupt through the real device thread and protocol."""
    with EchoDevice() as device, IvshmemClient.connect(device.socket_path) as client:
        driver = HostDriver(client)
        try:
            nop = Descriptor(Opcode.NOP, 0, 0, 0, 0, 0)
            # The device refuses work until it has guest RAM; a NOP needs none, but
            # give it some so the measured path is the normal one.
            memory_rig = EngineRig()
            device.attach_guest_ram(memory_rig.ram)
            try:
                for _ in range(200):
                    driver.request(nop)
                samples = []
                for _ in range(count):
                    t = time.perf_counter_ns()
                    driver.request(nop)
                    samples.append((time.perf_counter_ns() - t) / 1000)
            finally:
                device.detach_guest_ram()
                memory_rig.close()
        finally:
            driver.close()
    reference = eventfd_ping_pong(count)
    return [
        Result("host doorbell->completion p50", percentile(samples, 50), "us",
               percentile(reference, 50), "eventfd ping-pong p50"),
        Result("host doorbell->completion p99", percentile(samples, 99), "us",
               percentile(reference, 99), "eventfd ping-pong p99"),
    ]


# ----------------------------------------------------------------------------------
# GUEST-SIDE SECTION (the guest side's part): doorbell -> completion interrupt round
# trip measured inside a booted pc-256m guest (TCG) by the guest agent itself
# (``wdfhil-agent pingpong``: NOP descriptors, clock_gettime(CLOCK_MONOTONIC) around
# the doorbell write to /dev/wdfhil0 and the blocking wait for the MSI-X interrupt).
# Reference in the same run: the bare eventfd ping-pong between two host threads.
# The p50 target (under 150 us under TCG) is printed, never asserted.
# Returns None when no guest can run here (no QEMU, no image).
# ----------------------------------------------------------------------------------
GUEST_CONFIG = "pc-256m"
GUEST_P50_TARGET_US = 150.0
GUEST_MAX_ROUND_TRIPS = 5000


def guest_round_trip(args: argparse.Namespace) -> list[Result] | None:
    from guest_images import build_image
    from orchestrator.dma_session import DmaSession
    from wdfhil.errors import ImageBuildError, LaunchError

    count = min(args.round_trips, GUEST_MAX_ROUND_TRIPS)
    try:
        with DmaSession(GUEST_CONFIG, build_image()) as session:
            measured = session.agent.pingpong(count, warmup=100, timeout=600)
    except (ImageBuildError, LaunchError, FileNotFoundError) as exc:
        print(f"   (no guest here: {str(exc).splitlines()[0]})")
        return None
    reference = eventfd_ping_pong(count)
    p50 = measured["p50_us"]
    verdict = "met" if p50 < GUEST_P50_TARGET_US else "not met"
    print(f"   {count} round trips in {GUEST_CONFIG}; target p50 under "
          f"{GUEST_P50_TARGET_US:.0f} us under TCG: {verdict} (printed, not asserted)")
    return [
        Result(f"guest doorbell->interrupt p50 ({GUEST_CONFIG})", p50, "us",
               percentile(reference, 50), "eventfd ping-pong p50"),
        Result(f"guest doorbell->interrupt p99 ({GUEST_CONFIG})", measured["p99_us"], "us",
               percentile(reference, 99), "eventfd ping-pong p99"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time spent per throughput figure")
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--no-guest", action="store_true", help="skip the guest section")
    args = parser.parse_args(argv)

    sections: list[tuple[str, Callable[[], list[Result] | None]]] = [
        ("DMA engine (guest RAM file in /dev/shm <-> device BAR2 memfd)",
         lambda: engine_throughput(args.seconds)),
        ("Doorbell round trip, host driver in-process", lambda: host_round_trip(args.round_trips)),
    ]
    if not args.no_guest:
        sections.append(("Doorbell round trip, measured in the guest", lambda: guest_round_trip(args)))
    missed = []
    for title, run in sections:
        print(f"== {title}")
        results = run()
        if results is None:
            print("   (not measured here)")
            continue
        for r in results:
            print("   " + r.line())
            if r.target is not None and r.ratio < r.target:
                missed.append(r.name)
    if missed:
        print("targets missed: " + ", ".join(missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
