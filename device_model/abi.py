"""Device ABI v2: the layout of the device's BAR2 (registers, rings, descriptors).

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

v2 adds the request ring (guest I/O: a program's open/read/write/ioctl on
``/dev/wdfioN`` becomes a request entry the host validates and hands to the
emulated framework): its own ring pair in BAR2 (RQ/RCQ), doorbell
VECTOR_REQUEST and MSI-X vector VECTOR_IO_COMPLETION, entries in
:data:`RQE_FORMAT`, completions with an NTSTATUS and ``information``, and the
NTSTATUS -> errno table the guest module applies (:data:`NTSTATUS_ERRNO`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

ABI_VERSION = 2
MAGIC = 0x48464457  # "WDFH" read as a little-endian u32

# ivshmem doorbell vectors (guest -> device) and MSI-X vectors (device -> guest).
VECTOR_SUBMIT = 0      # guest rings: new submissions in the submission ring
VECTOR_ADMIN = 1       # guest rings: an admin command is in HDR_ADMIN_CMD
VECTOR_COMPLETION = 0  # device raises: new entries in the completion ring
VECTOR_REQUEST = 2     # guest rings: new entries in the request ring (v2)
VECTOR_IO_COMPLETION = 1  # device raises: new entries in the request completion ring (v2)
NUM_VECTORS = 3

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
# The request ring (v2): entries the guest module posts for a program's I/O, and
# their completions; RING_ENTRIES each, between the DMA rings and the data memory.
RQ_OFFSET = 0x20000
RQE_SIZE = 256
RCQ_OFFSET = RQ_OFFSET + RING_ENTRIES * RQE_SIZE      # 0x30000
RCQE_SIZE = 32
IO_INLINE_PFNS = 16                 # page frame numbers that fit in a request entry
IO_MAX_LENGTH = 64 << 20            # bytes of a request's page list (direct I/O)
IO_MAX_PAGES = IO_MAX_LENGTH // 4096 + 1   # an unaligned IO_MAX_LENGTH buffer
IO_MAX_SYSTEM_BUFFER = 4 << 20      # bytes of a system buffer (guest kmalloc's ceiling)
IO_MAX_OPEN_FILES = 4096            # file objects open at once (host side)
IO_MAX_IN_FLIGHT = 1024             # requests the host holds at once; more are refused
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
    REQUEST_RING = 1 << 3    # v2: a host endpoint serves the request ring (/dev/wdfioN works)


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
    # Request ring (v2) refusals; the rest of the request ring's reuse the ones above.
    BAD_FILE = 16              # file_id not open (or already open, for CREATE), or 0
    DUPLICATE_REQUEST = 17     # request_id already in flight (or RING_ERROR_REQUEST_ID)
    UNKNOWN_REQUEST = 18       # CANCEL names no request in flight (not completed: CANCEL never is)
    TOO_MANY_REQUESTS = 19     # IO_MAX_IN_FLIGHT requests or IO_MAX_OPEN_FILES files already


class IoMajor(enum.IntEnum):
    """A request entry's major function: the IRP_MJ_* value of the same name (v2)."""
    CREATE = 0x00
    CLOSE = 0x02
    READ = 0x03
    WRITE = 0x04
    DEVICE_CONTROL = 0x0E
    INTERNAL_DEVICE_CONTROL = 0x0F
    CLEANUP = 0x12
    CANCEL = 0x80       # not an IRP: cancel request ``target_id`` (never completed itself)


class IoFlag(enum.IntFlag):
    INDIRECT = 1 << 0   # the PFN list is a table of page_count u64 at table_gpa


class IoType(enum.IntEnum):
    """How READ and WRITE buffers travel (header ``io_type``; WdfDeviceIoBuffered/Direct)."""
    BUFFERED = 0        # a system buffer in guest kernel memory (system_gpa)
    DIRECT = 1          # the caller's pinned pages (page list)


