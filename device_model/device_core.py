"""The device core: everything a wdfhil device is, apart from what its DMA means.

An ivshmem-doorbell server with BAR2 (header, request and completion rings,
data memory), doorbells handed to a :class:`~device_model.personality.Personality`,
MSI-X interrupts, a validated DMA engine offered as a service (plan a
descriptor or a segment list, perform a plan), faults that can be armed and
disarmed while the device runs, the DMA trace and statistics.

One background thread owns everything the guest can reach (BAR2, the rings,
guest RAM): it blocks on the device's eventfds (the guest's doorbells) and the
server socket, handles a doorbell the moment it arrives, and never sleeps or
polls, because the doorbell-to-interrupt round trip is a figure users care
about. Every personality hook runs in that thread under the device lock.

Lifecycle: construct and :meth:`DeviceCore.start` before QEMU (QEMU needs the
server listening), let the VM layer attach :attr:`socket_path`
(``orchestrator.hotplug``), and :meth:`attach_guest_ram` once the VM runs
(guest RAM exists only then); doorbells before that are refused with status
NO_GUEST_RAM. :meth:`close` (or the context manager) stops the thread and
releases every fd, mapping and file, also when something failed half-way.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import mmap
import os
import selectors
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from device_model.abi import (
    BAR2_SIZE, DATA_OFFSET, NUM_VECTORS, RING_ENTRIES, RING_ERROR_REQUEST_ID, VECTOR_ADMIN,
    VECTOR_COMPLETION, VECTOR_SUBMIT, AdminCommand, Completion, CompletionStatus,
    DeviceStatus, ErrorReason, Opcode,
)
from device_model.personality import Personality
from device_model.descriptors import (
    FULL_DMA_MASK, DescriptorValidator, RamWindows, Refusal, TransferPlan,
)
from device_model.device_memory import DeviceMemory, features_for
from device_model.dma_engine import DmaEngine, TransferResult
from device_model.faults import STALE_DMA_POISON, FaultKind, FaultPlan, FaultRule
from device_model.ivshmem_server import (
    DEVICE_PEER_ID, IvshmemServer, create_shared_memory, drain_eventfd, new_eventfd,
)
from device_model.trace import DEFAULT_MAX_BYTES, DmaTrace, RateLimit
from wdfhil.physical_memory import PhysicalMemory
from wdfhil.errors import ConfigError, DeviceProtocolError
from wdfhil.private_dirs import make_private_dir, remove_tree

log = logging.getLogger(__name__)

SOCKET_NAME = "ivshmem.sock"
DRIVER_POLL_S = 0.001   # wait_for_driver: a look at our own mapping, not the guest


@dataclass
class DeviceStats:
    """Counters for tests and reports (written by the device thread only)."""

    doorbells: int = 0
    admin_doorbells: int = 0
    executed: int = 0
    refused: int = 0
    completions: int = 0
    interrupts: int = 0
    bytes_to_device: int = 0
    bytes_to_guest: int = 0
    page_plans: int = 0             # transfers copied as page plans (numpy rows)
    refusals_not_traced: int = 0    # refused records the rate limit kept out of the trace


@dataclass(slots=True)
class _Outgoing:
    completion: Completion
    interrupt: bool = True
    after_post: Callable[[], None] | None = None


class _Timers:
    """Deadlines for delayed completions and stale DMA, run by the device loop."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def add(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), action))

    def timeout(self) -> float | None:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def due(self) -> list[Callable[[], None]]:
        now, out = time.monotonic(), []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def clear(self) -> None:
        self._heap.clear()


# Refused descriptors a guest can produce as fast as it can ring: their trace records
# are limited to this many per second (bursts up to REFUSED_BURST); every refusal
# still completes and is counted, only the host-side record is limited.
REFUSED_PER_SECOND = 200
REFUSED_BURST = 1000


@dataclass(slots=True)
class DmaOutcome:
    """What :meth:`DeviceCore.perform` did: the status to report, the bytes moved,
    the faults decided for the request (the completion step applies the rest)."""

    status: CompletionStatus
    transferred: int
    faults: Mapping[FaultKind, FaultRule]
    result: TransferResult | None = None
    fault_plan: FaultPlan | None = None     # the plan that decided (records go there)


