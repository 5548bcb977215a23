"""The verifier's rules, its two modes, and the structure of a finding."""

import pytest

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL,
                           IRP_MJ_READ, IRP_MJ_WRITE, METHOD_BUFFERED, NTSTATUS, BugCheck, Framework,
                           InProcessMemory, PoolType, WDF_MEMORY_DESCRIPTOR_INIT_BUFFER,
                           WDF_MEMORY_DESCRIPTOR_INIT_HANDLE)
from framework_emu.errors import ArgumentError

KINDS = [(IRP_MJ_DEVICE_CONTROL, "Ioctl"), (IRP_MJ_INTERNAL_DEVICE_CONTROL, "IntIoctl"),
         (IRP_MJ_READ, "Read"), (IRP_MJ_WRITE, "Write")]


def present(fx, major):
    if major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL):
        return fx.present_request(major, input_data=b"in-data!", output_length=8,
                                  ioctl_code=CTL_CODE(0x22, 1, METHOD_BUFFERED, FILE_ANY_ACCESS))
    if major == IRP_MJ_READ:
        return fx.present_request(major, output_length=8)
    return fx.present_request(major, input_data=b"in-data!")


def completed_buffer(fx, major):
    io = present(fx, major)
    get = fx.WdfRequestRetrieveOutputBuffer if major == IRP_MJ_READ else fx.WdfRequestRetrieveInputBuffer
    _, va, length = get(io.handle, 1)
    fx.WdfRequestComplete(io.handle, NTSTATUS.STATUS_SUCCESS)
    return io, va, length


def completed_memory(fx, major):
    io = present(fx, major)
    get = fx.WdfRequestRetrieveOutputMemory if major == IRP_MJ_READ else fx.WdfRequestRetrieveInputMemory
    _, mem = get(io.handle)
    fx.WdfRequestComplete(io.handle, NTSTATUS.STATUS_SUCCESS)
    return io, mem


BUFFER_TOUCHES = {
    "copied into": lambda fx, va, n: fx.WdfMemoryCopyToBuffer(fx.WdfMemoryCreate(None, 0, 0, 64)[1], 0, va, n),
    "copied from": lambda fx, va, n: fx.WdfMemoryCopyFromBuffer(fx.WdfMemoryCreate(None, 0, 0, 64)[1], 0, va, n),
    "wrapped": lambda fx, va, n: fx.WdfMemoryCreatePreallocated(None, va, n),
    "assigned": lambda fx, va, n: fx.WdfMemoryAssignBuffer(
        fx.WdfMemoryCreatePreallocated(None, fx.ExAllocatePoolWithTag(0, 8, b"Drv "), 8)[1], va, n),
    "described": lambda fx, va, n: fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(va, n)),
    "mdl": lambda fx, va, n: fx.IoAllocateMdl(va, n),
    "rtl": lambda fx, va, n: fx.RtlCopyMemory(bytearray(n), va, n),
}


@pytest.mark.parametrize("major,kind", KINDS)
@pytest.mark.parametrize("touch", sorted(BUFFER_TOUCHES))
def test_buf_after_req_completed_bug_checks(fx, major, kind, touch):
    io, va, length = completed_buffer(fx, major)
    with pytest.raises(BugCheck) as bc:
        BUFFER_TOUCHES[touch](fx, va, length)
    finding = bc.value.finding
    assert finding.rule == f"BufAfterReqCompleted{kind}A" and finding.severity == "error"
    assert bc.value.code == 0x10D and bc.value.params[:3] == (0x3, io.handle, va)
    assert finding.site[0] == __file__ and finding.handle == io.handle and finding.object_kind == "WDFREQUEST"
    assert [event for event, _site in finding.history] == ["presented", "completed"]


@pytest.mark.parametrize("major,kind", KINDS)
def test_mem_after_req_completed_bug_checks(fx, major, kind):
    io, mem = completed_memory(fx, major)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCopyToBuffer(mem, 0, bytearray(1), 1)
    finding = bc.value.finding
    assert finding.rule == f"MemAfterReqCompleted{kind}A"
    assert bc.value.params[:3] == (0x3, io.handle, mem)
    assert finding.handle == mem and finding.tag == b"Echo"
    assert [e for e, _ in finding.history] == ["request presented", "retrieved", "request completed"]