class TransferMethod(enum.IntEnum):
    """CTL_CODE bits 0-1 of an IOCTL code."""
    BUFFERED = 0        # one system buffer of max(input, output) bytes
    IN_DIRECT = 1       # input in a system buffer; output buffer as pinned pages
    OUT_DIRECT = 2      # the same (the device writes the pages)
    NEITHER = 3         # as IN/OUT_DIRECT, and the caller's input address in user_input


def ctl_code(device_type: int, function: int, method: int, access: int = 0) -> int:
    """Windows' CTL_CODE macro."""
    return (device_type << 16) | (access << 14) | (function << 2) | method


# The guest module's ioctl on /dev/wdfioN: _IOWR('W', 0x40, struct wh_io_call).
IO_CALL_SIZE = 56
IO_CALL_ERRNO = 1
IOC_CALL = (3 << 30) | (IO_CALL_SIZE << 16) | (ord("W") << 8) | 0x40

# NTSTATUS values the guest module maps to an errno (anything else with the error
# severity bits 0b11 -> EIO; warnings (0b10) and below 0x80000000 count as success
# for read/write, except as listed). END_OF_FILE maps to 0 (read returns 0 bytes).
NTSTATUS: dict[str, int] = {
    "STATUS_SUCCESS": 0x00000000,
    "STATUS_PENDING": 0x00000103,
    "STATUS_BUFFER_OVERFLOW": 0x80000005,
    "STATUS_DEVICE_BUSY": 0x80000011,
    "STATUS_UNSUCCESSFUL": 0xC0000001,
    "STATUS_NOT_IMPLEMENTED": 0xC0000002,
    "STATUS_INVALID_HANDLE": 0xC0000008,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_NO_SUCH_DEVICE": 0xC000000E,
    "STATUS_INVALID_DEVICE_REQUEST": 0xC0000010,
    "STATUS_END_OF_FILE": 0xC0000011,
    "STATUS_NO_MEMORY": 0xC0000017,
    "STATUS_ACCESS_DENIED": 0xC0000022,
    "STATUS_BUFFER_TOO_SMALL": 0xC0000023,
    "STATUS_INSUFFICIENT_RESOURCES": 0xC000009A,
    "STATUS_DEVICE_DATA_ERROR": 0xC000009C,
    "STATUS_DEVICE_NOT_READY": 0xC00000A3,
    "STATUS_IO_TIMEOUT": 0xC00000B5,
    "STATUS_NOT_SUPPORTED": 0xC00000BB,
    "STATUS_CANCELLED": 0xC0000120,
    "STATUS_INVALID_DEVICE_STATE": 0xC0000184,
    "STATUS_DEVICE_REMOVED": 0xC00002B6,
}
# NTSTATUS -> errno name (the guest module's table; docs/device-abi.md prints it).
NTSTATUS_ERRNO: dict[str, str] = {
    "STATUS_BUFFER_OVERFLOW": "EOVERFLOW",
    "STATUS_DEVICE_BUSY": "EBUSY",
    "STATUS_UNSUCCESSFUL": "EIO",
    "STATUS_NOT_IMPLEMENTED": "ENOSYS",
    "STATUS_INVALID_HANDLE": "EBADF",
    "STATUS_INVALID_PARAMETER": "EINVAL",
    "STATUS_NO_SUCH_DEVICE": "ENODEV",
    "STATUS_INVALID_DEVICE_REQUEST": "ENOTTY",
    "STATUS_NO_MEMORY": "ENOMEM",
    "STATUS_ACCESS_DENIED": "EACCES",
    "STATUS_BUFFER_TOO_SMALL": "ENOBUFS",
    "STATUS_INSUFFICIENT_RESOURCES": "ENOMEM",
    "STATUS_DEVICE_DATA_ERROR": "EIO",
    "STATUS_DEVICE_NOT_READY": "EAGAIN",
    "STATUS_IO_TIMEOUT": "ETIMEDOUT",
    "STATUS_NOT_SUPPORTED": "EOPNOTSUPP",
    "STATUS_CANCELLED": "ECANCELED",
    "STATUS_INVALID_DEVICE_STATE": "EBADFD",
    "STATUS_DEVICE_REMOVED": "ENODEV",
}
NTSTATUS_DEFAULT_ERRNO = "EIO"    # any other status with the error severity (0xC...)


