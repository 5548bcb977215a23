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
from typing import Callable, Iterator, Sequence

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

    @property
    def Address(self) -> int:   # SCATTER_GATHER_ELEMENT.Address (a PHYSICAL_ADDRESS: the logical address)
        return self.address

    @property
    def Length(self) -> int:
        return self.length


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

    @property
    def NumberOfElements(self) -> int:   # SCATTER_GATHER_LIST.NumberOfElements
        return len(self.elements)

    @property
    def Elements(self) -> list[ScatterGatherElement]:
        return self.elements

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

    # The device side's queries. Defaults: logical = physical within the DMA mask, nothing held.

    def translate(self, logical: int, length: int, *, device_writes: bool | None = None) -> list[tuple[int, int]]:
        """What the device reaches at ``[logical, logical+length)``: the physical runs, or
        :class:`DmaTranslationFault` (the device model calls this for every access it makes)."""
        return _translate_identity(self.capabilities.dma_mask, logical, length)

    def map_common_buffer(self, gpa: int, length: int) -> int:
        """The logical address the device uses for a common buffer at ``gpa``."""
        _translate_identity(self.capabilities.dma_mask, gpa, length)
        return gpa

    def unmap_common_buffer(self, logical: int, length: int) -> None:
        """The common buffer at ``logical`` is freed."""

    # Map registers: what IoGetDmaAdapter reports, and the queued adapter request.

    @property
    def number_of_map_registers(self) -> int:
        """NumberOfMapRegisters (default: enough for the longest transfer, plus one)."""
        return ((self.capabilities.max_transfer + PAGE_SIZE - 1) >> PAGE_SHIFT) + 1

    def when_map_registers_free(self, retry: Callable[[], None]) -> None:
        """Call ``retry`` when map registers are released (after :meth:`map` raised
        :class:`MapRegistersBusy`); an adapter that never raises it needs nothing here."""
        raise DmaMappingError(f"{type(self).__name__} raised MapRegistersBusy but queues no retry")

    def cancel_waiter(self, retry: Callable[[], None]) -> None:
        """Forget a queued retry (the transaction was released or deleted)."""


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


# -- what the device side asks the adapter: translation ---------------------------------------

class DmaTranslationFault(DmaMappingError):
    """The device used a logical address the adapter does not give it (an address the device
    cannot drive, an IOVA never mapped or already unmapped): the transfer must fault.

    ``logical``/``length`` name the access, ``reason`` says why; the device model reports it as
    the device's DMA error."""

    def __init__(self, logical: int, length: int, reason: str) -> None:
        self.logical = logical
        self.length = length
        self.reason = reason
        super().__init__(f"DMA translation fault at logical 0x{logical:x}+0x{length:x}: {reason}", value=logical)


class MapRegistersBusy(DmaMappingError):
    """Not enough free map registers for this transfer now (the HAL queues the request until
    some are released; a transaction marked for immediate execution fails instead)."""

    def __init__(self, needed: int, free: int, total: int) -> None:
        self.needed = needed
        self.free = free
        self.total = total
        super().__init__(f"the transfer needs {needed} map registers; {free} of {total} are free")


def _translate_identity(mask: int, logical: int, length: int) -> list[tuple[int, int]]:
    if length <= 0:
        raise DmaTranslationFault(logical, length, "zero-length access")
    if logical < 0 or logical + length - 1 > mask:
        bits = mask.bit_length()
        raise DmaTranslationFault(logical, length, f"the device drives {bits} address bits; it cannot reach"
                                  f" this address (on the bus it becomes 0x{logical & mask:x})")
    return [(logical, length)]


@dataclass
class BounceBuffer:
    """One map register in use: a low page standing in for a page the device cannot reach."""

    bounce_gpa: int      # the low page's address of the span's first byte
    original_gpa: int    # the span's real address
    length: int
    register: int = 0    # which map register (index into the adapter's bounce pages)


