"""A small in-process bus-master echo device, for the DMA sample and the framework's unit tests.

It stands where the runtime's device personality stands on a VM: a
:class:`RegisterHandler` behind BAR0, a DMA engine that reaches memory only
through :meth:`DeviceHardware.translate` (so bounce buffers, the device's own
address width and DMA remapping all apply), and an interrupt line.

Registers (BAR0, 32-bit unless noted)::

    0x00 CONTROL     write 1: run the descriptor table
    0x04 STATUS      bit 0 DONE, bit 1 ERROR (write 1 to clear)
    0x08 INT_ENABLE  bit 0: raise the interrupt when a run ends
    0x10 DESC_ADDR   64-bit logical address of the descriptor table
    0x18 DESC_COUNT  descriptors in the table
    0x1C DIRECTION   0: device to memory (a read), 1: memory to device (a write)
    0x20 BYTES_DONE  bytes the last run moved
    0x28 STORED      bytes waiting in the echo buffer

A descriptor is 16 bytes: u64 logical address, u32 length, u32 flags (0).
Writes append to the echo buffer, reads take from its front.
"""

from __future__ import annotations

import struct
from typing import Any

from framework_emu.dma_adapter import DmaTranslationFault
from framework_emu.hw_resources import DeviceHardware, InterruptResource, MemoryBar, RegisterHandler

CONTROL, STATUS, INT_ENABLE, DESC_ADDR, DESC_COUNT, DIRECTION, BYTES_DONE, STORED = (
    0x00, 0x04, 0x08, 0x10, 0x18, 0x1C, 0x20, 0x28)
STATUS_DONE, STATUS_ERROR = 0x1, 0x2
DESCRIPTOR = struct.Struct("<QII")
BAR0 = MemoryBar(0xFEB0_0000, 0x1000)


class FakeBusMaster(RegisterHandler):
    """The device: registers, the echo buffer, the DMA engine. ``hardware`` is what to give
    ``IoManager.add_device(..., hardware=device.hardware)``."""

    def __init__(self, memory: Any, *, dma_address_bits: int = 64, dma_remapping: bool = False,
                 map_registers: int = 16, complete_later: bool = False) -> None:
        self.memory = memory
        self.complete_later = complete_later   # a run waits for finish(), as a real device takes time
        self.started = 0
        self.hardware = DeviceHardware(bars=[BAR0], interrupt=InterruptResource(), registers=self,
                                       dma_address_bits=dma_address_bits, dma_remapping=dma_remapping,
                                       map_registers=map_registers)
        self.regs = {CONTROL: 0, STATUS: 0, INT_ENABLE: 0, DESC_ADDR: 0, DESC_COUNT: 0, DIRECTION: 0,
                     BYTES_DONE: 0}
        self.echo = bytearray()
        self.faults: list[DmaTranslationFault] = []
        self.runs: list[list[tuple[int, int]]] = []   # (logical, length) of each run's descriptors
        self.accesses: list[tuple[str, int, int, int]] = []

    # -- RegisterHandler ----------------------------------------------------------------------------

    def read(self, bar: int, offset: int, width: int) -> int:
        if offset == STORED:
            value = len(self.echo)
        elif offset == DESC_ADDR + 4:
            value = self.regs[DESC_ADDR] >> 32
        else:
            value = self.regs.get(offset, 0)
        self.accesses.append(("read", offset, width, value))
        return value

    def write(self, bar: int, offset: int, width: int, value: int) -> None:
        self.accesses.append(("write", offset, width, value))
        if offset == STATUS:
            self.regs[STATUS] &= ~value
        elif offset == DESC_ADDR and width == 8:
            self.regs[DESC_ADDR] = value
        elif offset == DESC_ADDR:
            self.regs[DESC_ADDR] = (self.regs[DESC_ADDR] & ~0xFFFF_FFFF) | value
        elif offset == DESC_ADDR + 4:
            self.regs[DESC_ADDR] = (self.regs[DESC_ADDR] & 0xFFFF_FFFF) | (value << 32)
        elif offset == CONTROL and value & 1:
            if self.complete_later:
                self.started += 1
            else:
                self.run()
        elif offset in self.regs:
            self.regs[offset] = value

    # -- the DMA engine -------------------------------------------------------------------------------

    def _copy_in(self, logical: int, length: int) -> bytes:
        runs = self.hardware.translate(logical, length, device_writes=False)
        return b"".join(self.memory.read(gpa, n) for gpa, n in runs)

    def _copy_out(self, logical: int, data: bytes) -> None:
        done = 0
        for gpa, n in self.hardware.translate(logical, len(data), device_writes=True):
            self.memory.write(gpa, data[done:done + n])
            done += n

    def finish(self) -> None:
        """Complete the run started last (``complete_later``): the DMA and the interrupt now."""
        if self.started:
            self.started -= 1
            self.run()

    def run(self) -> None:
        """Run the descriptor table, then set STATUS and raise the interrupt."""
        moved, table = 0, []
        try:
            raw = self._copy_in(self.regs[DESC_ADDR], DESCRIPTOR.size * self.regs[DESC_COUNT])
            table = [DESCRIPTOR.unpack_from(raw, i * DESCRIPTOR.size) for i in range(self.regs[DESC_COUNT])]
            self.runs.append([(address, length) for address, length, _flags in table])
            for address, length, _flags in table:
                if self.regs[DIRECTION]:
                    self.echo += self._copy_in(address, length)
                else:
                    data = bytes(self.echo[:length])
                    del self.echo[:len(data)]
                    if data:
                        self._copy_out(address, data)
                    length = len(data)
                moved += length
            status = STATUS_DONE
        except DmaTranslationFault as fault:
            self.faults.append(fault)
            status = STATUS_DONE | STATUS_ERROR
        self.regs[BYTES_DONE] = moved
        self.regs[STATUS] |= status
        if self.regs[INT_ENABLE] & 1:
            self.hardware.interrupt_line.trigger()
