"""The hardware side of a device as the framework sees it: resources, registers, DMA platform.

These are the interfaces the runtime implements over a device personality
(and unit tests over an in-process fake device):

- :class:`DeviceHardware`: what the PnP manager knows of the device it
  enumerated: memory BARs (:class:`MemoryBar`, physical address and length), an
  interrupt (:class:`InterruptResource`), the :class:`RegisterHandler` behind the
  BARs, the :class:`InterruptLine` the device raises, and the DMA platform
  (whether the device's DMA goes through an IOVA-remapping adapter, how many
  map registers a device that needs bounce buffers gets). The device model
  reaches guest memory with :meth:`DeviceHardware.translate`, which asks the
  adapters the framework made for the device.
- :class:`RegisterHandler`: ``read(bar, offset, width)`` / ``write(bar, offset,
  width, value)``, called for every READ_REGISTER_* / WRITE_REGISTER_* through an
  MmMapIoSpace'd address.
- :class:`InterruptLine`: ``trigger()`` runs the ISR (now, or when the processor
  can take it), which may queue the DPC.

``IoManager.add_device(fx, stack, hardware=DeviceHardware(...))`` hands them to
the device: EvtDevicePrepareHardware gets WDFCMRESLIST handles over the
resources, the framework's WDFINTERRUPTs connect to the line, DMA enablers
get their adapters from it.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from wdfhil.physical_memory import PAGE_SIZE

from .callsite import CallSite
from .dma_adapter import DmaAdapter, DmaTranslationFault, IOVA_BASE, RemappingDmaAdapter, _translate_identity
from .dma_enabler import DEFAULT_BOUNCE_MAP_REGISTERS, DeviceDescription, platform_dma_adapter
from .low_dma import LowDmaRegion
from .objects import FX_TYPE_OBJECT, FxObject

FX_TYPE_CM_RES_LIST = 0x1036
IO_SPACE_BASE = 0xFFFF_C000_0000_0000   # where MmMapIoSpace mappings live (never reused)
DEFAULT_DEVICE_IRQL = 9                 # DIRQL of an interrupt resource that names none [I]
IOVA_DOMAIN_STRIDE = 0x1000_0000        # each remapping adapter of a device gets its own IOVA window


class CM_RESOURCE_TYPE(enum.IntEnum):
    CmResourceTypeNull = 0
    CmResourceTypePort = 1
    CmResourceTypeInterrupt = 2
    CmResourceTypeMemory = 3
    CmResourceTypeDma = 4


CmResourceTypeInterrupt = CM_RESOURCE_TYPE.CmResourceTypeInterrupt
CmResourceTypeMemory = CM_RESOURCE_TYPE.CmResourceTypeMemory
CmResourceShareDeviceExclusive = 1
CM_RESOURCE_MEMORY_READ_WRITE = 0x0000
CM_RESOURCE_INTERRUPT_LATCHED = 0x0001
CM_RESOURCE_INTERRUPT_MESSAGE = 0x0002


@dataclass(frozen=True)
class MemoryBar:
    """A memory BAR: its physical (bus) address and length."""

    start: int
    length: int


@dataclass(frozen=True)
class InterruptResource:
    """The device's interrupt: a message-signalled vector at a device IRQL (DIRQL)."""

    vector: int = 0x60
    level: int = DEFAULT_DEVICE_IRQL
    message: bool = True
    affinity: int = 1


class RegisterHandler(abc.ABC):
    """The device personality's registers, as READ_REGISTER_* / WRITE_REGISTER_* reach them."""

    @abc.abstractmethod
    def read(self, bar: int, offset: int, width: int) -> int:
        """Read ``width`` bytes (1, 2, 4 or 8) at ``offset`` in BAR ``bar``."""

    @abc.abstractmethod
    def write(self, bar: int, offset: int, width: int, value: int) -> None:
        """Write ``width`` bytes at ``offset`` in BAR ``bar``."""


class InterruptLine:
    """The device's interrupt line (an MSI vector). The framework connects its interrupt object
    while the device is in D0 with interrupts enabled; ``trigger()`` before that, or after the
    disconnect, is lost (returns False), as a message nobody listens to is."""

    def __init__(self) -> None:
        self._sink: Callable[[], None] | None = None
        self.triggered = 0
        self.lost = 0

    @property
    def connected(self) -> bool:
        return self._sink is not None

    def connect(self, sink: Callable[[], None]) -> None:
        self._sink = sink

    def disconnect(self) -> None:
        self._sink = None

    def trigger(self) -> bool:
        """The device raises its interrupt."""
        self.triggered += 1
        if self._sink is None:
            self.lost += 1
            return False
        self._sink()
        return True


