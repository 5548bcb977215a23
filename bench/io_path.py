"""Guest I/O benchmark: a guest program's read/write through the framework, against the bare device.

Measured inside a booted guest (pc-256m) by the guest agent: one agent
process issues back-to-back ``pread``/``pwrite`` calls on ``/dev/wdfio0``
(one thread, one request in flight) and times each with
clock_gettime(CLOCK_MONOTONIC) (``latency_us`` of ``io-read``/``io-write``).
Two paths, in the same run, on the same device and the same guest buffers:

- bare device round trip (the reference): the request ring's endpoint
  answering with the echo handler (``device_model/request_echo.py``): no
  framework;
- through the framework: the guest I/O runtime (``orchestrator/guest_io_runtime.py``)
  running the echo sample (``samples/echo.py``, direct I/O) in an IoManager over the
  guest's RAM: runtime thread hop, IRP, WDFREQUEST with an MDL over the caller's
  frames, system-PTE mapping, the driver's callback, completion;
- through a DMA driver: the same runtime running the DMA sample
  (``samples/dma_busmaster.py``) over the real bus-master device (a host-only
  device core on the guest's RAM, ``orchestrator/busmaster_runtime.py``): on top
  of the framework path, a DMA transaction, a descriptor in the common-buffer
  ring, the device thread's DMA into the caller's pages, its interrupt posted
  back to the runtime thread, ISR and DPC.

The paths alternate ``--rounds`` times per figure (the host is shared:
noise hits all). For 4 KiB and 64 KiB reads and writes: requests per second
(one thread, back to back: 1 / mean latency) and p50/p99 latency, each with
its ratio to the bare path, and the runtime thread's CPU time per request
(where the framework's share of the latency goes); ``dma driver p50 ratio``: the
4 KiB read p50 through the DMA driver over the bare p50 (a latency figure, no target).

DMA driver throughput: 64 KiB and 1 MiB reads and writes through the DMA driver,
bytes / mean latency as the guest measured it, against the raw DMA engine's
1 MiB throughput measured in the same run by ``bench/dma.py``'s
``engine_throughput`` (descriptor validation + copy, no guest: READ for reads,
WRITE for writes; the contiguous and the 256-scattered-pages figures are both
printed, the ratio is against the contiguous one), and the bare request ring's
throughput for the same sizes (the guest system call, page pinning and the ring
crossings with no framework and no DMA: the most the guest can see here).
``dma driver ratio: X``, X for
1 MiB reads (target X >= 0.3: printed, never asserted). The last line is
``framework overhead ratio: X``, X the 4 KiB read p50 through the framework over the
bare p50 (target X <= 2.0, printed, not asserted unless ``--check``).

Run: ``python3 bench/io_path.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

MIB = 1 << 20
GUEST_CONFIG = "pc-256m"
SIZES = (4096, 64 << 10)
DMA_SIZES = (64 << 10, MIB)        # the DMA driver's throughput figures
OVERHEAD_TARGET = 2.0
DMA_DRIVER_TARGET = 0.3
WARMUP = 10


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure(agent, op: str, size: int, count: int) -> list[float]:
    """``count`` back-to-back calls of ``op`` (read|write) of ``size`` bytes from one guest
    process (after a warm-up); their latencies in us, as the guest measured them."""
    from orchestrator.agent_client import Step

    call = Step.io_read("b", offset=0) if op == "read" else Step.io_write("b", offset=0)
    steps = [Step.alloc("b", size), Step.fill("b", 1), Step.io_write("b", offset=0)]
    steps += [call] * (WARMUP + count)
    results = agent.run(*steps, timeout=600)
    calls = results[3 + WARMUP:]
    bad = [r for r in calls if r["result"] != size]
    if bad:
        raise RuntimeError(f"{op} of {size} bytes failed: {bad[0]}")
    return [float(r["latency_us"]) for r in calls]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="calls per figure and round")
    parser.add_argument("--rounds", type=int, default=10, help="alternations bare/framework per figure")
    parser.add_argument("--dma-count", type=int, default=10,
                        help="calls per DMA throughput figure and round")
    parser.add_argument("--engine-seconds", type=float, default=0.3,
                        help="time per raw DMA engine figure (bench/dma.py)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)

    from device_model.busmaster import BusMasterDevice
    from device_model.request_echo import EchoIoHandler
    from device_model.request_ring import RequestEndpoint
    from guest_images import build_image
    from orchestrator.busmaster_runtime import BusMasterHardware
    from orchestrator.dma_session import DmaSession
    from orchestrator.guest_io_runtime import GuestIoRuntime
    from framework_emu.low_dma import LowDmaRegion
    from samples.dma_busmaster import DmaBusMasterDriver
    from samples.echo import EchoDriver

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dma import engine_throughput      # the raw engine, measured as bench/dma.py does

    with DmaSession(GUEST_CONFIG, build_image()) as session, BusMasterDevice() as busmaster:
        busmaster.attach_guest_ram(session.ram)
        echo = EchoIoHandler()
        endpoint = RequestEndpoint(session.device, echo.on_request, on_cancel=echo.on_cancel)
        samples: dict[tuple[str, str, int], list[float]] = {}
        reports = []
        cpu: dict[tuple[str, int], list[float]] = {}     # runtime thread CPU per request
        low = session.config.low_dma_window

        def dma_runtime() -> tuple[GuestIoRuntime, BusMasterHardware]:
            """The DMA sample over the bus-master device, started (the platform as DriverSession's)."""
            hardware = BusMasterHardware(busmaster, low_dma=LowDmaRegion(low.base, low.size))
            runtime = GuestIoRuntime(endpoint, session.ram, session.config.pool.window,
                                     [DmaBusMasterDriver()], hardware=hardware.hardware)
            hardware.connect(runtime.post)
            runtime.start()
            return runtime, hardware
        for size in SIZES:
            for op in ("read", "write"):
                for _ in range(args.rounds):
                    samples.setdefault(("bare", op, size), []).extend(
                        measure(session.agent, op, size, args.count))
                    runtime = GuestIoRuntime(endpoint, session.ram, session.config.pool.window,
                                             [EchoDriver(direct_io=True)]).start()
                    try:
                        samples.setdefault(("framework", op, size), []).extend(
                            measure(session.agent, op, size, args.count))
                    finally:
                        reports.append(runtime.close())
                    cpu.setdefault((op, size), []).append(runtime.cpu_seconds / max(1, runtime.served))
                    runtime, hardware = dma_runtime()
                    try:
                        samples.setdefault(("dma", op, size), []).extend(
                            measure(session.agent, op, size, args.count))
                    finally:
                        reports.append(runtime.close())
                        hardware.disconnect()
        throughput: dict[tuple[str, int], list[float]] = {}     # DMA driver: guest-measured latencies
        engine: dict[str, float] = {}                             # raw engine GB/s by figure name
        bare_throughput: dict[tuple[str, int], list[float]] = {}  # the bare ring, same sizes
        for _ in range(args.rounds):
            for size in DMA_SIZES:
                for op in ("read", "write"):
                    bare_throughput.setdefault((op, size), []).extend(
                        measure(session.agent, op, size, args.dma_count))
            runtime, hardware = dma_runtime()
            try:
                for size in DMA_SIZES:
                    for op in ("read", "write"):
                        throughput.setdefault((op, size), []).extend(
                            measure(session.agent, op, size, args.dma_count))
            finally:
                reports.append(runtime.close())
                hardware.disconnect()
            for result in engine_throughput(args.engine_seconds):   # the reference, in between
                engine.setdefault(result.name, [])
                engine[result.name].append(result.value)
        busmaster.detach_guest_ram()
        assert session.device.errors == [], session.device.errors
        assert busmaster.errors == [], busmaster.errors

    print(f"== Guest I/O, measured in the guest ({GUEST_CONFIG}, one thread, "
          f"{args.count * args.rounds} calls per figure)")
    for size in SIZES:
        for op in ("read", "write"):
            bare, fw = samples[("bare", op, size)], samples[("framework", op, size)]
            label = f"{size >> 10} KiB {op}"
            rps, rps_ref = 1e6 / statistics.fmean(fw), 1e6 / statistics.fmean(bare)
            print(f"   {label + ' req/s':<22} {rps:9.0f}       ratio {rps / rps_ref:5.2f} vs bare device "
                  f"{rps_ref:9.0f}")
            for p in (50, 99):
                value, ref = percentile(fw, p), percentile(bare, p)
                print(f"   {label + f' p{p}':<22} {value:9.1f} us    ratio {value / ref:5.2f} vs bare device "
                      f"{ref:9.1f} us")
            print(f"   {label + ' host CPU':<22} {statistics.median(cpu[(op, size)]) * 1e6:9.1f} us    "
                  "per request in the runtime thread (IoManager + driver)")
            dma = samples[("dma", op, size)]
            for p in (50, 99):
                value, ref = percentile(dma, p), percentile(bare, p)
                print(f"   {label + f' DMA p{p}':<22} {value:9.1f} us    ratio {value / ref:5.2f} vs bare device "
                      f"{ref:9.1f} us ({value / percentile(fw, p):4.2f} vs the echo sample)")
    engine_gbps = {name: statistics.median(values) for name, values in engine.items()}
    print(f"== DMA driver throughput, measured in the guest ({GUEST_CONFIG}, one thread, "
          f"{args.dma_count * args.rounds} calls per figure), vs the raw DMA engine (bench/dma.py, same run)")
    dma_ratio_1m = 0.0
    for size in DMA_SIZES:
        for op in ("read", "write"):
            direction = "READ" if op == "read" else "WRITE"
            contiguous = engine_gbps[f"{direction} 1 MiB contiguous"]
            scattered = engine_gbps[f"{direction} 1 MiB as 256 scattered 4 KiB"]
            latencies = throughput[(op, size)]
            gbps = size / statistics.fmean(latencies) / 1e3      # bytes per us -> GB/s
            bare_gbps = size / statistics.fmean(bare_throughput[(op, size)]) / 1e3
            ratio = gbps / contiguous
            if (op, size) == ("read", MIB):
                dma_ratio_1m = ratio
            label = f"{size >> 10} KiB {op}" if size < MIB else f"{size >> 20} MiB {op}"
            print(f"   {label:<14} {gbps * 1e3:8.1f} MB/s (p50 {percentile(latencies, 50):8.1f} us)  ratio "
                  f"{ratio:6.3f} vs raw engine {direction} 1 MiB contiguous {contiguous:6.2f} GB/s "
                  f"({gbps / scattered:6.3f} vs 256 scattered pages {scattered:6.2f} GB/s)")
            print(f"   {label + ' bare':<14} {bare_gbps * 1e3:8.1f} MB/s (p50 "
                  f"{percentile(bare_throughput[(op, size)], 50):8.1f} us)  ratio {bare_gbps / contiguous:6.3f} "
                  "the bare request ring (no framework, no DMA): the guest's own share")
    unclean = [str(r) for r in reports if not r.clean]
    if unclean:
        print("runtime reports: " + "; ".join(unclean))
    ratio = percentile(samples[("framework", "read", 4096)], 50) / percentile(samples[("bare", "read", 4096)], 50)
    dma_ratio = percentile(samples[("dma", "read", 4096)], 50) / percentile(samples[("bare", "read", 4096)], 50)
    print(f"dma driver p50 ratio (4 KiB read vs the bare device): {dma_ratio:.2f}")
    print(f"dma driver ratio: {dma_ratio_1m:.3f}")
    print(f"   target: 1 MiB read through the DMA driver >= {DMA_DRIVER_TARGET:.1f} of the raw engine: "
          f"{'met' if dma_ratio_1m >= DMA_DRIVER_TARGET else 'not met'}")
    print(f"   target: 4 KiB read p50 ratio <= {OVERHEAD_TARGET:.1f}: "
          f"{'met' if ratio <= OVERHEAD_TARGET else 'not met'}")
    print(f"framework overhead ratio: {ratio:.2f}")
    return 1 if (args.check and ratio > OVERHEAD_TARGET) or unclean else 0


if __name__ == "__main__":
    sys.exit(main())
