"""WDF_MEMORY_DESCRIPTOR: a buffer described by address, by MDL or by WDFMEMORY handle.

The C structure is a tagged union; here the three arms share one dataclass
with the C member names (Buffer/Length, Mdl/BufferLength, Memory/Offsets)
and the INIT helpers fill the right ones. ``ValidateMemoryDescriptor`` (in
the API) checks it as FxRequestBuffer::ValidateMemoryDescriptor does and
yields a :class:`DescribedBuffer`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mdl import Mdl
    from .memory import MemoryObject


class WDF_MEMORY_DESCRIPTOR_TYPE(enum.IntEnum):
    WdfMemoryDescriptorTypeInvalid = 0
    WdfMemoryDescriptorTypeBuffer = 1
    WdfMemoryDescriptorTypeMdl = 2
    WdfMemoryDescriptorTypeHandle = 3


WdfMemoryDescriptorTypeInvalid = WDF_MEMORY_DESCRIPTOR_TYPE.WdfMemoryDescriptorTypeInvalid
WdfMemoryDescriptorTypeBuffer = WDF_MEMORY_DESCRIPTOR_TYPE.WdfMemoryDescriptorTypeBuffer
WdfMemoryDescriptorTypeMdl = WDF_MEMORY_DESCRIPTOR_TYPE.WdfMemoryDescriptorTypeMdl
WdfMemoryDescriptorTypeHandle = WDF_MEMORY_DESCRIPTOR_TYPE.WdfMemoryDescriptorTypeHandle

# FxRequestBuffer::ValidateMemoryDescriptor flags
MemoryDescriptorNullAllowed = 0x1
MemoryDescriptorNoBufferAllowed = 0x2


@dataclass
class WDFMEMORY_OFFSET:
    BufferOffset: int = 0
    BufferLength: int = 0


@dataclass
class WDF_MEMORY_DESCRIPTOR:
    Type: int = WdfMemoryDescriptorTypeInvalid
    Buffer: Any = None          # BufferType: kernel virtual address
    Length: int = 0
    Mdl: Any = None             # MdlType: an MDL (object or address)
    BufferLength: int = 0
    Memory: int | None = None   # HandleType: WDFMEMORY
    Offsets: WDFMEMORY_OFFSET | None = None


def WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(Buffer: Any, BufferLength: int) -> WDF_MEMORY_DESCRIPTOR:
    return WDF_MEMORY_DESCRIPTOR(Type=WdfMemoryDescriptorTypeBuffer, Buffer=Buffer, Length=BufferLength)


def WDF_MEMORY_DESCRIPTOR_INIT_MDL(Mdl: Any, BufferLength: int) -> WDF_MEMORY_DESCRIPTOR:
    return WDF_MEMORY_DESCRIPTOR(Type=WdfMemoryDescriptorTypeMdl, Mdl=Mdl, BufferLength=BufferLength)


def WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(Memory: int | None,
                                      Offsets: WDFMEMORY_OFFSET | None = None) -> WDF_MEMORY_DESCRIPTOR:
    return WDF_MEMORY_DESCRIPTOR(Type=WdfMemoryDescriptorTypeHandle, Memory=Memory, Offsets=Offsets)


@dataclass
class DescribedBuffer:
    """A validated descriptor (FxRequestBuffer): what it designates, resolved."""

    kind: str                                  # "none", "buffer", "mdl", "memory"
    buffer: int = 0
    length: int = 0
    mdl: "Mdl | None" = None
    memory: "MemoryObject | None" = None
    offsets: WDFMEMORY_OFFSET | None = None

    def buffer_length(self) -> int:
        """GetBufferLength: whole buffer if both offsets are 0, size - offset if the length is 0."""
        if self.kind == "memory":
            offsets = self.offsets
            size = self.memory.size
            if offsets is None or (offsets.BufferOffset == 0 and offsets.BufferLength == 0):
                return size
            if offsets.BufferLength == 0:
                return size - offsets.BufferOffset
            return offsets.BufferLength
        return self.length

    def start(self) -> int:
        """Kernel virtual address of the first described byte (MDL: its system address)."""
        if self.kind == "memory":
            return self.memory.buffer + (self.offsets.BufferOffset if self.offsets else 0)
        if self.kind == "mdl":
            return self.mdl.MappedSystemVa or self.mdl.virtual_address()
        return self.buffer