@dataclass
class DeviceHardware:
    """A device's resources and the platform's DMA arrangement for it (see the module docstring).

    ``dma_address_bits``: what the device itself can drive on the bus (a 32-bit device given a
    64-bit address reaches the wrong memory: :meth:`translate` faults). ``dma_remapping``: the
    driver is DMA-remapping compatible, the adapters hand out IOVAs. ``map_registers``: the bounce
    pages (map registers) an adapter gets when the device cannot reach all of RAM. ``low_dma``: the
    platform's low memory those pages (and common buffers the pool cannot give the device) come
    from; None: from the driver's nonpaged pool (:mod:`framework_emu.low_dma` says why a region)."""

    bars: list[MemoryBar] = field(default_factory=list)
    interrupt: InterruptResource | None = None
    registers: RegisterHandler | None = None
    interrupt_line: InterruptLine = field(default_factory=InterruptLine)
    dma_address_bits: int = 64
    dma_remapping: bool = False
    map_registers: int = DEFAULT_BOUNCE_MAP_REGISTERS
    low_dma: LowDmaRegion | None = None
    adapters: list[DmaAdapter] = field(default_factory=list)

    def get_dma_adapter(self, fx: Any, description: DeviceDescription
                        ) -> tuple[DmaAdapter, list[Callable[[], None]]] | None:
        """IoGetDmaAdapter for this device (called by WdfDmaEnablerCreate)."""
        if self.dma_remapping:
            from .dma_adapter import DmaCapabilities

            capabilities = DmaCapabilities(dma_mask=(1 << description.address_width) - 1,
                                           max_transfer=description.maximum_length)
            adapter: DmaAdapter = RemappingDmaAdapter(
                capabilities, iova_base=IOVA_BASE + len(self.adapters) * IOVA_DOMAIN_STRIDE)
            self.adapters.append(adapter)
            return adapter, []
        made = platform_dma_adapter(fx, description, self.map_registers, self.low_dma)
        if made is not None:
            self.adapters.append(made[0])
        return made

    def translate(self, logical: int, length: int, *, device_writes: bool | None = None) -> list[tuple[int, int]]:
        """What the device reaches at a logical address: physical runs, or DmaTranslationFault.
        Without remapping, logical = physical within the device's own address width; with it,
        the adapters' IOVA tables decide."""
        if not self.dma_remapping:
            return _translate_identity((1 << self.dma_address_bits) - 1, logical, length)
        last: DmaTranslationFault | None = None
        for adapter in self.adapters:
            try:
                return adapter.translate(logical, length, device_writes=device_writes)
            except DmaTranslationFault as fault:
                last = fault
        raise last or DmaTranslationFault(logical, length, "the device has no DMA adapter (no WDFDMAENABLER)")

    def bar_of(self, physical: int, length: int) -> tuple[int, int] | None:
        """(BAR index, offset) of a physical range inside one BAR, or None."""
        for index, bar in enumerate(self.bars):
            if bar.start <= physical and physical + length <= bar.start + bar.length:
                return index, physical - bar.start
        return None


# -- CM_PARTIAL_RESOURCE_DESCRIPTOR -------------------------------------------------------------------

@dataclass
class CmMemory:
    Start: int
    Length: int


@dataclass
class CmInterrupt:
    Level: int
    Vector: int
    Affinity: int


@dataclass
class CmResourceUnion:
    Memory: CmMemory | None = None
    Interrupt: CmInterrupt | None = None


@dataclass
class CM_PARTIAL_RESOURCE_DESCRIPTOR:
    Type: int
    ShareDisposition: int = CmResourceShareDeviceExclusive
    Flags: int = 0
    u: CmResourceUnion = field(default_factory=CmResourceUnion)