def ntstatus_errno(status: int) -> str | None:
    """The errno name read/write return for ``status`` (None: success; "" : EOF, 0 bytes)."""
    by_value = {v: k for k, v in NTSTATUS.items()}
    name = by_value.get(status)
    if name == "STATUS_END_OF_FILE":
        return ""
    if name in NTSTATUS_ERRNO:
        return NTSTATUS_ERRNO[name]
    if status >= 0xC0000000:
        return NTSTATUS_DEFAULT_ERRNO
    return None


def ntstatus_for(reason: "ErrorReason") -> int:
    """The NTSTATUS a refused request entry completes with."""
    if reason == ErrorReason.DEVICE_NOT_READY:
        return NTSTATUS["STATUS_DEVICE_NOT_READY"]
    if reason == ErrorReason.BAD_FILE:
        return NTSTATUS["STATUS_INVALID_HANDLE"]
    if reason == ErrorReason.TOO_MANY_REQUESTS:
        return NTSTATUS["STATUS_INSUFFICIENT_RESOURCES"]
    if reason == ErrorReason.INTERNAL:
        return NTSTATUS["STATUS_UNSUCCESSFUL"]
    return NTSTATUS["STATUS_INVALID_PARAMETER"]


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
    # v2: the request ring.
    "rq_offset":     (0x68, "<I"),  # D: RQ_OFFSET
    "rcq_offset":    (0x6C, "<I"),  # D: RCQ_OFFSET
    "rq_tail":       (0x70, "<I"),  # G: producer index of the request ring
    "rq_head":       (0x74, "<I"),  # D: consumer index of the request ring
    "rcq_tail":      (0x78, "<I"),  # D: producer index of the request completion ring
    "rcq_head":      (0x7C, "<I"),  # G: consumer index of the request completion ring
    "io_type":       (0x80, "<I"),  # D: IoType of READ/WRITE buffers
    "io_max_pages":  (0x84, "<I"),  # D: IO_MAX_PAGES
    "io_max_length": (0x88, "<I"),  # D: IO_MAX_LENGTH
    "io_max_system": (0x8C, "<I"),  # D: IO_MAX_SYSTEM_BUFFER
    "io_completions": (0x90, "<Q"),  # D: request completions posted since reset (statistics)
    # G: N + 1 for the guest driver's /dev/wdfhilN, written at the end of its probe, 0 from
    # the start of its remove; the host learns the node is there without asking the guest.
    # Kept across resets.
    "driver_minor":  (0x98, "<I"),
}
HEADER_SIZE = 0xA0

# Submission descriptor (SQE_SIZE bytes).
SQE_FORMAT = "<HHIQQQQQ"  # opcode, flags, nseg, request_id, device_offset, length, indirect_gpa, reserved
SQE_HEAD_SIZE = struct.calcsize(SQE_FORMAT)           # 48
SEGMENT_FORMAT = "<QII"   # gpa, length, reserved (must be 0)
SEGMENT_SIZE = struct.calcsize(SEGMENT_FORMAT)        # 16

# Completion entry (CQE_SIZE bytes).
CQE_FORMAT = "<QIIQQ"     # request_id, status, reason, transferred, sequence
assert struct.calcsize(CQE_FORMAT) == CQE_SIZE
assert SQE_HEAD_SIZE + MAX_INLINE_SEGMENTS * SEGMENT_SIZE <= SQE_SIZE

