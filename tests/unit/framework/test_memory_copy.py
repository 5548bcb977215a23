"""WdfMemoryGetBuffer, WdfMemoryCopyToBuffer, WdfMemoryCopyFromBuffer: every row of the table."""

import pytest

from framework_emu import IRP_MJ_WRITE, NTSTATUS, BugCheck, PoolType
from framework_emu.errors import ArgumentError

S = NTSTATUS


@pytest.fixture
def mem(fx):
    _, handle, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    fx.write(va, bytes(range(64)))
    return handle


def test_get_buffer_returns_address_and_size(fx, mem):
    va, size = fx.WdfMemoryGetBuffer(mem)
    assert size == 64 and fx.read(va, 4) == b"\x00\x01\x02\x03"


def test_get_buffer_bad_handle_names_memory_type(fx):
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryGetBuffer(0xDEAD0)
    assert bc.value.params[0] == 0x5 and bc.value.params[2] == 0x100A
    _, lookaside = fx.WdfLookasideListCreate(None, 16, PoolType.NonPagedPool, None, 0)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryGetBuffer(lookaside)  # a live handle of another type
    assert bc.value.params[1:3] == (lookaside, 0x100A)


@pytest.mark.parametrize("call", ["WdfMemoryCopyToBuffer", "WdfMemoryCopyFromBuffer"])
def test_zero_length_is_invalid_parameter(fx, mem, call):
    assert getattr(fx, call)(mem, 0, bytearray(4), 0) == S.STATUS_INVALID_PARAMETER


@pytest.mark.parametrize("call", ["WdfMemoryCopyToBuffer", "WdfMemoryCopyFromBuffer"])
@pytest.mark.parametrize("null", [None, 0])
def test_null_buffer_bug_checks(fx, mem, call, null):
    with pytest.raises(BugCheck) as bc:
        getattr(fx, call)(mem, 0, null, 4)
    assert bc.value.code == 0x10D and bc.value.params[0] == 0x4


@pytest.mark.parametrize("offset,count,status", [
    (0, 64, S.STATUS_SUCCESS), (60, 4, S.STATUS_SUCCESS), (0, 65, S.STATUS_BUFFER_TOO_SMALL),
    (64, 1, S.STATUS_BUFFER_TOO_SMALL), (63, 2, S.STATUS_BUFFER_TOO_SMALL), (100, 1, S.STATUS_BUFFER_TOO_SMALL),
])
def test_copy_to_buffer_bounds(fx, mem, offset, count, status):
    out = bytearray(count)
    assert fx.WdfMemoryCopyToBuffer(mem, offset, out, count) == status
    if status == S.STATUS_SUCCESS:
        assert out == bytes(range(offset, offset + count))


@pytest.mark.parametrize("offset,count,status", [
    (0, 64, S.STATUS_SUCCESS), (60, 4, S.STATUS_SUCCESS), (0, 65, S.STATUS_INVALID_BUFFER_SIZE),
    (64, 1, S.STATUS_INVALID_BUFFER_SIZE), (63, 2, S.STATUS_INVALID_BUFFER_SIZE),
])
def test_copy_from_buffer_bounds_use_invalid_buffer_size_not_the_documented_status(fx, mem, offset, count, status):
    assert fx.WdfMemoryCopyFromBuffer(mem, offset, b"\xEE" * count, count) == status
    va, _ = fx.WdfMemoryGetBuffer(mem)
    if status == S.STATUS_SUCCESS:
        assert fx.read(va + offset, count) == b"\xEE" * count
    else:
        assert fx.read(va, 64) == bytes(range(64))  # untouched


def test_copy_from_buffer_into_read_only_request_input_is_an_access_violation(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"payload")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    assert fx.WdfMemoryCopyFromBuffer(mem, 0, b"x", 1) == S.STATUS_ACCESS_VIOLATION
    out = bytearray(7)
    assert fx.WdfMemoryCopyToBuffer(mem, 0, out, 7) == S.STATUS_SUCCESS and out == b"payload"


def test_buffers_may_be_kernel_addresses(fx, mem):
    other = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 16, b"Othr")
    assert fx.WdfMemoryCopyToBuffer(mem, 8, other, 8) == S.STATUS_SUCCESS
    assert fx.read(other, 8) == bytes(range(8, 16))
    fx.write(other, b"ABCDEFGH")
    assert fx.WdfMemoryCopyFromBuffer(mem, 0, other, 8) == S.STATUS_SUCCESS
    va, _ = fx.WdfMemoryGetBuffer(mem)
    assert fx.read(va, 8) == b"ABCDEFGH"


def test_python_buffer_mistakes_are_argument_errors(fx, mem):
    with pytest.raises(ArgumentError, match="Buffer"):
        fx.WdfMemoryCopyToBuffer(mem, 0, b"immutable", 4)
    with pytest.raises(ArgumentError, match="holds 2 bytes"):
        fx.WdfMemoryCopyToBuffer(mem, 0, bytearray(2), 4)
    with pytest.raises(ArgumentError, match="holds 2 bytes"):
        fx.WdfMemoryCopyFromBuffer(mem, 0, b"ab", 4)


def test_unmapped_kernel_address_is_a_page_fault(fx, mem):
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCopyToBuffer(mem, 0, 0x1000, 4)  # not in the direct map
    assert bc.value.code == 0x50
