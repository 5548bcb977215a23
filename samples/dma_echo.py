"""A bus-master DMA echo driver, written as a KMDF PCI driver is (the PLX9x5x sample's shape).

EvtDriverDeviceAdd creates the device, a sequential queue, a DMA enabler, a
common buffer for the device's descriptor table, one reusable DMA transaction
and the interrupt. EvtDevicePrepareHardware finds BAR0 in the translated
resources and maps it (MmMapIoSpaceEx when MmGetSystemRoutineAddress finds it,
else MmMapIoSpace). A read or write: WdfDmaTransactionInitializeUsingRequest,
WdfDmaTransactionExecute; EvtProgramDma writes the scatter/gather list into the
descriptor table and starts the device; the ISR acknowledges the interrupt and
queues the DPC; the DPC calls WdfDmaTransactionDmaCompleted, which either hands
the next fragment to EvtProgramDma or ends the transaction, and then the
request is completed with the bytes transferred.

The device is ``samples.fake_busmaster.FakeBusMaster`` in unit tests (its
register layout is documented there).
"""

from __future__ import annotations

from typing import Any

from framework_emu import (NT_SUCCESS, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_PNPPOWER_EVENT_CALLBACKS,
                           WdfDeviceIoDirect, WdfIoQueueDispatchSequential)
from framework_emu.dma_enabler import (WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaDirectionWriteToDevice,
                                       WdfDmaProfileScatterGather64)
from framework_emu.hw_resources import CmResourceTypeMemory
from framework_emu.interrupt import WDF_INTERRUPT_CONFIG_INIT
from framework_emu.ntstatus import NTSTATUS

from samples.fake_busmaster import (CONTROL, DESC_ADDR, DESC_COUNT, DESCRIPTOR, DIRECTION, INT_ENABLE, STATUS,
                                    STATUS_DONE, STATUS_ERROR)

FILE_QUAD_ALIGNMENT = 7
STATUS_DEVICE_DATA_ERROR = 0xC000009C