class HalDmaAdapter(DmaAdapter):
    """The platform's DMA layer for one device (what IoGetDmaAdapter returns on a machine
    without DMA remapping): logical address = physical address for every page the device can
    drive; a page beyond its DMA mask (a 32-bit device, a page above 4 GiB) goes through a map
    register: a page of low memory (``bounce_pages``, reserved when the adapter was made) that
    the device is given instead. Data is copied into the bounce page when the transfer is mapped
    for a write to the device, and back out of it when a read from the device is unmapped.

    A transfer takes a run of consecutive map registers, so its bounced pages are one logically
    contiguous range (when the bounce pages are contiguous, as one allocation makes them).
    Map registers are finite: :meth:`map` raises :class:`MapRegistersBusy` when no run of the
    needed length is free (:meth:`when_map_registers_free` queues a retry, as the HAL queues the
    adapter request). ``number_of_map_registers`` is what IoGetDmaAdapter reports: the bounce
    pages when the device needs them, else BYTES_TO_PAGES(max_transfer) + 1.
    """

    def __init__(self, memory: object, capabilities: DmaCapabilities | None = None, *,
                 bounce_pages: Sequence[int] = ()) -> None:
        self._memory = memory
        self._capabilities = capabilities or DmaCapabilities()
        self._bounce_all = [int(p) for p in bounce_pages]
        for page in self._bounce_all:
            if page % PAGE_SIZE or page + PAGE_SIZE - 1 > self._capabilities.dma_mask:
                raise DmaMappingError(f"bounce page 0x{page:x} is not a page the device can reach", value=page)
        self._in_use = [False] * len(self._bounce_all)
        self._waiters: list[Callable[[], None]] = []
        self.mapped: list[ScatterGatherList] = []   # transfers mapped now

    @property
    def capabilities(self) -> DmaCapabilities:
        return self._capabilities

    @property
    def number_of_map_registers(self) -> int:
        if self._bounce_all:
            return len(self._bounce_all)
        return ((self._capabilities.max_transfer + PAGE_SIZE - 1) >> PAGE_SHIFT) + 1

    @property
    def free_map_registers(self) -> int:
        return self._in_use.count(False)

    def reachable(self, gpa: int, length: int) -> bool:
        return gpa + length - 1 <= self._capabilities.dma_mask

    def map_registers_needed(self, spans: Sequence[Span]) -> int:
        mask = self._capabilities.dma_mask
        return sum(1 for pfn, offset, length in spans if (pfn << PAGE_SHIFT) + offset + length - 1 > mask)

    def _free_run(self, count: int) -> int | None:
        """The first index of ``count`` free map registers whose pages are consecutive."""
        pages, in_use = self._bounce_all, self._in_use
        for start in range(len(pages) - count + 1):
            if all(not in_use[start + k] and pages[start + k] == pages[start] + k * PAGE_SIZE
                   for k in range(count)):
                return start
        return None

    def map(self, spans: Sequence[Span], *, to_device: bool) -> ScatterGatherList:
        # One pass over the pages with plain ints (a 1 MiB transfer is 257 spans): runs that
        # touch merge as they are built, an element object only per run.
        needed = self.map_registers_needed(spans)
        register = self._free_run(needed) if needed else 0
        if register is None:
            if not self._bounce_all:
                raise DmaMappingError(f"{needed} pages lie beyond the device's DMA mask"
                                      f" 0x{self._capabilities.dma_mask:x} and the adapter has no map registers")
            raise MapRegistersBusy(needed, self.free_map_registers, len(self._bounce_all))
        mask = self._capabilities.dma_mask
        runs: list[list[int]] = []            # [logical address, length] of each contiguous run
        bounces: list[object] = []
        total = 0
        for pfn, offset, length in spans:
            address = (pfn << PAGE_SHIFT) + offset
            total += length
            if address + length - 1 > mask:
                self._in_use[register] = True
                bounce = self._bounce_all[register] + offset
                if to_device:
                    self._memory.write(bounce, self._memory.read(address, length))
                bounces.append(BounceBuffer(bounce, address, length, register))
                address = bounce
                register += 1
            if runs and runs[-1][0] + runs[-1][1] == address:
                runs[-1][1] += length
            else:
                runs.append([address, length])
        sg = ScatterGatherList([ScatterGatherElement(a, n) for a, n in runs], to_device, total,
                               map_registers=needed, bounce_buffers=bounces)
        self.mapped.append(sg)
        return sg

    def unmap(self, sg: ScatterGatherList) -> None:
        if sg.unmapped:
            raise DmaMappingError("scatter/gather list unmapped twice")
        sg.unmapped = True
        if sg in self.mapped:
            self.mapped.remove(sg)
        for bounce in sg.bounce_buffers:
            assert isinstance(bounce, BounceBuffer)
            if not sg.to_device:
                self._memory.write(bounce.original_gpa, self._memory.read(bounce.bounce_gpa, bounce.length))
            self._in_use[bounce.register] = False
        if sg.bounce_buffers and self._waiters:
            waiters, self._waiters = self._waiters, []
            for retry in waiters:
                retry()

    def when_map_registers_free(self, retry: Callable[[], None]) -> None:
        """Call ``retry`` the next time map registers are released (the queued adapter request)."""
        self._waiters.append(retry)

    def cancel_waiter(self, retry: Callable[[], None]) -> None:
        if retry in self._waiters:
            self._waiters.remove(retry)


IOVA_BASE = 0x1000_0000  # where a remapping adapter's IOVA space starts (inside any DMA mask)


@dataclass
class IovaMapping:
    """One mapped range of IOVA pages: the frames behind them, for reads, writes or both."""

    iova: int
    frames: list[int]
    to_device: bool | None       # True: the device reads; False: it writes; None: both (common buffer)
    first_offset: int
    length: int