def descriptors_for(hardware: DeviceHardware | None, translated: bool) -> list[CM_PARTIAL_RESOURCE_DESCRIPTOR]:
    """The device's resources as the PnP manager lists them: memory BARs, then the interrupt.
    Raw and translated memory are the same on x86/x64; a raw message interrupt names the message,
    the translated one the DIRQL and IDT vector."""
    if hardware is None:
        return []
    out = [CM_PARTIAL_RESOURCE_DESCRIPTOR(CmResourceTypeMemory, Flags=CM_RESOURCE_MEMORY_READ_WRITE,
                                          u=CmResourceUnion(Memory=CmMemory(bar.start, bar.length)))
           for bar in hardware.bars]
    irq = hardware.interrupt
    if irq is not None:
        flags = CM_RESOURCE_INTERRUPT_LATCHED | (CM_RESOURCE_INTERRUPT_MESSAGE if irq.message else 0)
        level, vector = (irq.level, irq.vector) if translated else (0, 0 if irq.message else irq.vector)
        out.append(CM_PARTIAL_RESOURCE_DESCRIPTOR(CmResourceTypeInterrupt, Flags=flags,
                                                  u=CmResourceUnion(Interrupt=CmInterrupt(level, vector,
                                                                                          irq.affinity))))
    return out


class CmResourceList(FxObject):
    """WDFCMRESLIST: the raw or translated resources EvtDevicePrepareHardware gets."""

    WDF_TYPE = FX_TYPE_CM_RES_LIST
    HANDLE_NAME = "WDFCMRESLIST"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_CM_RES_LIST})
    NO_DELETE_DDI = True

    def __init__(self, fx: Any, site: CallSite | None, descriptors: list[CM_PARTIAL_RESOURCE_DESCRIPTOR],
                 translated: bool) -> None:
        FxObject.__init__(self, fx, site)
        self.descriptors = descriptors
        self.translated = translated
        self.DESCRIPTION = f"{'translated' if translated else 'raw'} resource list"


# -- I/O space: MmMapIoSpace mappings ---------------------------------------------------------------

@dataclass
class IoMapping:
    va: int
    physical: int
    length: int
    hardware: DeviceHardware | None
    bar: int
    offset: int
    mapped_at: CallSite | None
    unmapped_at: CallSite | None = None


class IoSpace:
    """The kernel's I/O-space mappings (one per IoManager): MmMapIoSpace hands out virtual
    addresses here; register accesses through them reach the owning device's RegisterHandler."""

    def __init__(self) -> None:
        self._next = IO_SPACE_BASE
        self.mappings: list[IoMapping] = []
        self.hardware: list[DeviceHardware] = []

    def register(self, hardware: DeviceHardware) -> None:
        if hardware not in self.hardware:
            self.hardware.append(hardware)

    def map(self, physical: int, length: int, site: CallSite | None) -> IoMapping:
        owner, bar, offset = None, -1, 0
        for hardware in self.hardware:
            found = hardware.bar_of(physical, length)
            if found is not None:
                owner, (bar, offset) = hardware, found
                break
        in_page = physical % PAGE_SIZE
        va = self._next + in_page
        self._next += ((in_page + length + PAGE_SIZE - 1) // PAGE_SIZE + 1) * PAGE_SIZE
        mapping = IoMapping(va, physical, length, owner, bar, offset, site)
        self.mappings.append(mapping)
        return mapping

    def find(self, va: int, width: int) -> IoMapping | None:
        """The mapping (live or unmapped) that ``[va, va+width)`` falls in."""
        for mapping in reversed(self.mappings):
            if mapping.va <= va and va + width <= mapping.va + mapping.length:
                return mapping
        return None


def resource_lists(device: Any) -> tuple[int, int]:
    """The device's raw and translated WDFCMRESLISTs (made once, children of the device); empty
    lists for a device without hardware."""
    if device.resources_raw is None:
        fx = device.fx
        hardware = device.hardware
        if hardware is not None:
            fx.io_manager.io_space.register(hardware)
        for translated in (False, True):
            resources = CmResourceList(fx, ("<PnP manager: resources>", 0), descriptors_for(hardware, translated),
                                       translated)
            fx._commit(resources, None, device)
            if translated:
                device.resources_translated = resources.handle
            else:
                device.resources_raw = resources.handle
    return device.resources_raw, device.resources_translated


def assign_interrupts(device: Any) -> None:
    """The framework gives the device's interrupt resources, in order, to the interrupts created
    in EvtDriverDeviceAdd (those created in PrepareHardware named theirs)."""
    fx = device.fx
    translated = fx._live.get(device.resources_translated)
    if translated is None:
        return
    irqs = [d for d in translated.descriptors if d.Type == CmResourceTypeInterrupt]
    for interrupt, descriptor in zip([i for i in device.interrupts if i.translated is None], irqs):
        interrupt.assign(descriptor)
