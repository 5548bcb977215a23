"""A DMA driver for the real bus-master device (docs/device-abi.md, "The bus-master personality").

Reads and writes are served by DMA, as a KMDF PCI driver serves them:

- EvtDevicePrepareHardware maps BAR0, checks the device's ``id``, reads its
  address width from ``caps`` (a 32-bit device gets the 32-bit scatter/gather
  profile, so the framework bounces pages it cannot reach), creates the DMA
  enabler, a common buffer holding the descriptor ring and one segment table
  per slot, and the DMA transaction, then programs the ring (base, size,
  interrupts unmasked, ENABLE).
- EvtIoWrite / EvtIoRead: ``WdfDmaTransactionInitializeUsingRequest`` and
  ``WdfDmaTransactionExecute``. The file offset is the offset in the device's
  data memory: a WRITE moves the program's bytes there, a READ brings them back.
- EvtProgramDma writes the fragment's scatter/gather list into the slot's
  segment table, a SEGMENT_TABLE descriptor (TO_DEVICE for a write, FROM_DEVICE
  for a read) into the slot, and rings ``ring_tail``. A request longer than the
  enabler's maximum length is staged: one EvtProgramDma per fragment.
- The device DMAs, writes the completion record into the descriptor and
  interrupts; the ISR acknowledges ``int_status`` and queues the DPC; the DPC
  reads the completion record and calls ``WdfDmaTransactionDmaCompleted`` (the
  next fragment, or the end), then ``WdfRequestCompleteWithInformation``.

A sample driver is framework-only code: the register map is written out here
as a C driver includes the generated header (``WH_BM_*``); a unit test holds
these numbers to ``device_model/busmaster_abi.py``.
"""

from __future__ import annotations

import struct
from typing import Any

from framework_emu import (NT_SUCCESS, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_PNPPOWER_EVENT_CALLBACKS,
                           WdfDeviceIoDirect, WdfIoQueueDispatchSequential)
from framework_emu.dma_enabler import (WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaDirectionWriteToDevice,
                                       WdfDmaProfileScatterGather, WdfDmaProfileScatterGather64)
from framework_emu.hw_resources import CmResourceTypeMemory
from framework_emu.interrupt import WDF_INTERRUPT_CONFIG_INIT
from framework_emu.ntstatus import NTSTATUS

# -- the device's ABI (WH_BM_* of the generated header) ------------------------------------------
BM_ID = 0x314D4257
REG_ID, REG_CAPS, REG_CONTROL, REG_STATUS, REG_ERROR = 0x00, 0x08, 0x0C, 0x10, 0x14
REG_RING_BASE_LO, REG_RING_BASE_HI, REG_RING_SIZE, REG_RING_TAIL = 0x18, 0x1C, 0x20, 0x28
REG_INT_STATUS, REG_INT_MASK, REG_MAX_TRANSFER, REG_DATA_SIZE = 0x2C, 0x30, 0x48, 0x54
CAPS_ADDRESS_BITS = 0xFF
CONTROL_ENABLE, CONTROL_RESET = 0x1, 0x2
INT_COMPLETION, INT_ERROR = 0x1, 0x2
OP_TO_DEVICE, OP_FROM_DEVICE = 1, 2
DESC_SEGMENT_TABLE = 0x1
DESCRIPTOR = struct.Struct("<HHIQIIQQQ")   # opcode, flags, nseg, request_id, device_offset, length,
#                                            address (of the segment table), reserved0, reserved1
DESCRIPTOR_SIZE = 64
COMPLETION_OFFSET = 48
COMPLETION = struct.Struct("<IIII")        # done, status, reason, transferred
SEGMENT = struct.Struct("<QII")            # bus address, length, reserved
RING_ALIGN = 64
COMPLETION_OK, COMPLETION_SHORT, COMPLETION_ERROR = 0, 1, 2

FILE_QUAD_ALIGNMENT = 7
STATUS_DEVICE_DATA_ERROR = 0xC000009C
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_DEVICE_CONFIGURATION_ERROR = 0xC0000182