class RemappingDmaAdapter(DmaAdapter):
    """DMA remapping (Kernel DMA Protection) for a device whose driver declared itself
    compatible: every mapping gets an IOVA range the adapter owns, unrelated to the physical
    addresses, and the device reaches memory only through :meth:`translate`. A device
    programmed with MmGetPhysicalAddress, or with a logical address after its transfer was
    unmapped, gets a :class:`DmaTranslationFault`. Each transfer is one contiguous IOVA range,
    so its scatter/gather list has one element. IOVAs are never reused (a stale address always
    faults)."""

    def __init__(self, capabilities: DmaCapabilities | None = None, *, iova_base: int = IOVA_BASE) -> None:
        self._capabilities = capabilities or DmaCapabilities()
        self._next = iova_base
        self._table: dict[int, tuple[int, IovaMapping]] = {}  # IOVA page -> (frame, mapping)
        self.faults: list[DmaTranslationFault] = []

    @property
    def capabilities(self) -> DmaCapabilities:
        return self._capabilities

    def _allocate(self, frames: list[int], first_offset: int, length: int, to_device: bool | None) -> IovaMapping:
        iova = self._next
        if iova + len(frames) * PAGE_SIZE - 1 > self._capabilities.dma_mask:
            raise DmaMappingError("the IOVA space is exhausted for this device's DMA mask", value=iova)
        self._next += (len(frames) + 1) * PAGE_SIZE   # an unmapped guard page between ranges
        mapping = IovaMapping(iova, frames, to_device, first_offset, length)
        for i, frame in enumerate(frames):
            self._table[(iova >> PAGE_SHIFT) + i] = (frame, mapping)
        return mapping

    def _release(self, mapping: IovaMapping) -> None:
        for i in range(len(mapping.frames)):
            self._table.pop((mapping.iova >> PAGE_SHIFT) + i, None)

    def map(self, spans: Sequence[Span], *, to_device: bool) -> ScatterGatherList:
        if not spans:
            raise DmaMappingError("nothing to map")
        for i, (pfn, offset, length) in enumerate(spans):
            if i and offset != 0:
                raise DmaMappingError("only the first span may start inside its page", index=i, value=offset)
            if i < len(spans) - 1 and offset + length != PAGE_SIZE:
                raise DmaMappingError("only the last span may end inside its page", index=i, value=length)
        total = sum(s[2] for s in spans)
        mapping = self._allocate([s[0] for s in spans], spans[0][1], total, to_device)
        element = ScatterGatherElement(mapping.iova + spans[0][1], total)
        return ScatterGatherList([element], to_device, total, map_registers=0, bounce_buffers=[mapping])

    def unmap(self, sg: ScatterGatherList) -> None:
        if sg.unmapped:
            raise DmaMappingError("scatter/gather list unmapped twice")
        sg.unmapped = True
        for mapping in sg.bounce_buffers:
            assert isinstance(mapping, IovaMapping)
            self._release(mapping)

    def map_common_buffer(self, gpa: int, length: int) -> int:
        pages = (gpa % PAGE_SIZE + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        first = gpa >> PAGE_SHIFT
        mapping = self._allocate(list(range(first, first + pages)), gpa % PAGE_SIZE, length, None)
        return mapping.iova + gpa % PAGE_SIZE

    def unmap_common_buffer(self, logical: int, length: int) -> None:
        entry = self._table.get(logical >> PAGE_SHIFT)
        if entry is not None:
            self._release(entry[1])

    def translate(self, logical: int, length: int, *, device_writes: bool | None = None) -> list[tuple[int, int]]:
        """The physical runs behind ``[logical, logical+length)``; a fault (also recorded in
        ``faults``) for any page not mapped now, or mapped for the other direction
        (``device_writes`` True: the device writes memory; False: it reads; None: unchecked)."""
        if length <= 0:
            raise self._fault(logical, length, "zero-length access")
        runs: list[tuple[int, int]] = []
        address, remaining = logical, length
        while remaining:
            entry = self._table.get(address >> PAGE_SHIFT)
            if entry is None:
                raise self._fault(logical, length, f"IOVA 0x{address:x} is not mapped for this device"
                                  " (a physical address, or a transfer already completed)")
            frame, mapping = entry
            if device_writes is not None and mapping.to_device is not None and mapping.to_device == device_writes:
                raise self._fault(logical, length, f"IOVA 0x{address:x} is mapped for the device to"
                                  f" {'read' if mapping.to_device else 'write'} only")
            in_page = address % PAGE_SIZE
            n = min(remaining, PAGE_SIZE - in_page)
            gpa = (frame << PAGE_SHIFT) + in_page
            if runs and runs[-1][0] + runs[-1][1] == gpa:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((gpa, n))
            address += n
            remaining -= n
        return runs

    def _fault(self, logical: int, length: int, reason: str) -> DmaTranslationFault:
        fault = DmaTranslationFault(logical, length, reason)
        self.faults.append(fault)
        return fault
