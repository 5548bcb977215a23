"""WDFDMATRANSACTION: one DMA transfer, staged into fragments the device can take
(fxdmatransactionbase.cpp, fxdmatransactionscattergather.cpp, fxdmatransactionpacket.cpp).

The state machine is the framework's (FxDmaTransactionState): Created ->
Initialized (WdfDmaTransactionInitialize*) -> Transfer (Execute) ->
TransferCompleted / TransferFailed (DmaCompleted*) -> Released (Release) or
Deleted. A call in the wrong state is FxVerifierBugCheck(WDF_DMA_FATAL_ERROR):
0x10D, P1 0x8, P2 the transaction, P3 its state, whatever the verifier mode.

Staging: each fragment is at most the adapter's maximum fragment length; a
scatter/gather fragment is then cut to what the map registers can map
(_CalculateRequiredMapRegisters) and refused with STATUS_WDF_TOO_FRAGMENTED
when it spans more pages than the enabler's maximum scatter/gather elements;
a packet fragment is cut to its first logically contiguous run (MapTransfer).
Each fragment is mapped through the enabler's adapter (bounce buffers and map
registers there) and handed to EvtProgramDma at DISPATCH_LEVEL; DmaCompleted
unmaps it and stages the next, calling EvtProgramDma again from inside
DmaCompleted, as GetScatterGatherList does when its resources are free. When
map registers are short the fragment waits for them (EvtProgramDma runs once
another transfer releases them), or, for a transaction marked for immediate
execution, Execute returns STATUS_INSUFFICIENT_RESOURCES.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE

from .bugcheck import WDF_DMA_FATAL_ERROR, wdf_violation
from .callsite import CallSite, driver_site
from .dma_adapter import DmaMappingError, MapRegistersBusy, ScatterGatherList, Span, mdl_spans
from .dma_enabler import FX_TYPE_DMA_TRANSACTION, DmaDescription, DmaEnabler, WdfDmaDirectionWriteToDevice
from .irql import DISPATCH_LEVEL
from .mdl import BYTE_OFFSET, Mdl
from .ntstatus import NTSTATUS
from .objects import FX_TYPE_OBJECT, FxObject
from .verifier import finding_for

STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED


class FxDmaTransactionState(enum.IntEnum):
    FxDmaTransactionStateInvalid = 0
    FxDmaTransactionStateCreated = 1
    FxDmaTransactionStateReserved = 2
    FxDmaTransactionStateInitialized = 3
    FxDmaTransactionStateTransfer = 4
    FxDmaTransactionStateTransferCompleted = 5
    FxDmaTransactionStateTransferFailed = 6
    FxDmaTransactionStateReleased = 7
    FxDmaTransactionStateDeleted = 8


S = FxDmaTransactionState
FULL, PARTIAL, ABORT = 1, 2, 3  # FxDmaCompletionType


def compute_next_transfer_address(mdl: Mdl, offset: int, transferred: int) -> tuple[Mdl, int]:
    """FxDmaTransactionBase::_ComputeNextTransferAddress: the MDL and offset ``transferred``
    bytes after (mdl, offset), walking the chain."""
    size = mdl.ByteCount - offset
    if transferred < size:
        return mdl, offset + transferred
    left = transferred - size
    nxt = mdl.Next
    while nxt is not None and left >= nxt.ByteCount:
        left -= nxt.ByteCount
        nxt = nxt.Next
    if nxt is None:
        return mdl, mdl.ByteCount  # the end of the chain (nothing more is transferred from here)
    return nxt, left


def calculate_required_map_registers(mdl: Mdl, offset: int, length: int, available: int) -> tuple[int, int, int]:
    """FxDmaTransactionBase::_CalculateRequiredMapRegisters -> (status, possible length, map
    registers required), derived from HalCalculateScatterGatherListSize: pages per MDL of the chain."""
    temp = mdl
    transfer_length = temp.ByteCount - offset
    mdl_length = transfer_length
    page_offset = BYTE_OFFSET(temp.virtual_address() + offset)
    required = possible = 0
    while transfer_length < length and temp.Next is not None:
        required += (page_offset + mdl_length + PAGE_SIZE - 1) >> PAGE_SHIFT
        if required <= available:
            possible = transfer_length
        temp = temp.Next
        page_offset = temp.ByteOffset
        mdl_length = temp.ByteCount
        transfer_length += mdl_length
    if transfer_length + PAGE_SIZE < length + page_offset:
        return NTSTATUS.STATUS_BUFFER_TOO_SMALL, 0, 0
    required += (page_offset + length + mdl_length - transfer_length + PAGE_SIZE - 1) >> PAGE_SHIFT
    if required <= available:
        possible += length + mdl_length - transfer_length
    return NTSTATUS.STATUS_SUCCESS, possible, required


def fragment_spans(mdl: Mdl, offset: int, length: int) -> list[Span]:
    """The (pfn, offset, length) spans of ``length`` bytes from (mdl, offset) along the chain."""
    spans: list[Span] = []
    current: Mdl | None = mdl
    while length > 0 and current is not None:
        available = current.ByteCount - offset
        if available > 0:
            va = current.virtual_address() + offset
            take = min(available, length)
            first_page = (BYTE_OFFSET(current.virtual_address()) + offset) >> PAGE_SHIFT
            pfns = current.pfn_array()
            pages = ((BYTE_OFFSET(va) + take + PAGE_SIZE - 1) >> PAGE_SHIFT)
            spans.extend(mdl_spans(list(pfns[first_page:first_page + pages]), BYTE_OFFSET(va), take))
            length -= take
        current, offset = current.Next, 0
    if length > 0:
        raise DmaMappingError(f"the MDL chain ends {length} bytes before the transfer does", value=length)
    return spans


class DmaTransaction(FxObject):
    """WDFDMATRANSACTION (parent: its enabler)."""

    WDF_TYPE = FX_TYPE_DMA_TRANSACTION
    HANDLE_NAME = "WDFDMATRANSACTION"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_DMA_TRANSACTION})
    DISPOSE_OVERRIDE = True

    def __init__(self, fx: Any, site: CallSite | None, enabler: DmaEnabler) -> None:
        FxObject.__init__(self, fx, site)
        self.enabler = enabler
        self._dma_state = S.FxDmaTransactionStateCreated
        self.request: Any = None
        self.sg: ScatterGatherList | None = None
        self._waiting: Callable[[], None] | None = None
        self.reset()
        self.DESCRIPTION = f"DMA transaction of {enabler.describe()}"

    # the object model keeps ``state`` for the object's life (objects.py); the transaction's own
    # state machine lives in ``dma_state``
    @property
    def dma_state(self) -> FxDmaTransactionState:
        return self._dma_state

    def reset(self) -> None:
        """FxDmaTransactionBase::Reset."""
        self.max_fragment_length = 0
        self.transaction_length = 0
        self.direction = 0
        self.remaining = 0
        self.transferred = 0
        self.start_mdl: Mdl | None = None
        self.start_offset = 0
        self.current_mdl: Mdl | None = None
        self.current_offset = 0
        self.current_length = 0
        self.require_single_transfer = self.enabler.require_single_transfer
        self.immediate_execution = False
        self.program_dma: Callable[..., Any] | None = None
        self.context: Any = None
        self.adapter_info: DmaDescription | None = None
        self.program_calls = 0

    # -- the framework's fatal checks ------------------------------------------------------------

    def fatal(self, call: str, why: str = "") -> Exception:
        """FxVerifierBugCheck(WDF_DMA_FATAL_ERROR, transaction, state): recorded as a finding,
        then the machine stops (in either verifier mode: the framework bug-checks unconditionally)."""
        state = self._dma_state
        message = f"{call} on {self.describe()} in state {state.name}{': ' + why if why else ''}"
        finding = finding_for("DmaTransactionState", "error", message, driver_site(), self)
        self.fx._verifier.report(finding, fatal=False)
        return wdf_violation(WDF_DMA_FATAL_ERROR, self.handle, int(state), 0, message, finding=finding,
                             details=self.format_history())

    # -- Initialize ---------------------------------------------------------------------------------

    def initialize(self, program_dma: Callable[..., Any], direction: int, mdl: Mdl, offset: int,
                   length: int, call: str) -> int:
        """FxDmaTransactionBase::Initialize."""
        if self._dma_state not in (S.FxDmaTransactionStateCreated, S.FxDmaTransactionStateReserved,
                                   S.FxDmaTransactionStateReleased):
            raise self.fatal(call, "initialized again before WdfDmaTransactionRelease")
        self.adapter_info = self.enabler.description(direction)
        self.max_fragment_length = self.adapter_info.maximum_fragment_length
        self.direction = int(direction)
        self.start_mdl = self.current_mdl = mdl
        self.start_offset = self.current_offset = offset
        self.remaining = self.transaction_length = length
        self.program_dma = program_dma
        status = NTSTATUS.STATUS_SUCCESS
        if self.require_single_transfer:
            self.max_fragment_length = max(self.max_fragment_length, self.enabler.maximum_length)
            status = self.prepare_for_single_transfer()
        if not status:
            status = self.initialize_resources()
        if not status:
            self._dma_state = S.FxDmaTransactionStateInitialized
        else:
            self.release_for_reuse(False, call)
        self.note(f"initialized ({length} bytes, {'to' if direction else 'from'} the device)", driver_site())
        return status

    def prepare_for_single_transfer(self) -> int:
        """FxDmaTransactionBase::PrepareForSingleTransfer."""
        if self.transaction_length > self.max_fragment_length:
            return NTSTATUS.STATUS_WDF_TOO_MANY_TRANSFERS
        status, _possible, required = calculate_required_map_registers(
            self.start_mdl, self.start_offset, self.transaction_length, 0xFFFFFFFF)
        if status:
            return status
        if required > self.adapter_info.number_of_map_registers:
            return NTSTATUS.STATUS_WDF_NOT_ENOUGH_MAP_REGISTERS
        elements = len(self._coalesced(fragment_spans(self.start_mdl, self.start_offset, self.transaction_length)))
        if elements > self.enabler.max_sg_elements:
            return NTSTATUS.STATUS_WDF_TOO_FRAGMENTED
        if self.enabler.is_packet_profile and elements > 1:
            return NTSTATUS.STATUS_WDF_TOO_FRAGMENTED
        return NTSTATUS.STATUS_SUCCESS

    @staticmethod
    def _coalesced(spans: list[Span]) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        for pfn, offset, length in spans:
            gpa = (pfn << PAGE_SHIFT) + offset
            if runs and runs[-1][0] + runs[-1][1] == gpa:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((gpa, length))
        return runs

    def initialize_resources(self) -> int:
        """FxDmaScatterGatherTransaction::InitializeResources: every fragment's page count against
        the enabler's maximum scatter/gather elements (packet transactions: nothing to check)."""
        if self.require_single_transfer or not self.enabler.is_scatter_gather:
            return NTSTATUS.STATUS_SUCCESS
        remaining, mdl, offset, length = self.transaction_length, self.start_mdl, self.start_offset, 0
        while remaining:
            mdl, offset = compute_next_transfer_address(mdl, offset, length)
            length = min(remaining, self.max_fragment_length)
            status, _possible, required = calculate_required_map_registers(
                mdl, offset, length, self.adapter_info.number_of_map_registers)
            if status:
                return status
            if required > self.enabler.max_sg_elements:
                return NTSTATUS.STATUS_WDF_TOO_FRAGMENTED
            remaining -= length
        return NTSTATUS.STATUS_SUCCESS

    # -- Execute and staging -----------------------------------------------------------------------

    def execute(self, context: Any, call: str) -> int:
        """FxDmaTransactionBase::Execute."""
        if self._dma_state != S.FxDmaTransactionStateInitialized:
            raise self.fatal(call, "not initialized" if self._dma_state != S.FxDmaTransactionStateTransfer
                             else "already executing")
        if self.request is not None:
            self._reference_request()
        self._dma_state = S.FxDmaTransactionStateTransfer
        self.context = context
        self.note("executed", driver_site())
        status = self.start_transfer()
        if status & 0x80000000:
            self._dma_state = S.FxDmaTransactionStateTransferFailed
            self.context = None
            self._release_request_reference()
        return status

    # ReferenceRequest / ReleaseButRetainRequest: an IRP reference on the request while its DMA
    # is in flight, "to catch completion of request when there is a pending DMA transaction"
    # (completing it then stops the machine: 0x10D/0x3, the request's references check).
    _request_referenced = False

    def _reference_request(self) -> None:
        if not self._request_referenced:
            self.request.irp_references += 1
            self._request_referenced = True

    def _release_request_reference(self) -> None:
        if self._request_referenced:
            self.request.irp_references -= 1
            self._request_referenced = False

    def clear_request(self) -> None:
        self._release_request_reference()
        self.request = None

    def start_transfer(self) -> int:
        if self.enabler.is_packet_profile and not self.enabler.uses_dma_v3:
            device = self.enabler.device
            if device.dma_packet_transaction is not None and device.dma_packet_transaction is not self:
                self.fx._dbg_break("DmaPacketTransactionBusy", "only one transaction can be queued at one time on"
                                   f" a packet-based {self.enabler.describe()}", self,
                                   status=NTSTATUS.STATUS_WDF_BUSY)
                return NTSTATUS.STATUS_WDF_BUSY
            device.dma_packet_transaction = self
        status = self.stage_transfer()
        if status & 0x80000000:
            self._release_device()
        return status

    def _release_device(self) -> None:
        device = self.enabler.device
        if device.dma_packet_transaction is self:
            device.dma_packet_transaction = None

    def stage_transfer(self) -> int:
        """StageTransfer: the next fragment, mapped and handed to EvtProgramDma (or waiting for
        map registers)."""
        self.current_mdl, self.current_offset = compute_next_transfer_address(
            self.current_mdl, self.current_offset, self.current_length)
        self.current_length = min(self.remaining, self.max_fragment_length)
        if self.enabler.is_scatter_gather and not self.require_single_transfer:
            _status, possible, required = calculate_required_map_registers(
                self.current_mdl, self.current_offset, self.current_length, self.adapter_info.number_of_map_registers)
            self.current_length = possible
            if required > self.enabler.max_sg_elements:
                return NTSTATUS.STATUS_WDF_TOO_FRAGMENTED
        self.remaining -= self.current_length
        return self._map_and_program()

    def _map_and_program(self) -> int:
        adapter = self.adapter_info.adapter
        to_device = self.direction == WdfDmaDirectionWriteToDevice
        try:
            spans = fragment_spans(self.current_mdl, self.current_offset, self.current_length)
            sg = adapter.map(spans, to_device=to_device)
            if self.enabler.is_packet_profile and len(sg.elements) > 1:
                # MapTransfer maps one logically contiguous run: the rest waits for the next fragment
                mapped = sg.elements[0].length
                adapter.unmap(sg)
                self.remaining += self.current_length - mapped
                self.current_length = mapped
                sg = adapter.map(fragment_spans(self.current_mdl, self.current_offset, mapped), to_device=to_device)
        except MapRegistersBusy:
            if self.immediate_execution:
                self.remaining += self.current_length
                return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
            self._waiting = self._map_registers_freed
            adapter.when_map_registers_free(self._waiting)
            self.fx._log(f"{self.describe()} waits for map registers")
            return NTSTATUS.STATUS_SUCCESS
        except DmaMappingError as error:
            self.remaining += self.current_length
            self.fx._log(f"{self.describe()}: the adapter cannot map the fragment: {error}")
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
        self.sg = sg
        self._program(sg)
        return NTSTATUS.STATUS_SUCCESS

    def _map_registers_freed(self) -> None:
        """The queued adapter request: when map registers come back, map and program (a DPC)."""
        self._waiting = None
        dispatcher = self.fx.io_manager.dispatcher

        def resume() -> None:
            if self._dma_state == S.FxDmaTransactionStateTransfer and self.sg is None:
                self._map_and_program()
        dispatcher.post(resume, DISPATCH_LEVEL, f"adapter channel of {self.describe()}")

    def _program(self, sg: ScatterGatherList) -> None:
        self.program_calls += 1
        dispatcher = self.fx.io_manager.dispatcher
        dispatcher.invoke(self.fx, self.program_dma,
                          (self.handle, self.enabler.device.handle, self.context, self.direction, sg),
                          max(DISPATCH_LEVEL, self.fx._irql.current), f"EvtProgramDma of {self.describe()}")

    # -- completion -----------------------------------------------------------------------------------

    def dma_completed(self, transferred: int, kind: int, call: str) -> tuple[bool, int]:
        """FxDmaTransactionBase::DmaCompleted -> (transitioned, status)."""
        if self._dma_state != S.FxDmaTransactionStateTransfer:
            raise self.fatal(call, "no transfer in progress (completed twice, or never executed)")
        if transferred > self.current_length:
            status = NTSTATUS.STATUS_INVALID_PARAMETER
            self.fx._dbg_break("DmaCompletedLength", f"{call}: transferred length {transferred} is more than the"
                               f" {self.current_length} bytes asked for", self, status=status)
        else:
            if kind in (PARTIAL, ABORT):
                self.transferred += transferred
                self.remaining += self.current_length - transferred
                self.current_length = transferred
            else:
                self.transferred += self.current_length
            status = self.transfer_completed()
            if not status:
                if self.require_single_transfer and self.remaining > 0:
                    status = NTSTATUS.STATUS_WDF_TOO_MANY_TRANSFERS
                elif self.remaining == 0 or kind == ABORT:
                    status = NTSTATUS.STATUS_SUCCESS
                else:
                    status = self.stage_transfer()
                    if not status & 0x80000000:
                        return False, STATUS_MORE_PROCESSING_REQUIRED
        self._dma_state = (S.FxDmaTransactionStateTransferFailed if status & 0x80000000
                           else S.FxDmaTransactionStateTransferCompleted)
        self.release_resources()
        self._release_request_reference()
        self.current_length = 0
        self.note("DMA completed", driver_site())
        return True, status

    def transfer_completed(self) -> int:
        """TransferCompleted: PutScatterGatherList (bounce buffers copied back for reads)."""
        self._unmap()
        return NTSTATUS.STATUS_SUCCESS

    def _unmap(self) -> None:
        if self.sg is not None:
            sg, self.sg = self.sg, None
            self.adapter_info.adapter.unmap(sg)

    def release_resources(self) -> None:
        self._unmap()
        if self._waiting is not None and self.adapter_info is not None:
            self.adapter_info.adapter.cancel_waiter(self._waiting)
            self._waiting = None
        self._release_device()

    def release_for_reuse(self, force: bool, call: str = "WdfDmaTransactionRelease") -> None:
        """FxDmaTransactionBase::ReleaseForReuse."""
        if not force:
            if self._dma_state == S.FxDmaTransactionStateReleased:
                return
            if self._dma_state == S.FxDmaTransactionStateTransfer and self.fx._verifier_on:
                raise self.fatal(call, "released while its DMA is in progress")
        self._dma_state = S.FxDmaTransactionStateReleased
        self.release_resources()
        self.reset()
        self.clear_request()

    def set_immediate_execution(self, value: bool) -> None:
        if self._dma_state not in (S.FxDmaTransactionStateCreated, S.FxDmaTransactionStateInitialized,
                                   S.FxDmaTransactionStateReleased):
            self.fx._dbg_break("DmaImmediateExecutionState", "WdfDmaTransactionSetImmediateExecution must come"
                               f" before Execute (state {self._dma_state.name})", self)
        self.immediate_execution = bool(value)

    # -- deletion -------------------------------------------------------------------------------------

    def dispose(self) -> None:
        """FxDmaTransactionBase::Dispose: deleting a transaction while it transfers (it, or its
        enabler or device) is WDF_DMA_FATAL_ERROR under the verifier."""
        if self._dma_state == S.FxDmaTransactionStateTransfer and self.fx._verifier_on:
            deleting = self.fx._deleting_site
            raise self.fatal("WdfObjectDelete" if deleting is None else "deletion",
                             "deleted (with its enabler or device?) while its DMA is in progress")
        self._dma_state = S.FxDmaTransactionStateDeleted
        self.release_resources()
        self.clear_request()
        FxObject.dispose(self)

    def free_storage(self) -> None:
        if self._dma_state != S.FxDmaTransactionStateDeleted:
            self._dma_state = S.FxDmaTransactionStateDeleted
            self.release_resources()
            self.clear_request()
        FxObject.free_storage(self)

    _dma_state = S.FxDmaTransactionStateCreated