class DmaBusMasterDriver:
    """``maximum_length``: the enabler's (bytes per EvtProgramDma); ``max_elements``: scatter/gather
    elements per fragment (sizes each slot's segment table); ``ring_size``: descriptor slots."""

    fx: Any = None

    def __init__(self, maximum_length: int = 64 << 10, max_elements: int = 32, ring_size: int = 8) -> None:
        self.maximum_length = maximum_length
        self.max_elements = max_elements
        self.ring_size = ring_size
        self.registers = 0
        self.bar_length = 0
        self.address_bits = 0
        self.data_size = 0
        self.enabler = self.ring = self.transaction = None
        self.ring_va = self.ring_logical = 0
        self.tail = 0
        self.next_request_id = 1
        self.in_flight: tuple[int, int] | None = None   # (slot, fragment length) the device holds
        self.device_offset = 0                          # where the current transaction starts
        self.programmed = 0                             # its bytes handed to the device so far
        self.isr_status = 0
        self.program_calls: list[list[tuple[int, int]]] = []
        self.errors: list[tuple[int, int]] = []          # (completion status or halt, reason)

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
        status, self.interrupt = fx.WdfInterruptCreate(self.device, WDF_INTERRUPT_CONFIG_INIT(
            self.EvtInterruptIsr, self.EvtInterruptDpc))
        return status

    def EvtDevicePrepareHardware(self, Device: int, ResourcesRaw: int, ResourcesTranslated: int) -> int:
        fx = self.fx
        for i in range(fx.WdfCmResourceListGetCount(ResourcesTranslated)):
            descriptor = fx.WdfCmResourceListGetDescriptor(ResourcesTranslated, i)
            if descriptor.Type == CmResourceTypeMemory and not self.registers:
                memory = descriptor.u.Memory
                self.registers = fx.MmMapIoSpace(memory.Start, memory.Length, 0)
                self.bar_length = memory.Length
        if not self.registers:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
        if self._read(REG_ID) != BM_ID:
            return STATUS_DEVICE_CONFIGURATION_ERROR
        self.address_bits = self._read(REG_CAPS) & CAPS_ADDRESS_BITS
        self.data_size = self._read(REG_DATA_SIZE)
        maximum_length = min(self.maximum_length, self._read(REG_MAX_TRANSFER))
        profile = WdfDmaProfileScatterGather64 if self.address_bits > 32 else WdfDmaProfileScatterGather
        status, self.enabler = fx.WdfDmaEnablerCreate(self.device, WDF_DMA_ENABLER_CONFIG_INIT(
            profile, maximum_length))
        if not NT_SUCCESS(status):
            return status
        fx.WdfDmaEnablerSetMaximumScatterGatherElements(self.enabler, self.max_elements)
        size = RING_ALIGN + self.ring_size * (DESCRIPTOR_SIZE + self.max_elements * SEGMENT.size)
        status, self.ring = fx.WdfCommonBufferCreate(self.enabler, size)
        if not NT_SUCCESS(status):
            return status
        logical = fx.WdfCommonBufferGetAlignedLogicalAddress(self.ring)
        pad = -logical % RING_ALIGN
        self.ring_logical = logical + pad
        self.ring_va = fx.WdfCommonBufferGetAlignedVirtualAddress(self.ring) + pad
        status, self.transaction = fx.WdfDmaTransactionCreate(self.enabler)
        if not NT_SUCCESS(status):
            return status
        self._start_ring()
        return 0

    def EvtDeviceReleaseHardware(self, Device: int, ResourcesTranslated: int) -> int:
        if self.registers:
            self._write(REG_CONTROL, CONTROL_RESET)
            self.fx.MmUnmapIoSpace(self.registers, self.bar_length)
            self.registers = 0
        return 0

    def _start_ring(self) -> None:
        """Reset the device and hand it the (empty) ring: also how a halted device recovers."""
        self.fx.write(self.ring_va, bytes(self.ring_size * DESCRIPTOR_SIZE))
        self._write(REG_CONTROL, CONTROL_RESET)
        self._write(REG_RING_BASE_LO, self.ring_logical & 0xFFFFFFFF)
        self._write(REG_RING_BASE_HI, self.ring_logical >> 32)
        self._write(REG_RING_SIZE, self.ring_size)
        self.tail = 0
        self._write(REG_INT_MASK, 0)
        self._write(REG_CONTROL, CONTROL_ENABLE)

    def _read(self, offset: int) -> int:
        return self.fx.READ_REGISTER_ULONG(self.registers + offset)

    def _write(self, offset: int, value: int) -> None:
        self.fx.WRITE_REGISTER_ULONG(self.registers + offset, value)

    # -- I/O ----------------------------------------------------------------------------------------------

    def EvtIoWrite(self, Queue: int, Request: int, Length: int) -> None:
        self._start(Request, WdfDmaDirectionWriteToDevice)

    def EvtIoRead(self, Queue: int, Request: int, Length: int) -> None:
        self._start(Request, 0)

    def _start(self, request: int, direction: int) -> None:
        fx = self.fx
        params = fx.WdfRequestGetParameters(request)
        offset, length = params.DeviceOffset, params.Length
        if length == 0:
            fx.WdfRequestCompleteWithInformation(request, 0, 0)
            return
        if offset < 0 or offset + length > self.data_size:
            fx.WdfRequestComplete(request, STATUS_INVALID_PARAMETER)
            return
        status = fx.WdfDmaTransactionInitializeUsingRequest(self.transaction, request, self.EvtProgramDma,
                                                            direction)
        if not NT_SUCCESS(status):
            fx.WdfRequestComplete(request, status)
            return
        self.device_offset, self.programmed = offset, 0
        status = fx.WdfDmaTransactionExecute(self.transaction, None)
        if not NT_SUCCESS(status):
            fx.WdfDmaTransactionRelease(self.transaction)
            fx.WdfRequestComplete(request, status)

    def EvtProgramDma(self, Transaction: int, Device: int, Context: Any, Direction: int, SgList: Any) -> bool:
        fx = self.fx
        elements = [(e.Address, e.Length) for e in SgList.Elements]
        self.program_calls.append(elements)
        length = sum(n for _a, n in elements)
        slot = self.tail
        table_offset = self.ring_size * DESCRIPTOR_SIZE + slot * self.max_elements * SEGMENT.size
        fx.write(self.ring_va + table_offset, b"".join(SEGMENT.pack(a, n, 0) for a, n in elements))
        opcode = OP_TO_DEVICE if Direction == WdfDmaDirectionWriteToDevice else OP_FROM_DEVICE
        descriptor = DESCRIPTOR.pack(opcode, DESC_SEGMENT_TABLE, len(elements), self.next_request_id,
                                     self.device_offset + self.programmed, length,
                                     self.ring_logical + table_offset, 0, 0)
        fx.write(self.ring_va + slot * DESCRIPTOR_SIZE, descriptor + bytes(DESCRIPTOR_SIZE - DESCRIPTOR.size))
        self.next_request_id += 1
        self.programmed += length
        self.in_flight = (slot, length)
        self.tail = (slot + 1) % self.ring_size
        self._write(REG_RING_TAIL, self.tail)    # the doorbell
        return True

    def EvtInterruptIsr(self, Interrupt: int, MessageID: int) -> bool:
        status = self._read(REG_INT_STATUS)
        if not status:
            return False
        self._write(REG_INT_STATUS, status)      # write 1s to acknowledge
        self.isr_status |= status
        self.fx.WdfInterruptQueueDpcForIsr(Interrupt)
        return True

    def EvtInterruptDpc(self, Interrupt: int, Device: int) -> None:
        fx = self.fx
        fx.WdfInterruptAcquireLock(Interrupt)
        causes, self.isr_status = self.isr_status, 0
        fx.WdfInterruptReleaseLock(Interrupt)
        if self.in_flight is None:
            return
        slot, length = self.in_flight
        done, cstatus, reason, transferred = COMPLETION.unpack(
            fx.read(self.ring_va + slot * DESCRIPTOR_SIZE + COMPLETION_OFFSET, COMPLETION.size))
        if causes & INT_ERROR and not done:      # the ring halted before reaching the descriptor
            self.errors.append((-1, self._read(REG_ERROR)))
            self.in_flight = None
            self._start_ring()
            self._finish(*fx.WdfDmaTransactionDmaCompletedFinal(self.transaction, 0), failed=True)
            return
        if not done:
            return                               # an interrupt for something else: keep waiting
        self.in_flight = None
        if cstatus == COMPLETION_ERROR:
            self.errors.append((cstatus, reason))
            self._finish(*fx.WdfDmaTransactionDmaCompletedFinal(self.transaction, 0), failed=True)
        elif transferred < length:
            self._finish(*fx.WdfDmaTransactionDmaCompletedFinal(
                self.transaction, self.programmed - length + transferred))
        else:
            self._finish(*fx.WdfDmaTransactionDmaCompleted(self.transaction))

    def _finish(self, done: bool, status: int, failed: bool = False) -> None:
        if not done:
            return                               # the next fragment went to EvtProgramDma
        fx = self.fx
        request = fx.WdfDmaTransactionGetRequest(self.transaction)
        transferred = fx.WdfDmaTransactionGetBytesTransferred(self.transaction)
        fx.WdfDmaTransactionRelease(self.transaction)
        if failed:
            status = STATUS_DEVICE_DATA_ERROR
        fx.WdfRequestCompleteWithInformation(request, status, transferred if NT_SUCCESS(status) else 0)
