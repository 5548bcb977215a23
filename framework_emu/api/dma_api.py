"""DMA entry points: enablers, transactions, common buffers (fxdmaenablerapi.cpp,
fxdmatransactionapi.cpp, fxcommonbufferapi.cpp), validating in their order."""

from __future__ import annotations

from typing import Any, Callable

from ..attributes import WDF_OBJECT_ATTRIBUTES
from ..bugcheck import PAGE_FAULT_IN_NONPAGED_AREA, BugCheck
from ..callsite import driver_site, format_site
from ..common_buffer import CommonBuffer
from ..core import OUT
from ..device import FX_TYPE_DEVICE, Device
from ..dma_enabler import (FX_TYPE_COMMON_BUFFER, FX_TYPE_DMA_ENABLER, FX_TYPE_DMA_TRANSACTION,
                           SIZEOF_WDF_COMMON_BUFFER_CONFIG, SIZEOF_WDF_DMA_ENABLER_CONFIG,
                           WDF_DMA_ENABLER_CONFIG_REQUIRE_SINGLE_TRANSFER, WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS,
                           DEVICE_DESCRIPTION_VERSION3, WDF_COMMON_BUFFER_CONFIG, WDF_DMA_ENABLER_CONFIG,
                           WDF_DMA_PROFILE, DmaEnabler, WdfDmaDirectionReadFromDevice, WdfDmaDirectionWriteToDevice)
from ..dma_transaction import ABORT, FULL, PARTIAL, S
from ..dma_transaction import DmaTransaction as FxDmaTransaction
from ..irql import PASSIVE_LEVEL
from ..ntstatus import NTSTATUS
from ..request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                       METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT)
from ..objects import FX_TYPE_REQUEST
from .validation import FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED, validate_object_attributes

_DIRECTIONS = (WdfDmaDirectionReadFromDevice, WdfDmaDirectionWriteToDevice)


def _search_for_device(obj: Any) -> Device | None:
    """FxDeviceBase::_SearchForDevice: the object or its nearest ancestor that is a device."""
    while obj is not None and not isinstance(obj, Device):
        obj = obj.parent
    return obj


