"""FxValidateObjectAttributes and FxValidateObjectAttributesForParentHandle, in the
framework's order [S] (fxvalidatefunctions.cpp / .hpp).

Attributes required; size; context type info (size, name); context size
override; parent allowed / required; the enum ranges
(STATUS_WDF_OBJECT_ATTRIBUTES_INVALID); then synchronization scope before
execution level for objects that take neither. (The spec lists these in
another order; the source's is the one a driver meets.)
"""

from __future__ import annotations

from ..attributes import (SIZEOF_WDF_OBJECT_ATTRIBUTES, SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO,
                          SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO_V1_0, WDF_OBJECT_ATTRIBUTES,
                          WdfExecutionLevelDispatch, WdfExecutionLevelInheritFromParent,
                          WdfExecutionLevelInvalid, WdfSynchronizationScopeInheritFromParent,
                          WdfSynchronizationScopeInvalid, WdfSynchronizationScopeNone)
from ..errors import ArgumentError
from ..ntstatus import NTSTATUS

FX_VALIDATE_OPTION_NONE_SPECIFIED = 0x00
FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED = 0x01
FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED = 0x02
FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED = 0x04
FX_VALIDATE_OPTION_ATTRIBUTES_REQUIRED = 0x08
FX_VALIDATE_OPTION_PARENT_REQUIRED_FLAG = 0x10
FX_VALIDATE_OPTION_PARENT_REQUIRED = FX_VALIDATE_OPTION_PARENT_REQUIRED_FLAG | FX_VALIDATE_OPTION_ATTRIBUTES_REQUIRED


def parent_to_resolve(attributes: WDF_OBJECT_ATTRIBUTES | None) -> int | None:
    """FxValidateObjectAttributesForParentHandle: the ParentObject an entry point resolves
    first (a bad handle bug-checks there), or None. Attributes of the wrong Size are not
    looked into, so their parent is not resolved: the call goes on to return
    STATUS_INFO_LENGTH_MISMATCH from FxValidateObjectAttributes instead."""
    if attributes is None or attributes.Size != SIZEOF_WDF_OBJECT_ATTRIBUTES:
        return None
    return attributes.ParentObject or None


def validate_object_attributes(attributes: WDF_OBJECT_ATTRIBUTES | None, flags: int = 0) -> int:
    if attributes is None:
        if flags & FX_VALIDATE_OPTION_ATTRIBUTES_REQUIRED:
            return NTSTATUS.STATUS_WDF_PARENT_NOT_SPECIFIED
        return NTSTATUS.STATUS_SUCCESS
    if not isinstance(attributes, WDF_OBJECT_ATTRIBUTES):
        raise ArgumentError("expected WDF_OBJECT_ATTRIBUTES or None", field="Attributes",
                            value=type(attributes).__name__)
    if attributes.Size != SIZEOF_WDF_OBJECT_ATTRIBUTES:
        return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH
    info = attributes.ContextTypeInfo
    if info is not None:
        if info.Size not in (SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO, SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO_V1_0):
            return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH
        if info.ContextSize > 0 and info.ContextName is None:
            return NTSTATUS.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    if attributes.ContextSizeOverride > 0:
        if info is None or attributes.ContextSizeOverride < info.ContextSize:
            return NTSTATUS.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    if flags & FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED:
        if attributes.ParentObject:
            return NTSTATUS.STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED
    elif flags & FX_VALIDATE_OPTION_PARENT_REQUIRED_FLAG and not attributes.ParentObject:
        return NTSTATUS.STATUS_WDF_PARENT_NOT_SPECIFIED
    # The enum ranges compare as C ints: == Invalid or > the last value. A negative value
    # passes them (and then fails the InheritFromParent checks below, if they apply).
    level = attributes.ExecutionLevel
    if level == WdfExecutionLevelInvalid or level > WdfExecutionLevelDispatch:
        return NTSTATUS.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    scope = attributes.SynchronizationScope
    if scope == WdfSynchronizationScopeInvalid or scope > WdfSynchronizationScopeNone:
        return NTSTATUS.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    if not flags & FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED:
        if scope not in (WdfSynchronizationScopeInheritFromParent, WdfSynchronizationScopeNone):
            return NTSTATUS.STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID
    if not flags & FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED:
        if level != WdfExecutionLevelInheritFromParent:
            return NTSTATUS.STATUS_WDF_EXECUTION_LEVEL_INVALID
    return NTSTATUS.STATUS_SUCCESS


def check_size(value: object, field: str) -> int:
    """A size_t argument as a non-negative int (64-bit), else ArgumentError."""
    if not isinstance(value, int) or value < 0 or value > 0xFFFFFFFFFFFFFFFF:
        raise ArgumentError("expected a size_t (an int from 0 to 2**64-1)", field=field, value=value)
    return value