# Request entry (RQE_SIZE bytes, v2): the head, 4 reserved u64, then IO_INLINE_PFNS u64.
RQE_FORMAT = "<QQHHIIIQQQIIIIQQQ"
# request_id, file_id, major, flags, ioctl_code, input_length, output_length,
# file_offset, target_id, system_gpa, system_length, page_offset, page_length,
# page_count, table_gpa, user_input, user_address
RQE_HEAD_SIZE = struct.calcsize(RQE_FORMAT)           # 0x60
RQE_RESERVED = 4                                      # u64 at 0x60..0x80, must be 0
RQE_PFN_OFFSET = RQE_HEAD_SIZE + 8 * RQE_RESERVED     # 0x80
assert RQE_PFN_OFFSET + 8 * IO_INLINE_PFNS == RQE_SIZE
# Request completion (RCQE_SIZE bytes): request_id, NTSTATUS, reason, information, sequence.
RCQE_FORMAT = "<QIIQQ"
assert struct.calcsize(RCQE_FORMAT) == RCQE_SIZE
assert RCQ_OFFSET + RING_ENTRIES * RCQE_SIZE <= DATA_OFFSET


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


@dataclass(frozen=True)
class RequestEntry:
    """A request ring entry as the guest writes it (``pfns`` inline, at most 16)."""
    request_id: int
    file_id: int
    major: int
    flags: int = 0
    ioctl_code: int = 0
    input_length: int = 0
    output_length: int = 0
    file_offset: int = 0
    target_id: int = 0
    system_gpa: int = 0
    system_length: int = 0
    page_offset: int = 0
    page_length: int = 0
    page_count: int = 0
    table_gpa: int = 0
    user_input: int = 0
    user_address: int = 0
    pfns: tuple[int, ...] = ()
    reserved: tuple[int, ...] = (0, 0, 0, 0)

    def pack(self) -> bytes:
        head = struct.pack(RQE_FORMAT, self.request_id, self.file_id, self.major, self.flags,
                           self.ioctl_code, self.input_length, self.output_length,
                           self.file_offset, self.target_id, self.system_gpa,
                           self.system_length, self.page_offset, self.page_length,
                           self.page_count, self.table_gpa, self.user_input, self.user_address)
        tail = struct.pack(f"<{RQE_RESERVED}Q", *self.reserved)
        pfns = struct.pack(f"<{len(self.pfns)}Q", *self.pfns)
        return (head + tail + pfns).ljust(RQE_SIZE, b"\0")


