"""WDF_MEMORY_DESCRIPTOR validation (FxRequestBuffer::ValidateMemoryDescriptor [S])."""

from __future__ import annotations

from ..memory_descriptor import (WDF_MEMORY_DESCRIPTOR, DescribedBuffer, MemoryDescriptorNoBufferAllowed,
                          MemoryDescriptorNullAllowed, WdfMemoryDescriptorTypeBuffer,
                          WdfMemoryDescriptorTypeHandle, WdfMemoryDescriptorTypeMdl)
from ..errors import ArgumentError
from ..ntstatus import NTSTATUS
from ..objects import IFX_TYPE_MEMORY

_SIZE_T_MAX = 0xFFFFFFFFFFFFFFFF


class MemoryDescriptorApi:
    def ValidateMemoryDescriptor(self, Descriptor: WDF_MEMORY_DESCRIPTOR | None,
                                 Flags: int = 0) -> tuple[int, DescribedBuffer | None]:
        """-> (status, described buffer), as the framework checks a descriptor a driver passes
        to a send or format call: a missing pointer or handle, an unknown type, or a NULL
        pointer with a length: STATUS_INVALID_PARAMETER; offsets past the memory (or
        overflowing): STATUS_INTEGER_OVERFLOW; a bad handle: 0x10D/0x5."""
        invalid = NTSTATUS.STATUS_INVALID_PARAMETER
        if Descriptor is None:
            if Flags & MemoryDescriptorNullAllowed:
                return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("none")
            return invalid, None
        if not isinstance(Descriptor, WDF_MEMORY_DESCRIPTOR):
            raise ArgumentError("expected a WDF_MEMORY_DESCRIPTOR", field="Descriptor",
                                value=type(Descriptor).__name__)
        kind = Descriptor.Type
        if kind == WdfMemoryDescriptorTypeBuffer:
            buffer = Descriptor.Buffer
            if not buffer:
                if not Flags & MemoryDescriptorNoBufferAllowed or Descriptor.Length != 0:
                    return invalid, None
                return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("none")
            if not isinstance(buffer, int):
                raise ArgumentError("Buffer is a kernel virtual address", field="Buffer", value=type(buffer).__name__)
            if self._verifier_on:
                self._check_request_buffer(buffer, Descriptor.Length, "a memory descriptor describes")
            return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("buffer", buffer=buffer, length=Descriptor.Length)
        if kind == WdfMemoryDescriptorTypeMdl:
            if not Descriptor.Mdl:
                if not Flags & MemoryDescriptorNoBufferAllowed or Descriptor.BufferLength != 0:
                    return invalid, None
                return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("none")
            mdl = self._mdl(Descriptor.Mdl)
            if self._verifier_on:
                self._check_request_buffer(mdl.virtual_address(), mdl.ByteCount, "a memory descriptor's MDL describes")
            return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("mdl", mdl=mdl, length=Descriptor.BufferLength)
        if kind == WdfMemoryDescriptorTypeHandle:
            if not Descriptor.Memory:
                if Flags & MemoryDescriptorNoBufferAllowed:
                    return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("none")
                return invalid, None
            memory = self._object(Descriptor.Memory, IFX_TYPE_MEMORY)
            offsets = Descriptor.Offsets
            if offsets is not None:
                total = offsets.BufferLength + offsets.BufferOffset
                if total > _SIZE_T_MAX or total > memory.size:
                    return NTSTATUS.STATUS_INTEGER_OVERFLOW, None
            if self._verifier_on and memory.request is None:
                self._check_request_buffer(memory.buffer, memory.size, f"a memory descriptor of {memory.describe()} describes")
            return NTSTATUS.STATUS_SUCCESS, DescribedBuffer("memory", memory=memory, offsets=offsets)
        return invalid, None
