"""Request MDLs for every buffering method, as fxrequestkm.cpp builds them
(FxRequest::GetMdl, FxRequest::GetDeviceControlOutputMdl) behind fxrequestapi.cpp's
WdfRequestRetrieveInputWdmMdl / WdfRequestRetrieveOutputWdmMdl."""

import pytest

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL,
                           IRP_MJ_READ, IRP_MJ_WRITE, KPROCESSOR_MODE, MDL_SOURCE_IS_NONPAGED_POOL, METHOD_BUFFERED,
                           METHOD_IN_DIRECT, METHOD_NEITHER, METHOD_OUT_DIRECT, NTSTATUS, BugCheck)

S = NTSTATUS


def ioctl(method):
    return CTL_CODE(0x22, 0x900, method, FILE_ANY_ACCESS)


def present_ioctl(fx, method, input_data=b"in-data", output_length=64, **kw):
    return fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=input_data, output_length=output_length,
                              ioctl_code=ioctl(method), **kw)


def test_buffered_ioctl_output_mdl_is_built_over_the_system_buffer_GetDeviceControlOutputMdl(fx):
    """METHOD_BUFFERED: MmBuildMdlForNonPagedPool(IoAllocateMdl(system buffer, OutputBufferLength))
    -- not STATUS_BUFFER_TOO_SMALL."""
    io = present_ioctl(fx, METHOD_BUFFERED, output_length=64)
    status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    _, buffer, _ = fx.WdfRequestRetrieveOutputBuffer(io.handle, 1)
    assert status == S.STATUS_SUCCESS and fx.MmGetMdlVirtualAddress(mdl) == buffer
    assert fx.MmGetMdlByteCount(mdl) == 64 and mdl.MdlFlags & MDL_SOURCE_IS_NONPAGED_POOL
    assert list(fx.MmGetMdlPfnArray(mdl)) == [fx.va_to_gpa(buffer) >> 12]


def test_input_and_output_mdls_of_a_buffered_ioctl_are_one_m_AllocatedMdl_GetMdl(fx):
    """GetMdl and GetDeviceControlOutputMdl share m_AllocatedMdl: whichever is asked first sets
    its length, and the other gets the same MDL (a real framework quirk)."""
    io = present_ioctl(fx, METHOD_BUFFERED, input_data=b"12345678", output_length=200)
    _, in_mdl = fx.WdfRequestRetrieveInputWdmMdl(io.handle)
    _, out_mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    assert in_mdl is out_mdl and fx.MmGetMdlByteCount(out_mdl) == 8   # the input's length


@pytest.mark.parametrize("method", [METHOD_IN_DIRECT, METHOD_OUT_DIRECT])
def test_direct_ioctl_input_mdl_describes_the_system_buffer_GetMdl(fx, method):
    """GetMdl on METHOD_IN/OUT_DIRECT: the input is in the system buffer (InputBufferLength);
    the output MDL is Irp->MdlAddress, another MDL."""
    io = present_ioctl(fx, method, input_data=b"abc", output_length=4096)
    _, in_mdl = fx.WdfRequestRetrieveInputWdmMdl(io.handle)
    _, out_mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    _, in_buffer, _ = fx.WdfRequestRetrieveInputBuffer(io.handle, 3)
    assert fx.MmGetMdlVirtualAddress(in_mdl) == in_buffer and fx.MmGetMdlByteCount(in_mdl) == 3
    assert out_mdl is not in_mdl and fx.MmGetMdlByteCount(out_mdl) == 4096


@pytest.mark.parametrize("mode", [KPROCESSOR_MODE.UserMode, KPROCESSOR_MODE.KernelMode])
def test_method_neither_has_no_mdl_even_from_kernel_mode_GetDeviceControlOutputMdl(fx, mode):
    io = present_ioctl(fx, METHOD_NEITHER, requestor_mode=mode)
    assert fx.WdfRequestRetrieveInputWdmMdl(io.handle) == (S.STATUS_INVALID_DEVICE_REQUEST, None)
    assert fx.WdfRequestRetrieveOutputWdmMdl(io.handle) == (S.STATUS_INVALID_DEVICE_REQUEST, None)


@pytest.mark.parametrize("method", [METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT])
def test_zero_length_buffers_are_buffer_too_small_GetMdl_GetDeviceControlOutputMdl(fx, method):
    io = present_ioctl(fx, method, input_data=b"", output_length=0)
    assert fx.WdfRequestRetrieveInputWdmMdl(io.handle) == (S.STATUS_BUFFER_TOO_SMALL, None)
    assert fx.WdfRequestRetrieveOutputWdmMdl(io.handle) == (S.STATUS_BUFFER_TOO_SMALL, None)


def test_internal_ioctls_take_the_same_paths_GetDeviceControlOutputMdl(fx):
    io = fx.present_request(IRP_MJ_INTERNAL_DEVICE_CONTROL, input_data=b"x", output_length=16,
                            ioctl_code=ioctl(METHOD_BUFFERED))
    status, mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    assert status == S.STATUS_SUCCESS and fx.MmGetMdlByteCount(mdl) == 16


@pytest.mark.parametrize("direct", [False, True])
def test_reads_and_writes_WdfRequestRetrieveInputWdmMdl_and_OutputWdmMdl(fx, direct):
    """A read has no input MDL and a write no output MDL (STATUS_INVALID_DEVICE_REQUEST); the
    other one is GetMdl: Irp->MdlAddress for direct I/O, an MDL over the system buffer for
    buffered I/O."""
    read = fx.present_request(IRP_MJ_READ, output_length=100, direct=direct)
    write = fx.present_request(IRP_MJ_WRITE, input_data=b"w" * 50, direct=direct)
    assert fx.WdfRequestRetrieveInputWdmMdl(read.handle) == (S.STATUS_INVALID_DEVICE_REQUEST, None)
    assert fx.WdfRequestRetrieveOutputWdmMdl(write.handle) == (S.STATUS_INVALID_DEVICE_REQUEST, None)
    status, read_mdl = fx.WdfRequestRetrieveOutputWdmMdl(read.handle)
    status2, write_mdl = fx.WdfRequestRetrieveInputWdmMdl(write.handle)
    assert (status, status2) == (0, 0)
    assert (fx.MmGetMdlByteCount(read_mdl), fx.MmGetMdlByteCount(write_mdl)) == (100, 50)
    assert bool(read_mdl.MdlFlags & MDL_SOURCE_IS_NONPAGED_POOL) is not direct


def test_the_built_mdl_is_freed_at_completion_GetMdl(fx):
    """The MDL is released when the request completes: using it after is a use after free."""
    io = present_ioctl(fx, METHOD_BUFFERED)
    _, mdl = fx.WdfRequestRetrieveOutputWdmMdl(io.handle)
    fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    with pytest.raises(BugCheck) as bc:
        fx.MmGetMdlByteCount(mdl)
    assert bc.value.code == 0xD5 and fx.pool.tag_stats(b"Mdl ").bytes == 0


def test_null_output_bug_checks_WdfRequestRetrieveInputWdmMdl(fx):
    io = present_ioctl(fx, METHOD_BUFFERED)
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestRetrieveInputWdmMdl(io.handle, Mdl=None)
    assert bc.value.params[0] == 0x4
