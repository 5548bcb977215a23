"""The bus-master device: the device core with a personality a driver programs.

A driver (on the host, against the emulated framework) programs registers
(:mod:`device_model.busmaster_abi`): a descriptor ring in guest memory, a tail
doorbell, interrupt status and mask. On a doorbell the device thread walks the
ring: it copies each descriptor out of guest memory (a private copy, so the
guest cannot change what was checked), validates it exactly as the echo device
validates the same request, moves the data with the core's DMA engine (faults
and trace included), writes the completion record back into the descriptor and
signals the driver's interrupt routine.

Every guest-memory address the device drives (ring, descriptors, segment
tables, data, completion records) is a *bus address*. Without remapping it is
the guest-physical address, checked like the echo device's segments (RAM
ranges, DMA mask = address width, alignment, no wrap). With remapping (a
``translate`` callable, the host DMA adapter's IOVA table) the DMA mask and
alignment are checked on the bus address, then it is translated, and each
physical piece must lie in guest RAM; no translation is a TRANSLATION_FAULT
refusal naming the field.
"""

from __future__ import annotations

import os
import re
import struct
import traceback
from typing import Callable, Sequence

from device_model.abi import (
    DATA_SIZE, MAX_TRANSFER, RING_ERROR_REQUEST_ID, SEGMENT_FORMAT, SEGMENT_SIZE,
    CompletionStatus, Descriptor, DescriptorFlag, ErrorReason, Opcode, Segment,
)
from device_model.busmaster_abi import (
    BM_COMPLETION_OFFSET, BM_COMPLETION_SIZE, BM_DESCRIPTOR_FORMAT, BM_DESCRIPTOR_SIZE, BM_DONE,
    BM_ID, BM_MAX_RING, BM_MAX_SEGMENTS, BM_REGISTER_PAIRS, BM_REGISTERS, BM_RING_ALIGN,
    BM_TABLE_ALIGN, BM_VERSION, BmCaps, BmControl, BmDescriptorFlag, BmInterrupt, BmStatus,
    BusMasterReason,
)
from device_model.descriptors import Refusal, TransferPlan
from device_model.device_core import SOCKET_NAME, DeviceCore
from device_model.faults import FaultPlan, FaultTarget
from device_model.personality import Personality, RegisterAccessError
from device_model.trace import DEFAULT_MAX_BYTES
from wdfhil.errors import ConfigError, DeviceProtocolError, WdfhilError

__all__ = ["BusMasterDevice", "BusMasterPersonality", "TranslationFault", "Translate",
           "InterruptHandler"]


class TranslationFault(WdfhilError):
    """Raised by a ``translate`` callable: no translation for a bus address."""

    def __init__(self, address: int, length: int, message: str = "no translation") -> None:
        self.address = address
        self.length = length
        super().__init__(f"{message}: {length} bytes at bus address {address:#x}")


#: ``translate(bus_address, length) -> [(physical, length), ...]`` (the pieces in order,
#: adding up to ``length``), or raise :class:`TranslationFault`.
Translate = Callable[[int, int], Sequence[tuple[int, int]]]
#: ``on_interrupt(pending)``: the device signals; ``pending`` = int_status & ~int_mask.
InterruptHandler = Callable[[int], None]

_U32 = 0xFFFFFFFF
_ALL_INTERRUPTS = int(BmInterrupt.COMPLETION | BmInterrupt.ERROR)
_BY_OFFSET = {offset: (name, access) for name, (offset, access) in BM_REGISTERS.items()}
_PAIRS = {BM_REGISTERS[f"{pair}_lo"][0]: pair for pair in BM_REGISTER_PAIRS}
_DESCRIPTOR = struct.Struct(BM_DESCRIPTOR_FORMAT)
_SEGMENT = struct.Struct(SEGMENT_FORMAT)
_OPCODES = {int(op) for op in Opcode}
_TABLE = int(BmDescriptorFlag.SEGMENT_TABLE)
# The echo validator's field names for the same checks -> this descriptor's names.
_ECHO_FIELDS = [(re.compile(r"^indirect_gpa$"), "address"),
                (re.compile(r"^segments\[0\]\.gpa$"), "address"),
                (re.compile(r"^segments\[0\]\.length$"), "length"),
                (re.compile(r"^indirect\[(\d+)\]\.gpa$"), r"table[\1].address"),
                (re.compile(r"^indirect\[(\d+)\]\."), r"table[\1].")]


