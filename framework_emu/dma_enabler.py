"""WDFDMAENABLER: a device's DMA capability and the adapters behind it (fxdmaenabler.cpp).

An enabler turns its profile into a device description (bus master or not,
32- or 64-bit addresses, scatter/gather, duplex) and gets a DMA adapter for
it -- one for both directions, or one per direction for duplex profiles --
from the platform (the device's :class:`~framework_emu.hw_resources.DeviceHardware`,
or the default :func:`platform_dma_adapter`). As FxDmaEnabler::InitializeResources
does, every adapter's maximum fragment length is
``min(MaximumLength, (NumberOfMapRegisters - 1) * PAGE_SIZE)``.

This module knows nothing of argument validation (api/dma_api.py does it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE

from .callsite import CallSite
from .dma_adapter import DmaAdapter, DmaCapabilities, DmaMappingError, HalDmaAdapter, RemappingDmaAdapter
from .low_dma import LowDmaRegion
from .objects import FX_TYPE_OBJECT, FxObject
from .pool import PoolType

if TYPE_CHECKING:
    from .device import Device

FX_TYPE_DMA_ENABLER = 0x1400
FX_TYPE_DMA_TRANSACTION = 0x1401
FX_TYPE_COMMON_BUFFER = 0x1402

WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS = 0xFFFFFFFF
SIZEOF_WDF_DMA_ENABLER_CONFIG = 0x50       # x64, KMDF 1.11 and later
SIZEOF_WDF_DMA_ENABLER_CONFIG_V1_9 = 0x40
SIZEOF_WDF_COMMON_BUFFER_CONFIG = 0x08
WDF_DMA_ENABLER_CONFIG_REQUIRE_SINGLE_TRANSFER = 0x1
WDF_DMA_ENABLER_CONFIG_NO_SGLIST_PREALLOCATION = 0x2
DEVICE_DESCRIPTION_VERSION2 = 2
DEVICE_DESCRIPTION_VERSION3 = 3
DEFAULT_BOUNCE_MAP_REGISTERS = 16   # map registers (bounce pages) of a device that needs them [I]
BOUNCE_TAG = b"HalB"                # the emulator's tag for the HAL's bounce pages


class WDF_DMA_PROFILE(enum.IntEnum):
    WdfDmaProfileInvalid = 0
    WdfDmaProfilePacket = 1
    WdfDmaProfileScatterGather = 2
    WdfDmaProfilePacket64 = 3
    WdfDmaProfileScatterGather64 = 4
    WdfDmaProfileScatterGatherDuplex = 5
    WdfDmaProfileScatterGather64Duplex = 6
    WdfDmaProfileSystem = 7
    WdfDmaProfileSystemDuplex = 8


class WDF_DMA_DIRECTION(enum.IntEnum):
    WdfDmaDirectionReadFromDevice = 0
    WdfDmaDirectionWriteToDevice = 1


WdfDmaProfilePacket = WDF_DMA_PROFILE.WdfDmaProfilePacket
WdfDmaProfileScatterGather = WDF_DMA_PROFILE.WdfDmaProfileScatterGather
WdfDmaProfilePacket64 = WDF_DMA_PROFILE.WdfDmaProfilePacket64
WdfDmaProfileScatterGather64 = WDF_DMA_PROFILE.WdfDmaProfileScatterGather64
WdfDmaProfileScatterGatherDuplex = WDF_DMA_PROFILE.WdfDmaProfileScatterGatherDuplex
WdfDmaProfileScatterGather64Duplex = WDF_DMA_PROFILE.WdfDmaProfileScatterGather64Duplex
WdfDmaProfileSystem = WDF_DMA_PROFILE.WdfDmaProfileSystem
WdfDmaProfileSystemDuplex = WDF_DMA_PROFILE.WdfDmaProfileSystemDuplex
WdfDmaDirectionReadFromDevice = WDF_DMA_DIRECTION.WdfDmaDirectionReadFromDevice
WdfDmaDirectionWriteToDevice = WDF_DMA_DIRECTION.WdfDmaDirectionWriteToDevice


@dataclass
class WDF_DMA_ENABLER_CONFIG:
    """WDF_DMA_ENABLER_CONFIG_INIT(config, Profile, MaximumLength)."""

    Profile: int = WDF_DMA_PROFILE.WdfDmaProfileInvalid
    MaximumLength: int = 0
    EvtDmaEnablerFill: Callable[..., int] | None = None
    EvtDmaEnablerFlush: Callable[..., int] | None = None
    EvtDmaEnablerDisable: Callable[..., int] | None = None
    EvtDmaEnablerEnable: Callable[..., int] | None = None
    EvtDmaEnablerSelfManagedIoStart: Callable[..., int] | None = None
    EvtDmaEnablerSelfManagedIoStop: Callable[..., int] | None = None
    AddressWidthOverride: int = 0
    WdmDmaVersionOverride: int = 0
    Flags: int = 0
    Size: int = SIZEOF_WDF_DMA_ENABLER_CONFIG


def WDF_DMA_ENABLER_CONFIG_INIT(Profile: int, MaximumLength: int) -> WDF_DMA_ENABLER_CONFIG:
    return WDF_DMA_ENABLER_CONFIG(Profile=Profile, MaximumLength=MaximumLength)


@dataclass
class WDF_COMMON_BUFFER_CONFIG:
    """WDF_COMMON_BUFFER_CONFIG_INIT(config, AlignmentRequirement) (boundary - 1, as FILE_xxx_ALIGNMENT)."""

    AlignmentRequirement: int = 0
    Size: int = SIZEOF_WDF_COMMON_BUFFER_CONFIG


def WDF_COMMON_BUFFER_CONFIG_INIT(AlignmentRequirement: int) -> WDF_COMMON_BUFFER_CONFIG:
    return WDF_COMMON_BUFFER_CONFIG(AlignmentRequirement=AlignmentRequirement)


_PROFILES = {
    # profile: (bus master, 64-bit, scatter/gather, duplex)
    WdfDmaProfilePacket: (True, False, False, False),
    WdfDmaProfilePacket64: (True, True, False, False),
    WdfDmaProfileScatterGather: (True, False, True, False),
    WdfDmaProfileScatterGather64: (True, True, True, False),
    WdfDmaProfileScatterGatherDuplex: (True, False, True, True),
    WdfDmaProfileScatterGather64Duplex: (True, True, True, True),
    WdfDmaProfileSystem: (False, False, False, False),
    WdfDmaProfileSystemDuplex: (False, False, False, True),
}


@dataclass(frozen=True)
class DeviceDescription:
    """The DEVICE_DESCRIPTION an enabler hands IoGetDmaAdapter (the fields that matter here)."""

    master: bool
    scatter_gather: bool
    address_width: int
    maximum_length: int
    version: int
    remapping: bool = False


@dataclass
class DmaDescription:
    """FxDmaDescription: one adapter and what the framework derived from it."""

    adapter: DmaAdapter
    number_of_map_registers: int
    maximum_fragment_length: int
    releases: list[Callable[[], None]]    # what PutDmaAdapter gives back (the map registers' pages)


def platform_dma_adapter(fx: Any, description: DeviceDescription,
                         map_registers: int = DEFAULT_BOUNCE_MAP_REGISTERS, low_dma: LowDmaRegion | None = None
                         ) -> tuple[DmaAdapter, list[Callable[[], None]]] | None:
    """IoGetDmaAdapter on the emulated platform: a :class:`RemappingDmaAdapter` for a device in
    DMA-remapping mode; else a :class:`HalDmaAdapter`, which gets ``map_registers`` bounce pages
    (one contiguous run) when RAM extends beyond what the device can address: from the platform's
    ``low_dma`` region when there is one (the HAL's own low memory), else from the driver's
    nonpaged pool (which must then lie below the device's DMA mask). Returns (adapter, what to call
    to give the pages back), None when the bounce pages cannot be had (IoGetDmaAdapter fails)."""
    mask = (1 << description.address_width) - 1
    capabilities = DmaCapabilities(dma_mask=mask, max_transfer=description.maximum_length)
    if description.remapping:
        return RemappingDmaAdapter(capabilities), []
    top = max(end for _start, end in fx.memory.ram_ranges())
    if top - 1 <= mask:
        return HalDmaAdapter(fx.memory, capabilities), []
    release: Callable[[], None]
    if low_dma is not None:
        base = low_dma.allocate(map_registers)
        if base is None:
            return None
        release = partial(low_dma.free, base)
    else:
        size = map_registers * PAGE_SIZE   # one allocation: the map registers' pages are contiguous
        va = fx._pool.allocate(PoolType.NonPagedPool, size, BOUNCE_TAG, None)
        if not va:
            return None
        base = va - fx.kva_base
        release = partial(fx._pool.free, va)
    try:
        adapter = HalDmaAdapter(fx.memory, capabilities,
                                bounce_pages=[base + i * PAGE_SIZE for i in range(map_registers)])
    except DmaMappingError:   # the pages lie beyond what the device can reach
        release()
        return None
    return adapter, [release]


class DmaEnabler(FxObject):
    """WDFDMAENABLER (parent: the device, or an object under it)."""

    WDF_TYPE = FX_TYPE_DMA_ENABLER
    HANDLE_NAME = "WDFDMAENABLER"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_DMA_ENABLER})
    DISPOSE_OVERRIDE = True

    def __init__(self, fx: Any, site: CallSite | None, device: "Device", config: WDF_DMA_ENABLER_CONFIG) -> None:
        FxObject.__init__(self, fx, site)
        self.device = device
        self.profile = WDF_DMA_PROFILE(config.Profile)
        self.is_bus_master, wide, self.is_scatter_gather, self.is_duplex = _PROFILES[self.profile]
        self.maximum_length = int(config.MaximumLength) & 0xFFFFFFFF   # m_MaximumLength is a ULONG
        self.max_sg_elements = WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS
        self.address_width = 64 if wide else (32 if self.is_bus_master else 24)
        self.dma_version = DEVICE_DESCRIPTION_VERSION2
        self.require_single_transfer = False
        self.descriptions: dict[int, DmaDescription] = {}
        self.common_buffer_alignment = 0
        self.config = config
        self.DESCRIPTION = f"DMA enabler ({self.profile.name}) of {device.describe()}"

    @property
    def uses_dma_v3(self) -> bool:
        return self.dma_version >= DEVICE_DESCRIPTION_VERSION3

    @property
    def is_packet_profile(self) -> bool:
        return self.is_bus_master and not self.is_scatter_gather

    @property
    def supports_chained_mdls(self) -> bool:
        """FxDmaEnabler::SupportsChainedMdls: not for a packet profile without DMA v3."""
        return self.uses_dma_v3 or not self.is_packet_profile

    def description(self, direction: int) -> DmaDescription:
        """GetReadDmaDescription / GetWriteDmaDescription (one adapter unless duplex)."""
        if self.is_duplex:
            return self.descriptions[int(direction)]
        return self.descriptions[0]

    def adapters(self) -> list[DmaAdapter]:
        return [d.adapter for d in self.descriptions.values()]

    def configure(self, hardware: Any) -> int:
        """ConfigureBusMasterAdapters: an adapter per direction (duplex) or one, each with its
        map registers and maximum fragment length. 0 or an NTSTATUS."""
        from .ntstatus import NTSTATUS

        remapping = bool(getattr(hardware, "dma_remapping", False))
        description = DeviceDescription(self.is_bus_master, self.is_scatter_gather, self.address_width,
                                        self.maximum_length, self.dma_version, remapping)
        directions = (0, 1) if self.is_duplex else (0,)
        for direction in directions:
            made = (hardware.get_dma_adapter(self.fx, description) if hardware is not None
                    and hasattr(hardware, "get_dma_adapter") else platform_dma_adapter(self.fx, description))
            if made is None:
                return NTSTATUS.STATUS_UNSUCCESSFUL   # IoGetDmaAdapter returned NULL
            adapter, releases = made
            registers = adapter.number_of_map_registers
            fragment = min(self.maximum_length, (registers - 1) << PAGE_SHIFT)
            self.descriptions[direction] = DmaDescription(adapter, registers, fragment, releases)
        alignment = max(self.descriptions[0].adapter.capabilities.alignment - 1, 0)
        self.common_buffer_alignment = max(self.device.alignment_requirement, alignment)
        return NTSTATUS.STATUS_SUCCESS

    def release_adapters(self) -> None:
        """PutDmaAdapter for each adapter: the bounce pages go back where they came from."""
        for description in self.descriptions.values():
            for release in description.releases:
                release()
            description.releases = []
        self.descriptions = {}

    def dispose(self) -> None:
        """FxDmaEnabler::Dispose: release the adapters, leave the device's list."""
        self.release_adapters()
        if self in self.device.dma_enablers:
            self.device.dma_enablers.remove(self)
        FxObject.dispose(self)

    def free_storage(self) -> None:
        self.release_adapters()
        FxObject.free_storage(self)