class DeviceCore:
    """The wdfhil PCI device without a personality: serves BAR2 to QEMU, raises
    interrupts and does validated DMA into guest RAM for its personality.

    ``personality``: what the device does with requests. ``run_dir``: a
    private (0700) folder for the server socket; None makes one and removes it
    on close. ``dma_mask``: the highest address the device can reach
    (``(1 << 32) - 1`` for a 32-bit device). ``segment_align``: required
    alignment of every segment's gpa and length. ``fault_plan``: faults to
    inject (also :meth:`arm_faults` later). ``trace_path``: where to write the
    DMA trace (JSON lines), or None; ``trace_max_bytes`` caps it.
    """

    def __init__(self, personality: Personality, run_dir: str | os.PathLike[str] | None = None, *,
                 dma_mask: int = FULL_DMA_MASK, segment_align: int = 1,
                 fault_plan: FaultPlan | None = None,
                 trace_path: str | os.PathLike[str] | None = None,
                 trace_max_bytes: int = DEFAULT_MAX_BYTES,
                 socket_name: str = SOCKET_NAME) -> None:
        if not 0 < dma_mask <= FULL_DMA_MASK or dma_mask & (dma_mask + 1):
            raise ConfigError("dma_mask must be 2**n - 1 (e.g. 0xffffffff)", field="dma_mask",
                              value=dma_mask)
        if segment_align < 1 or segment_align & (segment_align - 1) or segment_align > 1 << 20:
            raise ConfigError("segment_align must be a power of two up to 1 MiB",
                              field="segment_align", value=segment_align)
        self.personality = personality
        self.dma_mask = dma_mask
        self.segment_align = segment_align
        self.fault_plan = fault_plan or FaultPlan()
        self.stats = DeviceStats()
        self.errors: list[str] = []          # internal failures; a correct device has none
        self.refused_records = RateLimit(REFUSED_PER_SECOND, REFUSED_BURST)
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_fd = -1
        self._selector: selectors.BaseSelector | None = None
        self._ram: RamWindows | None = None
        self._validator: DescriptorValidator | None = None
        # For segments an IOMMU translated (plan_segments(translated=True)): the DMA mask
        # and alignment were checked on the bus addresses; RAM is checked here.
        self._translated_validator: DescriptorValidator | None = None
        # Work handed to the device thread (defer): (action, hold the lock).
        self._deferred: collections.deque[tuple[Callable[[], None], bool]] = collections.deque()
        self._ram_generation = 0
        self._generation = 0                 # bumps on every ring reset: stale timers see it
        self._sequence = 0
        self._admin_done = 0
        self._guest_peer = 0
        # The device's own status: BAR2 only mirrors it (a guest writing READY over
        # FAILED changes nothing until a RESET).
        self._status = DeviceStatus.NO_GUEST_RAM
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._timers = _Timers()
        self._peer_event = threading.Condition(self._lock)
        self.trace: DmaTrace | None = None
        # Endpoints beside the personality (the guest I/O request ring): duck-typed
        # ``features``, ``doorbell(vector)``, ``reset()``, ``guest_ram_changed(attached)``,
        # ``close()``.
        self._extensions: list = []
        # Everything acquired is released by close(), last acquired first.
        self._resources = contextlib.ExitStack()
        try:
            if run_dir is None:
                self.run_dir = make_private_dir("wdfhil-dev-")
                self._resources.callback(remove_tree, self.run_dir)
            else:
                self.run_dir = Path(run_dir)
                if not self.run_dir.is_dir():
                    raise ConfigError("not a folder", field="run_dir", value=str(run_dir))
                if self.run_dir.stat().st_mode & 0o077:
                    raise ConfigError("must be private to this user (mode 0700): it holds the "
                                      "device socket", field="run_dir", value=str(run_dir))
            self.socket_path = self.run_dir / socket_name
            shm_fd = create_shared_memory("wdfhil-bar2", BAR2_SIZE)
            self._resources.callback(os.close, shm_fd)
            bar2 = mmap.mmap(shm_fd, BAR2_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._resources.callback(bar2.close)
            self._bar2 = bar2
            bar2_view = memoryview(bar2)
            self._resources.callback(bar2_view.release)
            self.memory = DeviceMemory(bar2_view)
            self._resources.callback(self.memory.close)
            self.engine = DmaEngine(self.memory.data, fd=shm_fd, fd_offset=DATA_OFFSET)
            self._resources.callback(self.engine.close)
            self._write_header(DeviceStatus.NO_GUEST_RAM)
            self.server = IvshmemServer(self.socket_path, shm_fd, vectors=NUM_VECTORS,
                                        on_peer_connected=self._on_peer_connected,
                                        on_peer_left=self._on_peer_left)
            self._resources.callback(self.server.close)
            if trace_path is not None:
                self.trace = DmaTrace(trace_path, max_bytes=trace_max_bytes)
                self._resources.callback(self.trace.close)
                self._resources.callback(self._note_suppressed_refusals)
            personality.bind(self)
        except BaseException:
            self._resources.close()
            raise

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> "DeviceCore":
        """Listen on the socket and start the device thread (before QEMU starts)."""
        if self._thread is not None:
            return self
        try:
            self.server.listen()
            self._wake_fd = new_eventfd()
            self._resources.callback(os.close, self._wake_fd)
            self._selector = selectors.DefaultSelector()
            self._resources.callback(self._selector.close)
            self._selector.register(self._wake_fd, selectors.EVENT_READ, self._on_wake)
            self._selector.register(self.server.own_eventfds[VECTOR_SUBMIT], selectors.EVENT_READ,
                                    self._on_submit_doorbell)
            self._selector.register(self.server.own_eventfds[VECTOR_ADMIN], selectors.EVENT_READ,
                                    self._on_admin_doorbell)
            for vector in range(NUM_VECTORS):
                if vector not in (VECTOR_SUBMIT, VECTOR_ADMIN):
                    self._selector.register(self.server.own_eventfds[vector], selectors.EVENT_READ,
                                            lambda v=vector: self._on_extension_doorbell(v))
            self.server.register(self._selector)
            self._thread = threading.Thread(target=self._run, name="wdfhil-device", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the thread; close sockets, eventfds, BAR2, the trace; remove our files."""
        self._stopping = True
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                log.error("device thread did not stop within 30 s")
            self._thread = None
        with self._lock:
            for extension in self._extensions:
                extension.close()     # before BAR2 and guest RAM go
            self._release_ram()
            self._outbox.clear()
            self._timers.clear()
            self._deferred.clear()
        self._wake_fd = -1
        self._selector = None
        self._resources.close()

    def __enter__(self) -> "DeviceCore":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- guest RAM --------------------------------------------------------------------
    def attach_guest_ram(self, memory: PhysicalMemory) -> None:
        """Give the device the guest RAM to DMA into (GuestRam of the running VM)."""
        windows = RamWindows(memory)
        with self._lock:
            self._release_ram()
            self._ram = windows
            # Page plans always: faults and the trace act on what a plan copied.
            self._validator = DescriptorValidator(
                windows, dma_mask=self.dma_mask, segment_align=self.segment_align)
            self._translated_validator = DescriptorValidator(windows)
            self._ram_generation += 1
            if self._status == DeviceStatus.NO_GUEST_RAM:
                self._set_status(DeviceStatus.READY)
            self.personality.guest_ram_changed(True)
            for extension in self._extensions:
                extension.guest_ram_changed(True)
        self._event("guest_ram_attached", ranges=[list(r) for r in memory.ram_ranges()])

    def detach_guest_ram(self) -> None:
        """Stop using guest RAM (before the VM or its GuestRam goes away).

        Pending timers may hold views of guest RAM (a scheduled stale DMA):
        they are dropped with it."""
        with self._lock:
            self._timers.clear()
            self._release_ram()
            self._set_status(DeviceStatus.NO_GUEST_RAM)
            self.personality.guest_ram_changed(False)
            for extension in self._extensions:
                extension.guest_ram_changed(False)
        self._event("guest_ram_detached")

    def _release_ram(self) -> None:
        self._validator = None
        self._translated_validator = None
        if self._ram is not None:
            self._ram.release()
            self._ram = None
            self._ram_generation += 1

    # ---- extensions (the request ring) ---------------------------------------------------
    def attach_extension(self, extension: object) -> None:
        """Add an endpoint with a doorbell of its own (``device_model.request_ring``).
        It is reset with the rings and told of guest RAM, and its feature bits join
        the header's."""
        with self._lock:
            self._extensions.append(extension)
            self._set_features()

    @property
    def lock(self) -> threading.RLock:
        """The device lock, for extensions that post completions from other threads."""
        return self._lock

    @property
    def ram_windows(self) -> RamWindows | None:
        """Guest RAM as attached (None before attach or after detach); under the lock."""
        return self._ram

    def _on_extension_doorbell(self, vector: int) -> None:
        drain_eventfd(self.server.own_eventfds[vector])
        for extension in self._extensions:
            extension.doorbell(vector)

    # ---- faults -----------------------------------------------------------------------
    def arm_faults(self, plan: FaultPlan) -> None:
        """Inject ``plan``'s faults from the next request on (the device may be running).

        Takes the device lock, so it lands between two requests, never inside one.
        Faults already decided (a delayed completion, a scheduled stale DMA) still
        happen; the header's FAULT_INJECTION bit follows."""
        with self._lock:
            self.fault_plan = plan
            self._set_features()
        self._event("faults_armed", rules=len(plan.rules), seed=plan.seed)

    def disarm_faults(self) -> FaultPlan:
        """Inject no more faults from the next request on; the plan that was armed
        (its ``injected`` record stays readable)."""
        with self._lock:
            plan, self.fault_plan = self.fault_plan, FaultPlan()
            self._set_features()
        self._event("faults_disarmed")
        return plan

    # ---- observation -----------------------------------------------------------------
    @property
    def peers(self) -> list[int]:
        """Peer ids of the connected ivshmem clients (QEMU devices)."""
        return self.server.peer_ids

    def wait_for_peer(self, timeout: float = 30.0, *, other_than: int | None = None) -> int:
        """Block until a client is connected (not ``other_than``); its peer id."""
        def connected() -> list[int]:
            return [p for p in self.server.peer_ids if p != other_than]
        self._wait_peers(connected, timeout, f"no ivshmem client connected to {self.socket_path}")
        return connected()[-1]

    def wait_for_no_peer(self, peer_id: int, timeout: float = 30.0) -> None:
        """Block until client ``peer_id`` has left."""
        self._wait_peers(lambda: peer_id not in self.server.peer_ids, timeout,
                         f"ivshmem client {peer_id} still connected")

    def wait_for_driver(self, timeout: float = 30.0) -> int:
        """Block until the guest driver bound this device (its probe wrote
        ``driver_minor``); N of its /dev/wdfhilN. A look at our own mapping of BAR2
        every millisecond, nothing asked of the guest. The probe does not ring: a
        re-plugged device must not see a doorbell before the host checked QEMU's fds
        (orchestrator.qemu_fds)."""
        deadline = time.monotonic() + timeout
        while not (minor := self.memory.header.get("driver_minor")):
            if time.monotonic() > deadline:
                raise DeviceProtocolError(
                    f"the guest driver did not bind the device within {timeout:g} s "
                    "(driver_minor still 0: hot-plug not seen? probe refused?)")
            time.sleep(DRIVER_POLL_S)
        return minor - 1

    def _wait_peers(self, condition: Callable[[], object], timeout: float, failure: str) -> None:
        with self._peer_event:
            if not self._peer_event.wait_for(condition, timeout):
                raise DeviceProtocolError(f"{failure} after {timeout:.0f} s")

    def header(self) -> dict[str, int]:
        """A snapshot of the BAR2 header fields."""
        return self.memory.header.snapshot()

    @property
    def status(self) -> DeviceStatus:
        """The device's own status (BAR2's ``status`` mirrors it; a guest may scribble there)."""
        return self._status

    def stats_snapshot(self) -> DeviceStats:
        """A consistent copy of the counters: taken under the device lock, so a
        doorbell counted in it has also been fully handled."""
        with self._lock:
            return dataclasses.replace(self.stats)

    def read_data(self, offset: int, length: int) -> bytes:
        """Bytes of the device's data memory."""
        if offset < 0 or length < 0 or offset + length > len(self.memory.data):
            raise ConfigError("outside the device data memory", field="offset", value=offset)
        return bytes(self.memory.data[offset:offset + length])

    # ---- the DMA service (for personalities; device thread, under the lock) -------------
    def plan_descriptor(self, raw: bytes) -> TransferPlan | Refusal:
        """Validate a private copy of an SQE: a plan, or why not (DEVICE_NOT_READY
        without guest RAM)."""
        validator = self._validator
        if validator is None:
            return Refusal(int.from_bytes(raw[8:16], "little"), ErrorReason.DEVICE_NOT_READY,
                           "guest_ram", 0, "no guest RAM attached to the device yet")
        return validator.validate(raw)

    def plan_segments(self, opcode: Opcode, request_id: int, device_offset: int,
                      segments: Sequence[tuple[int, int]],
                      where: str = "segments[{}]", *,
                      translated: bool = False) -> TransferPlan | Refusal:
        """Validate a (gpa, length) list that did not come in an SQE (a personality's
        descriptor ring) with the same checks, tiers and refusals.

        ``translated``: the gpas are what a DMA remapping table made of bus
        addresses whose DMA mask and alignment the personality already checked:
        those two checks are left out (the device drives the bus address, not
        the physical one); every other check stays."""
        validator = self._translated_validator if translated else self._validator
        if validator is None:
            return Refusal(request_id, ErrorReason.DEVICE_NOT_READY, "guest_ram", 0,
                           "no guest RAM attached to the device yet")
        return validator.validate_segments(opcode, request_id, device_offset, segments, where)

    def guest_range(self, gpa: int, length: int, *, request_id: int, field: str,
                    translated: bool = False) -> memoryview | Refusal:
        """A view of guest RAM ``[gpa, gpa + length)`` for a personality's own
        structures (a descriptor ring, a segment table, a completion record),
        checked as a data segment is: no wrap past 2^64 (SEGMENT_NOT_IN_RAM), end
        under the DMA mask unless ``translated`` (SEGMENT_ABOVE_DMA_MASK), wholly
        inside one RAM range (SEGMENT_NOT_IN_RAM); DEVICE_NOT_READY without guest
        RAM. A refusal names ``field``. Copy out of the view before looking at it
        (the guest may change it)."""
        ram = self._ram
        if ram is None:
            return Refusal(request_id, ErrorReason.DEVICE_NOT_READY, "guest_ram", 0,
                           "no guest RAM attached to the device yet")
        end = gpa + length
        if gpa < 0 or length <= 0 or end > FULL_DMA_MASK + 1:
            return Refusal(request_id, ErrorReason.SEGMENT_NOT_IN_RAM, field, gpa,
                           f"{length} bytes wrap around the 64-bit address space")
        if not translated and end - 1 > self.dma_mask:
            return Refusal(request_id, ErrorReason.SEGMENT_ABOVE_DMA_MASK, field, gpa,
                           f"{length} bytes end above the DMA mask {self.dma_mask:#x}")
        w = ram.find(gpa, end)
        if w < 0:
            return Refusal(request_id, ErrorReason.SEGMENT_NOT_IN_RAM, field, gpa,
                           f"[{gpa:#x}, {end:#x}) is not wholly inside one guest RAM range")
        start, _stop, view = ram.windows[w]
        return view[gpa - start:end - start]

    def perform(self, plan: TransferPlan) -> DmaOutcome:
        """Execute a validated plan: decide the request's faults, copy (the same copy
        path with or without faults and trace), apply the data faults to the result,
        count and trace it. The completion faults are applied by :meth:`complete`."""
        self.stats.executed += 1
        armed = self.fault_plan
        faults = armed.decide(plan.request_id, plan.opcode) if armed.active else {}
        if plan.opcode is Opcode.NOP:
            return DmaOutcome(CompletionStatus.OK, 0, faults, None, armed)
        status = CompletionStatus.OK
        limit = flip = None
        if FaultKind.SHORT_TRANSFER in faults:
            limit = int(plan.length * faults[FaultKind.SHORT_TRANSFER].fraction)
            status = CompletionStatus.SHORT
        if FaultKind.BIT_FLIP in faults:
            flip = armed.random_below(plan.length * 8)
        trace = self.trace
        result = self.engine.execute(plan, limit=limit, flip_bit=flip, checksum=trace is not None)
        transferred = result.transferred
        if plan.page_rows is not None:
            self.stats.page_plans += 1
        if plan.opcode is Opcode.WRITE:
            self.stats.bytes_to_device += transferred
        else:
            self.stats.bytes_to_guest += transferred
        if limit is not None:
            self._record(armed, FaultKind.SHORT_TRANSFER, plan, asked=plan.length,
                         transferred=transferred)
        if result.flipped_bit is not None:
            self._record(armed, FaultKind.BIT_FLIP, plan, bit=result.flipped_bit,
                         direction=result.direction)
        if trace is not None:
            fault = ",".join(k.value for k in faults if k in (FaultKind.SHORT_TRANSFER,
                                                              FaultKind.BIT_FLIP))
            trace.dma(request_id=plan.request_id, opcode=plan.opcode.name,
                      direction=result.direction, ranges=result.ranges,
                      device_offset=plan.device_offset, length=transferred,
                      crc32=result.crc32 or 0, fault=fault or None)
        return DmaOutcome(status, transferred, faults, result, armed)

    def refuse(self, refusal: Refusal) -> None:
        """Count and trace a refused request and complete it with ERROR/reason."""
        self.record_refusal(refusal)
        self._outbox.append(_Outgoing(Completion(refusal.request_id, CompletionStatus.ERROR,
                                                 refusal.reason, 0, 0)))

    def record_refusal(self, refusal: Refusal) -> None:
        """Count a refusal, set ``last_error``, trace it (rate-limited: a guest makes
        refusals as fast as it rings)."""
        self.stats.refused += 1
        self.memory.header.set("last_error", refusal.reason)
        if self.trace is None:
            return
        if not self.refused_records.allow():
            self.stats.refusals_not_traced += 1
            return
        self._note_suppressed_refusals()
        self.trace.write({"type": "refused", "request_id": refusal.request_id,
                          "reason": refusal.reason.name, "field": refusal.field,
                          "value": refusal.value, "message": refusal.message})

    def _note_suppressed_refusals(self) -> None:
        count = self.refused_records.take_suppressed()
        if count and self.trace is not None:
            self.trace.write({"type": "refused_suppressed", "count": count,
                              "per_second": self.refused_records.per_second})

    def complete(self, request_id: int, outcome: DmaOutcome, plan: TransferPlan | None = None) -> None:
        """Post the completion of a performed request to the CQ, applying its
        completion faults (dropped interrupt, duplicate, delay, stale DMA after it)."""
        faults = outcome.faults
        completion = Completion(request_id, outcome.status, ErrorReason.NONE,
                                outcome.transferred, 0)
        if not faults:                      # the common case: one completion, one interrupt
            self._outbox.append(_Outgoing(completion))
            return
        source = outcome.fault_plan or self.fault_plan
        interrupt = FaultKind.DROP_INTERRUPT not in faults
        if not interrupt and plan is not None:
            self._record(source, FaultKind.DROP_INTERRUPT, plan)
        after_post = None
        if FaultKind.STALE_DMA in faults and plan is not None:
            after_post = self._stale_dma_later(source, plan, faults[FaultKind.STALE_DMA].delay_us)
        outgoing = [_Outgoing(completion, interrupt, after_post)]
        if FaultKind.DUPLICATE_COMPLETION in faults:
            if plan is not None:
                self._record(source, FaultKind.DUPLICATE_COMPLETION, plan)
            outgoing.append(_Outgoing(completion, interrupt))
        if FaultKind.DELAY_COMPLETION in faults:
            delay_us = faults[FaultKind.DELAY_COMPLETION].delay_us
            if plan is not None:
                self._record(source, FaultKind.DELAY_COMPLETION, plan, delay_us=delay_us)
            self._deliver_later(outgoing, delay_us)
        else:
            self._outbox.extend(outgoing)

    def deliver_completion(self, outcome: DmaOutcome, plan: TransferPlan,
                           post: Callable[[bool], None]) -> None:
        """For a personality that reports completions itself (not in the CQ): apply
        the request's completion faults around its ``post(interrupt)``, as
        :meth:`complete` does around a CQ entry. ``post`` writes the completion and
        owes an interrupt if ``interrupt``: called once now; with DUPLICATE_COMPLETION
        twice; with DELAY_COMPLETION ``delay_us`` later from a timer (a core reset
        or a guest RAM detach drops it; the personality checks its own resets);
        DROP_INTERRUPT makes ``interrupt`` False; STALE_DMA poisons the plan's
        buffers ``delay_us`` after the first post."""
        faults = outcome.faults
        if not faults:
            post(True)
            return
        source = outcome.fault_plan or self.fault_plan
        interrupt = FaultKind.DROP_INTERRUPT not in faults
        if not interrupt:
            self._record(source, FaultKind.DROP_INTERRUPT, plan)
        stale = None
        if FaultKind.STALE_DMA in faults:
            stale = self._stale_dma_later(source, plan, faults[FaultKind.STALE_DMA].delay_us)
        duplicate = FaultKind.DUPLICATE_COMPLETION in faults
        if duplicate:
            self._record(source, FaultKind.DUPLICATE_COMPLETION, plan)

        def deliver() -> None:
            post(interrupt)
            if stale is not None:
                stale()
            if duplicate:
                post(interrupt)

        if FaultKind.DELAY_COMPLETION in faults:
            delay_us = faults[FaultKind.DELAY_COMPLETION].delay_us
            self._record(source, FaultKind.DELAY_COMPLETION, plan, delay_us=delay_us)
            generation = self._generation

            def deliver_if_current() -> None:
                if generation == self._generation:   # a reset in between drops it
                    deliver()
            self._timers.add(delay_us / 1e6, deliver_if_current)
        else:
            deliver()

    def report_internal_error(self, text: str) -> None:
        """A personality's own bug: logged, traced and kept in :attr:`errors`."""
        self._internal_error(text)

    # ---- registers and deferred work (for personalities a driver programs) ----------
    def register_read(self, offset: int, width: int) -> int:
        """The driver reads a register (READ_REGISTER_*): the personality's
        ``register_read`` under the device lock, in the caller's thread."""
        with self._lock:
            return self.personality.register_read(offset, width)

    def register_write(self, offset: int, width: int, value: int) -> None:
        """The driver writes a register (WRITE_REGISTER_*): the personality's
        ``register_write`` under the device lock, in the caller's thread. Work it
        starts (a doorbell) runs later in the device thread (:meth:`defer`)."""
        with self._lock:
            self.personality.register_write(offset, width, value)

    def defer(self, action: Callable[[], None], *, locked: bool = True) -> None:
        """Run ``action`` soon in the device thread, after what was deferred before
        it; under the device lock unless ``locked`` is False (e.g. calling a driver's
        interrupt routine, which may read registers from other threads). Any
        thread may call it; the device must be started."""
        if self._thread is None or self._stopping:
            raise DeviceProtocolError("the device is not running: start() it first")
        self._deferred.append((action, locked))
        self._wake()

    def drain(self, timeout: float = 10.0) -> None:
        """Block until the device thread has no deferred work left, including work
        that deferred work deferred (a doorbell's pass, then its interrupt call);
        timers (a delayed completion) are not waited for. Not from the device thread."""
        if threading.current_thread() is self._thread:
            raise DeviceProtocolError("drain() from the device thread would wait for itself")
        deadline = time.monotonic() + timeout
        while True:
            done = threading.Event()
            left: list[int] = []

            def barrier() -> None:       # in the device thread: nothing else is running
                left.append(len(self._deferred))
                done.set()
            self.defer(barrier, locked=False)
            if not done.wait(max(0.0, deadline - time.monotonic())):
                raise DeviceProtocolError(f"the device thread did not get through its work "
                                          f"in {timeout:.0f} s")
            if not left[0]:              # everything before the barrier ran, nothing it queued
                return

    def raise_interrupt(self, vector: int = VECTOR_COMPLETION) -> None:
        """MSI-X ``vector`` (VECTOR_COMPLETION) to every connected guest."""
        self.stats.interrupts += 1
        self.server.interrupt_all(vector)
        if self.trace is not None:      # reports put interrupts on the timeline
            self.trace.write({"type": "interrupt", "vector": vector})

    def serve_request_ring(self) -> None:
        """One pass over the submission ring, reading the guest's sq_tail once; each
        new SQE (a private copy) goes to the personality's ``submit``."""
        posted = self._flush_outbox()
        if self._status == DeviceStatus.FAILED:
            self.memory.header.set("status", DeviceStatus.FAILED)   # undo a guest's scribble
            if posted:
                self.raise_interrupt()
            return
        head, count = self.memory.sq.pending()
        if count > RING_ENTRIES:
            self._ring_failure(head, count)
            return
        submit = self.personality.submit
        for _ in range(count):
            if self._outbox or self.memory.cq.free_slots() == 0:
                break   # CQ full: resume at the next doorbell after the guest consumed
            raw = self.memory.sq.copy_descriptor(head)
            head += 1
            self.memory.sq.consume(head)
            try:
                submit(raw)
            except Exception:   # a device bug: report it, complete the request, carry on
                self._internal_error(traceback.format_exc())
                self.refuse(Refusal(int.from_bytes(raw[8:16], "little"), ErrorReason.INTERNAL,
                                    "descriptor", 0, "device error while executing the descriptor"))
            posted |= self._flush_outbox()
        if posted:
            self.raise_interrupt()

    # ---- the device thread -----------------------------------------------------------
    def _wake(self) -> None:
        if self._wake_fd >= 0:
            os.eventfd_write(self._wake_fd, 1)

    def _run(self) -> None:
        assert self._selector is not None
        while not self._stopping:
            try:
                events = self._selector.select(self._timers.timeout())
            except OSError as exc:
                self._internal_error(f"select failed: {exc}")
                return
            for key, _mask in events:
                if self._stopping:
                    break
                self._guarded(key.data)
            for action in self._timers.due():
                self._guarded(action)
            # What was deferred until now; what that defers waits for the next turn
            # (its defer() wrote the wake eventfd), so doorbells are never starved.
            for _ in range(len(self._deferred)):
                if self._stopping:
                    break
                action, locked = self._deferred.popleft()
                if locked:
                    self._guarded(action)
                else:
                    self._unlocked(action)
            # A finished timer's closure holds views of guest RAM (a stale DMA's
            # buffers): drop it now, or GuestRam cannot be unmapped at teardown.
            action = None
            if self.trace is not None:
                self.trace.flush()

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            with self._lock:
                action()
        except Exception:   # the device must survive its own bugs; they are reported
            self._internal_error(traceback.format_exc())

    def _unlocked(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:
            self._internal_error(traceback.format_exc())

    def _internal_error(self, text: str) -> None:
        log.error("wdfhil device internal error: %s", text)
        self.errors.append(text)
        self._event("internal_error", detail=text[-2000:])

    def _event(self, name: str, **detail: object) -> None:
        if self.trace is not None:
            self.trace.write({"type": "event", "event": name, **detail})

    def _on_wake(self) -> None:
        drain_eventfd(self._wake_fd)

    def _on_peer_connected(self, peer_id: int) -> None:
        self._guest_peer = peer_id
        self._reset()
        self.memory.header.set("driver_minor", 0)   # a new PCI function: no driver yet
        self._event("peer_connected", peer=peer_id)
        self._peer_event.notify_all()

    def _on_peer_left(self, peer_id: int) -> None:
        self._event("peer_left", peer=peer_id)
        self._peer_event.notify_all()

    # ---- header and reset -------------------------------------------------------------
    def _features(self) -> int:
        bits = features_for(dma_mask_enforced=self.dma_mask != FULL_DMA_MASK,
                            faults=self.fault_plan.active) | self.personality.features
        for extension in self._extensions:
            bits |= extension.features
        return bits

    def _set_features(self) -> None:
        self.memory.header.set("features", self._features())

    def _set_status(self, status: DeviceStatus) -> None:
        self._status = status
        self.memory.header.set("status", status)

    def _write_header(self, status: DeviceStatus) -> None:
        """The whole header page from the device's own values (magic last): at start
        and on every reset, so a guest that scribbled over it gets it back."""
        self._status = status
        self.memory.initialize(features=self._features(), dma_mask=self.dma_mask,
                               segment_align=self.segment_align, device_peer=DEVICE_PEER_ID,
                               status=status, guest_peer=self._guest_peer,
                               admin_done=self._admin_done)

    def _reset(self) -> None:
        """A new guest or admin RESET: drop queued work, rewrite the header page,
        zero the rings, tell the personality."""
        self._generation += 1
        self._outbox.clear()
        self._timers.clear()
        self._sequence = 0
        driver_minor = self.memory.header.get("driver_minor")   # the guest's binding stays
        self._write_header(DeviceStatus.RESETTING)
        self.memory.header.set("driver_minor", driver_minor)
        self.memory.reset_rings()
        self.personality.reset()
        for extension in self._extensions:
            extension.reset()
        self._set_status(DeviceStatus.READY if self._ram is not None else DeviceStatus.NO_GUEST_RAM)

    def reset_for_next_user(self, fault_plan: FaultPlan | None = None) -> None:
        """Make the device as a new one for the next scenario on a kept guest (a warm
        reset): what an admin RESET does (queued work dropped, header rewritten,
        rings zeroed, personality and extensions reset), and also the data memory
        zeroed, counters and errors cleared and ``fault_plan`` (or none) in place.
        Called from the host with no guest I/O in flight; the guest driver follows
        the zeroed ring indices (nothing in flight)."""
        with self._lock:
            self.fault_plan = fault_plan or FaultPlan()   # before the header's features
            self._reset()
            try:   # a hole in the shared memory: zeros for QEMU and us, no page touched
                self._bar2.madvise(mmap.MADV_REMOVE, DATA_OFFSET, len(self.memory.data))
            except OSError:
                self.memory.data[:] = bytes(len(self.memory.data))
            self.stats = DeviceStats()
            self.errors.clear()

    def _on_admin_doorbell(self) -> None:
        drain_eventfd(self.server.own_eventfds[VECTOR_ADMIN])
        self.stats.admin_doorbells += 1
        h = self.memory.header
        command = h.get("admin_cmd")
        if command == AdminCommand.NONE:
            return
        if command == AdminCommand.RESET:
            self._reset()
            self._event("reset")
        else:
            h.set("last_error", ErrorReason.BAD_OPCODE)
            self._event("bad_admin_command", command=command)
        h.set("admin_cmd", AdminCommand.NONE)
        self._admin_done = (self._admin_done + 1) & 0xFFFFFFFF
        h.set("admin_done", self._admin_done)
        self.raise_interrupt()

    def _on_submit_doorbell(self) -> None:
        drain_eventfd(self.server.own_eventfds[VECTOR_SUBMIT])
        self.stats.doorbells += 1
        self.personality.doorbell(VECTOR_SUBMIT)

    def _ring_failure(self, head: int, count: int) -> None:
        self._set_status(DeviceStatus.FAILED)
        self.memory.header.set("last_error", ErrorReason.RING_INDEX)
        self.stats.refused += 1
        if self.trace is not None:
            self.trace.write({"type": "refused", "request_id": RING_ERROR_REQUEST_ID,
                              "reason": ErrorReason.RING_INDEX.name, "field": "sq_tail",
                              "value": (head + count) & 0xFFFFFFFF,
                              "message": f"sq_tail is {count} entries ahead of sq_head {head}"})
        self._outbox.append(_Outgoing(Completion(RING_ERROR_REQUEST_ID, CompletionStatus.ERROR,
                                                 ErrorReason.RING_INDEX, 0, 0)))
        if self._flush_outbox():
            self.raise_interrupt()

    # ---- completion faults -----------------------------------------------------------
    def _deliver_later(self, outgoing: list[_Outgoing], delay_us: int) -> None:
        generation = self._generation

        def deliver() -> None:
            if generation == self._generation:   # a reset in between drops it
                self._outbox.extend(outgoing)
                if self._flush_outbox():
                    self.raise_interrupt()
        self._timers.add(delay_us / 1e6, deliver)

    def _stale_dma_later(self, source: FaultPlan, plan: TransferPlan,
                         delay_us: int) -> Callable[[], None]:
        """After the completion is posted: schedule a write into the request's buffers."""
        generation, ram_generation = self._generation, self._ram_generation

        def write_stale() -> None:
            if ram_generation != self._ram_generation:
                return   # guest RAM went away: the windows are released, nothing to touch
            touched = self.engine.fill_guest(plan, STALE_DMA_POISON)
            self._record(source, FaultKind.STALE_DMA, plan, ranges=[list(r) for r in touched],
                         byte=STALE_DMA_POISON, same_guest=generation == self._generation)
            if self.trace is not None:
                self.trace.dma(request_id=plan.request_id, opcode=plan.opcode.name,
                               direction="to_guest", ranges=touched,
                               device_offset=plan.device_offset,
                               length=sum(n for _g, n in touched), crc32=0,
                               fault=FaultKind.STALE_DMA.value)

        return lambda: self._timers.add(delay_us / 1e6, write_stale)

    def _record(self, source: FaultPlan, kind: FaultKind, plan: TransferPlan,
                **detail: object) -> None:
        fault = source.record(kind, plan.request_id, plan.opcode, **detail)
        if self.trace is not None:
            self.trace.write(fault.to_json())

    # ---- completions and interrupts --------------------------------------------------
    def _flush_outbox(self) -> bool:
        """Post what fits in the CQ; True if an interrupt is owed for something posted."""
        owed = False
        cq = self.memory.cq
        while self._outbox and cq.free_slots() > 0:
            out = self._outbox.popleft()
            self._sequence += 1
            c = out.completion
            posted = Completion(c.request_id, c.status, c.reason, c.transferred, self._sequence)
            cq.post(posted)
            self.stats.completions += 1
            if self.trace is not None:
                self.trace.write({"type": "completion", "request_id": c.request_id,
                                  "status": CompletionStatus(c.status).name,
                                  "reason": ErrorReason(c.reason).name,
                                  "transferred": c.transferred, "sequence": self._sequence})
            owed |= out.interrupt
            if out.after_post is not None:
                out.after_post()
        return owed