def reason_name(reason: int) -> str:
    for enum_cls in (ErrorReason, BusMasterReason):
        try:
            return enum_cls(reason).name
        except ValueError:
            pass
    return str(reason)


class BusMasterPersonality(Personality):
    """Registers, a descriptor ring in guest memory, completions written back.

    ``translate``: DMA remapping (see the module doc), None for bus address =
    guest-physical. ``on_interrupt``: the driver's interrupt routine, called in
    the device thread *without* the device lock (it may read and write
    registers) with the unmasked pending causes, once per device pass that
    signalled (interrupts merge: read the ring, never count them), and when an
    unmask uncovers a pending cause.
    """

    def __init__(self, *, translate: Translate | None = None,
                 on_interrupt: InterruptHandler | None = None) -> None:
        super().__init__()
        self.translate = translate
        self.on_interrupt = on_interrupt
        self.doorbells = 0                   # ring_tail writes
        self.interrupts = 0                  # calls of on_interrupt
        self.last_refusal: Refusal | None = None   # what halted the ring, named
        self._generation = 0
        self._reset_registers()

    # ---- state -------------------------------------------------------------------------
    def _reset_registers(self) -> None:
        self._generation += 1                # delayed completions of before are dropped
        self._enabled = False
        self._halted = False
        self._error = 0
        self._ring_base = 0
        self._ring_size = 0
        self._head = 0
        self._tail = 0
        self._int_status = 0
        self._int_mask = _ALL_INTERRUPTS     # all masked until the driver enables them
        self._completed = 0
        self._last_error = 0
        self._pass_scheduled = False
        self._interrupt_scheduled = False
        self.last_refusal = None

    def reset(self) -> None:
        """The core reset (a new guest, admin RESET): the device's reset too."""
        self._reset_registers()

    def submit(self, raw: bytes) -> None:
        """A guest's SQE: the guest does not drive this device; refused, so a guest
        that tries still gets one completion per request."""
        self._core().refuse(Refusal(
            int.from_bytes(raw[8:16], "little"), ErrorReason.BAD_OPCODE, "opcode",
            int.from_bytes(raw[0:2], "little"),
            "the bus-master device takes requests from its descriptor ring, not the SQ"))

    # ---- registers -----------------------------------------------------------------------
    def _caps(self) -> int:
        core = self._core()
        caps = core.dma_mask.bit_length() | BmCaps.SEGMENT_TABLE
        if self.translate is not None:
            caps |= BmCaps.REMAPPING
        return int(caps)

    def _read32(self, name: str) -> int:
        core = self._core()
        values = {
            "id": BM_ID, "version": BM_VERSION, "caps": self._caps(),
            "control": BmControl.ENABLE if self._enabled else 0,
            "status": (BmStatus.ENABLED if self._enabled else 0)
            | (BmStatus.HALTED if self._halted else 0),
            "error": self._error,
            "ring_base_lo": self._ring_base & _U32, "ring_base_hi": self._ring_base >> 32,
            "ring_size": self._ring_size, "ring_head": self._head, "ring_tail": self._tail,
            "int_status": self._int_status, "int_mask": self._int_mask,
            "completed": self._completed, "last_error": self._last_error,
            "dma_mask_lo": core.dma_mask & _U32, "dma_mask_hi": core.dma_mask >> 32,
            "max_transfer": MAX_TRANSFER, "max_segments": BM_MAX_SEGMENTS,
            "segment_align": core.segment_align, "data_size": DATA_SIZE,
        }
        return int(values[name])

    def _decode(self, offset: int, width: int) -> tuple[str, str, str | None]:
        """(register name, access, 64-bit pair name or None) of an access."""
        if width not in (4, 8):
            raise RegisterAccessError("registers are 32 bits (64-bit pairs: 8 bytes at _lo)",
                                      offset=offset, width=width)
        if width == 8:
            pair = _PAIRS.get(offset)
            if pair is None:
                raise RegisterAccessError("an 8-byte access needs the _lo offset of a 64-bit "
                                          f"register ({', '.join(BM_REGISTER_PAIRS)})",
                                          offset=offset, width=width)
            name, access = _BY_OFFSET[offset]
            return name, access, pair
        if offset not in _BY_OFFSET:
            raise RegisterAccessError("no register here", offset=offset, width=width)
        name, access = _BY_OFFSET[offset]
        return name, access, None

    def register_read(self, offset: int, width: int) -> int:
        name, _access, pair = self._decode(offset, width)
        if pair is not None:
            return self._read32(f"{pair}_lo") | self._read32(f"{pair}_hi") << 32
        return self._read32(name)

    def register_write(self, offset: int, width: int, value: int) -> None:
        name, access, pair = self._decode(offset, width)
        if not 0 <= value < 1 << (8 * width):
            raise RegisterAccessError(f"value {value:#x} does not fit {width} bytes",
                                      offset=offset, width=width)
        if access == "ro":
            raise RegisterAccessError(f"{name} is read-only", offset=offset, width=width)
        if pair is not None:
            self._write32(f"{pair}_lo", value & _U32)
            self._write32(f"{pair}_hi", value >> 32)
        else:
            self._write32(name, value)

    def _write32(self, name: str, value: int) -> None:
        if name == "control":
            if value & BmControl.RESET:
                self._reset_registers()
                self._event("bus_master_reset")
                return
            was, self._enabled = self._enabled, bool(value & BmControl.ENABLE)
            if self._enabled and not was:
                self._schedule_pass()
        elif name in ("ring_base_lo", "ring_base_hi", "ring_size"):
            if name == "ring_base_lo":
                self._ring_base = (self._ring_base & ~_U32) | value
            elif name == "ring_base_hi":
                self._ring_base = (self._ring_base & _U32) | value << 32
            else:
                self._ring_size = value
            self._head = self._tail = 0         # a new ring starts empty
            if self._enabled and not self._halted:
                self._halt(Refusal(RING_ERROR_REQUEST_ID, BusMasterReason.RING_CONFIG, name, value,
                                   "the ring was reprogrammed while the device is enabled"))
        elif name == "ring_tail":
            self._tail = value
            self.doorbells += 1
            self._schedule_pass()
        elif name == "int_status":                # write 1 to clear
            self._int_status &= ~value
        elif name == "int_mask":
            uncovered = self._int_status & self._int_mask & ~value
            self._int_mask = value & _ALL_INTERRUPTS
            if uncovered:
                self._schedule_interrupt()
        else:   # a register BM_REGISTERS calls writable but this code does not know
            raise AssertionError(f"unhandled register {name}")

    # ---- interrupts --------------------------------------------------------------------------
    def _signal(self, cause: int) -> None:
        self._int_status |= cause
        if cause & ~self._int_mask:
            self._schedule_interrupt()

    def _schedule_interrupt(self) -> None:
        """One call of on_interrupt for whatever is pending when the device thread gets
        to it: causes signalled before then merge into it."""
        if self.on_interrupt is None or self._interrupt_scheduled:
            return
        self._interrupt_scheduled = True
        self._core().defer(self._prepare_interrupt)

    def _prepare_interrupt(self) -> None:           # device thread, under the lock
        self._interrupt_scheduled = False
        pending = self._int_status & ~self._int_mask
        handler = self.on_interrupt
        if pending and handler is not None:
            self.interrupts += 1
            self._core().defer(lambda: handler(pending), locked=False)

    # ---- the ring ------------------------------------------------------------------------------
    def _schedule_pass(self) -> None:
        if self._enabled and not self._halted and not self._pass_scheduled:
            self._pass_scheduled = True
            self._core().defer(self._pass)

    def _pass(self) -> None:
        """Walk the ring from head to the tail read once (device thread, under the lock)."""
        self._pass_scheduled = False
        if not self._enabled or self._halted:
            return
        base, size, tail = self._ring_base, self._ring_size, self._tail
        if base % BM_RING_ALIGN:
            return self._halt(Refusal(RING_ERROR_REQUEST_ID, BusMasterReason.RING_CONFIG,
                                      "ring_base", base, f"not {BM_RING_ALIGN}-byte aligned"))
        if not 0 < size <= BM_MAX_RING or size & (size - 1):
            return self._halt(Refusal(RING_ERROR_REQUEST_ID, BusMasterReason.RING_CONFIG,
                                      "ring_size", size,
                                      f"must be a power of two in 1..{BM_MAX_RING}"))
        ring = self._bus_range(base, size * BM_DESCRIPTOR_SIZE, "ring_base", RING_ERROR_REQUEST_ID)
        if isinstance(ring, Refusal):
            return self._halt(ring)
        if tail >= size:
            return self._halt(Refusal(RING_ERROR_REQUEST_ID, ErrorReason.RING_INDEX, "ring_tail",
                                      tail, f"not a slot of a ring of {size}"))
        generation = self._generation
        while self._head != tail and not self._halted and self._generation == generation:
            index = self._head
            slot = base + index * BM_DESCRIPTOR_SIZE
            try:
                self._serve(slot, index)
            except Exception:       # a device bug: report it, stop the ring, survive
                self._core().report_internal_error(traceback.format_exc())
                return self._halt(Refusal(RING_ERROR_REQUEST_ID, ErrorReason.INTERNAL,
                                          f"ring[{index}]", slot, "device error"))
            if self._generation == generation and not self._halted:
                self._head = (index + 1) % size

    def _serve(self, slot: int, index: int) -> None:
        """One descriptor: fetch a private copy, check, move the data, complete."""
        views = self._guest(slot, BM_COMPLETION_OFFSET, f"ring[{index}]", RING_ERROR_REQUEST_ID)
        if isinstance(views, Refusal):
            return self._halt(views)
        raw = b"".join(bytes(v) for v in views)          # private copy: no TOCTOU
        request_id = _DESCRIPTOR.unpack_from(raw)[3]
        core = self._core()
        raw = self._faulted(FaultTarget.DESCRIPTOR, request_id, raw[0] | raw[1] << 8, raw)
        request_id, opcode = _DESCRIPTOR.unpack_from(raw)[3], raw[0] | raw[1] << 8   # as fetched
        try:
            plan = self._plan(raw)
        except Exception:
            core.report_internal_error(traceback.format_exc())
            plan = Refusal(request_id, ErrorReason.INTERNAL, "descriptor", 0,
                           "device error while checking the descriptor")
        if isinstance(plan, Refusal):
            core.record_refusal(plan)
            self._last_error = int(plan.reason)
            self._write_back(slot, index, request_id, opcode, CompletionStatus.ERROR, plan.reason, 0, True)
            return
        outcome = core.perform(plan)
        generation = self._generation

        def post(interrupt: bool) -> None:
            if generation == self._generation:           # a reset since: the slot is gone
                self._write_back(slot, index, request_id, opcode, outcome.status, ErrorReason.NONE,
                                 outcome.transferred, interrupt)
        core.deliver_completion(outcome, plan, post)

    def _write_back(self, slot: int, index: int, request_id: int, opcode: int, status: int, reason: int,
                    transferred: int, interrupt: bool) -> None:
        """The completion record into the descriptor: status, reason, transferred, then
        ``done`` last (a fault plan's completion rules may flip a bit of it or write only part
        of it); counted, traced, and the COMPLETION cause signalled."""
        where = slot + BM_COMPLETION_OFFSET
        views = self._guest(where, BM_COMPLETION_SIZE, f"ring[{index}].completion", request_id)
        if isinstance(views, Refusal):
            return self._halt(views)
        record = struct.pack("<IIII", BM_DONE, status, reason, transferred)
        record = self._faulted(FaultTarget.COMPLETION, request_id, opcode, record)
        _store(views, 4, record[4:])
        _store(views, 0, record[:4])
        self._completed = (self._completed + 1) & _U32
        trace = self._core().trace
        if trace is not None:
            trace.write({"type": "completion", "request_id": request_id,
                         "status": CompletionStatus(status).name, "reason": reason_name(reason),
                         "transferred": transferred, "slot": index, "gpa": where})
        if interrupt:
            self._signal(BmInterrupt.COMPLETION)

    def _faulted(self, target: FaultTarget, request_id: int, opcode: int, data: bytes) -> bytes:
        """``data`` as the core's fault plan lets a descriptor fetch or a completion write-back
        move it (rules with that ``target``: a flipped bit, a short move), the faults traced.
        A descriptor whose opcode is no opcode matches no rule."""
        core = self._core()
        plan = core.fault_plan
        if not plan.active or opcode not in _OPCODES:
            return data
        data, injected = plan.corrupt(target, request_id, Opcode(opcode), data)
        if core.trace is not None:
            for fault in injected:
                core.trace.write(fault.to_json())
        return data

    def _halt(self, refusal: Refusal) -> None:
        """A ring-level error: the device stops (HALTED, ``error``) until RESET."""
        self._halted = True
        self._error = int(refusal.reason)
        self.last_refusal = refusal
        self._core().record_refusal(refusal)
        self._signal(BmInterrupt.ERROR)

    # ---- descriptors ---------------------------------------------------------------------------
    def _plan(self, raw: bytes) -> TransferPlan | Refusal:
        """A descriptor -> a plan, or the first failed check (the echo device's order)."""
        (opcode, flags, nseg, request_id, device_offset, length, address, reserved0,
         reserved1) = _DESCRIPTOR.unpack_from(raw)

        def refuse(reason: ErrorReason, field: str, value: int, message: str) -> Refusal:
            return Refusal(request_id, reason, field, value, message)

        if opcode not in _OPCODES:
            return refuse(ErrorReason.BAD_OPCODE, "opcode", opcode, "unknown opcode")
        if flags & ~_TABLE:
            return refuse(ErrorReason.BAD_FLAGS, "flags", flags, "unknown flag bits")
        if reserved0 or reserved1:
            return refuse(ErrorReason.RESERVED_FIELD, "reserved", reserved0 or reserved1,
                          "must be 0")
        op = Opcode(opcode)
        table = bool(flags & _TABLE)
        if op is Opcode.NOP:
            if flags:
                return refuse(ErrorReason.BAD_FLAGS, "flags", flags, "a NOP takes no flags")
            if nseg:
                return refuse(ErrorReason.BAD_SEGMENT_COUNT, "nseg", nseg, "a NOP has no segments")
            if length:
                return refuse(ErrorReason.LENGTH_MISMATCH, "length", length, "a NOP moves no data")
            if address:
                return refuse(ErrorReason.RESERVED_FIELD, "address", address,
                              "a NOP has no buffer")
            return self._core().plan_descriptor(Descriptor(Opcode.NOP, 0, 0, request_id, 0, 0).pack())
        limit = BM_MAX_SEGMENTS if table else 1
        if nseg == 0 or nseg > limit:
            return refuse(ErrorReason.BAD_SEGMENT_COUNT, "nseg", nseg,
                          f"must be 1..{limit} {'with' if table else 'without'} SEGMENT_TABLE")
        if self.translate is None:
            return self._plan_physical(op, table, nseg, request_id, device_offset, length, address)
        return self._plan_translated(op, table, nseg, request_id, device_offset, length, address)

    def _plan_physical(self, op: Opcode, table: bool, nseg: int, request_id: int,
                       device_offset: int, length: int, address: int) -> TransferPlan | Refusal:
        """Bus address = guest-physical: the echo device's own validation of the same
        request as an SQE (inline, or INDIRECT with the table), fields renamed."""
        if table:
            sqe = Descriptor(op, DescriptorFlag.INDIRECT, nseg, request_id, device_offset, length,
                             address).pack()
        else:
            sqe = Descriptor(op, 0, 1, request_id, device_offset, length).pack(
                [Segment(address, length)])
        plan = self._core().plan_descriptor(sqe)
        if isinstance(plan, Refusal):
            field = plan.field
            for pattern, name in _ECHO_FIELDS:
                field, hit = pattern.subn(name, field)
                if hit:
                    break
            return Refusal(plan.request_id, plan.reason, field, plan.value, plan.message)
        return plan

    def _plan_translated(self, op: Opcode, table: bool, nseg: int, request_id: int,
                         device_offset: int, length: int, address: int) -> TransferPlan | Refusal:
        """Bus addresses through the remapping table: the echo's checks in its order,
        the DMA mask and alignment on the bus addresses, a TRANSLATION_FAULT where a
        bus address has no translation, RAM on the physical pieces."""
        core = self._core()

        def refuse(reason: int, field: str, value: int, message: str) -> Refusal:
            return Refusal(request_id, reason, field, value, message)  # type: ignore[arg-type]

        if length == 0:
            return refuse(ErrorReason.LENGTH_MISMATCH, "length", 0, "must not be 0")
        if length > MAX_TRANSFER:
            return refuse(ErrorReason.TRANSFER_TOO_LARGE, "length", length,
                          f"more than MAX_TRANSFER ({MAX_TRANSFER})")
        if device_offset > DATA_SIZE - length:
            return refuse(ErrorReason.DEVICE_RANGE, "device_offset", device_offset,
                          f"device_offset + length ({length}) exceeds device memory ({DATA_SIZE})")
        if table:
            table_len = nseg * SEGMENT_SIZE
            if address % BM_TABLE_ALIGN:
                return refuse(ErrorReason.INDIRECT_TABLE, "address", address,
                              f"not aligned to {BM_TABLE_ALIGN}")
            if address + table_len - 1 > core.dma_mask:
                return refuse(ErrorReason.INDIRECT_TABLE, "address", address,
                              f"table ends above the DMA mask {core.dma_mask:#x}")
            views = self._translated_views(address, table_len, "address", request_id)
            if isinstance(views, Refusal):
                if views.reason != BusMasterReason.TRANSLATION_FAULT:
                    return refuse(ErrorReason.INDIRECT_TABLE, "address", address, views.message)
                return views
            copy = b"".join(bytes(v) for v in views)        # private copy: no TOCTOU
            segments = [_SEGMENT.unpack_from(copy, i * SEGMENT_SIZE) for i in range(nseg)]

            def name(i: int, part: str) -> str:
                return f"table[{i}].{part}"
        else:
            segments = [(address, length, 0)]

            def name(i: int, part: str) -> str:
                return "address" if part == "address" else part
        align = core.segment_align - 1
        # Each check over the whole list before the next one, as the echo device does.
        for i, (_g, _n, reserved) in enumerate(segments):
            if reserved:
                return refuse(ErrorReason.RESERVED_FIELD, name(i, "reserved"), reserved, "must be 0")
        for i, (_g, n, _r) in enumerate(segments):
            if n == 0:
                return refuse(ErrorReason.ZERO_SEGMENT, name(i, "length"), 0, "a segment of length 0")
        for i, (g, n, _r) in enumerate(segments):
            if (g | n) & align:
                part, bad = ("address", g) if g & align else ("length", n)
                return refuse(ErrorReason.SEGMENT_ALIGNMENT, name(i, part), bad,
                              f"not a multiple of the device's segment_align {align + 1}")
        for i, (g, n, _r) in enumerate(segments):
            if g + n > 1 << 64:
                return refuse(ErrorReason.SEGMENT_NOT_IN_RAM, name(i, "address"), g,
                              f"segment of {n} bytes wraps around the 64-bit address space")
        for i, (g, n, _r) in enumerate(segments):
            if g + n - 1 > core.dma_mask:
                return refuse(ErrorReason.SEGMENT_ABOVE_DMA_MASK, name(i, "address"), g,
                              f"segment of {n} bytes ends above the DMA mask {core.dma_mask:#x}")
        physical: list[tuple[int, int]] = []
        for i, (g, n, _r) in enumerate(segments):
            pieces = self._translated(g, n, name(i, "address"), request_id)
            if isinstance(pieces, Refusal):
                return pieces
            for p, m in pieces:
                checked = core.guest_range(p, m, request_id=request_id, field=name(i, "address"),
                                           translated=True)
                if isinstance(checked, Refusal):
                    return refuse(checked.reason, checked.field, g,
                                  f"bus address {g:#x} translates to {p:#x}: {checked.message}")
            physical += pieces
        total = sum(n for _g, n, _r in segments)
        if total != length:
            return refuse(ErrorReason.LENGTH_MISMATCH, "length", length,
                          f"the segments add up to {total} bytes")
        return core.plan_segments(op, request_id, device_offset, physical,
                                  where="translated[{}]", translated=True)

    # ---- guest memory the device reads and writes itself -------------------------------------
    def _bus_range(self, address: int, length: int, field: str,
                   request_id: int) -> None | Refusal:
        """A structure's bus range: wrap and DMA mask; without remapping also RAM."""
        core = self._core()
        if self.translate is None:
            checked = core.guest_range(address, length, request_id=request_id, field=field)
            return checked if isinstance(checked, Refusal) else None
        if address + length > 1 << 64:
            return Refusal(request_id, ErrorReason.SEGMENT_NOT_IN_RAM, field, address,
                           f"{length} bytes wrap around the 64-bit address space")
        if address + length - 1 > core.dma_mask:
            return Refusal(request_id, ErrorReason.SEGMENT_ABOVE_DMA_MASK, field, address,
                           f"{length} bytes end above the DMA mask {core.dma_mask:#x}")
        return None

    def _guest(self, address: int, length: int, field: str,
               request_id: int) -> list[memoryview] | Refusal:
        """Views of the guest RAM behind ``length`` bytes at a bus address, checked."""
        if self.translate is None:
            view = self._core().guest_range(address, length, request_id=request_id, field=field)
            return view if isinstance(view, Refusal) else [view]
        bad = self._bus_range(address, length, field, request_id)
        if bad is not None:
            return bad
        return self._translated_views(address, length, field, request_id)

    def _translated_views(self, address: int, length: int, field: str,
                          request_id: int) -> list[memoryview] | Refusal:
        pieces = self._translated(address, length, field, request_id)
        if isinstance(pieces, Refusal):
            return pieces
        views = []
        for p, m in pieces:
            view = self._core().guest_range(p, m, request_id=request_id, field=field,
                                            translated=True)
            if isinstance(view, Refusal):
                return Refusal(request_id, view.reason, field, address,
                               f"bus address {address:#x} translates to {p:#x}: {view.message}")
            views.append(view)
        return views

    def _translated(self, address: int, length: int, field: str,
                    request_id: int) -> list[tuple[int, int]] | Refusal:
        translate = self.translate
        assert translate is not None
        try:
            pieces = [(int(p), int(m)) for p, m in translate(address, length)]
        except TranslationFault as fault:
            return Refusal(request_id, BusMasterReason.TRANSLATION_FAULT, field,  # type: ignore[arg-type]
                           address, str(fault))
        if not pieces or any(m <= 0 or p < 0 for p, m in pieces) or sum(m for _p, m in pieces) != length:
            raise DeviceProtocolError(f"translate({address:#x}, {length}) returned {pieces!r}: "
                                      f"pieces must be positive and add up to {length}")
        return pieces

    # ---- helpers ---------------------------------------------------------------------------------
    def _core(self) -> DeviceCore:
        core = self.core
        assert core is not None, "the personality is not bound to a device core"
        return core

    def _event(self, name: str, **detail: object) -> None:
        trace = self._core().trace
        if trace is not None:
            trace.write({"type": "event", "event": name, **detail})


