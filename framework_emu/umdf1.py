"""The UMDF 1 (COM-style) facade over the same objects.

UMDF 1 drivers see interfaces, not handles: ``IWDFDriver``,
``IWDFMemory``, ``IWDFObject``, and implement callback interfaces such as
``IObjectCleanup``. Results are HRESULTs. This facade maps them onto the
framework's objects so the same memory behaviour (and the same findings)
apply; the mapping of statuses to HRESULTs follows the spec (bad arguments
E_INVALIDARG [I], deleting a framework-owned object 0x80070005).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .attributes import WDF_OBJECT_ATTRIBUTES
from .bugcheck import WDF_VERIFIER_FATAL_ERROR, wdf_violation
from .callsite import driver_site, format_site
from .ntstatus import HRESULT, NTSTATUS

_STATUS_TO_HRESULT = {
    NTSTATUS.STATUS_SUCCESS: HRESULT.S_OK,
    NTSTATUS.STATUS_INSUFFICIENT_RESOURCES: HRESULT.E_OUTOFMEMORY,
    NTSTATUS.STATUS_ACCESS_VIOLATION: HRESULT.E_ACCESSDENIED,
    NTSTATUS.STATUS_CANNOT_DELETE: HRESULT.E_ACCESSDENIED,
}


def hresult_from_status(status: int) -> HRESULT:
    """S_OK, E_OUTOFMEMORY, E_ACCESSDENIED, and E_INVALIDARG for every argument error."""
    return _STATUS_TO_HRESULT.get(status, HRESULT.E_INVALIDARG)


@runtime_checkable
class IObjectCleanup(Protocol):
    def OnCleanup(self, pWdfObject: "IWDFObject") -> None: ...


class IWDFObject:
    """An object interface: wraps the framework handle."""

    def __init__(self, fx: Any, handle: int) -> None:
        self._fx = fx
        self.handle = handle

    def DeleteWdfObject(self) -> HRESULT:
        """Framework-owned objects (the driver, a request's memory) refuse: 0x80070005."""
        obj = self._fx._object(self.handle, 0x1000)
        if obj.NO_DELETE_DDI:
            return HRESULT.E_ACCESSDENIED
        self._fx.WdfObjectDelete(self.handle)
        return HRESULT.S_OK

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self.handle:x}>"


class IWDFMemory(IWDFObject):
    def GetDataBuffer(self) -> tuple[int, int]:
        """-> (address, size) (C: the pointer, and the size through the out parameter)."""
        return self._fx.WdfMemoryGetBuffer(self.handle)

    def GetSize(self) -> int:
        return self._fx.WdfMemoryGetBuffer(self.handle)[1]

    def SetBuffer(self, pBuffer: int, BufferSize: int) -> None:
        """Preallocated memory only (else 0x10D/0x5); a zero size or NULL buffer is a
        fatal driver error (the method has no way to report it) [I]."""
        fx = self._fx
        fx._object(self.handle, 0x1022)
        if not pBuffer or not BufferSize:
            raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, self.handle, BufferSize, 0,
                                f"IWDFMemory::SetBuffer with {'a NULL buffer' if not pBuffer else 'a zero size'}"
                                f" (at {format_site(driver_site())})")
        fx.WdfMemoryAssignBuffer(self.handle, pBuffer, BufferSize)

    def CopyFromBuffer(self, DestOffset: int, pSourceBuffer: Any, NumOfBytesToCopyFrom: int) -> HRESULT:
        if pSourceBuffer is None or pSourceBuffer == 0:
            return HRESULT.E_INVALIDARG
        return hresult_from_status(self._fx.WdfMemoryCopyFromBuffer(
            self.handle, DestOffset, pSourceBuffer, NumOfBytesToCopyFrom))

    def CopyToBuffer(self, SourceOffset: int, pDestinationBuffer: Any, NumOfBytesToCopyTo: int) -> HRESULT:
        if pDestinationBuffer is None or pDestinationBuffer == 0:
            return HRESULT.E_INVALIDARG
        return hresult_from_status(self._fx.WdfMemoryCopyToBuffer(
            self.handle, SourceOffset, pDestinationBuffer, NumOfBytesToCopyTo))


class IWDFDriver(IWDFObject):
    def CreatePreallocatedWdfMemory(self, pBuff: int, BufferSize: int, pCallbackInterface: Any,
                                    pParentObject: IWDFObject | None) -> tuple[HRESULT, IWDFMemory | None]:
        """-> (HRESULT, IWDFMemory). The callback object is asked for IObjectCleanup, whose
        OnCleanup runs before the memory is destroyed. No parent: the driver. The
        buffer is never freed by the framework."""
        if not pBuff or not BufferSize:
            return HRESULT.E_INVALIDARG, None
        attributes = WDF_OBJECT_ATTRIBUTES()
        if pParentObject is not None:
            attributes.ParentObject = pParentObject.handle
        facade: list[IWDFMemory] = []
        if pCallbackInterface is not None and isinstance(pCallbackInterface, IObjectCleanup):
            attributes.EvtCleanupCallback = lambda _handle: pCallbackInterface.OnCleanup(facade[0])
        status, handle = self._fx.WdfMemoryCreatePreallocated(attributes, pBuff, BufferSize)
        if status:
            return hresult_from_status(status), None
        facade.append(IWDFMemory(self._fx, handle))
        return HRESULT.S_OK, facade[0]
