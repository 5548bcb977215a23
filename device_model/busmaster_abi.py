"""The bus-master personality's ABI: its register block, descriptor and completion formats.

A driver (on the host, written against the emulated framework) programs the
bus-master device through register reads and writes, as WRITE_REGISTER_ULONG
does on a real device's BAR: the base and size of a descriptor ring in guest
memory (a common buffer), a tail doorbell, interrupt status and mask, reset,
and read-only capability registers (address width, limits). The device
fetches each descriptor from guest memory by DMA, moves the data with the
core's validated DMA engine and writes the completion back into the
descriptor's own completion record, then raises an interrupt.

This is an additive part of the device ABI (``device_model/abi.py`` renders it
into the same generated C header, ``WH_BM_*``), kept in its own module so that
the echo device's ABI and this one change independently. Refusal reasons are
the echo device's :class:`~device_model.abi.ErrorReason` values (the same
check earns the same reason on both devices) plus :class:`BusMasterReason`
for what only this device can get wrong. Documented in docs/device-abi.md
("The bus-master personality").
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from device_model.abi import MAX_SEGMENTS, SEGMENT_SIZE

BM_ID = 0x314D4257          # "WBM1" read as a little-endian u32
BM_VERSION = 1
BM_REGISTERS_SIZE = 0x100   # the register block; offsets beyond it are not decoded

# Registers: name -> (offset, access). Every register is 32 bits wide; the *_LO/_HI
# pairs of a 64-bit value may also be accessed with one 8-byte access at the LO offset.
# Access: "ro" read-only, "rw" read-write, "w1c" write 1 to clear, "cmd" (bits act
# when written; a command bit reads back 0).
BM_REGISTERS: dict[str, tuple[int, str]] = {
    "id":             (0x00, "ro"),   # BM_ID
    "version":        (0x04, "ro"),   # BM_VERSION
    "caps":           (0x08, "ro"),   # address width in bits 0-7 (BM_CAPS_ADDRESS_BITS), BmCaps above
    "control":        (0x0C, "cmd"),  # BmControl: ENABLE (rw), RESET (command)
    "status":         (0x10, "ro"),   # BmStatus: ENABLED, HALTED
    "error":          (0x14, "ro"),   # reason that halted the ring (0 while not halted)
    "ring_base_lo":   (0x18, "rw"),   # bus address of descriptor 0 (64-byte aligned)
    "ring_base_hi":   (0x1C, "rw"),
    "ring_size":      (0x20, "rw"),   # descriptors in the ring: a power of two, 1..BM_MAX_RING
    "ring_head":      (0x24, "ro"),   # next slot the device fetches (0..ring_size-1)
    "ring_tail":      (0x28, "rw"),   # doorbell: first slot the driver has NOT handed over
    "int_status":     (0x2C, "w1c"),  # BmInterrupt causes; write 1s to acknowledge
    "int_mask":       (0x30, "rw"),   # BmInterrupt bits, 1 = masked (reset: all masked)
    "completed":      (0x34, "ro"),   # completion records written since reset (u32, wraps)
    "last_error":     (0x38, "ro"),   # reason of the last refused descriptor
    "dma_mask_lo":    (0x40, "ro"),   # highest bus address the device can drive
    "dma_mask_hi":    (0x44, "ro"),
    "max_transfer":   (0x48, "ro"),   # bytes per descriptor
    "max_segments":   (0x4C, "ro"),   # segments per table
    "segment_align":  (0x50, "ro"),   # every segment's address and length a multiple of it
    "data_size":      (0x54, "ro"),   # bytes of the device's own data memory
}
BM_REGISTER_PAIRS = ("ring_base", "dma_mask")   # 64-bit values as _lo/_hi
BM_MAX_RING = 4096
BM_RING_ALIGN = 64


BM_CAPS_ADDRESS_BITS = 0xFF    # caps bits 0-7: how many address bits the device drives


class BmCaps(enum.IntFlag):
    SEGMENT_TABLE = 1 << 8     # descriptors may point at a segment table
    REMAPPING = 1 << 9         # bus addresses are translated (an IOVA space the host owns)


class BmControl(enum.IntFlag):
    ENABLE = 1 << 0            # the device walks the ring on a doorbell
    RESET = 1 << 1             # every register to its reset value (reads back 0)


class BmStatus(enum.IntFlag):
    ENABLED = 1 << 0
    HALTED = 1 << 1            # a ring-level error stopped the device (`error` says why); RESET recovers


class BmInterrupt(enum.IntFlag):
    COMPLETION = 1 << 0        # completion records were written
    ERROR = 1 << 1             # the device halted (`error`, `status`)


class BmOpcode(enum.IntEnum):
    NOP = 0
    TO_DEVICE = 1              # the device reads guest memory into its data memory (echo WRITE)
    FROM_DEVICE = 2            # the device writes its data memory into guest memory (echo READ)


class BmDescriptorFlag(enum.IntFlag):
    SEGMENT_TABLE = 1 << 0     # `address` is a table of `nseg` segments in guest memory


class BusMasterReason(enum.IntEnum):
    """Reasons only the bus-master device gives; the rest are ``abi.ErrorReason``."""

    TRANSLATION_FAULT = 0x100  # a bus address with no translation (DMA remapping)
    RING_CONFIG = 0x101        # ring base misaligned, ring size not a power of two in range,
    #                            or the ring reprogrammed while enabled


# Descriptor (BM_DESCRIPTOR_SIZE bytes, in the ring in guest memory). The driver writes
# bytes 0..47; the device writes the completion record (48..63) when it is done.
BM_DESCRIPTOR_SIZE = 64
BM_DESCRIPTOR_FORMAT = "<HHIQIIQQQ"  # opcode, flags, nseg, request_id, device_offset,
#                                      length, address, reserved0, reserved1
BM_COMPLETION_OFFSET = 48
BM_COMPLETION_FORMAT = "<IIII"       # done, status, reason, transferred
BM_COMPLETION_SIZE = struct.calcsize(BM_COMPLETION_FORMAT)
BM_DONE = 1                          # `done` once the record is complete (written last)
BM_TABLE_ALIGN = SEGMENT_SIZE        # a segment table: the echo's 16-byte segments
BM_MAX_SEGMENTS = MAX_SEGMENTS
assert struct.calcsize(BM_DESCRIPTOR_FORMAT) == BM_COMPLETION_OFFSET
assert BM_COMPLETION_OFFSET + BM_COMPLETION_SIZE == BM_DESCRIPTOR_SIZE


@dataclass(frozen=True)
class BmDescriptor:
    """One descriptor as the driver writes it (the completion record left zero)."""

    opcode: int
    request_id: int
    length: int
    address: int
    device_offset: int = 0
    flags: int = 0
    nseg: int = 1
    reserved0: int = 0
    reserved1: int = 0

    def pack(self) -> bytes:
        head = struct.pack(BM_DESCRIPTOR_FORMAT, self.opcode, self.flags, self.nseg,
                           self.request_id, self.device_offset, self.length, self.address,
                           self.reserved0, self.reserved1)
        return head + bytes(BM_COMPLETION_SIZE)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> "BmDescriptor":
        (opcode, flags, nseg, request_id, device_offset, length, address, r0,
         r1) = struct.unpack_from(BM_DESCRIPTOR_FORMAT, raw, 0)
        return cls(opcode, request_id, length, address, device_offset, flags, nseg, r0, r1)


@dataclass(frozen=True)
class BmCompletion:
    """The completion record the device writes into a descriptor."""

    done: int
    status: int          # abi.CompletionStatus: OK 0, SHORT 1, ERROR 2
    reason: int          # abi.ErrorReason or BusMasterReason (0 unless ERROR)
    transferred: int

    def pack(self) -> bytes:
        return struct.pack(BM_COMPLETION_FORMAT, self.done, self.status, self.reason,
                           self.transferred)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = BM_COMPLETION_OFFSET) -> "BmCompletion":
        return cls(*struct.unpack_from(BM_COMPLETION_FORMAT, raw, offset))


def register_offset(name: str) -> int:
    return BM_REGISTERS[name][0]


def render_c_lines() -> list[str]:
    """The bus-master part of the generated C header (``WH_BM_*``)."""
    lines = ["", "/* bus-master personality (docs/device-abi.md) */"]
    scalars = {
        "ID": BM_ID, "VERSION": BM_VERSION, "REGISTERS_SIZE": BM_REGISTERS_SIZE,
        "MAX_RING": BM_MAX_RING, "RING_ALIGN": BM_RING_ALIGN,
        "DESCRIPTOR_SIZE": BM_DESCRIPTOR_SIZE, "COMPLETION_OFFSET": BM_COMPLETION_OFFSET,
        "DONE": BM_DONE, "TABLE_ALIGN": BM_TABLE_ALIGN, "CAPS_ADDRESS_BITS": BM_CAPS_ADDRESS_BITS,
    }
    for name, value in scalars.items():
        lines.append(f"#define WH_BM_{name} 0x{value:x}u")
    for name, (offset, _access) in BM_REGISTERS.items():
        lines.append(f"#define WH_BM_REG_{name.upper()} 0x{offset:x}u")
    for enum_cls, prefix in ((BmCaps, "CAPS"), (BmControl, "CONTROL"), (BmStatus, "STATUS"),
                             (BmInterrupt, "INT"), (BmOpcode, "OP"),
                             (BmDescriptorFlag, "DESC"), (BusMasterReason, "ERR")):
        for member in enum_cls:
            lines.append(f"#define WH_BM_{prefix}_{member.name} 0x{int(member):x}u")
    lines += [
        "struct wh_bm_descriptor {",
        "    wh_u16 opcode; wh_u16 flags; wh_u32 nseg; wh_u64 request_id;",
        "    wh_u32 device_offset; wh_u32 length; wh_u64 address; wh_u64 reserved[2];",
        "    wh_u32 done; wh_u32 status; wh_u32 reason; wh_u32 transferred;",
        "};",
        f"_Static_assert(sizeof(struct wh_bm_descriptor) == {BM_DESCRIPTOR_SIZE}, \"bm descriptor size\");",
    ]
    return lines
