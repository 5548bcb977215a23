"""The framework's DMA port implemented over a wdfhil device: :class:`DeviceDmaAdapter`.

The framework talks to a :class:`framework_emu.dma_adapter.DmaAdapter`; this
runtime implementation gives it the device's real capability (its DMA mask and
segment alignment from the device, the ABI's transfer and list limits) and turns
MDL spans into the device's scatter/gather list: logical address = guest-physical
address (no IOMMU), physically contiguous pages merged into one element, the
list checked against the capability before the device ever sees it (the device
checks again: it trusts no one). Map registers are counted so that a driver
holding too many mappings fails as on Windows (no bounce buffers yet: a page
above the DMA mask is an error rather than a copy).
"""

from __future__ import annotations

from typing import Protocol, Sequence

from device_model.abi import MAX_SEGMENTS, MAX_TRANSFER, Segment
from framework_emu.dma_adapter import (
    DmaAdapter, DmaCapabilities, DmaMappingError, ScatterGatherElement, ScatterGatherList, Span,
    span_address,
)
from wdfhil.physical_memory import PAGE_SIZE


class DmaCapableDevice(Protocol):
    """What the port needs of a device (DeviceCore and EchoDevice have it)."""

    dma_mask: int
    segment_align: int


class DeviceDmaAdapter(DmaAdapter):
    """A DMA adapter for one device. ``map_registers``: pages mappable at once
    (default: one transfer's worth, as a bus master's adapter gets)."""

    def __init__(self, device: DmaCapableDevice, *, map_registers: int | None = None) -> None:
        self._capabilities = DmaCapabilities(
            dma_mask=device.dma_mask, max_transfer=MAX_TRANSFER, alignment=device.segment_align,
            max_elements=MAX_SEGMENTS,
            map_registers=map_registers if map_registers is not None
            else MAX_TRANSFER // PAGE_SIZE + 1)
        self.map_registers_in_use = 0

    @property
    def capabilities(self) -> DmaCapabilities:
        return self._capabilities

    def map(self, spans: Sequence[Span], *, to_device: bool) -> ScatterGatherList:
        caps = self._capabilities
        if not spans:
            raise DmaMappingError("nothing to map")
        elements: list[ScatterGatherElement] = []
        total = 0
        for index, span in enumerate(spans):
            _pfn, offset, length = span
            if length <= 0 or offset < 0 or offset + length > PAGE_SIZE:
                raise DmaMappingError(f"({span}) is not a piece of one page", index=index,
                                      value=length)
            address = span_address(span)
            if address + length - 1 > caps.dma_mask:
                raise DmaMappingError(f"page {address:#x} is above the device's DMA mask "
                                      f"{caps.dma_mask:#x} (no bounce buffers yet)",
                                      index=index, value=address)
            total += length
            if elements and elements[-1].address + elements[-1].length == address:
                last = elements.pop()
                elements.append(ScatterGatherElement(last.address, last.length + length))
            else:
                elements.append(ScatterGatherElement(address, length))
        if total > caps.max_transfer:
            raise DmaMappingError(f"{total} bytes exceed the device's longest transfer "
                                  f"{caps.max_transfer}", value=total)
        if len(elements) > caps.max_elements:
            raise DmaMappingError(f"{len(elements)} elements exceed the device's "
                                  f"{caps.max_elements}", value=len(elements))
        if caps.alignment > 1:
            for i, e in enumerate(elements):
                if (e.address | e.length) % caps.alignment:
                    raise DmaMappingError(f"element at {e.address:#x}+{e.length:#x} is not "
                                          f"aligned to the device's {caps.alignment}",
                                          index=i, value=e.address)
        registers = len(spans)
        if caps.map_registers is not None and \
                self.map_registers_in_use + registers > caps.map_registers:
            raise DmaMappingError(f"needs {registers} map registers, "
                                  f"{caps.map_registers - self.map_registers_in_use} free",
                                  value=registers)
        self.map_registers_in_use += registers
        return ScatterGatherList(elements, to_device, total, map_registers=registers)

    def unmap(self, sg: ScatterGatherList) -> None:
        if sg.unmapped:
            raise DmaMappingError("scatter/gather list unmapped twice")
        sg.unmapped = True
        self.map_registers_in_use -= sg.map_registers


def device_segments(sg: ScatterGatherList) -> list[Segment]:
    """A mapped list as the device ABI's segments (for a descriptor)."""
    return [Segment(e.address, e.length) for e in sg.elements]
