"""The real bus-master device as the framework's hardware: :class:`BusMasterHardware`.

The framework reaches a device only through a
:class:`~framework_emu.hw_resources.DeviceHardware` (BARs, a register handler,
an interrupt line, the DMA platform). This module builds one over a
:class:`~device_model.busmaster.BusMasterDevice`:

- BAR0 (:data:`BAR0`) is the device's register block: every READ_REGISTER_* /
  WRITE_REGISTER_* a driver does through its MmMapIoSpace'd address becomes
  ``register_read`` / ``register_write`` (thread-safe, under the device lock,
  in the runtime thread).
- The device's ``on_interrupt`` (device thread, no lock held) does not run the
  ISR there: the IoManager is single-threaded, so it posts
  ``interrupt_line.trigger`` to the runtime thread
  (:meth:`GuestIoRuntime.post <orchestrator.guest_io_runtime.GuestIoRuntime.post>`),
  where the ISR reads and acknowledges the registers and the DPC runs.
- The DMA capabilities are the device's own: ``dma_address_bits`` comes from
  its ``caps`` register (a 32-bit device: the framework's HalDmaAdapter hands
  out bounce buffers for pages above 4 GiB, from the platform's low DMA region,
  ``low_dma``: the guest config's reserved window below 4 GiB). With
  ``remapping`` the adapters hand out IOVAs and the device's ``translate`` hook
  is :meth:`DeviceHardware.translate` (the adapters' IOVA tables; a missing
  translation is the device's TRANSLATION_FAULT refusal).

On a VM the guest's PCI function stays the echo device (its BAR2 request ring
carries ``/dev/wdfio0``); the bus-master device is a second, host-only device
core attached to the same guest RAM, so its DMA reaches the guest program's
pages (see :class:`~orchestrator.driver_session.DriverSession`'s ``busmaster``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

from device_model.busmaster import BusMasterDevice, TranslationFault
from device_model.busmaster_abi import BM_CAPS_ADDRESS_BITS, register_offset
from framework_emu.dma_adapter import DmaTranslationFault
from framework_emu.dma_enabler import DEFAULT_BOUNCE_MAP_REGISTERS
from framework_emu.hw_resources import DeviceHardware, InterruptResource, MemoryBar, RegisterHandler
from framework_emu.low_dma import LowDmaRegion

BAR0 = MemoryBar(0xFEB0_0000, 0x1000)   # where the platform put the register block (one page)


class BusMasterRegisters(RegisterHandler):
    """BAR0 of the bus-master device: its register block (other BARs decode nothing)."""

    def __init__(self, device: BusMasterDevice) -> None:
        self.device = device

    def read(self, bar: int, offset: int, width: int) -> int:
        self._check(bar, offset, width)
        return self.device.register_read(offset, width)

    def write(self, bar: int, offset: int, width: int, value: int) -> None:
        self._check(bar, offset, width)
        self.device.register_write(offset, width, value)

    @staticmethod
    def _check(bar: int, offset: int, width: int) -> None:
        if bar != 0:
            raise ValueError(f"the bus-master device has registers in BAR0 only (access to BAR{bar} "
                             f"at {offset:#x}, {width} bytes)")


class BusMasterHardware:
    """The framework's view of a started :class:`BusMasterDevice` (see the module docstring).

    ``hardware`` goes to ``IoManager.add_device`` (or ``GuestIoRuntime(hardware=...)``);
    :meth:`connect` sends the device's interrupts to a runtime's thread; :meth:`disconnect`
    (before the runtime or the device close) takes the hooks off the device again. ``low_dma``:
    the platform's low memory for map registers (``LowDmaRegion`` over the guest config's
    ``low_dma_window``); None: they come from the driver's pool."""

    def __init__(self, device: BusMasterDevice, *, remapping: bool = False,
                 map_registers: int = DEFAULT_BOUNCE_MAP_REGISTERS, low_dma: LowDmaRegion | None = None,
                 bar0: MemoryBar = BAR0) -> None:
        self.device = device
        caps = device.register_read(register_offset("caps"), 4)
        self.address_bits = caps & BM_CAPS_ADDRESS_BITS
        self.dma_mask = device.register_read(register_offset("dma_mask_lo"), 8)
        self.hardware = DeviceHardware(bars=[bar0], interrupt=InterruptResource(),
                                       registers=BusMasterRegisters(device),
                                       dma_address_bits=self.address_bits, dma_remapping=remapping,
                                       map_registers=map_registers, low_dma=low_dma)
        self.remapping = remapping
        self.interrupts = 0          # device interrupts posted to the runtime
        if remapping:
            device.set_translation(self.translate)

    def translate(self, bus_address: int, length: int) -> Sequence[tuple[int, int]]:
        """The device's ``translate`` hook (device thread): the framework's IOVA tables."""
        try:
            return self.hardware.translate(bus_address, length)
        except DmaTranslationFault as fault:
            raise TranslationFault(bus_address, length, str(fault)) from None

    def connect(self, post: Callable[..., Any]) -> None:
        """Interrupts from now on: ``post(interrupt_line.trigger)`` (``post``: a runtime's
        :meth:`~orchestrator.guest_io_runtime.GuestIoRuntime.post`, never blocking)."""
        line = self.hardware.interrupt_line

        def on_interrupt(pending: int) -> None:     # device thread, without the device lock
            self.interrupts += 1
            post(line.trigger)
        self.device.set_interrupt_handler(on_interrupt)

    def disconnect(self) -> None:
        self.device.set_interrupt_handler(None)
        if self.remapping:
            self.device.set_translation(None)


def start_busmaster(ram: Any, stack: contextlib.ExitStack, *, remapping: bool = False,
                    map_registers: int = DEFAULT_BOUNCE_MAP_REGISTERS, low_dma: LowDmaRegion | None = None,
                    **device_options: Any) -> BusMasterHardware:
    """A started bus-master device on guest RAM ``ram`` and its framework view; its
    release steps go on ``stack`` (hooks off, detach from RAM, close), so whoever owns the
    stack closes it after the runtime using it. ``device_options``: BusMasterDevice's
    (``address_bits``, ``segment_align``, ``fault_plan``, ``trace_path``); ``low_dma``: the
    platform's low memory for map registers (the guest config's ``low_dma_window``)."""
    device = BusMasterDevice(**device_options)
    stack.callback(device.close)
    device.start()
    device.attach_guest_ram(ram)
    stack.callback(device.detach_guest_ram)
    hardware = BusMasterHardware(device, remapping=remapping, map_registers=map_registers, low_dma=low_dma)
    stack.callback(hardware.disconnect)
    return hardware