def _store(views: list[memoryview], offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the bytes the views hold back to back."""
    for view in views:
        n = len(view)
        if offset < n:
            part = data[:n - offset]
            view[offset:offset + len(part)] = part
            data = data[len(part):]
            offset = 0
            if not data:
                return
        else:
            offset -= n


class BusMasterDevice(DeviceCore):
    """The device core with the bus-master personality.

    ``address_bits``: how many address bits the device drives (32 for a 32-bit
    device: the DMA mask is ``2**address_bits - 1``). ``translate`` and
    ``on_interrupt`` as :class:`BusMasterPersonality`'s (also settable later
    with :meth:`set_translation` and :meth:`set_interrupt_handler`). The other
    arguments as :class:`DeviceCore`'s. The driver's side is
    :meth:`register_read` / :meth:`register_write`.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *,
                 address_bits: int = 64, segment_align: int = 1,
                 fault_plan: FaultPlan | None = None,
                 trace_path: str | os.PathLike[str] | None = None,
                 trace_max_bytes: int = DEFAULT_MAX_BYTES,
                 socket_name: str = SOCKET_NAME,
                 translate: Translate | None = None,
                 on_interrupt: InterruptHandler | None = None) -> None:
        if isinstance(address_bits, bool) or not isinstance(address_bits, int) \
                or not 20 <= address_bits <= 64:
            raise ConfigError("must be an integer from 20 to 64 (32: a 32-bit device)",
                              field="address_bits", value=address_bits)
        self.bus_master = BusMasterPersonality(translate=translate, on_interrupt=on_interrupt)
        super().__init__(self.bus_master, run_dir, dma_mask=(1 << address_bits) - 1,
                         segment_align=segment_align, fault_plan=fault_plan,
                         trace_path=trace_path, trace_max_bytes=trace_max_bytes,
                         socket_name=socket_name)

    def set_translation(self, translate: Translate | None) -> None:
        """DMA remapping on (a ``translate`` callable) or off (None), from the next
        descriptor on."""
        with self._lock:
            self.bus_master.translate = translate

    def set_interrupt_handler(self, handler: InterruptHandler | None) -> None:
        with self._lock:
            self.bus_master.on_interrupt = handler
