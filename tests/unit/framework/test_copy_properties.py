"""The copy bounds as properties: status and bytes for any offset, count and size."""

from hypothesis import given, settings
from hypothesis import strategies as st

from framework_emu import NTSTATUS, InProcessMemory, PoolType, Framework

FX = Framework(InProcessMemory(size=8 << 20), service_name="WDFCopy", verifier=False)


def expected_ok(size, offset, count):
    return count != 0 and not (offset != 0 and offset >= size) and count <= size - offset


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 9000), offset=st.integers(0, 10000), count=st.integers(0, 10000))
def test_copy_to_buffer_status_and_data(size, offset, count):
    _, mem, va = FX.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, size)
    pattern = bytes((i * 7) & 0xFF for i in range(size))
    FX.write(va, pattern)
    out = bytearray(max(count, 1))
    status = FX.WdfMemoryCopyToBuffer(mem, offset, out, count)
    if count == 0:
        assert status == NTSTATUS.STATUS_INVALID_PARAMETER
    elif expected_ok(size, offset, count):
        assert status == NTSTATUS.STATUS_SUCCESS and bytes(out[:count]) == pattern[offset:offset + count]
    else:
        assert status == NTSTATUS.STATUS_BUFFER_TOO_SMALL
    FX.WdfObjectDelete(mem)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 9000), offset=st.integers(0, 10000), count=st.integers(0, 10000))
def test_copy_from_buffer_status_and_data(size, offset, count):
    _, mem, va = FX.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, size)
    FX.write(va, b"\0" * size)
    data = bytes((i * 13 + 1) & 0xFF for i in range(max(count, 1)))
    status = FX.WdfMemoryCopyFromBuffer(mem, offset, data, count)
    after = FX.read(va, size)
    if count == 0:
        assert status == NTSTATUS.STATUS_INVALID_PARAMETER
    elif expected_ok(size, offset, count):
        assert status == NTSTATUS.STATUS_SUCCESS
        assert after == b"\0" * offset + data[:count] + b"\0" * (size - offset - count)
    else:
        assert status == NTSTATUS.STATUS_INVALID_BUFFER_SIZE and after == b"\0" * size
    FX.WdfObjectDelete(mem)
