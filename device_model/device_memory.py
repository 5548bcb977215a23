"""BAR2 as Python sees it: the ABI header, the two rings and the data region.

Both sides of the ABI use :class:`Bar2Header` (the device, and the host-side
test driver); :class:`SubmissionRing` and :class:`CompletionRing` are the
device's half of the rings. The guest writes BAR2 concurrently and may be
hostile, so the device reads each guest-written field once per use and copies
a descriptor out of BAR2 before looking at it.
"""

from __future__ import annotations

import struct

from device_model.abi import (
    ABI_VERSION, BAR2_SIZE, CQ_OFFSET, CQE_FORMAT, CQE_SIZE, DATA_OFFSET, DATA_SIZE, HEADER_FIELDS,
    IO_MAX_LENGTH, IO_MAX_PAGES, IO_MAX_SYSTEM_BUFFER, MAGIC, MAX_SEGMENTS, MAX_TRANSFER,
    RCQ_OFFSET, RCQE_SIZE, RING_ENTRIES, RQ_OFFSET, SQ_OFFSET, SQE_SIZE,
    Completion, DeviceStatus, Feature,
)

U32 = 0xFFFFFFFF
_FIELDS = {name: (offset, struct.Struct(fmt)) for name, (offset, fmt) in HEADER_FIELDS.items()}
_CQE = struct.Struct(CQE_FORMAT)


class Bar2Header:
    """Named access to the header fields of BAR2 (``hdr.get("sq_tail")``)."""

    def __init__(self, bar2: memoryview) -> None:
        if len(bar2) < BAR2_SIZE:
            raise ValueError(f"BAR2 must be {BAR2_SIZE} bytes, got {len(bar2)}")
        self.buf = bar2

    def get(self, name: str) -> int:
        offset, fmt = _FIELDS[name]
        return fmt.unpack_from(self.buf, offset)[0]

    def set(self, name: str, value: int) -> None:
        offset, fmt = _FIELDS[name]
        fmt.pack_into(self.buf, offset, value)

    def snapshot(self) -> dict[str, int]:
        return {name: self.get(name) for name in _FIELDS}


class DeviceMemory:
    """The device's view of BAR2: header, rings and its data memory (the echo store)."""

    def __init__(self, bar2: memoryview) -> None:
        self.bar2 = bar2
        self.header = Bar2Header(bar2)
        self.data = bar2[DATA_OFFSET:DATA_OFFSET + DATA_SIZE]
        self.sq = SubmissionRing(bar2, self.header)
        self.cq = CompletionRing(bar2, self.header)

    def initialize(self, *, features: int, dma_mask: int, segment_align: int,
                   device_peer: int, status: DeviceStatus, guest_peer: int = 0,
                   admin_done: int = 0) -> None:
        """Write the whole header page: geometry, limits, zeroed indices, the reserved
        rest zero, the magic last. Also on reset: a guest may have scribbled over it."""
        self.bar2[:SQ_OFFSET] = bytes(SQ_OFFSET)
        values = {
            "abi_version": ABI_VERSION, "features": features, "device_peer": device_peer,
            "ring_entries": RING_ENTRIES, "sq_offset": SQ_OFFSET, "cq_offset": CQ_OFFSET,
            "data_offset": DATA_OFFSET, "data_size": DATA_SIZE, "dma_mask": dma_mask,
            "max_segments": MAX_SEGMENTS, "max_transfer": MAX_TRANSFER,
            "segment_align": segment_align, "status": status, "guest_peer": guest_peer,
            "admin_done": admin_done,
            "rq_offset": RQ_OFFSET, "rcq_offset": RCQ_OFFSET, "io_max_pages": IO_MAX_PAGES,
            "io_max_length": IO_MAX_LENGTH, "io_max_system": IO_MAX_SYSTEM_BUFFER,
        }
        h = self.header
        for name, value in values.items():
            h.set(name, value)
        h.set("magic", MAGIC)   # last: a guest that sees the magic sees a whole header

    def reset_rings(self) -> None:
        """Zero every ring index and the CQ entries (RESET, a new guest)."""
        h = self.header
        for name in ("sq_tail", "sq_head", "cq_tail", "cq_head", "completions", "last_error",
                     "rq_tail", "rq_head", "rcq_tail", "rcq_head", "io_completions"):
            h.set(name, 0)
        self.sq.head = 0
        self.cq.tail = self.cq.posted = 0
        self.bar2[CQ_OFFSET:CQ_OFFSET + RING_ENTRIES * CQE_SIZE] = bytes(RING_ENTRIES * CQE_SIZE)
        self.bar2[RCQ_OFFSET:RCQ_OFFSET + RING_ENTRIES * RCQE_SIZE] = bytes(RING_ENTRIES * RCQE_SIZE)

    def close(self) -> None:
        self.data.release()
        self.sq.view.release()
        self.cq.view.release()


class SubmissionRing:
    """The device's side of the submission ring: copy descriptors out, advance sq_head.

    The device keeps its own index (``head``) and only ever writes it to
    BAR2: the guest can scribble over ``sq_head`` there, but cannot make the
    device re-read or skip descriptors by doing so.
    """

    def __init__(self, bar2: memoryview, header: Bar2Header) -> None:
        self.view = bar2[SQ_OFFSET:SQ_OFFSET + RING_ENTRIES * SQE_SIZE]
        self.header = header
        self.head = 0

    def pending(self) -> tuple[int, int]:
        """(head, number of new descriptors), reading the guest's sq_tail once.

        The count is returned as is (u32 distance): the caller refuses one
        above RING_ENTRIES, which only a broken or hostile guest produces.
        """
        return self.head, (self.header.get("sq_tail") - self.head) & U32

    def copy_descriptor(self, index: int) -> bytes:
        """A private copy of the descriptor at ``index`` (the guest cannot change it after)."""
        offset = (index % RING_ENTRIES) * SQE_SIZE
        return bytes(self.view[offset:offset + SQE_SIZE])

    def consume(self, new_head: int) -> None:
        self.head = new_head & U32
        self.header.set("sq_head", self.head)


class CompletionRing:
    """The device's side of the completion ring: post entries, advance cq_tail.

    Like the submission ring, the device's own index lives here and is only
    written to BAR2, never read back from it.
    """

    def __init__(self, bar2: memoryview, header: Bar2Header) -> None:
        self.view = bar2[CQ_OFFSET:CQ_OFFSET + RING_ENTRIES * CQE_SIZE]
        self.header = header
        self.tail = 0
        self.posted = 0

    def free_slots(self) -> int:
        """Free entries, reading the guest's cq_head once; 0 if cq_head is nonsense."""
        used = (self.tail - self.header.get("cq_head")) & U32
        return RING_ENTRIES - used if used <= RING_ENTRIES else 0

    def post(self, completion: Completion) -> None:
        """Write the entry, then publish it by advancing cq_tail (in that order)."""
        offset = (self.tail % RING_ENTRIES) * CQE_SIZE
        _CQE.pack_into(self.view, offset, completion.request_id, completion.status,
                       completion.reason, completion.transferred, completion.sequence)
        self.tail = (self.tail + 1) & U32
        self.posted += 1
        self.header.set("cq_tail", self.tail)
        self.header.set("completions", self.posted)


def features_for(*, dma_mask_enforced: bool, faults: bool) -> int:
    """The feature bits the device advertises."""
    bits = Feature.INDIRECT
    if dma_mask_enforced:
        bits |= Feature.DMA_MASK
    if faults:
        bits |= Feature.FAULT_INJECTION
    return int(bits)