class DmaApi:
    """WdfDmaEnabler*, WdfDmaTransaction*, WdfCommonBuffer*, WdfDeviceSetAlignmentRequirement."""

    def _check_irql_level(self, call: str, level: int) -> int:
        """FxVerifierCheckIrqlLevel: under the verifier, above ``level`` is a KmdfIrql finding and
        STATUS_INVALID_DEVICE_REQUEST (no bug check)."""
        if self._verifier_on and self._irql.current > level:
            status = NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
            self._irql_violation(call, level, driver_site(), fatal=False, status=status)
            return status
        return NTSTATUS.STATUS_SUCCESS

    # -- devices ------------------------------------------------------------------------------------

    def WdfDeviceSetAlignmentRequirement(self, Device: int, AlignmentRequirement: int) -> None:
        """DEVICE_OBJECT.AlignmentRequirement: boundary - 1 (FILE_QUAD_ALIGNMENT 7, ...). Enablers
        created afterwards align their common buffers to it."""
        device = self._object(Device, FX_TYPE_DEVICE)
        self._check_dispatch("WdfDeviceSetAlignmentRequirement")
        device.alignment_requirement = int(AlignmentRequirement) & 0xFFFFFFFF

    def WdfDeviceGetAlignmentRequirement(self, Device: int) -> int:
        return self._object(Device, FX_TYPE_DEVICE).alignment_requirement

    # -- enablers -----------------------------------------------------------------------------------

    def WdfDmaEnablerCreate(self, Device: int, Config: WDF_DMA_ENABLER_CONFIG,
                            Attributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                            DmaEnablerHandle: Any = OUT) -> tuple[int, int | None]:
        """-> (status, enabler). PASSIVE_LEVEL. Order of fxdmaenablerapi.cpp: the device handle,
        the IRQL, NULL outputs, attributes, a parent that is not under this device
        (STATUS_WDF_OBJECT_ATTRIBUTES_INVALID), Config.Size (STATUS_INFO_LENGTH_MISMATCH), the
        profile and MaximumLength 0 (STATUS_INVALID_PARAMETER), then FxDmaEnabler::Initialize."""
        device = self._object(Device, FX_TYPE_DEVICE)
        status = self._check_irql_level("WdfDmaEnablerCreate", PASSIVE_LEVEL)
        if status:
            return status, None
        if DmaEnablerHandle is None:
            raise self._null("DmaEnablerHandle")
        if Config is None:
            raise self._null("Config")
        status = validate_object_attributes(Attributes)
        if status:
            return status, None
        parent: Any = device
        if Attributes is not None and Attributes.ParentObject:
            parent = self._resolve_parent(Attributes)
            if _search_for_device(parent) is not device:
                return NTSTATUS.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID, None
        if Config.Size != SIZEOF_WDF_DMA_ENABLER_CONFIG:
            return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH, None
        if Config.Profile not in WDF_DMA_PROFILE.__members__.values() or Config.Profile == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        if Config.MaximumLength == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        site = driver_site()
        enabler = DmaEnabler(self, site, device, Config)
        status = self._commit_new(enabler, Attributes, parent, site)
        if status:
            return status, None
        status = self._initialize_enabler(enabler, Config)
        if status:
            enabler.delete(site)
            return status, None
        device.dma_enablers.append(enabler)
        return NTSTATUS.STATUS_SUCCESS, enabler.handle

    def _initialize_enabler(self, enabler: DmaEnabler, config: WDF_DMA_ENABLER_CONFIG) -> int:
        """FxDmaEnabler::Initialize: address width and DMA version overrides, then the adapters."""
        if config.AddressWidthOverride:
            if not enabler.is_bus_master:
                self._dbg_break("DmaAddressWidthOverride", "AddressWidthOverride must be zero for a system profile",
                                enabler)
                return NTSTATUS.STATUS_INVALID_PARAMETER
            if enabler.address_width == 32 and config.AddressWidthOverride > 32:
                self._dbg_break("DmaAddressWidthOverride", "AddressWidthOverride must be <= 32 with a 32-bit"
                                " profile", enabler)
                return NTSTATUS.STATUS_INVALID_PARAMETER
            enabler.dma_version = DEVICE_DESCRIPTION_VERSION3
            enabler.address_width = int(config.AddressWidthOverride)
        if config.WdmDmaVersionOverride:
            if config.WdmDmaVersionOverride < enabler.dma_version:
                self._dbg_break("DmaVersionOverride", f"WdmDmaVersionOverride {config.WdmDmaVersionOverride}"
                                f" conflicts with the required version {enabler.dma_version}", enabler)
                return NTSTATUS.STATUS_INVALID_PARAMETER
            enabler.dma_version = int(config.WdmDmaVersionOverride)
        if config.Flags & WDF_DMA_ENABLER_CONFIG_REQUIRE_SINGLE_TRANSFER:
            if not enabler.uses_dma_v3:
                self._dbg_break("DmaSingleTransferNeedsV3", "WDF_DMA_ENABLER_CONFIG_REQUIRE_SINGLE_TRANSFER needs"
                                " DMA version 3", enabler)
                return NTSTATUS.STATUS_INVALID_PARAMETER
            enabler.require_single_transfer = True
        return enabler.configure(enabler.device.hardware)

    def _enabler(self, handle: int) -> DmaEnabler:
        return self._object(handle, FX_TYPE_DMA_ENABLER)

    def WdfDmaEnablerGetMaximumLength(self, DmaEnabler: int) -> int:
        return self._enabler(DmaEnabler).maximum_length

    def WdfDmaEnablerGetMaximumScatterGatherElements(self, DmaEnabler: int) -> int:
        return self._enabler(DmaEnabler).max_sg_elements

    def WdfDmaEnablerSetMaximumScatterGatherElements(self, DmaEnabler: int, MaximumElements: int) -> None:
        """PASSIVE_LEVEL; 0 is ignored (logged); more than WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS is capped."""
        enabler = self._enabler(DmaEnabler)
        if self._check_irql_level("WdfDmaEnablerSetMaximumScatterGatherElements", PASSIVE_LEVEL):
            return
        if MaximumElements == 0:
            self._log(f"Cannot set MaximumElements of zero on {enabler.describe()}")
            return
        enabler.max_sg_elements = min(int(MaximumElements), WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS)

    def _direction_description(self, enabler: DmaEnabler, direction: int, call: str) -> Any:
        if direction not in _DIRECTIONS:
            self._dbg_break("DmaInvalidDirection", f"{call}: invalid DMA direction {direction}", enabler)
            return None
        return enabler.description(direction)

    def WdfDmaEnablerGetFragmentLength(self, DmaEnabler: int, DmaDirection: int) -> int:
        enabler = self._enabler(DmaEnabler)
        description = self._direction_description(enabler, DmaDirection, "WdfDmaEnablerGetFragmentLength")
        return 0 if description is None else description.maximum_fragment_length

    def WdfDmaEnablerWdmGetDmaAdapter(self, DmaEnabler: int, DmaDirection: int) -> Any:
        """The DMA_ADAPTER (here the :class:`DmaAdapter` port object); a bad direction: None."""
        enabler = self._enabler(DmaEnabler)
        description = self._direction_description(enabler, DmaDirection, "WdfDmaEnablerWdmGetDmaAdapter")
        return None if description is None else description.adapter

    # -- transactions -------------------------------------------------------------------------------

    def WdfDmaTransactionCreate(self, DmaEnabler: int, Attributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                                DmaTransaction: Any = OUT) -> tuple[int, int | None]:
        """-> (status, transaction); its parent is the enabler (a ParentObject:
        FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED: STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED)."""
        enabler = self._enabler(DmaEnabler)
        if DmaTransaction is None:
            raise self._null("DmaTransactionHandle")
        self._check_dispatch("WdfDmaTransactionCreate")
        status = validate_object_attributes(Attributes, FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED)
        if status:
            return status, None
        site = driver_site()
        transaction = FxDmaTransaction(self, site, enabler)
        status = self._commit_new(transaction, Attributes, enabler, site)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, transaction.handle

    def _transaction(self, handle: int, call: str) -> FxDmaTransaction:
        transaction = self._object(handle, FX_TYPE_DMA_TRANSACTION)
        self._check_dispatch(call)
        return transaction

    def WdfDmaTransactionInitialize(self, DmaTransaction: int, EvtProgramDmaFunction: Callable[..., Any] | None,
                                    DmaDirection: int, Mdl: Any, VirtualAddress: int, Length: int) -> int:
        """fxdmatransactionapi.cpp: NULL callback or MDL 0x10D/0x4; Length 0, a bad direction, a
        VirtualAddress outside the first MDL, or (no chained MDLs) VirtualAddress + Length past it:
        STATUS_INVALID_PARAMETER; then Initialize (wrong state 0x10D/0x8; too many pages per
        fragment STATUS_WDF_TOO_FRAGMENTED)."""
        call = "WdfDmaTransactionInitialize"
        transaction = self._transaction(DmaTransaction, call)
        if EvtProgramDmaFunction is None:
            raise self._null("EvtProgramDmaFunction")
        if not Mdl:
            raise self._null("Mdl")
        mdl = self._mdl(Mdl)
        if Length == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        if DmaDirection not in _DIRECTIONS:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        va = mdl.virtual_address()
        if not va <= VirtualAddress < va + mdl.ByteCount:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        if not transaction.enabler.supports_chained_mdls and VirtualAddress + Length > va + mdl.ByteCount:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        return transaction.initialize(EvtProgramDmaFunction, DmaDirection, mdl, VirtualAddress - va,
                                      int(Length) & 0xFFFFFFFF, call)

    def WdfDmaTransactionInitializeUsingOffset(self, DmaTransaction: int, EvtProgramDmaFunction: Any,
                                               DmaDirection: int, Mdl: Any, Offset: int, Length: int) -> int:
        mdl = self._mdl(Mdl) if Mdl else Mdl
        va = mdl.virtual_address() if mdl else 0
        return self.WdfDmaTransactionInitialize(DmaTransaction, EvtProgramDmaFunction, DmaDirection, Mdl,
                                                va + Offset, Length)

    def WdfDmaTransactionInitializeUsingRequest(self, DmaTransaction: int, Request: int,
                                                EvtProgramDmaFunction: Callable[..., Any] | None,
                                                DmaDirection: int) -> int:
        """fxdmatransactionapi.cpp: NULL callback 0x10D/0x4; bad direction STATUS_INVALID_PARAMETER;
        direction against the request type STATUS_INVALID_DEVICE_REQUEST; the request's MDL
        (GetMdl, or GetDeviceControlOutputMdl for IN/OUT_DIRECT IOCTLs); a zero length
        STATUS_INVALID_DEVICE_REQUEST; no chained MDLs and a length past the MDL
        STATUS_INVALID_PARAMETER; then Initialize. On success the transaction knows the request."""
        call = "WdfDmaTransactionInitializeUsingRequest"
        transaction = self._transaction(DmaTransaction, call)
        if EvtProgramDmaFunction is None:
            raise self._null("EvtProgramDmaFunction")
        if DmaDirection not in _DIRECTIONS:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        request = self._object(Request, FX_TYPE_REQUEST)
        io = request.io
        site = driver_site()
        write = DmaDirection == WdfDmaDirectionWriteToDevice
        if io.major == IRP_MJ_READ:
            if write:
                return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
            length = io.output_length
            status, mdl = request.get_mdl(site)
        elif io.major == IRP_MJ_WRITE:
            if not write:
                return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
            length = io.input_length
            status, mdl = request.get_mdl(site)
        elif io.major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL):
            method = io.ioctl_code & 3
            if method == METHOD_BUFFERED:
                length = io.input_length if write else io.output_length
                status, mdl = request.get_mdl(site)
            elif method == METHOD_IN_DIRECT:
                if not write:
                    return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
                length = io.output_length
                status, mdl = request.get_device_control_output_mdl(site)
            elif method == METHOD_OUT_DIRECT:
                if write:
                    return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
                length = io.output_length
                status, mdl = request.get_device_control_output_mdl(site)
            else:
                self._dbg_break("DmaInvalidIoctlMethod", f"{call}: METHOD_NEITHER request", request)
                return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        else:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if status:
            return status
        if length == 0:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
        if not transaction.enabler.supports_chained_mdls and length > mdl.ByteCount:
            return NTSTATUS.STATUS_INVALID_PARAMETER
        status = transaction.initialize(EvtProgramDmaFunction, DmaDirection, mdl, 0, length, call)
        if status:
            return status
        transaction.request = request   # SetRequest: referenced from Execute until the transfer ends
        return NTSTATUS.STATUS_SUCCESS

    def WdfDmaTransactionExecute(self, DmaTransaction: int, Context: Any = None) -> int:
        """Starts the transfer: EvtProgramDma with the first fragment's scatter/gather list (now, or
        when map registers come free). Not initialized: 0x10D/0x8."""
        return self._transaction(DmaTransaction, "WdfDmaTransactionExecute").execute(Context, "WdfDmaTransactionExecute")

    def WdfDmaTransactionRelease(self, DmaTransaction: int) -> int:
        """Ready for reuse; under the verifier, during a transfer 0x10D/0x8. Always STATUS_SUCCESS."""
        self._transaction(DmaTransaction, "WdfDmaTransactionRelease").release_for_reuse(False)
        return NTSTATUS.STATUS_SUCCESS

    def _completed(self, handle: int, length: int, kind: int, status_out: Any, call: str) -> tuple[bool, int | None]:
        transaction = self._transaction(handle, call)
        if status_out is None:
            raise self._null("pStatus")
        return transaction.dma_completed(int(length), kind, call)

    def WdfDmaTransactionDmaCompleted(self, DmaTransaction: int, *, Status: Any = OUT) -> tuple[bool, int]:
        """-> (transitioned, status): False and STATUS_MORE_PROCESSING_REQUIRED while fragments
        remain (the next one went to EvtProgramDma); True with the transaction's final status.
        Not transferring (completed twice, never executed): 0x10D/0x8."""
        return self._completed(DmaTransaction, 0, FULL, Status, "WdfDmaTransactionDmaCompleted")

    def WdfDmaTransactionDmaCompletedWithLength(self, DmaTransaction: int, TransferredLength: int, *,
                                                Status: Any = OUT) -> tuple[bool, int]:
        return self._completed(DmaTransaction, TransferredLength, PARTIAL, Status,
                               "WdfDmaTransactionDmaCompletedWithLength")

    def WdfDmaTransactionDmaCompletedFinal(self, DmaTransaction: int, FinalTransferredLength: int, *,
                                           Status: Any = OUT) -> tuple[bool, int]:
        return self._completed(DmaTransaction, FinalTransferredLength, ABORT, Status,
                               "WdfDmaTransactionDmaCompletedFinal")

    def WdfDmaTransactionGetBytesTransferred(self, DmaTransaction: int) -> int:
        return self._transaction(DmaTransaction, "WdfDmaTransactionGetBytesTransferred").transferred

    def WdfDmaTransactionGetCurrentDmaTransferLength(self, DmaTransaction: int) -> int:
        return self._transaction(DmaTransaction, "WdfDmaTransactionGetCurrentDmaTransferLength").current_length

    def WdfDmaTransactionGetRequest(self, DmaTransaction: int) -> int | None:
        request = self._transaction(DmaTransaction, "WdfDmaTransactionGetRequest").request
        return None if request is None else request.handle

    def WdfDmaTransactionGetDevice(self, DmaTransaction: int) -> int:
        return self._transaction(DmaTransaction, "WdfDmaTransactionGetDevice").enabler.device.handle

    def WdfDmaTransactionSetMaximumLength(self, DmaTransaction: int, MaximumLength: int) -> None:
        """Only lowers the fragment length, and only once initialized (the framework reads the
        adapter's limit, which Initialize sets: before it the real call dereferences NULL [I])."""
        transaction = self._transaction(DmaTransaction, "WdfDmaTransactionSetMaximumLength")
        if transaction.adapter_info is None:
            raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (0, 0, 0, 0),
                           f"WdfDmaTransactionSetMaximumLength on {transaction.describe()} before it was"
                           f" initialized (m_AdapterInfo is NULL) at {format_site(driver_site())}")
        if MaximumLength < transaction.adapter_info.maximum_fragment_length:
            transaction.max_fragment_length = int(MaximumLength)

    def _needs_v3(self, transaction: FxDmaTransaction, call: str) -> bool:
        if transaction.enabler.uses_dma_v3:
            return True
        self._dbg_break("DmaVersion3Required", f"{call}: {transaction.enabler.describe()} is not configured to use"
                        " DMA version 3 (WDF_DMA_ENABLER_CONFIG.WdmDmaVersionOverride = 3)", transaction)
        return False

    def WdfDmaTransactionSetImmediateExecution(self, DmaTransaction: int, UseImmediateExecution: bool) -> None:
        call = "WdfDmaTransactionSetImmediateExecution"
        transaction = self._transaction(DmaTransaction, call)
        if self._needs_v3(transaction, call):
            transaction.set_immediate_execution(UseImmediateExecution)

    def WdfDmaTransactionSetSingleTransferRequirement(self, DmaTransaction: int, RequireSingleTransfer: bool) -> None:
        """DMA v3 only; before Initialize (Created, Released or Reserved), else a verifier break."""
        call = "WdfDmaTransactionSetSingleTransferRequirement"
        transaction = self._object(DmaTransaction, FX_TYPE_DMA_TRANSACTION)
        if self._check_irql_level(call, 2):
            return
        if not self._needs_v3(transaction, call):
            return
        if transaction.dma_state not in (S.FxDmaTransactionStateCreated, S.FxDmaTransactionStateReleased,
                                         S.FxDmaTransactionStateReserved):
            self._dbg_break("DmaSingleTransferState", f"{call}: {transaction.describe()} was already initialized"
                            f" (state {transaction.dma_state.name})", transaction)
            return
        transaction.require_single_transfer = bool(RequireSingleTransfer)

    # -- common buffers -----------------------------------------------------------------------------

    def WdfCommonBufferCreate(self, DmaEnabler: int, Length: int, Attributes: WDF_OBJECT_ATTRIBUTES | None = None,
                              *, CommonBuffer: Any = OUT) -> tuple[int, int | None]:
        """-> (status, common buffer). PASSIVE_LEVEL; Length 0 STATUS_INVALID_PARAMETER; a
        ParentObject is not allowed (the enabler is the parent)."""
        return self._common_buffer_create(DmaEnabler, Length, Attributes, CommonBuffer, None)

    def WdfCommonBufferCreateWithConfig(self, DmaEnabler: int, Length: int, Config: WDF_COMMON_BUFFER_CONFIG,
                                        Attributes: WDF_OBJECT_ATTRIBUTES | None = None, *,
                                        CommonBuffer: Any = OUT) -> tuple[int, int | None]:
        """As WdfCommonBufferCreate, with Config.AlignmentRequirement (boundary - 1); NULL Config
        0x10D/0x4, wrong Size STATUS_INFO_LENGTH_MISMATCH."""
        return self._common_buffer_create(DmaEnabler, Length, Attributes, CommonBuffer, Config, with_config=True)

    def _common_buffer_create(self, handle: int, length: int, attributes: WDF_OBJECT_ATTRIBUTES | None, out: Any,
                              config: WDF_COMMON_BUFFER_CONFIG | None, with_config: bool = False
                              ) -> tuple[int, int | None]:
        enabler = self._enabler(handle)
        if out is None:
            raise self._null("CommonBufferHandle")
        if with_config:
            if config is None:
                raise self._null("Config")
            if config.Size != SIZEOF_WDF_COMMON_BUFFER_CONFIG:
                return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH, None
        call = "WdfCommonBufferCreateWithConfig" if with_config else "WdfCommonBufferCreate"
        status = self._check_irql_level(call, PASSIVE_LEVEL)
        if status:
            return status, None
        if length == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        status = validate_object_attributes(attributes, FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED)
        if status:
            return status, None
        site = driver_site()
        buffer = CommonBuffer(self, site, enabler)
        status = self._commit_new(buffer, attributes, enabler, site)
        if status:
            return status, None
        if config is not None:
            buffer.alignment = int(config.AlignmentRequirement)
        if not buffer.allocate(int(length)):
            buffer.delete(site)
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
        return NTSTATUS.STATUS_SUCCESS, buffer.handle

    def _common(self, handle: int) -> CommonBuffer:
        return self._object(handle, FX_TYPE_COMMON_BUFFER)

    def WdfCommonBufferGetAlignedVirtualAddress(self, CommonBuffer: int) -> int:
        return self._common(CommonBuffer).aligned_va

    def WdfCommonBufferGetAlignedLogicalAddress(self, CommonBuffer: int) -> int:
        return self._common(CommonBuffer).aligned_la

    def WdfCommonBufferGetLength(self, CommonBuffer: int) -> int:
        return self._common(CommonBuffer).length

