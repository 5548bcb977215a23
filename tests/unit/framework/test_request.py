"""Requests as far as memory goes: buffers per transfer type, retrieval, completion."""

import pytest

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL,
                           IRP_MJ_READ, IRP_MJ_WRITE, KPROCESSOR_MODE, METHOD_BUFFERED, METHOD_IN_DIRECT,
                           METHOD_NEITHER, METHOD_OUT_DIRECT, NTSTATUS, PAGE_SIZE, BugCheck, PoolType,
                           WDF_OBJECT_ATTRIBUTES)
from framework_emu.errors import ArgumentError
from framework_emu.mdl import MDL_PAGES_LOCKED, MDL_WRITE_OPERATION

S = NTSTATUS


def ioctl(method):
    return CTL_CODE(0x22, 0x900, method, FILE_ANY_ACCESS)


def test_buffered_ioctl_input_and_output_share_one_system_buffer(fx):
    io = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"abcdef", output_length=32,
                            ioctl_code=ioctl(METHOD_BUFFERED))
    status, inbuf, inlen = fx.WdfRequestRetrieveInputBuffer(io.handle, 6)
    status2, outbuf, outlen = fx.WdfRequestRetrieveOutputBuffer(io.handle, 32)
    assert (status, status2, inlen, outlen) == (0, 0, 6, 32) and inbuf == outbuf
    _, out_mem = fx.WdfRequestRetrieveOutputMemory(io.handle)
    fx.WdfMemoryCopyFromBuffer(out_mem, 0, b"XY", 2)
    assert fx.read(inbuf, 6) == b"XYcdef"  # writing output overwrote input, as on Windows
    assert fx.pool.allocation(inbuf).size == 32 and fx.pool.allocation(inbuf).tag == b"IoSB"


def test_buffered_ioctl_input_memory_is_writable_in_the_real_framework(fx):
    io = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"abc", output_length=8,
                            ioctl_code=ioctl(METHOD_BUFFERED))
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    assert fx.WdfMemoryCopyFromBuffer(mem, 0, b"z", 1) == S.STATUS_SUCCESS


@pytest.mark.parametrize("method", [METHOD_IN_DIRECT, METHOD_OUT_DIRECT])
def test_direct_ioctl_input_is_read_only_and_output_has_an_mdl(fx, method):
    io = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"in", output_length=3 * PAGE_SIZE,
                            ioctl_code=ioctl(method))
    _, in_mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    assert fx.WdfMemoryCopyFromBuffer(in_mem, 0, b"x", 1) == S.STATUS_ACCESS_VIOLATION
    _, out_mem = fx.WdfRequestRetrieveOutputMemory(io.handle)
    expected = S.STATUS_ACCESS_VIOLATION if method == METHOD_IN_DIRECT else S.STATUS_SUCCESS
    assert fx.WdfMemoryCopyFromBuffer(out_mem, 0, b"x", 1) == expected
    status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    out_va, _ = fx.WdfMemoryGetBuffer(out_mem)
    first = fx.va_to_gpa(out_va) >> 12
    assert status == 0 and list(fx.MmGetMdlPfnArray(mdl)) == [first, first + 1, first + 2]
    assert mdl.MdlFlags & MDL_PAGES_LOCKED
    assert bool(mdl.MdlFlags & MDL_WRITE_OPERATION) == (method == METHOD_OUT_DIRECT)  # probed for write access


def test_read_has_no_input_and_write_has_no_output(fx):
    read = fx.present_request(IRP_MJ_READ, output_length=16)
    assert fx.WdfRequestRetrieveInputMemory(read.handle) == (S.STATUS_INVALID_DEVICE_REQUEST, None)
    status, mem = fx.WdfRequestRetrieveOutputMemory(read.handle)
    assert status == 0 and fx.WdfMemoryCopyFromBuffer(mem, 0, b"data", 4) == 0  # a read's buffer is writable
    write = fx.present_request(IRP_MJ_WRITE, input_data=b"data")
    assert fx.WdfRequestRetrieveOutputBuffer(write.handle, 1) == (S.STATUS_INVALID_DEVICE_REQUEST, None, None)


def test_zero_length_and_minimum_size(fx):
    io = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"abcd", ioctl_code=ioctl(METHOD_BUFFERED))
    assert fx.WdfRequestRetrieveOutputMemory(io.handle) == (S.STATUS_BUFFER_TOO_SMALL, None)
    assert fx.WdfRequestRetrieveInputBuffer(io.handle, 5) == (S.STATUS_BUFFER_TOO_SMALL, None, None)
    assert fx.WdfRequestRetrieveInputBuffer(io.handle, 4)[0] == S.STATUS_SUCCESS


def test_user_mode_method_neither_gets_no_buffer(fx):
    io = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"ab", output_length=4,
                            ioctl_code=ioctl(METHOD_NEITHER))
    assert fx.WdfRequestRetrieveInputMemory(io.handle)[0] == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfRequestRetrieveOutputBuffer(io.handle, 1)[0] == S.STATUS_INVALID_DEVICE_REQUEST
    kernel = fx.present_request(IRP_MJ_INTERNAL_DEVICE_CONTROL, input_data=b"ab", output_length=4,
                                ioctl_code=ioctl(METHOD_NEITHER), requestor_mode=KPROCESSOR_MODE.KernelMode)
    assert fx.WdfRequestRetrieveInputMemory(kernel.handle)[0] == S.STATUS_SUCCESS


