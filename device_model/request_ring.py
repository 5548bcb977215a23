"""The host's end of the request ring: guest I/O in, :class:`GuestIoRequest` objects out.

A program in the guest opens ``/dev/wdfioN`` and reads, writes and issues
IOCTLs; the guest module turns each call into a request entry (pinned pages
or a system buffer in guest kernel memory) in the request ring of BAR2 and
rings VECTOR_REQUEST. :class:`RequestEndpoint` runs in the device thread: it
copies each entry, validates it (:mod:`device_model.request_descriptors`,
then its own state: request ids in flight, open files), and hands a
:class:`GuestIoRequest` to the ``on_request`` callback, which is what the
runtime wires to the emulated framework (a WDFREQUEST with an MDL over
``request.pfns``). ``request.complete(status, information)`` posts the
completion (NTSTATUS, information) and raises MSI-X VECTOR_IO_COMPLETION, from
any thread, exactly once.

A CANCEL entry from the guest (a signal, a killed program) calls
``on_cancel(request)``; the request still completes exactly once, when the
handler completes it (typically with STATUS_CANCELLED). The guest module keeps
the request's pages pinned and its buffers allocated until then, so a late
completion cannot touch memory the guest reused.

A refused entry completes at once with the NTSTATUS of its reason
(``abi.ntstatus_for``) and the reason code; CANCEL entries never complete.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from device_model.abi import (
    IO_MAX_IN_FLIGHT, IO_MAX_OPEN_FILES, RCQ_OFFSET, RCQE_FORMAT, RCQE_SIZE, RING_ENTRIES,
    RING_ERROR_REQUEST_ID, RQ_OFFSET, RQE_SIZE, VECTOR_IO_COMPLETION, VECTOR_REQUEST,
    ErrorReason, Feature, IoMajor, IoType, RequestCompletion, TransferMethod, ntstatus_for,
)
from device_model.descriptors import FULL_DMA_MASK, RamWindows, Refusal
from device_model.request_descriptors import PageRun, RequestPlan, RequestValidator
from wdfhil.errors import ConfigError, DeviceProtocolError

if TYPE_CHECKING:
    from device_model.device_core import DeviceCore

log = logging.getLogger(__name__)

U32 = 0xFFFFFFFF
STATUS_SUCCESS = 0
_RCQE = struct.Struct(RCQE_FORMAT)


class RequestStateError(DeviceProtocolError):
    """A host-side misuse of a request: completed twice, buffers used after completion."""


@dataclass
class IoStats:
    """Counters of the request ring (written under the device lock)."""

    doorbells: int = 0        # VECTOR_REQUEST doorbells handled
    entries: int = 0          # entries taken from the ring
    accepted: int = 0         # requests handed to on_request
    refused: int = 0
    completed: int = 0        # completions posted for accepted requests
    cancels: int = 0          # CANCEL entries naming a request in flight
    cancels_unknown: int = 0  # CANCEL entries naming nothing in flight (late: already completed)
    abandoned: int = 0        # in flight when the guest went away (reset, RAM detached)
    interrupts: int = 0


@dataclass(eq=False)
class GuestIoRequest:
    """One validated guest request, as the framework side needs it.

    ``system_gpa``/``system_length``: the system buffer (buffered I/O; the
    input buffer of direct and neither IOCTLs). ``pfns``/``page_offset``/
    ``page_length``: the caller's pinned pages (an MDL's PFN array, ByteOffset,
    ByteCount); ``runs`` the same as (pfn, offset, length) per page.
    ``method``: the IOCTL's transfer method (None for READ/WRITE/CREATE/...).
    The data helpers touch guest RAM only within the validated buffers, and
    only until the request completes.
    """

    plan: RequestPlan
    endpoint: "RequestEndpoint" = field(repr=False)
    generation: int = field(repr=False)
    cancel_requested: bool = False
    completed: bool = False
    abandoned: bool = False          # the guest went away (reset, detach): completion is dropped
    status: int | None = None
    information: int = 0
    context: object = None           # the runtime's own (e.g. the WDFREQUEST)

    # ---- the entry's fields -----------------------------------------------------------
    @property
    def request_id(self) -> int:
        return self.plan.request_id

    @property
    def file_id(self) -> int:
        return self.plan.file_id

    @property
    def major(self) -> IoMajor:
        return self.plan.major

    @property
    def ioctl_code(self) -> int:
        return self.plan.ioctl_code

    @property
    def method(self) -> TransferMethod | None:
        return self.plan.method

    @property
    def input_length(self) -> int:
        return self.plan.input_length

    @property
    def output_length(self) -> int:
        return self.plan.output_length

    @property
    def file_offset(self) -> int:
        return self.plan.file_offset

    @property
    def system_gpa(self) -> int:
        return self.plan.system_gpa

    @property
    def system_length(self) -> int:
        return self.plan.system_length

    @property
    def pfns(self) -> tuple[int, ...]:
        return self.plan.pfns

    @property
    def page_offset(self) -> int:
        return self.plan.page_offset

    @property
    def page_length(self) -> int:
        return self.plan.page_length

    @property
    def runs(self) -> list[PageRun]:
        return self.plan.runs

    @property
    def user_input(self) -> int:
        return self.plan.user_input

    @property
    def user_address(self) -> int:
        """The caller's virtual address of the page list (what MmGetMdlVirtualAddress
        shows; 0 if the guest did not say)."""
        return self.plan.user_address

    # ---- completion -------------------------------------------------------------------
    def complete(self, status: int, information: int = 0) -> None:
        """Post the completion (NTSTATUS ``status`` as a u32, ``information``),
        raise the interrupt; any thread, exactly once (RequestStateError after)."""
        self.endpoint.complete(self, status, information)

    # ---- data (the echo handler and tests; the framework uses its own memory view) ------
    def read_system(self, offset: int = 0, length: int | None = None) -> bytes:
        return self.endpoint._read(self, "system", offset, length)

    def write_system(self, data: bytes, offset: int = 0) -> None:
        self.endpoint._write(self, "system", offset, data)

    def read_pages(self, offset: int = 0, length: int | None = None) -> bytes:
        return self.endpoint._read(self, "pages", offset, length)

    def write_pages(self, data: bytes, offset: int = 0) -> None:
        """Write into the caller's pages. Refused for WRITE and METHOD_IN_DIRECT, whose
        pages the guest pinned for reading only."""
        if self.major == IoMajor.WRITE or self.method == TransferMethod.IN_DIRECT:
            raise RequestStateError(f"request {self.request_id:#x}: the pages of a "
                                    f"{self.major.name} {self.method and self.method.name} "
                                    "request are read-only")
        self.endpoint._write(self, "pages", offset, data)

    def input_bytes(self) -> bytes:
        """The caller's input: a WRITE's buffer, an IOCTL's input buffer."""
        if self.major == IoMajor.WRITE:
            return (self.read_system(0, self.input_length) if self.system_length
                    else self.read_pages(0, self.input_length))
        if self.major in (IoMajor.DEVICE_CONTROL, IoMajor.INTERNAL_DEVICE_CONTROL):
            return self.read_system(0, self.input_length)
        return b""

    def write_output(self, data: bytes) -> int:
        """Put ``data`` (cut to the output length) in the caller's output buffer; bytes written."""
        data = data[:self.output_length]
        if self.major == IoMajor.READ:
            if self.system_length:
                self.write_system(data)
            else:
                self.write_pages(data)
        elif self.method == TransferMethod.BUFFERED:
            self.write_system(data)
        else:
            self.write_pages(data)
        return len(data)


