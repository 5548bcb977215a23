"""A test's driver for the bus-master device: named registers, a descriptor ring in
guest memory, interrupts collected (a unique module name: pytest imports test
folders' modules by their base name)."""

from __future__ import annotations

import threading
import time

from device_model.busmaster import BusMasterDevice
from device_model.busmaster_abi import (
    BM_COMPLETION_OFFSET, BM_DESCRIPTOR_SIZE, BmCompletion, BmControl, BmDescriptor,
    register_offset,
)
from wdfhil.physical_memory import PhysicalMemory


class Interrupts:
    """An on_interrupt handler that keeps what it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._event = threading.Condition()

    def __call__(self, pending: int) -> None:
        with self._event:
            self.calls.append(pending)
            self._event.notify_all()

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[int]:
        with self._event:
            if not self._event.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"{len(self.calls)} interrupts, expected {count}")
            return list(self.calls)


class RingDriver:
    """Programs a BusMasterDevice as a driver would: registers by name, descriptors
    written into a ring in guest memory at ``ring_base`` (a bus address; ``ring_gpa``
    is where the test writes it, the same without remapping)."""

    def __init__(self, device: BusMasterDevice, memory: PhysicalMemory, ring_base: int,
                 ring_size: int = 8, ring_gpa: int | None = None) -> None:
        self.device = device
        self.memory = memory
        self.ring_base = ring_base
        self.ring_gpa = ring_base if ring_gpa is None else ring_gpa
        self.ring_size = ring_size
        self.tail = 0

    def read(self, name: str) -> int:
        return self.device.register_read(register_offset(name), 4)

    def write(self, name: str, value: int) -> None:
        self.device.register_write(register_offset(name), 4, value)

    def start(self, *, unmask: bool = True) -> "RingDriver":
        self.write("ring_base_lo", self.ring_base & 0xFFFFFFFF)
        self.write("ring_base_hi", self.ring_base >> 32)
        self.write("ring_size", self.ring_size)
        if unmask:
            self.write("int_mask", 0)
        self.write("control", BmControl.ENABLE)
        return self

    def slot_gpa(self, index: int) -> int:
        return self.ring_gpa + index * BM_DESCRIPTOR_SIZE

    def put(self, descriptor: BmDescriptor | bytes) -> int:
        """Write a descriptor (completion record zeroed) into the next slot; its index."""
        raw = descriptor.pack() if isinstance(descriptor, BmDescriptor) else descriptor
        index = self.tail
        self.memory.write(self.slot_gpa(index), raw.ljust(BM_DESCRIPTOR_SIZE, b"\0")[:BM_DESCRIPTOR_SIZE])
        self.tail = (self.tail + 1) % self.ring_size
        return index

    def ring(self) -> None:
        self.write("ring_tail", self.tail)

    def submit(self, *descriptors: BmDescriptor | bytes) -> list[int]:
        """Put, ring, and wait until the device thread got through the doorbell."""
        slots = [self.put(d) for d in descriptors]
        self.ring()
        self.device.drain()
        return slots

    def completion(self, index: int) -> BmCompletion:
        return BmCompletion.unpack(self.memory.read(self.slot_gpa(index) + BM_COMPLETION_OFFSET, 16), 0)

    def wait_done(self, index: int, timeout: float = 10.0) -> BmCompletion:
        deadline = time.monotonic() + timeout
        while True:
            done = self.completion(index)
            if done.done:
                return done
            if time.monotonic() > deadline:
                raise AssertionError(f"slot {index} not completed after {timeout} s")
            time.sleep(0.001)
