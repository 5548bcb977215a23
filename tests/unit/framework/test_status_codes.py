"""Every status of the spec's table, the UMDF 1 HRESULTs, and the BugCheck exception."""

import pytest

from framework_emu import HRESULT, NT_SUCCESS, NTSTATUS, SUCCEEDED, BugCheck
from framework_emu.bugcheck import wdf_violation
from wdfhil.errors import WdfhilError

SPEC_TABLE = {
    "STATUS_SUCCESS": 0x00000000,
    "STATUS_ACCESS_VIOLATION": 0xC0000005,
    "STATUS_INFO_LENGTH_MISMATCH": 0xC0000004,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_INVALID_DEVICE_REQUEST": 0xC0000010,
    "STATUS_BUFFER_TOO_SMALL": 0xC0000023,
    "STATUS_DELETE_PENDING": 0xC0000056,
    "STATUS_INTEGER_OVERFLOW": 0xC0000095,
    "STATUS_INSUFFICIENT_RESOURCES": 0xC000009A,
    "STATUS_CANNOT_DELETE": 0xC0000121,
    "STATUS_INVALID_BUFFER_SIZE": 0xC0000206,
    "STATUS_WDF_OBJECT_ATTRIBUTES_INVALID": 0xC0200209,
    "STATUS_WDF_TOO_FRAGMENTED": 0xC020020A,
    "STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID": 0xC0200210,
    "STATUS_WDF_EXECUTION_LEVEL_INVALID": 0xC0200211,
    "STATUS_WDF_TOO_MANY_TRANSFERS": 0xC0200213,
    "STATUS_WDF_NOT_ENOUGH_MAP_REGISTERS": 0xC0200214,
}


@pytest.mark.parametrize("name,value", sorted(SPEC_TABLE.items()))
def test_status_values_match_the_spec(name, value):
    assert NTSTATUS[name] == value


def test_hresults():
    assert HRESULT.S_OK == 0
    assert HRESULT.E_INVALIDARG == 0x80070057
    assert HRESULT.E_OUTOFMEMORY == 0x8007000E
    assert HRESULT.E_ACCESSDENIED == 0x80070005


def test_success_macros():
    assert NT_SUCCESS(NTSTATUS.STATUS_SUCCESS) and not NT_SUCCESS(NTSTATUS.STATUS_INVALID_PARAMETER)
    assert SUCCEEDED(HRESULT.S_OK) and not SUCCEEDED(HRESULT.E_INVALIDARG)


def test_bugcheck_is_a_wdfhil_error_with_code_params_and_a_naming_message():
    bc = wdf_violation(0x5, 0x1234, 0x1022, 0, "handle 0x1234 is not preallocated memory")
    assert isinstance(bc, WdfhilError) and isinstance(bc, BugCheck)
    assert bc.code == 0x10D and bc.params == (0x5, 0x1234, 0x1022, 0)
    assert "WDF_VIOLATION" in str(bc) and "WDF_INVALID_HANDLE" in str(bc) and "not preallocated" in str(bc)


def test_bugcheck_pads_params_to_four():
    assert BugCheck(0x50, (7,), "x").params == (7, 0, 0, 0)
