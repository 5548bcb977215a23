"""Device ABI v1: the layout of the device's BAR2 (registers, rings, descriptors).

This module is the single source of truth for the ABI. The host device uses
the structures below; the guest side (kernel module and agent) includes the
C header that :func:`render_c_header` generates from the same definitions at
image build time, so the two sides can never drift. Documented for people in
``docs/device-abi.md``; bump :data:`ABI_VERSION` on any incompatible change.

All integers are little-endian. Ring indices are free-running u32 counters
(slot = index & (entries - 1)) kept in BAR2, because MSI-X interrupts can
merge: a consumer always reads the producer index, never counts interrupts.

Protocol in short (details in docs/device-abi.md): the guest fills SQ slots,
advances ``sq_tail`` and rings ``doorbell_value(device_peer, VECTOR_SUBMIT)``;
the device copies each descriptor out of BAR2, validates it, does the DMA,
posts a completion, advances ``cq_tail`` and raises MSI-X VECTOR_COMPLETION.
The device resets the rings (all indices 0) when a new guest peer connects and
on AdminCommand.RESET (``admin_done`` then increments and VECTOR_COMPLETION is
raised). When the CQ is full the device stops taking submissions until the
next doorbell after the guest advanced ``cq_head``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

ABI_VERSION = 1
MAGIC = 0x48464457  # "WDFH" read as a little-endian u32

# ivshmem doorbell vectors (guest -> device) and MSI-X vectors (device -> guest).
VECTOR_SUBMIT = 0      # guest rings: new submissions in the submission ring
VECTOR_ADMIN = 1       # guest rings: an admin command is in HDR_ADMIN_CMD
VECTOR_COMPLETION = 0  # device raises: new entries in the completion ring
NUM_VECTORS = 2

# BAR2 geometry (the shared memory the server hands QEMU; a power of two).
BAR2_SIZE = 16 << 20
RING_ENTRIES = 256                 # power of two
HEADER_OFFSET = 0x0000
SQ_OFFSET = 0x1000
SQE_SIZE = 256
CQ_OFFSET = SQ_OFFSET + RING_ENTRIES * SQE_SIZE       # 0x11000
CQE_SIZE = 32
DATA_OFFSET = 0x100000                                # device's own memory (echo store)
DATA_SIZE = BAR2_SIZE - DATA_OFFSET
MAX_INLINE_SEGMENTS = 13
MAX_SEGMENTS = 4096                 # per descriptor (inline or indirect)
MAX_TRANSFER = DATA_SIZE            # bytes per descriptor
# Completion request_id of the one error completion the device posts when the
# guest corrupts the ring indices (ErrorReason.RING_INDEX); no real request.
RING_ERROR_REQUEST_ID = (1 << 64) - 1

# The PCI function QEMU presents (ivshmem-doorbell) and its BAR0 registers.
PCI_VENDOR_ID = 0x1AF4
PCI_DEVICE_ID = 0x1110
BAR0_INTR_MASK = 0
BAR0_INTR_STATUS = 4
BAR0_IV_POSITION = 8     # the guest's own ivshmem peer id
BAR0_DOORBELL = 12       # write doorbell_value(device_peer, vector)


def doorbell_value(peer: int, vector: int) -> int:
    """The u32 a guest writes to BAR0_DOORBELL to ring ``vector`` of ``peer``."""
    return (peer << 16) | vector


class Feature(enum.IntFlag):
    INDIRECT = 1 << 0        # scatter/gather tables in guest RAM
    DMA_MASK = 1 << 1        # HDR_DMA_MASK is enforced
    FAULT_INJECTION = 1 << 2  # the host may inject faults (recorded in the trace)


class DeviceStatus(enum.IntEnum):
    RESETTING = 0
    READY = 1
    FAILED = 2          # ring indices corrupted (last_error says why); admin RESET recovers
    NO_GUEST_RAM = 3    # the host has not attached guest RAM yet: submissions are refused


class AdminCommand(enum.IntEnum):
    NONE = 0
    RESET = 1   # drop queued work, zero indices, status READY again


class Opcode(enum.IntEnum):
    NOP = 0     # completes at once (round-trip measurement)
    WRITE = 1   # device reads guest RAM (the segments) into device memory at device_offset
    READ = 2    # device writes device memory at device_offset into guest RAM (the segments)
# device_offset is an offset into the data region (BAR2 + DATA_OFFSET), not into BAR2.


class DescriptorFlag(enum.IntFlag):
    INDIRECT = 1 << 0   # segments are in a guest-physical table at indirect_gpa


class CompletionStatus(enum.IntEnum):
    OK = 0
    SHORT = 1           # fewer bytes than asked (fault injection)
    ERROR = 2           # the descriptor was refused; `reason` says why


class ErrorReason(enum.IntEnum):
    """Why a descriptor was refused (completion `reason`, header HDR_LAST_ERROR)."""
    NONE = 0
    BAD_OPCODE = 1
    BAD_FLAGS = 2
    BAD_SEGMENT_COUNT = 3      # 0, more than inline capacity, or more than MAX_SEGMENTS
    LENGTH_MISMATCH = 4        # length != sum of segment lengths, or 0
    TRANSFER_TOO_LARGE = 5     # length > MAX_TRANSFER
    DEVICE_RANGE = 6           # device_offset + length outside device memory
    SEGMENT_NOT_IN_RAM = 7     # a segment is not wholly inside guest RAM (hole, past end, wrap)
    SEGMENT_ABOVE_DMA_MASK = 8  # a segment ends above what the device can address
    INDIRECT_TABLE = 9         # the indirect table itself is not in RAM / misaligned
    ZERO_SEGMENT = 10          # a segment of length 0
    RING_INDEX = 11            # the guest moved sq_tail more than RING_ENTRIES ahead
    SEGMENT_ALIGNMENT = 12     # a segment is not aligned as the device requires
    DEVICE_NOT_READY = 13      # no guest RAM attached yet, or the device is FAILED
    RESERVED_FIELD = 14        # a reserved field (descriptor, segment, unused indirect_gpa) is not 0
    INTERNAL = 15              # the device hit a bug of its own (reported on the host side)


# Header fields: name -> (offset, struct format). Writer: D = device, G = guest.
HEADER_FIELDS: dict[str, tuple[int, str]] = {
    "magic":         (0x00, "<I"),  # D
    "abi_version":   (0x04, "<I"),  # D
    "features":      (0x08, "<Q"),  # D
    "status":        (0x10, "<I"),  # D
    "last_error":    (0x14, "<I"),  # D: ErrorReason of the last refused descriptor
    "device_peer":   (0x18, "<I"),  # D: ivshmem peer id to ring (doorbell = peer << 16 | vector)
    "ring_entries":  (0x1C, "<I"),  # D
    "sq_offset":     (0x20, "<I"),  # D
    "cq_offset":     (0x24, "<I"),  # D
    "data_offset":   (0x28, "<I"),  # D
    "data_size":     (0x2C, "<I"),  # D
    "dma_mask":      (0x30, "<Q"),  # D: highest address bits the device can drive
    "max_segments":  (0x38, "<I"),  # D
    "max_transfer":  (0x3C, "<I"),  # D
    "sq_tail":       (0x40, "<I"),  # G: producer index of the submission ring
    "sq_head":       (0x44, "<I"),  # D: consumer index of the submission ring
    "cq_tail":       (0x48, "<I"),  # D: producer index of the completion ring
    "cq_head":       (0x4C, "<I"),  # G: consumer index of the completion ring
    "admin_cmd":     (0x50, "<I"),  # G: AdminCommand, then ring VECTOR_ADMIN
    "admin_done":    (0x54, "<I"),  # D: incremented when an admin command finished
    "completions":   (0x58, "<Q"),  # D: completions posted since reset (statistics)
    "segment_align": (0x60, "<I"),  # D: every segment's gpa and length must be a multiple (1 = any)
    "guest_peer":    (0x64, "<I"),  # D: ivshmem peer id of the guest being served (informational)
}
HEADER_SIZE = 0x80

# Submission descriptor (SQE_SIZE bytes).
SQE_FORMAT = "<HHIQQQQQ"  # opcode, flags, nseg, request_id, device_offset, length, indirect_gpa, reserved
SQE_HEAD_SIZE = struct.calcsize(SQE_FORMAT)           # 48
SEGMENT_FORMAT = "<QII"   # gpa, length, reserved (must be 0)
SEGMENT_SIZE = struct.calcsize(SEGMENT_FORMAT)        # 16

# Completion entry (CQE_SIZE bytes).
CQE_FORMAT = "<QIIQQ"     # request_id, status, reason, transferred, sequence
assert struct.calcsize(CQE_FORMAT) == CQE_SIZE
assert SQE_HEAD_SIZE + MAX_INLINE_SEGMENTS * SEGMENT_SIZE <= SQE_SIZE


@dataclass(frozen=True)
class Segment:
    gpa: int
    length: int
    reserved: int = 0


@dataclass(frozen=True)
class Descriptor:
    opcode: int
    flags: int
    nseg: int
    request_id: int
    device_offset: int
    length: int
    indirect_gpa: int = 0
    reserved: int = 0

    def pack(self, segments: list[Segment] | None = None) -> bytes:
        """SQE bytes with ``segments`` inline (at most MAX_INLINE_SEGMENTS)."""
        head = struct.pack(SQE_FORMAT, self.opcode, self.flags, self.nseg, self.request_id,
                           self.device_offset, self.length, self.indirect_gpa, self.reserved)
        body = b"".join(pack_segment(s) for s in (segments or []))
        return (head + body).ljust(SQE_SIZE, b"\0")

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> "Descriptor":
        return cls(*struct.unpack_from(SQE_FORMAT, raw, 0))


@dataclass(frozen=True)
class Completion:
    request_id: int
    status: int
    reason: int
    transferred: int
    sequence: int

    def pack(self) -> bytes:
        return struct.pack(CQE_FORMAT, self.request_id, self.status, self.reason,
                           self.transferred, self.sequence)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> "Completion":
        return cls(*struct.unpack_from(CQE_FORMAT, raw, 0))


def pack_segment(segment: Segment) -> bytes:
    return struct.pack(SEGMENT_FORMAT, segment.gpa, segment.length, segment.reserved)


def unpack_segments(raw: bytes | memoryview, count: int, offset: int = 0) -> list[Segment]:
    return [Segment(*struct.unpack_from(SEGMENT_FORMAT, raw, offset + i * SEGMENT_SIZE))
            for i in range(count)]


def render_c_header() -> str:
    """The C header for the guest side, generated from the definitions above."""
    lines = [
        "/* wdfhil device ABI: GENERATED from device_model/abi.py at image build time. */",
        "#ifndef WDFHIL_ABI_H",
        "#define WDFHIL_ABI_H",
        "#ifdef __KERNEL__",
        "#include <linux/types.h>",
        "typedef __u8 wh_u8; typedef __u16 wh_u16; typedef __u32 wh_u32; typedef __u64 wh_u64;",
        "#else",
        "#include <stdint.h>",
        "typedef uint8_t wh_u8; typedef uint16_t wh_u16; typedef uint32_t wh_u32; typedef uint64_t wh_u64;",
        "#endif",
        "",
    ]
    scalars = {
        "ABI_VERSION": ABI_VERSION, "MAGIC": MAGIC, "BAR2_SIZE": BAR2_SIZE,
        "RING_ENTRIES": RING_ENTRIES, "HEADER_OFFSET": HEADER_OFFSET, "HEADER_SIZE": HEADER_SIZE,
        "SQ_OFFSET": SQ_OFFSET, "SQE_SIZE": SQE_SIZE, "CQ_OFFSET": CQ_OFFSET,
        "CQE_SIZE": CQE_SIZE, "DATA_OFFSET": DATA_OFFSET, "DATA_SIZE": DATA_SIZE,
        "MAX_INLINE_SEGMENTS": MAX_INLINE_SEGMENTS, "MAX_SEGMENTS": MAX_SEGMENTS,
        "MAX_TRANSFER": MAX_TRANSFER, "SEGMENT_SIZE": SEGMENT_SIZE,
        "VECTOR_SUBMIT": VECTOR_SUBMIT, "VECTOR_ADMIN": VECTOR_ADMIN,
        "VECTOR_COMPLETION": VECTOR_COMPLETION, "NUM_VECTORS": NUM_VECTORS,
        "PCI_VENDOR_ID": PCI_VENDOR_ID, "PCI_DEVICE_ID": PCI_DEVICE_ID,
        "BAR0_INTR_MASK": BAR0_INTR_MASK, "BAR0_INTR_STATUS": BAR0_INTR_STATUS,
        "BAR0_IV_POSITION": BAR0_IV_POSITION, "BAR0_DOORBELL": BAR0_DOORBELL,
    }
    for name, value in scalars.items():
        lines.append(f"#define WH_{name} 0x{value:x}u")
    lines.append(f"#define WH_RING_ERROR_REQUEST_ID 0x{RING_ERROR_REQUEST_ID:x}ull")
    for name, (offset, _fmt) in HEADER_FIELDS.items():
        lines.append(f"#define WH_HDR_{name.upper()} 0x{offset:x}u")
    for enum_cls, prefix in ((Feature, "FEATURE"), (DeviceStatus, "STATUS"),
                             (AdminCommand, "ADMIN"), (Opcode, "OP"),
                             (DescriptorFlag, "DESC"), (CompletionStatus, "CQ"),
                             (ErrorReason, "ERR")):
        for member in enum_cls:
            lines.append(f"#define WH_{prefix}_{member.name} {int(member)}u")
    lines += [
        "",
        "struct wh_segment { wh_u64 gpa; wh_u32 length; wh_u32 reserved; };",
        "struct wh_sqe {",
        "    wh_u16 opcode; wh_u16 flags; wh_u32 nseg;",
        "    wh_u64 request_id; wh_u64 device_offset; wh_u64 length;",
        "    wh_u64 indirect_gpa; wh_u64 reserved;",
        f"    struct wh_segment seg[{MAX_INLINE_SEGMENTS}];",
        f"    wh_u8 pad[{SQE_SIZE - SQE_HEAD_SIZE - MAX_INLINE_SEGMENTS * SEGMENT_SIZE}];",
        "};",
        "struct wh_cqe { wh_u64 request_id; wh_u32 status; wh_u32 reason; wh_u64 transferred; wh_u64 sequence; };",
        f"_Static_assert(sizeof(struct wh_sqe) == {SQE_SIZE}, \"sqe size\");",
        f"_Static_assert(sizeof(struct wh_cqe) == {CQE_SIZE}, \"cqe size\");",
        f"_Static_assert(sizeof(struct wh_segment) == {SEGMENT_SIZE}, \"segment size\");",
    ]
    # The bus-master personality's part (its own module; imported here, at call time,
    # because it builds on this one).
    from device_model.busmaster_abi import render_c_lines as busmaster_c_lines
    lines += busmaster_c_lines()
    lines += ["#endif /* WDFHIL_ABI_H */", ""]
    return "\n".join(lines)