@dataclass(frozen=True)
class RequestCompletion:
    """A request completion entry: the NTSTATUS and ``information`` (bytes moved)."""
    request_id: int
    status: int
    reason: int
    information: int
    sequence: int

    def pack(self) -> bytes:
        return struct.pack(RCQE_FORMAT, self.request_id, self.status, self.reason,
                           self.information, self.sequence)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> "RequestCompletion":
        return cls(*struct.unpack_from(RCQE_FORMAT, raw, 0))


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
        "#include <linux/errno.h>",
        "typedef __u8 wh_u8; typedef __u16 wh_u16; typedef __u32 wh_u32; typedef __u64 wh_u64;",
        "#else",
        "#include <stdint.h>",
        "#include <errno.h>",
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
        "VECTOR_REQUEST": VECTOR_REQUEST, "VECTOR_IO_COMPLETION": VECTOR_IO_COMPLETION,
        "RQ_OFFSET": RQ_OFFSET, "RQE_SIZE": RQE_SIZE, "RCQ_OFFSET": RCQ_OFFSET,
        "RCQE_SIZE": RCQE_SIZE, "IO_INLINE_PFNS": IO_INLINE_PFNS, "IO_MAX_LENGTH": IO_MAX_LENGTH,
        "IO_MAX_PAGES": IO_MAX_PAGES, "IO_MAX_SYSTEM_BUFFER": IO_MAX_SYSTEM_BUFFER,
        "IOC_CALL": IOC_CALL,
    }
    for name, value in scalars.items():
        lines.append(f"#define WH_{name} 0x{value:x}u")
    lines.append(f"#define WH_RING_ERROR_REQUEST_ID 0x{RING_ERROR_REQUEST_ID:x}ull")
    for name, (offset, _fmt) in HEADER_FIELDS.items():
        lines.append(f"#define WH_HDR_{name.upper()} 0x{offset:x}u")
    for enum_cls, prefix in ((Feature, "FEATURE"), (DeviceStatus, "STATUS"),
                             (AdminCommand, "ADMIN"), (Opcode, "OP"),
                             (DescriptorFlag, "DESC"), (CompletionStatus, "CQ"),
                             (ErrorReason, "ERR"), (IoMajor, "IO"), (IoFlag, "IOF"),
                             (IoType, "IOTYPE"), (TransferMethod, "METHOD")):
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
        "",
        "/* v2: the request ring. */",
        "struct wh_rqe {",
        "    wh_u64 request_id; wh_u64 file_id;",
        "    wh_u16 major; wh_u16 flags; wh_u32 ioctl_code;",
        "    wh_u32 input_length; wh_u32 output_length;",
        "    wh_u64 file_offset; wh_u64 target_id;",
        "    wh_u64 system_gpa; wh_u32 system_length; wh_u32 page_offset;",
        "    wh_u32 page_length; wh_u32 page_count; wh_u64 table_gpa;",
        "    wh_u64 user_input; wh_u64 user_address;",
        f"    wh_u64 reserved[{RQE_RESERVED}];",
        f"    wh_u64 pfn[{IO_INLINE_PFNS}];",
        "};",
        "struct wh_rcqe { wh_u64 request_id; wh_u32 status; wh_u32 reason; wh_u64 information; wh_u64 sequence; };",
        f"_Static_assert(sizeof(struct wh_rqe) == {RQE_SIZE}, \"rqe size\");",
        f"_Static_assert(sizeof(struct wh_rcqe) == {RCQE_SIZE}, \"rcqe size\");",
        "",
        "/* The guest module's user interface: ioctl(fd, WH_IOC_CALL, &call) on /dev/wdfioN",
        "   issues READ, WRITE or (INTERNAL_)DEVICE_CONTROL and returns the exact NTSTATUS. */",
        "struct wh_io_call {",
        "    wh_u32 major; wh_u32 ioctl_code;",
        "    wh_u64 input; wh_u64 output;            /* user pointers */",
        "    wh_u32 input_length; wh_u32 output_length;",
        "    wh_u64 file_offset;",
        "    wh_u32 flags;                           /* WH_IO_CALL_ERRNO */",
        "    wh_u32 status;                          /* out: NTSTATUS */",
        "    wh_u64 information;                     /* out */",
        "};",
        f"_Static_assert(sizeof(struct wh_io_call) == {IO_CALL_SIZE}, \"io call size\");",
        f"#define WH_IO_CALL_ERRNO {IO_CALL_ERRNO}u   /* fail with the mapped errno, as read/write do */",
    ]
    for name, value in NTSTATUS.items():
        lines.append(f"#define WH_{name} 0x{value:08x}u")
    lines += [
        "/* NTSTATUS -> errno (docs/device-abi.md): 0 success, WH_ERRNO_EOF end of file. */",
        "#define WH_ERRNO_EOF (-1)",
        "static inline int wh_ntstatus_errno(wh_u32 status)",
        "{",
        "    switch (status) {",
        f"    case 0x{NTSTATUS['STATUS_END_OF_FILE']:08x}u: return WH_ERRNO_EOF;",
    ]
    for name, err in NTSTATUS_ERRNO.items():
        lines.append(f"    case 0x{NTSTATUS[name]:08x}u: return {err};")
    lines += [
        "    }",
        f"    return status >= 0xc0000000u ? {NTSTATUS_DEFAULT_ERRNO} : 0;",
        "}",
    ]
    # The bus-master personality's part (its own module; imported here, at call time,
    # because it builds on this one).
    from device_model.busmaster_abi import render_c_lines as busmaster_c_lines
    lines += busmaster_c_lines()
    lines += ["#endif /* WDFHIL_ABI_H */", ""]
    return "\n".join(lines)
