"""WDF_MEMORY_DESCRIPTOR validation and effective lengths; WDF_ALIGN_SIZE_UP/DOWN."""

import pytest

from framework_emu import (NTSTATUS, WDF_ALIGN_SIZE_DOWN, WDF_ALIGN_SIZE_UP, WDF_MEMORY_DESCRIPTOR,
                           WDF_MEMORY_DESCRIPTOR_INIT_BUFFER, WDF_MEMORY_DESCRIPTOR_INIT_HANDLE,
                           WDF_MEMORY_DESCRIPTOR_INIT_MDL, WDFMEMORY_OFFSET, BugCheck, MemoryDescriptorNoBufferAllowed,
                           MemoryDescriptorNullAllowed, PoolType)
from framework_emu.errors import ArgumentError

S = NTSTATUS


@pytest.fixture
def mem(fx):
    return fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 100)[1]


def test_buffer_descriptor(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 32, b"Desc")
    status, described = fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(va, 32))
    assert status == S.STATUS_SUCCESS and described.start() == va and described.buffer_length() == 32


def test_mdl_descriptor(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 8192, b"Desc")
    mdl = fx.IoAllocateMdl(va, 8192)
    fx.MmBuildMdlForNonPagedPool(mdl)
    status, described = fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_MDL(mdl, 5000))
    assert status == S.STATUS_SUCCESS and described.mdl is mdl and described.buffer_length() == 5000
    assert described.start() == va


@pytest.mark.parametrize("offsets,length,start", [
    (None, 100, 0),
    (WDFMEMORY_OFFSET(0, 0), 100, 0),      # both 0: the whole buffer
    (WDFMEMORY_OFFSET(10, 0), 90, 10),     # length 0: size - offset
    (WDFMEMORY_OFFSET(10, 20), 20, 10),
    (WDFMEMORY_OFFSET(0, 100), 100, 0),
    (WDFMEMORY_OFFSET(100, 0), 0, 100),    # offset == size is accepted (empty)
])
def test_handle_descriptor_effective_length(fx, mem, offsets, length, start):
    status, described = fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(mem, offsets))
    assert status == S.STATUS_SUCCESS
    assert described.buffer_length() == length
    assert described.start() == fx.WdfMemoryGetBuffer(mem)[0] + start


@pytest.mark.parametrize("offsets", [WDFMEMORY_OFFSET(1, 100), WDFMEMORY_OFFSET(101, 0), WDFMEMORY_OFFSET(0, 101),
                                     WDFMEMORY_OFFSET(2**64 - 1, 2)])
def test_offsets_past_the_buffer_or_overflowing_are_integer_overflow(fx, mem, offsets):
    status, described = fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(mem, offsets))
    assert status == S.STATUS_INTEGER_OVERFLOW and described is None


@pytest.mark.parametrize("descriptor", [
    WDF_MEMORY_DESCRIPTOR(),                                   # type Invalid
    WDF_MEMORY_DESCRIPTOR(Type=7),                             # unknown type
    WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(None, 0),                # missing pointer
    WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(None, 16),
    WDF_MEMORY_DESCRIPTOR_INIT_MDL(None, 0),
    WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(None),                   # missing handle
    None,                                                      # no descriptor
])
def test_missing_pointers_and_unknown_types_are_invalid_parameter(fx, descriptor):
    assert fx.ValidateMemoryDescriptor(descriptor) == (S.STATUS_INVALID_PARAMETER, None)


def test_no_buffer_allowed_still_rejects_a_null_pointer_with_a_length(fx):
    flags = MemoryDescriptorNoBufferAllowed
    assert fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(None, 0), flags)[0] == S.STATUS_SUCCESS
    assert fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(None, 16), flags)[0] == \
        S.STATUS_INVALID_PARAMETER
    assert fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_MDL(None, 8), flags)[0] == S.STATUS_INVALID_PARAMETER
    assert fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(None), flags)[0] == S.STATUS_SUCCESS
    assert fx.ValidateMemoryDescriptor(None, MemoryDescriptorNullAllowed)[0] == S.STATUS_SUCCESS


def test_stale_memory_handle_in_a_descriptor_bug_checks(fx, mem):
    fx.WdfObjectDelete(mem)
    with pytest.raises(BugCheck) as bc:
        fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(mem))
    assert bc.value.params[0] == 0x5 and bc.value.params[2] == 0x100A and "deleted at" in str(bc.value)


def test_freed_mdl_in_a_descriptor_is_a_use_after_free(fx):
    va = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 64, b"Desc")
    mdl = fx.IoAllocateMdl(va, 64)
    fx.IoFreeMdl(mdl)
    with pytest.raises(BugCheck) as bc:
        fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_MDL(mdl, 64))
    assert bc.value.code == 0xD5


@pytest.mark.parametrize("length,align,down,up", [
    (0, 8, 0, 0), (1, 8, 0, 8), (8, 8, 8, 8), (9, 8, 8, 16), (4095, 4096, 0, 4096), (4097, 4096, 4096, 8192),
    (2**64 - 1, 16, 2**64 - 16, 0),   # ALIGN_UP wraps like the size_t macro
])
def test_align_size(length, align, down, up):
    assert WDF_ALIGN_SIZE_DOWN(length, align) == down
    assert WDF_ALIGN_SIZE_UP(length, align) == up


@pytest.mark.parametrize("align", [0, 3, 12, -8])
def test_alignment_must_be_a_power_of_two(align):
    with pytest.raises(ArgumentError):
        WDF_ALIGN_SIZE_UP(10, align)