class DmaEchoDriver:
    """``profile``/``maximum_length`` go to WDF_DMA_ENABLER_CONFIG_INIT; ``max_elements`` to
    WdfDmaEnablerSetMaximumScatterGatherElements (and sizes the descriptor table)."""

    fx: Any = None

    def __init__(self, profile: int = WdfDmaProfileScatterGather64, maximum_length: int = 64 << 10,
                 max_elements: int = 32, bypass_dma_api: bool = False, initialize_from_mdl: bool = False) -> None:
        self.profile = profile
        self.maximum_length = maximum_length
        self.max_elements = max_elements
        self.bypass_dma_api = bypass_dma_api   # a bug to reproduce: the device gets MmGetPhysicalAddress
        self.initialize_from_mdl = initialize_from_mdl   # writes: WdfRequestRetrieveInputWdmMdl + Initialize
        self.registers = 0
        self.bar_length = 0
        self.program_calls: list[list[tuple[int, int]]] = []
        self.isr_status = 0
        self.current_request: int | None = None

    # -- device creation ----------------------------------------------------------------------------

    def EvtDriverDeviceAdd(self, Driver: int, DeviceInit: Any) -> int:
        fx = self.fx
        fx.WdfDeviceInitSetIoType(DeviceInit, WdfDeviceIoDirect)
        fx.WdfDeviceInitSetPnpPowerEventCallbacks(DeviceInit, WDF_PNPPOWER_EVENT_CALLBACKS(
            EvtDevicePrepareHardware=self.EvtDevicePrepareHardware,
            EvtDeviceReleaseHardware=self.EvtDeviceReleaseHardware))
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        if not NT_SUCCESS(status):
            return status
        fx.WdfDeviceSetAlignmentRequirement(self.device, FILE_QUAD_ALIGNMENT)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
        config.EvtIoRead = self.EvtIoRead
        config.EvtIoWrite = self.EvtIoWrite
        status, self.queue = fx.WdfIoQueueCreate(self.device, config, None)
        if not NT_SUCCESS(status):
            return status
        status, self.enabler = fx.WdfDmaEnablerCreate(self.device, WDF_DMA_ENABLER_CONFIG_INIT(
            self.profile, self.maximum_length))
        if not NT_SUCCESS(status):
            return status
        fx.WdfDmaEnablerSetMaximumScatterGatherElements(self.enabler, self.max_elements)
        status, self.table = fx.WdfCommonBufferCreate(self.enabler, DESCRIPTOR.size * self.max_elements)
        if not NT_SUCCESS(status):
            return status
        status, self.transaction = fx.WdfDmaTransactionCreate(self.enabler)
        if not NT_SUCCESS(status):
            return status
        status, self.interrupt = fx.WdfInterruptCreate(self.device, WDF_INTERRUPT_CONFIG_INIT(
            self.EvtInterruptIsr, self.EvtInterruptDpc))
        return status

    def EvtDevicePrepareHardware(self, Device: int, ResourcesRaw: int, ResourcesTranslated: int) -> int:
        fx = self.fx
        map_io_space = fx.MmGetSystemRoutineAddress("MmMapIoSpaceEx")
        for i in range(fx.WdfCmResourceListGetCount(ResourcesTranslated)):
            descriptor = fx.WdfCmResourceListGetDescriptor(ResourcesTranslated, i)
            if descriptor.Type == CmResourceTypeMemory and not self.registers:
                memory = descriptor.u.Memory
                if map_io_space is not None:
                    self.registers = map_io_space(memory.Start, memory.Length, 0x204)  # PAGE_READWRITE|PAGE_NOCACHE
                else:
                    self.registers = fx.MmMapIoSpace(memory.Start, memory.Length, 0)
                self.bar_length = memory.Length
        return 0 if self.registers else NTSTATUS.STATUS_INSUFFICIENT_RESOURCES

    def EvtDeviceReleaseHardware(self, Device: int, ResourcesTranslated: int) -> int:
        if self.registers:
            self.fx.MmUnmapIoSpace(self.registers, self.bar_length)
            self.registers = 0
        return 0

    # -- I/O ----------------------------------------------------------------------------------------------

    def EvtIoWrite(self, Queue: int, Request: int, Length: int) -> None:
        self._start(Request, WdfDmaDirectionWriteToDevice)

    def EvtIoRead(self, Queue: int, Request: int, Length: int) -> None:
        self._start(Request, 0)

    def _start(self, request: int, direction: int) -> None:
        fx = self.fx
        if self.initialize_from_mdl and direction == WdfDmaDirectionWriteToDevice:
            status, mdl = fx.WdfRequestRetrieveInputWdmMdl(request)
            if NT_SUCCESS(status):
                status = fx.WdfDmaTransactionInitialize(self.transaction, self.EvtProgramDma, direction, mdl,
                                                        fx.MmGetMdlVirtualAddress(mdl), fx.MmGetMdlByteCount(mdl))
        else:
            status = fx.WdfDmaTransactionInitializeUsingRequest(self.transaction, request, self.EvtProgramDma,
                                                                direction)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(request, status)
            return
        self.current_request = request
        status = fx.WdfDmaTransactionExecute(self.transaction, None)
        if not NT_SUCCESS(status):
            fx.WdfDmaTransactionRelease(self.transaction)
            fx.WdfRequestComplete(request, status)

    def EvtProgramDma(self, Transaction: int, Device: int, Context: Any, Direction: int, SgList: Any) -> bool:
        fx = self.fx
        elements = [(e.Address, e.Length) for e in SgList.Elements]
        if self.bypass_dma_api:   # the bug: physical addresses of the request's pages instead of the list
            request = fx.WdfDmaTransactionGetRequest(Transaction)
            _status, mdl = fx.WdfRequestRetrieveInputWdmMdl(request) if Direction else \
                fx.WdfRequestRetrieveOutputWdmMdl(request)
            va = fx.MmGetSystemAddressForMdlSafe(mdl)
            elements = [(fx.MmGetPhysicalAddress(va), fx.MmGetMdlByteCount(mdl))]
        self.program_calls.append(elements)
        table = fx.WdfCommonBufferGetAlignedVirtualAddress(self.table)
        fx.write(table, b"".join(DESCRIPTOR.pack(address, length, 0) for address, length in elements))
        fx.WdfInterruptAcquireLock(self.interrupt)
        fx.WRITE_REGISTER_ULONG64(self.registers + DESC_ADDR, fx.WdfCommonBufferGetAlignedLogicalAddress(self.table))
        fx.WRITE_REGISTER_ULONG(self.registers + DESC_COUNT, len(elements))
        fx.WRITE_REGISTER_ULONG(self.registers + DIRECTION, 1 if Direction == WdfDmaDirectionWriteToDevice else 0)
        fx.WRITE_REGISTER_ULONG(self.registers + INT_ENABLE, 1)
        fx.WdfInterruptReleaseLock(self.interrupt)
        fx.WRITE_REGISTER_ULONG(self.registers + CONTROL, 1)
        return True

    def EvtInterruptIsr(self, Interrupt: int, MessageID: int) -> bool:
        fx = self.fx
        status = fx.READ_REGISTER_ULONG(self.registers + STATUS)
        if not status & STATUS_DONE:
            return False
        fx.WRITE_REGISTER_ULONG(self.registers + STATUS, status)
        self.isr_status = status
        fx.WdfInterruptQueueDpcForIsr(Interrupt)
        return True

    def EvtInterruptDpc(self, Interrupt: int, Device: int) -> None:
        fx = self.fx
        if self.isr_status & STATUS_ERROR:
            done, status = fx.WdfDmaTransactionDmaCompletedFinal(self.transaction, 0)
            status = STATUS_DEVICE_DATA_ERROR
        else:
            done, status = fx.WdfDmaTransactionDmaCompleted(self.transaction)
        if not done:
            return   # the next fragment went to EvtProgramDma
        request = fx.WdfDmaTransactionGetRequest(self.transaction)
        transferred = fx.WdfDmaTransactionGetBytesTransferred(self.transaction)
        if request is None:   # initialized from an MDL: the transaction knows no request
            request = self.current_request
        fx.WdfDmaTransactionRelease(self.transaction)
        fx.WdfRequestCompleteWithInformation(request, status, transferred if NT_SUCCESS(status) else 0)

