"""The UMDF 1 facade's I/O path, where UMDF 1 has one: IWDFIoRequest, IWDFIoTarget, IWDFDevice.

Same objects, same rules and findings as the KMDF calls underneath
(umdf1.py says how statuses map to HRESULTs): ``IWDFIoRequest.GetInputMemory``
/ ``GetOutputMemory`` hand out the request's memory, ``IWDFIoTarget.FormatRequestForRead``
/ ``Write`` / ``Ioctl`` take IWDFMemory objects (with optional offsets), and
``IWDFDriver.CreatePreallocatedWdfMemory`` wraps a request's buffer. Completion
callbacks are objects with ``OnCompletion(pWdfRequest, pIoTarget, pParams, pContext)``
(IRequestCallbackRequestCompletion).
"""

from __future__ import annotations

from typing import Any

from .memory_descriptor import WDFMEMORY_OFFSET
from .iotarget import WDF_REQUEST_SEND_OPTION_TIMEOUT, WDF_REQUEST_SEND_OPTIONS
from .ntstatus import HRESULT
from .umdf1 import IWDFMemory, IWDFObject, hresult_from_status


def _memory_handle(memory: IWDFMemory | None) -> int | None:
    return memory.handle if memory is not None else None


def _offset(offset: Any) -> WDFMEMORY_OFFSET | None:
    if offset is None:
        return None
    if isinstance(offset, WDFMEMORY_OFFSET):
        return offset
    return WDFMEMORY_OFFSET(*offset)


class IWDFIoTarget(IWDFObject):
    def FormatRequestForRead(self, pRequest: "IWDFIoRequest", pFile: Any, pOutputMemory: IWDFMemory | None,
                             pOutputMemoryOffset: Any = None, DeviceOffset: int | None = None) -> HRESULT:
        return hresult_from_status(self._fx.WdfIoTargetFormatRequestForRead(
            self.handle, pRequest.handle, _memory_handle(pOutputMemory), _offset(pOutputMemoryOffset), DeviceOffset))

    def FormatRequestForWrite(self, pRequest: "IWDFIoRequest", pFile: Any, pInputMemory: IWDFMemory | None,
                              pInputMemoryOffset: Any = None, DeviceOffset: int | None = None) -> HRESULT:
        return hresult_from_status(self._fx.WdfIoTargetFormatRequestForWrite(
            self.handle, pRequest.handle, _memory_handle(pInputMemory), _offset(pInputMemoryOffset), DeviceOffset))

    def FormatRequestForIoctl(self, pRequest: "IWDFIoRequest", IoctlCode: int, pFile: Any,
                              pInputMemory: IWDFMemory | None, pInputMemoryOffset: Any,
                              pOutputMemory: IWDFMemory | None, pOutputMemoryOffset: Any = None) -> HRESULT:
        return hresult_from_status(self._fx.WdfIoTargetFormatRequestForIoctl(
            self.handle, pRequest.handle, IoctlCode, _memory_handle(pInputMemory), _offset(pInputMemoryOffset),
            _memory_handle(pOutputMemory), _offset(pOutputMemoryOffset)))


class IWDFRequestCompletionParams:
    def __init__(self, params: Any) -> None:
        self._params = params

    def GetCompletionStatus(self) -> HRESULT:
        return hresult_from_status(self._params.IoStatus.Status)

    def GetInformation(self) -> int:
        return self._params.IoStatus.Information

    def GetCompletedRequestType(self) -> int:
        return self._params.Type


class IWDFIoRequest(IWDFObject):
    def GetInputMemory(self) -> IWDFMemory | None:
        """The request's input memory (None where the KMDF call fails: a read has no input)."""
        status, memory = self._fx.WdfRequestRetrieveInputMemory(self.handle)
        return IWDFMemory(self._fx, memory) if status == 0 else None

    def GetOutputMemory(self) -> IWDFMemory | None:
        status, memory = self._fx.WdfRequestRetrieveOutputMemory(self.handle)
        return IWDFMemory(self._fx, memory) if status == 0 else None

    def GetType(self) -> int:
        return self._fx.WdfRequestGetParameters(self.handle).Type

    def GetReadParameters(self) -> tuple[int, int, int]:
        """-> (size, offset, key)."""
        params = self._fx.WdfRequestGetParameters(self.handle)
        return params.Length, params.DeviceOffset, params.Key

    GetWriteParameters = GetReadParameters

    def GetDeviceIoControlParameters(self) -> tuple[int, int, int]:
        """-> (control code, input size, output size)."""
        params = self._fx.WdfRequestGetParameters(self.handle)
        return params.IoControlCode, params.InputBufferLength, params.OutputBufferLength

    def Complete(self, CompletionStatus: int) -> None:
        self._fx.WdfRequestComplete(self.handle, _status_from_hresult(CompletionStatus))

    def CompleteWithInformation(self, CompletionStatus: int, Information: int) -> None:
        self._fx.WdfRequestCompleteWithInformation(self.handle, _status_from_hresult(CompletionStatus), Information)

    def FormatUsingCurrentType(self) -> None:
        self._fx.WdfRequestFormatRequestUsingCurrentType(self.handle)

    def SetCompletionCallback(self, pCompletionCallback: Any, pContext: Any = None) -> None:
        fx = self._fx

        def routine(Request: int, Target: int, Params: Any, Context: Any) -> None:
            pCompletionCallback.OnCompletion(IWDFIoRequest(fx, Request), IWDFIoTarget(fx, Target),
                                             IWDFRequestCompletionParams(Params), Context)
        fx.WdfRequestSetCompletionRoutine(self.handle, routine, pContext)

    def Send(self, pIoTarget: IWDFIoTarget, Flags: int = 0, Timeout: int = 0) -> HRESULT:
        options = WDF_REQUEST_SEND_OPTIONS(Flags=Flags | (WDF_REQUEST_SEND_OPTION_TIMEOUT if Timeout else 0),
                                           Timeout=Timeout)
        if self._fx.WdfRequestSend(self.handle, pIoTarget.handle, options):
            return HRESULT.S_OK
        return hresult_from_status(self._fx.WdfRequestGetStatus(self.handle))

    def GetCompletionParams(self) -> IWDFRequestCompletionParams:
        return IWDFRequestCompletionParams(self._fx.WdfRequestGetCompletionParams(self.handle))


class IWDFDevice(IWDFObject):
    def GetDefaultIoTarget(self) -> IWDFIoTarget:
        return IWDFIoTarget(self._fx, self._fx.WdfDeviceGetIoTarget(self.handle))

    def CreateRequest(self, pCallbackInterface: Any, pParentObject: IWDFObject | None) -> tuple[HRESULT, Any]:
        from .attributes import WDF_OBJECT_ATTRIBUTES
        attributes = WDF_OBJECT_ATTRIBUTES(ParentObject=pParentObject.handle if pParentObject else None)
        status, request = self._fx.WdfRequestCreate(attributes, None)
        if status:
            return hresult_from_status(status), None
        return HRESULT.S_OK, IWDFIoRequest(self._fx, request)


def _status_from_hresult(hr: int) -> int:
    """S_OK -> STATUS_SUCCESS; an HRESULT_FROM_NT value -> its NTSTATUS; other failures ->
    STATUS_UNSUCCESSFUL [I]."""
    hr = int(hr)
    if hr & 0x80000000 == 0:
        return 0
    if hr & 0x10000000:  # FACILITY_NT_BIT
        return hr & ~0x10000000
    return 0xC0000001
