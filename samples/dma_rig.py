"""The DMA echo sample wired up on in-process memory: a guest with RAM above 4 GiB, the fake
bus master (samples/fake_busmaster.py) as the device, the DMA echo driver (samples/dma_echo.py)."""

from __future__ import annotations

from typing import Any

from framework_emu import PAGE_SHIFT, InProcessMemory, IoManager
from samples.dma_echo import DmaEchoDriver
from samples.fake_busmaster import FakeBusMaster
from samples.guest import InProcessGuest

MIB = 1 << 20
FOUR_GIB = 1 << 32


class HighGuest(InProcessGuest):
    """64 MiB of low RAM (the pools in its top 32 MiB) and 16 MiB above 4 GiB; with ``high`` the
    caller's and kernel buffers come from above 4 GiB (user pages still scattered and reversed)."""

    def __init__(self, high: bool = False) -> None:
        self.memory = InProcessMemory(ranges=[(0, 64 * MIB), (FOUR_GIB, FOUR_GIB + 16 * MIB)])
        self.iom = IoManager(self.memory, pool_window=(32 * MIB, 32 * MIB))
        self._next_frame = (FOUR_GIB if high else MIB) >> PAGE_SHIFT
        self._limit = ((FOUR_GIB + 16 * MIB) if high else 32 * MIB) >> PAGE_SHIFT


def dma_echo(*, high: bool = False, dma_address_bits: int = 64, dma_remapping: bool = False,
             map_registers: int = 16, complete_later: bool = False, **driver_options: Any) -> tuple[HighGuest, Any, DmaEchoDriver, FakeBusMaster]:
    """(guest, the driver's Framework, the driver, the device), the device started as stack "dma0"."""
    guest = HighGuest(high)
    device = FakeBusMaster(guest.memory, dma_address_bits=dma_address_bits, dma_remapping=dma_remapping,
                           map_registers=map_registers, complete_later=complete_later)
    driver = DmaEchoDriver(**driver_options)
    fx = guest.iom.load_driver(driver, service_name="WDFDmaEcho")
    guest.iom.add_device(fx, "dma0", hardware=device.hardware)
    return guest, fx, driver, device


def pattern(n: int, seed: int = 7) -> bytes:
    """``n`` bytes that are not all alike."""
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


class BareDriver:
    """A driver that only creates its device: the DMA unit tests call the DDIs themselves."""

    fx: Any = None

    def __init__(self, device_attributes: Any = None) -> None:
        self.device_attributes = device_attributes
        self.device = 0
        self.prepare_hardware: tuple[int, int] | None = None

    def EvtDriverDeviceAdd(self, Driver: int, DeviceInit: Any) -> int:
        from framework_emu import WDF_PNPPOWER_EVENT_CALLBACKS

        self.fx.WdfDeviceInitSetPnpPowerEventCallbacks(DeviceInit, WDF_PNPPOWER_EVENT_CALLBACKS(
            EvtDevicePrepareHardware=self.EvtDevicePrepareHardware))
        status, self.device = self.fx.WdfDeviceCreate(DeviceInit, self.device_attributes)
        return status

    def EvtDevicePrepareHardware(self, Device: int, ResourcesRaw: int, ResourcesTranslated: int) -> int:
        self.prepare_hardware = (ResourcesRaw, ResourcesTranslated)
        return 0


def bare_device(*, high: bool = False, dma_address_bits: int = 64, dma_remapping: bool = False,
                map_registers: int = 16, hardware: bool = True, verifier: bool = True,
                verifier_mode: str = "bugcheck", device_attributes: Any = None) -> tuple[HighGuest, Any, BareDriver, FakeBusMaster]:
    """(guest, Framework, driver, fake device) with one started device (``driver.device``)."""
    guest = HighGuest(high)
    device = FakeBusMaster(guest.memory, dma_address_bits=dma_address_bits, dma_remapping=dma_remapping,
                           map_registers=map_registers)
    driver = BareDriver(device_attributes)
    fx = guest.iom.load_driver(driver, service_name="WDFDmaBare", verifier=verifier, verifier_mode=verifier_mode)
    guest.iom.add_device(fx, "dma0", hardware=device.hardware if hardware else None)
    return guest, fx, driver, device