RequestCallback = Callable[[GuestIoRequest], None]


class RequestEndpoint:
    """The request ring of a :class:`~device_model.device_core.DeviceCore`.

    ``on_request(request)``: every accepted request (CREATE, CLOSE, CLEANUP,
    READ, WRITE, DEVICE_CONTROL, INTERNAL_DEVICE_CONTROL), called in the device
    thread under the device lock: it must not block; it completes the request
    now or keeps it and completes it later from any thread. ``on_cancel(request)``:
    the guest asked to cancel a request in flight (also called for each request
    in flight when the guest goes away, with ``request.abandoned`` set).
    ``io_type``: how READ/WRITE buffers travel (WdfDeviceIoBuffered/Direct).
    ``address_limit``: highest guest-physical address a buffer may reach.
    """

    features = int(Feature.REQUEST_RING)

    def __init__(self, core: "DeviceCore", on_request: RequestCallback, *,
                 on_cancel: RequestCallback | None = None, io_type: IoType = IoType.DIRECT,
                 address_limit: int = FULL_DMA_MASK) -> None:
        self.core = core
        self.on_request = on_request
        self.on_cancel = on_cancel
        self.io_type = IoType(io_type)
        self.address_limit = address_limit
        self.stats = IoStats()
        self._in_flight: dict[int, GuestIoRequest] = {}
        self._files: set[int] = set()
        self._outbox: collections.deque[RequestCompletion] = collections.deque()
        self._head = 0          # consumer index of the RQ (the device's own copy)
        self._tail = 0          # producer index of the RCQ
        self._posted = 0
        self._sequence = 0
        self._generation = 0
        self._failed = False    # rq_tail ran away: ignore the ring until reset
        self._serving = False
        self._closed = False
        self._ram: RamWindows | None = None
        self._validator: RequestValidator | None = None
        self._changed = threading.Condition(core.lock)
        # BAR2 through the core's own view, by offset: a slice of it kept here would
        # hold an export of the mapping past the core's close.
        self._bar2 = core.memory.bar2
        with core.lock:
            if core.memory.header.get("features") & Feature.REQUEST_RING:
                raise ConfigError("this device already has a request endpoint",
                                  field="core", value=0)
            core.attach_extension(self)
            self._write_header()
            if core.ram_windows is not None:
                self.guest_ram_changed(True)

    # ---- observation ------------------------------------------------------------------
    @property
    def in_flight(self) -> list[GuestIoRequest]:
        with self.core.lock:
            return list(self._in_flight.values())

    @property
    def open_files(self) -> set[int]:
        with self.core.lock:
            return set(self._files)

    def set_handler(self, on_request: RequestCallback,
                    on_cancel: RequestCallback | None = None) -> None:
        """Hand the next requests to other callbacks (requests in flight keep going:
        their completion does not depend on who has them)."""
        with self.core.lock:
            self.on_request, self.on_cancel = on_request, on_cancel

    def set_io_type(self, io_type: IoType) -> None:
        """How READ/WRITE buffers travel from the next request on (the driver's
        WdfDeviceInitSetIoType); the guest module reads it per request."""
        with self.core.lock:
            self.io_type = IoType(io_type)
            self._write_header()
            if self._validator is not None:
                self._validator.io_type = self.io_type

    def wait_for(self, predicate: Callable[[], object], timeout: float = 60.0,
                 what: str = "condition") -> None:
        """Block until ``predicate()`` (evaluated under the device lock after each
        change of the endpoint's state) holds; DeviceProtocolError after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise DeviceProtocolError(f"request ring: {what} not reached within "
                                          f"{timeout:.0f} s ({self.stats})")

    # ---- hooks the core calls (device thread, under the lock) -------------------------------
    def doorbell(self, vector: int) -> None:
        if vector == VECTOR_REQUEST and not self._closed:
            self.stats.doorbells += 1
            self._serve()

    def reset(self) -> None:
        """The rings were reset (a new guest, admin RESET): every request in flight
        belongs to a guest that is gone."""
        self._abandon_all()
        self._files.clear()
        self._outbox.clear()
        self._head = self._tail = self._posted = self._sequence = 0
        self._failed = False
        self._generation += 1
        self._write_header()
        self._changed.notify_all()

    def close(self) -> None:
        """The device is closing (BAR2 and guest RAM go next): requests in flight are
        abandoned; completing one later posts nothing."""
        self._abandon_all()
        self._release_ram()
        self._closed = True
        self._generation += 1
        self._changed.notify_all()

    def guest_ram_changed(self, attached: bool) -> None:
        self._abandon_all()
        self._release_ram()
        ram = self.core.ram_windows
        if attached and ram is not None:
            self._ram = ram
            self._validator = RequestValidator(ram, io_type=self.io_type,
                                               address_limit=self.address_limit)
        self._changed.notify_all()

    # ---- completion -------------------------------------------------------------------
    def complete(self, request: GuestIoRequest, status: int, information: int = 0) -> None:
        if not 0 <= status <= U32 or not 0 <= information < 1 << 64:
            raise ValueError(f"status {status:#x} must be a u32, information a u64")
        with self.core.lock:
            if request.completed:
                raise RequestStateError(f"request {request.request_id:#x} completed twice")
            request.completed = True
            request.status, request.information = status, information
            if request.abandoned or request.generation != self._generation or self._closed:
                self._changed.notify_all()
                return      # its guest (or the device) is gone: nobody to tell
            self._trace("io_completion", request, status=status, information=information)
            del self._in_flight[request.request_id]
            if request.major == IoMajor.CREATE and status >= 0x80000000:
                self._files.discard(request.file_id)
            self.stats.completed += 1
            self._outbox.append(RequestCompletion(request.request_id, status, 0, information, 0))
            if not self._serving:
                if self._flush():
                    self._interrupt()
                self._serve()     # entries left waiting for room in the RCQ
            self._changed.notify_all()

    # ---- the ring ---------------------------------------------------------------------
    def _write_header(self) -> None:
        self.core.memory.header.set("io_type", self.io_type)

    def _serve(self) -> None:
        """One pass over the request ring, reading the guest's rq_tail once."""
        if self._serving:
            return
        self._serving = True
        try:
            posted = self._flush()
            header = self.core.memory.header
            count = (header.get("rq_tail") - self._head) & U32
            if self._failed:
                count = 0
            elif count > RING_ENTRIES:
                self._ring_failure(count)
                posted = True
                count = 0
            for _ in range(count):
                if self._outbox or self._free_slots() == 0:
                    break   # RCQ full: resume at the next doorbell (or completion)
                offset = RQ_OFFSET + (self._head % RING_ENTRIES) * RQE_SIZE
                raw = bytes(self._bar2[offset:offset + RQE_SIZE])
                self._head = (self._head + 1) & U32
                header.set("rq_head", self._head)
                self.stats.entries += 1
                accepted = self.stats.accepted
                try:
                    self._take(raw)
                except Exception:   # a bug of ours or of the handler: report, complete, go on
                    text = traceback.format_exc()
                    log.error("request ring: internal error: %s", text)
                    self.core.errors.append(text)
                    rid = int.from_bytes(raw[:8], "little")
                    request = self._in_flight.get(rid) if self.stats.accepted > accepted else None
                    if request is not None:     # accepted, not completed: complete it now
                        request.completed = True
                        del self._in_flight[rid]
                    if request is not None or self.stats.accepted == accepted:
                        self._refuse(Refusal(rid, ErrorReason.INTERNAL, "entry", 0,
                                             "device error while handling the request"))
                posted |= self._flush()
            if posted:
                self._interrupt()
        finally:
            self._serving = False
            self._changed.notify_all()

    def _take(self, raw: bytes) -> None:
        validator = self._validator
        rid = int.from_bytes(raw[:8], "little")
        if validator is None:
            self._refuse(Refusal(rid, ErrorReason.DEVICE_NOT_READY, "guest_ram", 0,
                                 "no guest RAM attached to the device yet"))
            return
        plan = validator.validate(raw)
        if isinstance(plan, Refusal):
            if int.from_bytes(raw[16:18], "little") == IoMajor.CANCEL:
                self.core.record_refusal(plan)   # CANCEL never completes, refused or not
                self.stats.refused += 1
            else:
                self._refuse(plan)
            return
        if plan.major == IoMajor.CANCEL:
            self._cancel(plan)
            return
        refusal = self._check_state(plan)
        if refusal is not None:
            self._refuse(refusal)
            return
        request = GuestIoRequest(plan, self, self._generation)
        self._in_flight[plan.request_id] = request
        if plan.major == IoMajor.CREATE:
            self._files.add(plan.file_id)
        elif plan.major == IoMajor.CLOSE:
            self._files.discard(plan.file_id)
        self.stats.accepted += 1
        self._trace("io_request", request)
        self.on_request(request)

    def _trace(self, kind: str, request: GuestIoRequest, **detail: object) -> None:
        trace = self.core.trace
        if trace is None:
            return
        plan = request.plan
        record: dict[str, object] = {"type": kind, "request_id": plan.request_id,
                                     "file_id": plan.file_id, "major": plan.major.name}
        if kind == "io_request":
            record.update(ioctl_code=plan.ioctl_code, input_length=plan.input_length,
                          output_length=plan.output_length, file_offset=plan.file_offset,
                          system=[plan.system_gpa, plan.system_length],
                          pages=[plan.page_offset, plan.page_length, len(plan.pfns)])
        record.update(detail)
        trace.write(record)

    def _check_state(self, plan: RequestPlan) -> Refusal | None:
        rid = plan.request_id
        if rid in self._in_flight or rid == RING_ERROR_REQUEST_ID:
            return Refusal(rid, ErrorReason.DUPLICATE_REQUEST, "request_id", rid,
                           "a request with this id is in flight")
        if plan.major == IoMajor.CREATE:
            if plan.file_id == 0 or plan.file_id in self._files:
                return Refusal(rid, ErrorReason.BAD_FILE, "file_id", plan.file_id,
                               "CREATE needs a file id that is not 0 and not open")
            if len(self._files) >= IO_MAX_OPEN_FILES:
                return Refusal(rid, ErrorReason.TOO_MANY_REQUESTS, "file_id", plan.file_id,
                               f"{IO_MAX_OPEN_FILES} files are open")
        elif plan.file_id not in self._files:
            return Refusal(rid, ErrorReason.BAD_FILE, "file_id", plan.file_id, "no such open file")
        if len(self._in_flight) >= IO_MAX_IN_FLIGHT:
            return Refusal(rid, ErrorReason.TOO_MANY_REQUESTS, "request_id", rid,
                           f"{IO_MAX_IN_FLIGHT} requests are in flight")
        return None

    def _cancel(self, plan: RequestPlan) -> None:
        target = self._in_flight.get(plan.target_id)
        if target is None or target.file_id != plan.file_id:
            self.stats.cancels_unknown += 1     # completed meanwhile (a normal race)
            return
        self.stats.cancels += 1
        if not target.cancel_requested:
            target.cancel_requested = True
            if self.on_cancel is not None:
                self.on_cancel(target)

    def _refuse(self, refusal: Refusal) -> None:
        self.core.record_refusal(refusal)
        self.stats.refused += 1
        self._outbox.append(RequestCompletion(refusal.request_id, ntstatus_for(refusal.reason),
                                              int(refusal.reason), 0, 0))

    def _ring_failure(self, count: int) -> None:
        self._failed = True
        self.core.record_refusal(Refusal(RING_ERROR_REQUEST_ID, ErrorReason.RING_INDEX, "rq_tail",
                                         (self._head + count) & U32,
                                         f"rq_tail is {count} entries ahead of rq_head"))
        self.stats.refused += 1
        self._outbox.append(RequestCompletion(RING_ERROR_REQUEST_ID,
                                              ntstatus_for(ErrorReason.RING_INDEX),
                                              int(ErrorReason.RING_INDEX), 0, 0))
        self._flush()

    def _free_slots(self) -> int:
        used = (self._tail - self.core.memory.header.get("rcq_head")) & U32
        return RING_ENTRIES - used if used <= RING_ENTRIES else 0

    def _flush(self) -> bool:
        """Post what fits in the RCQ (entry first, then rcq_tail); True if anything was."""
        header = self.core.memory.header
        posted = False
        while self._outbox and self._free_slots() > 0:
            c = self._outbox.popleft()
            self._sequence += 1
            offset = RCQ_OFFSET + (self._tail % RING_ENTRIES) * RCQE_SIZE
            _RCQE.pack_into(self._bar2, offset, c.request_id, c.status, c.reason,
                            c.information, self._sequence)
            self._tail = (self._tail + 1) & U32
            self._posted += 1
            header.set("rcq_tail", self._tail)
            header.set("io_completions", self._posted)
            posted = True
        return posted

    def _interrupt(self) -> None:
        self.stats.interrupts += 1
        self.core.raise_interrupt(VECTOR_IO_COMPLETION)

    def _abandon_all(self) -> None:
        requests, self._in_flight = list(self._in_flight.values()), {}
        for request in requests:
            request.abandoned = True
            self.stats.abandoned += 1
            if self.on_cancel is not None and not request.completed:
                try:
                    self.on_cancel(request)
                except Exception:
                    self.core.errors.append(traceback.format_exc())

    def _release_ram(self) -> None:
        self._validator = None
        self._ram = None     # the core owns (and releases) the windows

    # ---- data access for GuestIoRequest ---------------------------------------------------
    def _buffer(self, request: GuestIoRequest, which: str, offset: int,
                length: int) -> list[tuple[int, int]]:
        """(gpa, length) pieces of ``[offset, offset + length)`` of a request's buffer."""
        plan = request.plan
        size = plan.system_length if which == "system" else plan.page_length
        if offset < 0 or length < 0 or offset + length > size:
            raise RequestStateError(f"request {plan.request_id:#x}: [{offset}, {offset + length}) "
                                    f"is outside its {which} buffer of {size} bytes")
        if which == "system":
            return [(plan.system_gpa + offset, length)] if length else []
        pieces, position = [], 0
        for run in plan.runs:
            lo, hi = max(position, offset), min(position + run.length, offset + length)
            if lo < hi:
                pieces.append((run.gpa + lo - position, hi - lo))
            position += run.length
        return pieces

    def _live(self, request: GuestIoRequest) -> RamWindows:
        if request.completed or request.abandoned or request.generation != self._generation:
            raise RequestStateError(f"request {request.request_id:#x} is no longer in flight: "
                                    "its buffers may belong to something else now")
        if self._ram is None:
            raise RequestStateError("guest RAM is not attached")
        return self._ram

    def _read(self, request: GuestIoRequest, which: str, offset: int, length: int | None) -> bytes:
        with self.core.lock:
            ram = self._live(request)
            size = request.system_length if which == "system" else request.page_length
            length = size - offset if length is None else length
            out = bytearray()
            for gpa, n in self._buffer(request, which, offset, length):
                start, _end, view = ram.windows[ram.find(gpa, gpa + n)]
                out += view[gpa - start:gpa - start + n]
            return bytes(out)

    def _write(self, request: GuestIoRequest, which: str, offset: int, data: bytes) -> None:
        with self.core.lock:
            ram = self._live(request)
            position = 0
            for gpa, n in self._buffer(request, which, offset, len(data)):
                start, _end, view = ram.windows[ram.find(gpa, gpa + n)]
                view[gpa - start:gpa - start + n] = data[position:position + n]
                position += n

