"""Completion as fxrequest.cpp does it: FxRequest::VerifyCompleteInternal (verifier) and
FxRequest::CompleteInternal (status mapping, cleanup before the reference check)."""

import pytest

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL,
                           IRP_MJ_READ, IRP_MJ_WRITE, KPROCESSOR_MODE, METHOD_BUFFERED, NTSTATUS, BugCheck,
                           WDF_OBJECT_ATTRIBUTES)

S = NTSTATUS
IOCTL = CTL_CODE(0x22, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)


def test_information_above_a_reads_length_is_0x10D_0x6_0x4_VerifyCompleteInternal(fx):
    """WDF_REQUEST_FATAL_ERROR (0x6), P2 WDF_REQUEST_FATAL_ERROR_INFORMATION_LENGTH_MISMATCH (0x4)."""
    io = fx.present_request(IRP_MJ_READ, output_length=16)
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 17)
    assert (bc.value.code, bc.value.params[:3]) == (0x10D, (0x6, 0x4, io.handle))


@pytest.mark.parametrize("major,kw", [(IRP_MJ_WRITE, dict(input_data=b"x" * 8)),
                                      (IRP_MJ_DEVICE_CONTROL, dict(output_length=8, ioctl_code=IOCTL))])
def test_writes_and_user_ioctls_are_held_to_their_length_VerifyCompleteInternal(fx, major, kw):
    io = fx.present_request(major, **kw)
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 9)
    assert bc.value.params[:2] == (0x6, 0x4)


@pytest.mark.parametrize("major,kw", [
    (IRP_MJ_DEVICE_CONTROL, dict(input_data=b"x", output_length=0, ioctl_code=IOCTL)),     # no output buffer
    (IRP_MJ_DEVICE_CONTROL, dict(output_length=8, ioctl_code=IOCTL, requestor_mode=KPROCESSOR_MODE.KernelMode)),
    (IRP_MJ_INTERNAL_DEVICE_CONTROL, dict(output_length=8, ioctl_code=IOCTL)),
])
def test_lengths_the_framework_cannot_know_are_not_checked_VerifyCompleteInternal(fx, major, kw):
    io = fx.present_request(major, **kw)
    fx.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 100)
    assert io.completed and io.information == 100


def test_a_failure_or_warning_status_may_carry_any_information_VerifyCompleteInternal(fx):
    io = fx.present_request(IRP_MJ_READ, output_length=16)
    fx.WdfRequestCompleteWithInformation(io.handle, 0x80000005, 64)   # STATUS_BUFFER_OVERFLOW, a warning
    assert io.completed and io.status == 0x80000005


def test_the_information_check_is_the_verifiers_VerifyCompleteInternal(fx_off, fx_record):
    io = fx_off.present_request(IRP_MJ_READ, output_length=16)
    fx_off.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 64)
    assert io.completed and io.output_data == bytes(16)     # the originator gets at most its buffer
    io = fx_record.present_request(IRP_MJ_READ, output_length=16)
    fx_record.WdfRequestCompleteWithInformation(io.handle, S.STATUS_SUCCESS, 64)
    assert io.completed and fx_record.findings[-1].rule == "RequestInformationLengthMismatch"


@pytest.mark.parametrize("wdf_status,nt_status", [(S.STATUS_WDF_PAUSED, S.STATUS_DEVICE_BUSY),
                                                  (S.STATUS_WDF_BUSY, S.STATUS_DEVICE_BUSY),
                                                  (S.STATUS_WDF_INTERNAL_ERROR, S.STATUS_INTERNAL_ERROR),
                                                  (S.STATUS_WDF_TOO_FRAGMENTED, S.STATUS_INVALID_DEVICE_REQUEST),
                                                  (S.STATUS_WDF_NOT_ENOUGH_MAP_REGISTERS,
                                                   S.STATUS_INSUFFICIENT_RESOURCES),
                                                  (S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID,
                                                   S.STATUS_INVALID_DEVICE_REQUEST),
                                                  (S.STATUS_INVALID_PARAMETER, S.STATUS_INVALID_PARAMETER)])
def test_wdf_facility_statuses_are_mapped_CompleteInternal(fx, wdf_status, nt_status):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    fx.WdfRequestComplete(io.handle, wdf_status)
    assert io.status == nt_status


def test_children_are_cleaned_up_before_the_buffer_reference_check_CompleteInternal(fx):
    """EarlyDispose and DestroyChildren run before m_IrpReferenceCount is checked: a child's
    cleanup callback that drops the driver's reference on the request's memory saves the day."""
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    fx.WdfObjectReference(mem)
    order = []

    def cleanup(handle):
        order.append("child cleanup")
        fx.WdfObjectDereference(mem)

    fx.WdfObjectCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=io.handle, EvtCleanupCallback=cleanup))
    fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    assert io.completed and order == ["child cleanup"]


def test_a_reference_still_held_after_cleanup_is_0x3_CompleteInternal(fx):
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    fx.WdfObjectReference(mem)
    cleaned = []
    fx.WdfObjectCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=io.handle, EvtCleanupCallback=cleaned.append))
    with pytest.raises(BugCheck) as bc:
        fx.WdfRequestComplete(io.handle, S.STATUS_SUCCESS)
    assert bc.value.params[:3] == (0x3, io.handle, 1) and len(cleaned) == 1   # cleanup ran first
