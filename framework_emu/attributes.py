"""WDF_OBJECT_ATTRIBUTES and the context type description, as plain data.

``WDF_OBJECT_ATTRIBUTES()`` comes out the way WDF_OBJECT_ATTRIBUTES_INIT
leaves the C structure (Size set, both levels InheritFromParent, everything
else zero); the driver then sets fields by name. Sizes are the x64 ones,
because the framework compares them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

SIZEOF_WDF_OBJECT_ATTRIBUTES = 0x38
SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO = 0x28
SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO_V1_0 = 0x20


class WDF_EXECUTION_LEVEL(enum.IntEnum):
    WdfExecutionLevelInvalid = 0
    WdfExecutionLevelInheritFromParent = 1
    WdfExecutionLevelPassive = 2
    WdfExecutionLevelDispatch = 3


class WDF_SYNCHRONIZATION_SCOPE(enum.IntEnum):
    WdfSynchronizationScopeInvalid = 0
    WdfSynchronizationScopeInheritFromParent = 1
    WdfSynchronizationScopeDevice = 2
    WdfSynchronizationScopeQueue = 3
    WdfSynchronizationScopeNone = 4


WdfExecutionLevelInvalid = WDF_EXECUTION_LEVEL.WdfExecutionLevelInvalid
WdfExecutionLevelInheritFromParent = WDF_EXECUTION_LEVEL.WdfExecutionLevelInheritFromParent
WdfExecutionLevelPassive = WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive
WdfExecutionLevelDispatch = WDF_EXECUTION_LEVEL.WdfExecutionLevelDispatch
WdfSynchronizationScopeInvalid = WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeInvalid
WdfSynchronizationScopeInheritFromParent = WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeInheritFromParent
WdfSynchronizationScopeDevice = WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice
WdfSynchronizationScopeQueue = WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeQueue
WdfSynchronizationScopeNone = WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeNone

EvtObjectCallback = Callable[[int], Any]
"""EvtCleanupCallback / EvtDestroyCallback: called with the object's handle."""


@dataclass
class WDF_OBJECT_CONTEXT_TYPE_INFO:
    """Describes a typed context; the identity of this object is the context's type."""

    ContextName: str | None = None
    ContextSize: int = 0
    Size: int = SIZEOF_WDF_OBJECT_CONTEXT_TYPE_INFO
    UniqueType: "WDF_OBJECT_CONTEXT_TYPE_INFO | None" = None
    EvtDriverGetUniqueContextType: Callable[[], "WDF_OBJECT_CONTEXT_TYPE_INFO"] | None = None

    def __hash__(self) -> int:  # compared by identity, as the C pointer is
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def WDF_DECLARE_CONTEXT_TYPE(name: str, size: int) -> WDF_OBJECT_CONTEXT_TYPE_INFO:
    """The type info WDF_DECLARE_CONTEXT_TYPE_WITH_NAME would emit for a ``size``-byte context."""
    return WDF_OBJECT_CONTEXT_TYPE_INFO(ContextName=name, ContextSize=size)


@dataclass
class WDF_OBJECT_ATTRIBUTES:
    """As initialised by WDF_OBJECT_ATTRIBUTES_INIT."""

    Size: int = SIZEOF_WDF_OBJECT_ATTRIBUTES
    EvtCleanupCallback: EvtObjectCallback | None = None
    EvtDestroyCallback: EvtObjectCallback | None = None
    ExecutionLevel: int = WDF_EXECUTION_LEVEL.WdfExecutionLevelInheritFromParent
    SynchronizationScope: int = WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeInheritFromParent
    ParentObject: int | None = None
    ContextSizeOverride: int = 0
    ContextTypeInfo: WDF_OBJECT_CONTEXT_TYPE_INFO | None = None


def WDF_OBJECT_ATTRIBUTES_INIT_CONTEXT_TYPE(type_info: WDF_OBJECT_CONTEXT_TYPE_INFO) -> WDF_OBJECT_ATTRIBUTES:
    """Attributes initialised and carrying ``type_info`` (WDF_OBJECT_ATTRIBUTES_INIT_CONTEXT_TYPE)."""
    return WDF_OBJECT_ATTRIBUTES(ContextTypeInfo=type_info)


def context_size(attributes: WDF_OBJECT_ATTRIBUTES | None) -> int:
    """FxGetContextSize: the override if set, else the type's size, 0 without a type."""
    if attributes is None or attributes.ContextTypeInfo is None:
        return 0
    return attributes.ContextSizeOverride or attributes.ContextTypeInfo.ContextSize