def test_missing_output_parameters_bug_check(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestRetrieveInputMemory(io.handle, Memory=None)
    assert bc.value.params[0] == 0x4
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestRetrieveInputBuffer(io.handle, 0, Buffer=None)
    assert bc.value.params[0] == 0x4


def test_same_memory_handle_each_time(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    assert fx.WdfRequestRetrieveInputMemory(io.handle) == fx.WdfRequestRetrieveInputMemory(io.handle)


def test_completion_returns_the_output_and_deletes_the_request_memory(fx_off):
    fx = fx_off
    io = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"in", output_length=8,
                            ioctl_code=ioctl(METHOD_BUFFERED))
    _, mem = fx.WdfRequestRetrieveOutputMemory(io.handle)
    fx.WdfMemoryCopyFromBuffer(mem, 0, b"result!!", 8)
    fx.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 7)
    assert io.completed and io.status == 0 and io.information == 7 and io.output_data == b"result!"
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryGetBuffer(mem)  # verifier off: a plain stale handle
    assert bc.value.params[0] == 0x5
    with pytest.raises(BugCheck):
        fx.WdfRequestComplete(io.handle, 0)  # the request itself is gone too
    assert fx.pool.tag_stats(b"IoSB").bytes == 0


def test_completing_while_a_buffer_is_referenced_is_0x3(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    fx.WdfObjectReference(mem)
    fx.WdfObjectReference(mem)
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    assert bc.value.params[:3] == (0x3, io.handle, 2)
    fx.WdfObjectDereference(mem)
    fx.WdfObjectDereference(mem)
    fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    assert io.completed


def test_completing_twice_under_the_verifier_is_refused_VerifyRequestIsDriverOwned(fx):
    """fxrequestapi.cpp VerifyRequestComplete: a completed request is no longer driver-owned;
    the second WdfRequestComplete returns without completing (a verifier break, no bug check)."""
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    fx.WdfObjectReference(io.handle)
    fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    fx.WdfRequestComplete(io.handle, S.STATUS_INVALID_PARAMETER)
    assert io.status == S.STATUS_SUCCESS and fx.findings[-1].rule == "DoubleCompletion"


def test_completing_twice_without_the_verifier_stops_the_machine(fx_off):
    """Without the verifier nothing checks: the framework completes a cleared IRP (emulated as
    MULTIPLE_IRP_COMPLETE_REQUESTS 0x44 [I])."""
    io = fx_off.present_request(IRP_MJ_WRITE, input_data=b"x")
    fx_off.WdfObjectReference(io.handle)
    fx_off.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    with pytest.raises(BugCheck) as bc:
        fx_off.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    assert bc.value.code == 0x44


def test_request_and_its_memory_may_not_be_deleted_by_the_driver(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    fx.WdfObjectDelete(io.handle)
    fx.WdfObjectDelete(mem)
    assert [f.rule for f in fx.findings[-2:]] == ["ObjectDeleteNotAllowed"] * 2
    assert fx.WdfRequestRetrieveInputMemory(io.handle)[0] == 0


def test_driver_objects_parented_to_the_request_go_at_completion(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    cleaned = []
    a = WDF_OBJECT_ATTRIBUTES()
    a.ParentObject = io.handle
    a.EvtCleanupCallback = cleaned.append
    _, mem, _ = fx.WdfMemoryCreate(a, PoolType.NonPagedPool, 0, 64)
    fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    assert cleaned == [mem]


def test_direct_read_returns_the_data_buffer(fx):
    io = fx.present_request(IRP_MJ_READ, output_length=2 * PAGE_SIZE, direct=True)
    status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    _, va, length = fx.WdfRequestRetrieveOutputBuffer(io.handle, 1)
    assert status == 0 and fx.MmGetSystemAddressForMdlSafe(mdl) == va and length == 2 * PAGE_SIZE
    fx.write(va, b"disk data")
    fx.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 9)
    assert io.output_data == b"disk data"


def test_bad_presentations_are_argument_errors(fx):
    with pytest.raises(ArgumentError):
        fx.present_request(0x99)
    with pytest.raises(ArgumentError):
        fx.present_request(IRP_MJ_READ, input_data=b"x")


def test_out_of_memory_presentation_fails_the_request_before_the_driver(fx):
    fx.inject_allocation_failures(tag=b"IoSB", nth=1)
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    assert io.completed and io.status == S.STATUS_INSUFFICIENT_RESOURCES and io.handle == 0


def test_a_completed_requests_handle_is_stale_and_says_where_it_completed(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestRetrieveInputMemory(io.handle)
    assert bc.value.params[:3] == (0x5, io.handle, 0x1008)
    assert "was completed at" in str(bc.value) and "test_request.py:" in str(bc.value)
