"""NTSTATUS and HRESULT values the emulated framework returns.

Values are the 32-bit codes of ntstatus.h / winerror.h, as IntEnum members so
that a status compares equal to the plain integer a C driver would see and
prints with its name in test failures.
"""

from __future__ import annotations

import enum


class NTSTATUS(enum.IntEnum):
    """The statuses of spec/wdf-memory.md (and the few more the requests need)."""

    STATUS_SUCCESS = 0x00000000
    STATUS_DEVICE_BUSY = 0x80000011
    STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
    STATUS_ACCESS_VIOLATION = 0xC0000005
    STATUS_INVALID_PARAMETER = 0xC000000D
    STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
    STATUS_BUFFER_TOO_SMALL = 0xC0000023
    STATUS_DELETE_PENDING = 0xC0000056
    STATUS_INTEGER_OVERFLOW = 0xC0000095
    STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
    STATUS_CANNOT_DELETE = 0xC0000121
    STATUS_DRIVER_INTERNAL_ERROR = 0xC0000183
    STATUS_INVALID_DEVICE_STATE = 0xC0000184
    STATUS_INTERNAL_ERROR = 0xC00000E5
    STATUS_INVALID_BUFFER_SIZE = 0xC0000206
    STATUS_WDF_INTERNAL_ERROR = 0xC0200201
    STATUS_WDF_PAUSED = 0xC0200203
    STATUS_WDF_BUSY = 0xC0200204
    STATUS_WDF_OBJECT_ATTRIBUTES_INVALID = 0xC0200209
    STATUS_WDF_TOO_FRAGMENTED = 0xC020020A
    STATUS_WDF_PARENT_ALREADY_ASSIGNED = 0xC020020D
    STATUS_WDF_PARENT_IS_SELF = 0xC020020E
    STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED = 0xC020020F
    STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID = 0xC0200210
    STATUS_WDF_EXECUTION_LEVEL_INVALID = 0xC0200211
    STATUS_WDF_PARENT_NOT_SPECIFIED = 0xC0200212
    STATUS_WDF_TOO_MANY_TRANSFERS = 0xC0200213
    STATUS_WDF_NOT_ENOUGH_MAP_REGISTERS = 0xC0200214


def NT_SUCCESS(status: int) -> bool:
    """True for success and informational statuses (the top bit clear), as the C macro."""
    return (int(status) & 0x80000000) == 0


class HRESULT(enum.IntEnum):
    """UMDF 1 results."""

    S_OK = 0x00000000
    E_INVALIDARG = 0x80070057
    E_OUTOFMEMORY = 0x8007000E
    E_ACCESSDENIED = 0x80070005  # HRESULT_FROM_WIN32(ERROR_ACCESS_DENIED)


def SUCCEEDED(hr: int) -> bool:
    return (int(hr) & 0x80000000) == 0


def status_name(status: int) -> str:
    """``STATUS_X (0x...)`` for a known status, the hex value otherwise."""
    try:
        return f"{NTSTATUS(status).name} (0x{int(status):08X})"
    except ValueError:
        return f"0x{int(status):08X}"
