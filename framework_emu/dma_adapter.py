"""The framework's DMA port: what a DMA enabler talks to, and nothing of the device.

On Windows a DMA enabler gets a DMA adapter from the HAL (``IoGetDmaAdapter``)
for the device's addressing capability, and every transfer goes through it: an
MDL becomes a scatter/gather list of *logical* addresses (what the device puts
on the bus), possibly through map registers and bounce buffers when the device
cannot reach a page. This module is that contract for the emulated framework:

- :class:`DmaCapabilities`: what the device can address and move (DMA mask,
  longest transfer, segment alignment, scatter/gather list length, map
  registers);
- :func:`mdl_spans`: an MDL (PFN array, ByteOffset, ByteCount) as
  ``(pfn, offset, length)`` spans, one per page it touches;
- :class:`DmaAdapter`: ``map(spans) -> ScatterGatherList`` and ``unmap``;
- :class:`IdentityDmaAdapter`: logical address = physical address, a full
  64-bit device, no map registers: for unit tests on ``InProcessMemory``.

The runtime layer implements the adapter over a real device
(``orchestrator.dma_port``); the framework never imports a device.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from wdfhil.errors import WdfhilError
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE

FULL_DMA_MASK = (1 << 64) - 1

#: One page of an MDL: (page frame number, byte offset in the page, bytes in the page).
Span = tuple[int, int, int]


class DmaMappingError(WdfhilError):
    """A buffer the adapter cannot map for the device (names the span and why)."""

    def __init__(self, message: str, *, index: int | None = None, value: int | None = None) -> None:
        self.index = index
        self.value = value
        where = f"span {index}: " if index is not None else ""
        super().__init__(f"{where}{message}")


@dataclass(frozen=True)
class DmaCapabilities:
    """What a device can do with DMA, as the framework must respect it.

    ``dma_mask``: highest logical address the device can drive (2**n - 1).
    ``max_transfer``: bytes per transfer. ``alignment``: every element's
    address and length a multiple of it (1 = any). ``max_elements``: longest
    scatter/gather list per transfer. ``map_registers``: how many pages can be
    mapped at once (None: as many as wanted, a 64-bit bus master).
    """

    dma_mask: int = FULL_DMA_MASK
    max_transfer: int = 1 << 32
    alignment: int = 1
    max_elements: int = 1 << 16
    map_registers: int | None = None

    @property
    def address_bits(self) -> int:
        return self.dma_mask.bit_length()


@dataclass(frozen=True)
class ScatterGatherElement:
    """One element of a scatter/gather list (SCATTER_GATHER_ELEMENT: Address, Length)."""

    address: int
    length: int


@dataclass
class ScatterGatherList:
    """A mapped transfer: the elements the device is given, and what the adapter
    holds for it until :meth:`DmaAdapter.unmap` (map registers, bounce buffers)."""

    elements: list[ScatterGatherElement]
    to_device: bool
    length: int
    map_registers: int = 0
    bounce_buffers: list[object] = field(default_factory=list)
    unmapped: bool = False

    def __iter__(self) -> Iterator[ScatterGatherElement]:
        return iter(self.elements)

    def __len__(self) -> int:
        return len(self.elements)

    def pairs(self) -> list[tuple[int, int]]:
        """(logical address, length) of each element."""
        return [(e.address, e.length) for e in self.elements]


def mdl_spans(pfns: Sequence[int], byte_offset: int, byte_count: int) -> list[Span]:
    """The pages an MDL describes, as (pfn, offset, length) spans in order: the
    first starts at ``byte_offset`` (ByteOffset), together they hold ``byte_count``
    (ByteCount) bytes."""
    if not 0 <= byte_offset < PAGE_SIZE:
        raise DmaMappingError(f"byte offset {byte_offset} is not inside a page", value=byte_offset)
    spans: list[Span] = []
    remaining, offset = byte_count, byte_offset
    for pfn in pfns:
        if remaining <= 0:
            break
        length = min(remaining, PAGE_SIZE - offset)
        spans.append((int(pfn), offset, length))
        remaining -= length
        offset = 0
    if remaining > 0:
        raise DmaMappingError(f"the PFN array ends {remaining} bytes before ByteCount",
                              value=byte_count)
    return spans


def span_address(span: Span) -> int:
    """Physical address of a span's first byte."""
    pfn, offset, _length = span
    return (pfn << PAGE_SHIFT) + offset


class DmaAdapter(abc.ABC):
    """What a DMA enabler talks to: the device's capability, mapping and unmapping."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> DmaCapabilities:
        """The device's DMA capability (the adapter enforces it in :meth:`map`)."""

    @abc.abstractmethod
    def map(self, spans: Sequence[Span], *, to_device: bool) -> ScatterGatherList:
        """Map a buffer for one transfer: the logical addresses the device uses.
        Raises DmaMappingError for what the device cannot be given."""

    @abc.abstractmethod
    def unmap(self, sg: ScatterGatherList) -> None:
        """End the transfer: release map registers, copy bounce buffers back."""


class IdentityDmaAdapter(DmaAdapter):
    """Logical = physical, one element per span, nothing held: the simplest adapter,
    for framework unit tests with no device."""

    def __init__(self, capabilities: DmaCapabilities | None = None) -> None:
        self._capabilities = capabilities or DmaCapabilities()

    @property
    def capabilities(self) -> DmaCapabilities:
        return self._capabilities

    def map(self, spans: Sequence[Span], *, to_device: bool) -> ScatterGatherList:
        elements = [ScatterGatherElement(span_address(s), s[2]) for s in spans]
        return ScatterGatherList(elements, to_device, sum(e.length for e in elements))

    def unmap(self, sg: ScatterGatherList) -> None:
        if sg.unmapped:
            raise DmaMappingError("scatter/gather list unmapped twice")
        sg.unmapped = True