def test_mem_after_completion_through_a_descriptor(fx):
    _io, mem = completed_memory(fx, IRP_MJ_WRITE)
    with pytest.raises(BugCheck) as bc:
        fx.ValidateMemoryDescriptor(WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(mem))
    assert bc.value.finding.rule == "MemAfterReqCompletedWriteA"


def test_a_wrapper_of_a_request_buffer_used_after_completion(fx):
    io = present(fx, IRP_MJ_WRITE)
    _, va, length = fx.WdfRequestRetrieveInputBuffer(io.handle, 1)
    _, wrapper = fx.WdfMemoryCreatePreallocated(None, va, length)
    fx.WdfRequestComplete(io.handle, 0)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCopyToBuffer(wrapper, 0, bytearray(4), 4)
    assert bc.value.finding.rule == "BufAfterReqCompletedWriteA"


def test_record_mode_records_and_goes_on_with_stale_data(fx_record):
    fx = fx_record
    io, mem = completed_memory(fx, IRP_MJ_WRITE)
    out = bytearray(8)
    assert fx.WdfMemoryCopyToBuffer(mem, 0, out, 8) == NTSTATUS.STATUS_SUCCESS
    assert out == b"in-data!"  # the real machine reads freed memory: here its old contents
    _io, va, length = completed_buffer(fx, IRP_MJ_DEVICE_CONTROL)
    fx.WdfMemoryCreatePreallocated(None, va, length)
    rules = [f.rule for f in fx.findings if f.severity == "error"]
    assert rules == ["MemAfterReqCompletedWriteA", "BufAfterReqCompletedIoctlA"]
    assert "completed at" in str(fx.findings[-1])


def test_retrieving_from_a_completed_but_referenced_request_VerifyRequestIsNotCompleted(fx_record):
    """GetMemoryObject / GetMdl start with FxRequest::VerifyRequestIsNotCompleted under the
    verifier: STATUS_INTERNAL_ERROR; a write's output and a read's input are refused before
    that (STATUS_INVALID_DEVICE_REQUEST, no finding)."""
    fx = fx_record
    io = present(fx, IRP_MJ_WRITE)
    fx.WdfObjectReference(io.handle)
    fx.WdfRequestComplete(io.handle, 0)
    assert fx.WdfRequestRetrieveInputMemory(io.handle) == (NTSTATUS.STATUS_INTERNAL_ERROR, None)
    assert fx.WdfRequestRetrieveInputBuffer(io.handle, 0) == (NTSTATUS.STATUS_INTERNAL_ERROR, None, None)
    assert fx.WdfRequestRetrieveInputWdmMdl(io.handle) == (NTSTATUS.STATUS_INTERNAL_ERROR, None)
    assert [f.rule for f in fx.findings[-3:]] == ["MemAfterReqCompletedWriteA", "BufAfterReqCompletedWriteA",
                                                 "BufAfterReqCompletedWriteA"]
    count = len(fx.findings)
    assert fx.WdfRequestRetrieveOutputBuffer(io.handle, 0) == (NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None, None)
    assert len(fx.findings) == count


def test_without_the_verifier_a_completed_requests_memory_is_just_a_stale_handle(fx_off):
    _io, mem = completed_memory(fx_off, IRP_MJ_WRITE)
    with pytest.raises(BugCheck) as bc:
        fx_off.WdfMemoryGetBuffer(mem)
    assert bc.value.params[0] == 0x5 and bc.value.finding is None


def test_quarantined_buffers_go_back_to_the_pool_eventually(fx):
    for _ in range(80):
        completed_buffer(fx, IRP_MJ_WRITE)
    assert 0 < fx.pool.tag_stats(b"IoSB").bytes <= 64 * 8


def test_driver_create_rule_when_no_driver_exists():
    fx = Framework(InProcessMemory(size=8 << 20), service_name="WDFLate", create_driver=False)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    assert bc.value.finding.rule == "DriverCreate" and bc.value.finding.site[0] == __file__


def test_findings_are_structured_and_printable(fx_record):
    fx = fx_record
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    finding = fx.findings[0]
    text = str(finding)
    assert finding.rule == "ParentObjectCheck" and finding.object_kind == "WDFMEMORY"
    assert f"{__file__.split('/')[-1]}:" in text and "ParentObjectCheck" in text


def test_unknown_verifier_mode_is_an_error():
    with pytest.raises(ArgumentError, match="verifier_mode"):
        Framework(InProcessMemory(size=8 << 20), service_name="WDFX", verifier_mode="loud")
