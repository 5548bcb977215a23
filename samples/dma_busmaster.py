"""A DMA driver for the real bus-master device (docs/device-abi.md, "The bus-master personality").

Reads and writes are served by DMA, as a KMDF PCI driver serves them:

- EvtDevicePrepareHardware maps BAR0, checks the device's ``id``, reads its
  address width from ``caps`` (a 32-bit device gets the 32-bit scatter/gather
  profile, so the framework bounces pages it cannot reach) and its longest
  transfer, creates the DMA enabler, a common buffer holding the descriptor
  ring and one segment table per slot, and one DMA transaction per request it
  can have in flight (``ring_size - 1``: a full ring keeps one slot empty), then
  programs the ring (base, size, ENABLE). Interrupts stay masked until
  EvtInterruptEnable unmasks them; EvtInterruptDisable masks them again.
- The default queue is parallel, presenting at most as many requests as there
  are transactions (``NumberOfPresentedRequests``): EvtIoWrite / EvtIoRead take
  an idle transaction, ``WdfDmaTransactionInitializeUsingRequest`` and
  ``WdfDmaTransactionExecute`` with the transaction's context (its file offset,
  bytes programmed). The file offset is the offset in the device's data memory:
  a WRITE moves the program's bytes there, a READ brings them back.
- EvtProgramDma writes the fragment's scatter/gather list into the slot's
  segment table, a SEGMENT_TABLE descriptor (TO_DEVICE for a write, FROM_DEVICE
  for a read) into the slot at the ring's tail, and rings ``ring_tail``. A
  request longer than the enabler's maximum length is staged: one EvtProgramDma
  per fragment. Several requests' fragments sit in the ring at once.
- The device DMAs, writes the completion record into each descriptor and
  interrupts (interrupts merge); the ISR acknowledges ``int_status`` and queues
  the DPC; the DPC walks the slots in flight in ring order while their records
  say done and calls ``WdfDmaTransactionDmaCompleted`` for each (the next
  fragment, or the end), then ``WdfRequestCompleteWithInformation``. A halted
  ring fails every request in flight and is reset.

The ring state (tail, slots in flight) is touched by EvtProgramDma and the DPC,
both at DISPATCH_LEVEL; a spin lock guards it (released before
``WdfDmaTransactionDmaCompleted``, which may call EvtProgramDma).

A sample driver is framework-only code: the register map is written out here
as a C driver includes the generated header (``WH_BM_*``); a unit test holds
these numbers to ``device_model/busmaster_abi.py``.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from framework_emu import (NT_SUCCESS, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_PNPPOWER_EVENT_CALLBACKS,
                           WdfDeviceIoDirect, WdfIoQueueDispatchParallel)
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
PAGE_SIZE = 4096
DEFAULT_MAXIMUM_LENGTH = 1 << 20      # bytes per EvtProgramDma (cut to the device's max_transfer)


@dataclass
class Transfer:
    """One DMA transaction and its context (a C driver's context space on the transaction)."""

    transaction: int
    device_offset: int = 0        # where the current request starts in the device's memory
    programmed: int = 0           # its bytes handed to the device so far


class DmaBusMasterDriver:
    """``maximum_length``: the enabler's (bytes per EvtProgramDma; None: 1 MiB or the device's
    ``max_transfer`` if less); ``max_elements``: scatter/gather elements per fragment (sizes each
    slot's segment table; None: a page each, plus one for an unaligned start); ``ring_size``:
    descriptor slots (``ring_size - 1`` requests in flight)."""

    fx: Any = None

    def __init__(self, maximum_length: int | None = None, max_elements: int | None = None,
                 ring_size: int = 8) -> None:
        if ring_size < 2 or ring_size & (ring_size - 1):
            raise ValueError(f"ring_size must be a power of two of at least 2 (got {ring_size})")
        self.maximum_length = maximum_length
        self.max_elements = max_elements
        self.ring_size = ring_size
        self.registers = 0
        self.bar_length = 0
        self.address_bits = 0
        self.data_size = 0
        self.enabler = self.ring = self.lock = None
        self.ring_va = self.ring_logical = 0
        self.tail = 0
        self.next_request_id = 1
        self.idle: list[Transfer] = []                  # transactions free for a request
        self.in_flight: deque[tuple[int, int, Transfer]] = deque()   # (slot, length, transfer), ring order
        self.interrupts_enabled = False
        self.isr_status = 0
        self.most_in_flight = 0                         # the most slots the device held at once
        self.program_calls: list[list[tuple[int, int]]] = []
        self.errors: list[tuple[int, int]] = []          # (completion status or halt, reason)

    @property
    def in_flight_limit(self) -> int:
        """Requests served at once: one transaction each, a slot each at a time."""
        return self.ring_size - 1

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
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.NumberOfPresentedRequests = self.in_flight_limit
        config.EvtIoRead = self.EvtIoRead
        config.EvtIoWrite = self.EvtIoWrite
        status, self.queue = fx.WdfIoQueueCreate(self.device, config, None)
        if not NT_SUCCESS(status):
            return status
        status, self.lock = fx.WdfSpinLockCreate(None)
        if not NT_SUCCESS(status):
            return status
        interrupt = WDF_INTERRUPT_CONFIG_INIT(self.EvtInterruptIsr, self.EvtInterruptDpc)
        interrupt.EvtInterruptEnable = self.EvtInterruptEnable
        interrupt.EvtInterruptDisable = self.EvtInterruptDisable
        status, self.interrupt = fx.WdfInterruptCreate(self.device, interrupt)
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
        maximum_length = min(self.maximum_length or DEFAULT_MAXIMUM_LENGTH, self._read(REG_MAX_TRANSFER))
        if self.max_elements is None:
            self.max_elements = -(-maximum_length // PAGE_SIZE) + 1
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
        self.idle = []
        for _ in range(self.in_flight_limit):
            status, transaction = fx.WdfDmaTransactionCreate(self.enabler)
            if not NT_SUCCESS(status):
                return status
            self.idle.append(Transfer(transaction))
        self._start_ring()
        return 0

    def EvtDeviceReleaseHardware(self, Device: int, ResourcesTranslated: int) -> int:
        if self.registers:
            self._write(REG_CONTROL, CONTROL_RESET)
            self.fx.MmUnmapIoSpace(self.registers, self.bar_length)
            self.registers = 0
        return 0

    def _start_ring(self) -> None:
        """Reset the device and hand it the (empty) ring: also how a halted device recovers
        (the reset masks interrupts: unmasked again if EvtInterruptEnable ran)."""
        self.fx.write(self.ring_va, bytes(self.ring_size * DESCRIPTOR_SIZE))
        self._write(REG_CONTROL, CONTROL_RESET)
        self._write(REG_RING_BASE_LO, self.ring_logical & 0xFFFFFFFF)
        self._write(REG_RING_BASE_HI, self.ring_logical >> 32)
        self._write(REG_RING_SIZE, self.ring_size)
        self.tail = 0
        self._write(REG_CONTROL, CONTROL_ENABLE)
        if self.interrupts_enabled:
            self.fx.WdfInterruptAcquireLock(self.interrupt)
            self._write(REG_INT_MASK, 0)
            self.fx.WdfInterruptReleaseLock(self.interrupt)

    def EvtInterruptEnable(self, Interrupt: int, AssociatedDevice: int) -> int:
        """At DIRQL under the interrupt lock, once the device is in D0: unmask."""
        self._write(REG_INT_MASK, 0)
        self.interrupts_enabled = True
        return 0

    def EvtInterruptDisable(self, Interrupt: int, AssociatedDevice: int) -> int:
        """At DIRQL under the interrupt lock, before the device leaves D0: mask."""
        self._write(REG_INT_MASK, INT_COMPLETION | INT_ERROR)
        self.interrupts_enabled = False
        return 0

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
        transfer = self.idle.pop()     # the queue presents no more requests than transactions
        status = fx.WdfDmaTransactionInitializeUsingRequest(transfer.transaction, request, self.EvtProgramDma,
                                                            direction)
        if not NT_SUCCESS(status):
            self.idle.append(transfer)
            fx.WdfRequestComplete(request, status)
            return
        transfer.device_offset, transfer.programmed = offset, 0
        status = fx.WdfDmaTransactionExecute(transfer.transaction, transfer)
        if not NT_SUCCESS(status):
            fx.WdfDmaTransactionRelease(transfer.transaction)
            self.idle.append(transfer)
            fx.WdfRequestComplete(request, status)

    def EvtProgramDma(self, Transaction: int, Device: int, Context: Any, Direction: int, SgList: Any) -> bool:
        fx = self.fx
        transfer: Transfer = Context
        elements = [(e.Address, e.Length) for e in SgList.Elements]
        self.program_calls.append(elements)
        length = sum(n for _a, n in elements)
        fx.WdfSpinLockAcquire(self.lock)
        slot = self.tail
        table_offset = self.ring_size * DESCRIPTOR_SIZE + slot * self.max_elements * SEGMENT.size
        fx.write(self.ring_va + table_offset, b"".join(SEGMENT.pack(a, n, 0) for a, n in elements))
        opcode = OP_TO_DEVICE if Direction == WdfDmaDirectionWriteToDevice else OP_FROM_DEVICE
        descriptor = DESCRIPTOR.pack(opcode, DESC_SEGMENT_TABLE, len(elements), self.next_request_id,
                                     transfer.device_offset + transfer.programmed, length,
                                     self.ring_logical + table_offset, 0, 0)
        fx.write(self.ring_va + slot * DESCRIPTOR_SIZE, descriptor + bytes(DESCRIPTOR_SIZE - DESCRIPTOR.size))
        self.next_request_id += 1
        transfer.programmed += length
        self.in_flight.append((slot, length, transfer))
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        self.tail = (slot + 1) % self.ring_size
        self._write(REG_RING_TAIL, self.tail)    # the doorbell
        fx.WdfSpinLockRelease(self.lock)
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
        while True:
            fx.WdfSpinLockAcquire(self.lock)
            if not self.in_flight:
                fx.WdfSpinLockRelease(self.lock)
                if causes & INT_ERROR:           # halted with nothing in flight: still reset it
                    self._fail_all_in_flight()
                return
            slot, length, transfer = self.in_flight[0]
            done, cstatus, reason, transferred = COMPLETION.unpack(
                fx.read(self.ring_va + slot * DESCRIPTOR_SIZE + COMPLETION_OFFSET, COMPLETION.size))
            if not done:
                fx.WdfSpinLockRelease(self.lock)
                if causes & INT_ERROR:           # the ring halted before reaching the descriptor
                    self._fail_all_in_flight()
                return                           # else: the rest is still with the device
            self.in_flight.popleft()
            fx.WdfSpinLockRelease(self.lock)
            self._completed(transfer, length, cstatus, reason, transferred)

    def _completed(self, transfer: Transfer, length: int, cstatus: int, reason: int, transferred: int) -> None:
        fx = self.fx
        if cstatus == COMPLETION_ERROR:
            self.errors.append((cstatus, reason))
            self._finish(transfer, *fx.WdfDmaTransactionDmaCompletedFinal(transfer.transaction, 0), failed=True)
        elif transferred < length:
            self._finish(transfer, *fx.WdfDmaTransactionDmaCompletedFinal(
                transfer.transaction, transfer.programmed - length + transferred))
        else:
            self._finish(transfer, *fx.WdfDmaTransactionDmaCompleted(transfer.transaction))

    def _fail_all_in_flight(self) -> None:
        """A halted ring: every descriptor still in it is lost; the device is reset."""
        fx = self.fx
        self.errors.append((-1, self._read(REG_ERROR)))
        fx.WdfSpinLockAcquire(self.lock)
        lost, self.in_flight = list(self.in_flight), deque()
        self._start_ring()
        fx.WdfSpinLockRelease(self.lock)
        for _slot, _length, transfer in lost:
            self._finish(transfer, *fx.WdfDmaTransactionDmaCompletedFinal(transfer.transaction, 0), failed=True)

    def _finish(self, transfer: Transfer, done: bool, status: int, failed: bool = False) -> None:
        if not done:
            return                               # the next fragment went to EvtProgramDma
        fx = self.fx
        request = fx.WdfDmaTransactionGetRequest(transfer.transaction)
        transferred = fx.WdfDmaTransactionGetBytesTransferred(transfer.transaction)
        fx.WdfDmaTransactionRelease(transfer.transaction)
        self.idle.append(transfer)
        if failed:
            status = STATUS_DEVICE_DATA_ERROR
        fx.WdfRequestCompleteWithInformation(request, status, transferred if NT_SUCCESS(status) else 0)
