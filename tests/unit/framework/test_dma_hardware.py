"""Resources, registers and interrupts as a driver sees them: WDFCMRESLISTs in
EvtDevicePrepareHardware, MmMapIoSpace(Ex) and READ_/WRITE_REGISTER_*, WDFINTERRUPT (the ISR at
DIRQL, the DPC at DISPATCH_LEVEL, the interrupt lock, AutomaticSerialization)."""

from __future__ import annotations

import pytest

from framework_emu import (DISPATCH_LEVEL, PASSIVE_LEVEL, WDF_OBJECT_ATTRIBUTES, BugCheck, NTSTATUS,
                           WDF_PNPPOWER_EVENT_CALLBACKS)
from framework_emu.attributes import WdfSynchronizationScopeDevice
from framework_emu.hw_resources import (CmResourceTypeInterrupt, CmResourceTypeMemory, DeviceHardware,
                                        InterruptResource, MemoryBar, RegisterHandler)
from framework_emu.interrupt import WDF_INTERRUPT_CONFIG, WDF_INTERRUPT_CONFIG_INIT
from samples.dma_rig import HighGuest, bare_device

S = NTSTATUS


class Registers(RegisterHandler):
    def __init__(self):
        self.log = []
        self.values = {}

    def read(self, bar, offset, width):
        self.log.append(("r", bar, offset, width))
        return self.values.get((bar, offset), 0x1122334455667788)

    def write(self, bar, offset, width, value):
        self.log.append(("w", bar, offset, width, value))
        self.values[(bar, offset)] = value


def test_prepare_hardware_gets_raw_and_translated_lists():
    guest, fx, driver, device = bare_device()
    raw, translated = driver.prepare_hardware
    assert fx.WdfCmResourceListGetCount(raw) == fx.WdfCmResourceListGetCount(translated) == 2
    memory = fx.WdfCmResourceListGetDescriptor(translated, 0)
    assert memory.Type == CmResourceTypeMemory and (memory.u.Memory.Start, memory.u.Memory.Length) == (
        0xFEB0_0000, 0x1000)
    irq = fx.WdfCmResourceListGetDescriptor(translated, 1)
    assert irq.Type == CmResourceTypeInterrupt and irq.u.Interrupt.Level == 9
    assert fx.WdfCmResourceListGetDescriptor(raw, 1).u.Interrupt.Level == 0
    assert fx.WdfCmResourceListGetDescriptor(translated, 2) is None


def test_a_device_without_hardware_gets_empty_lists():
    guest, fx, driver, device = bare_device(hardware=False)
    raw, translated = driver.prepare_hardware
    assert fx.WdfCmResourceListGetCount(raw) == 0 and fx.WdfCmResourceListGetCount(translated) == 0


def registers_rig():
    guest = HighGuest()
    regs = Registers()
    hardware = DeviceHardware(bars=[MemoryBar(0xFE00_0000, 0x100), MemoryBar(0xFE10_0000, 0x2000)],
                              interrupt=InterruptResource(), registers=regs)

    from samples.dma_rig import BareDriver

    driver = BareDriver()
    fx = guest.iom.load_driver(driver, service_name="Regs")
    guest.iom.add_device(fx, "r0", hardware=hardware)
    return fx, regs


def test_every_register_width_reaches_the_handler_with_bar_and_offset():
    fx, regs = registers_rig()
    bar1 = fx.MmGetSystemRoutineAddress("MmMapIoSpaceEx")(0xFE10_0000 + 0x1000, 0x1000, 0x204)
    assert fx.READ_REGISTER_UCHAR(bar1 + 1) == 0x88
    assert fx.READ_REGISTER_USHORT(bar1 + 2) == 0x7788
    assert fx.READ_REGISTER_ULONG(bar1 + 4) == 0x55667788
    assert fx.READ_REGISTER_ULONG64(bar1 + 8) == 0x1122334455667788
    fx.WRITE_REGISTER_UCHAR(bar1, 0x1FF)
    fx.WRITE_REGISTER_USHORT(bar1, 0xABCD)
    fx.WRITE_REGISTER_ULONG(bar1, 0xDEADBEEF)
    fx.WRITE_REGISTER_ULONG64(bar1, 1 << 40)
    assert regs.log == [("r", 1, 0x1001, 1), ("r", 1, 0x1002, 2), ("r", 1, 0x1004, 4), ("r", 1, 0x1008, 8),
                        ("w", 1, 0x1000, 1, 0xFF), ("w", 1, 0x1000, 2, 0xABCD), ("w", 1, 0x1000, 4, 0xDEADBEEF),
                        ("w", 1, 0x1000, 8, 1 << 40)]


def test_buffer_forms_repeat_the_same_register():
    fx, regs = registers_rig()
    bar0 = fx.MmMapIoSpace(0xFE00_0000, 0x100, 0)
    out = bytearray(8)
    fx.READ_REGISTER_BUFFER_USHORT(bar0 + 0x10, out, 4)
    assert out == bytes.fromhex("8877" * 4)
    fx.WRITE_REGISTER_BUFFER_ULONG(bar0 + 0x20, bytes.fromhex("01000000 02000000"), 2)
    assert regs.log[-2:] == [("w", 0, 0x20, 4, 1), ("w", 0, 0x20, 4, 2)]
    fx.WRITE_REGISTER_BUFFER_UCHAR(bar0, b"\x05\x06", 2)
    out = bytearray(8)
    fx.READ_REGISTER_BUFFER_ULONG64(bar0 + 8, out, 1)
    fx.READ_REGISTER_BUFFER_UCHAR(bar0, out, 1)
    fx.READ_REGISTER_BUFFER_ULONG(bar0, out, 1)
    fx.WRITE_REGISTER_BUFFER_USHORT(bar0, b"\x01\x00", 1)
    fx.WRITE_REGISTER_BUFFER_ULONG64(bar0, bytes(8), 1)


def test_register_access_after_unmap_and_double_unmap_stop_the_machine():
    fx, regs = registers_rig()
    bar0 = fx.MmMapIoSpace(0xFE00_0000, 0x100, 0)
    fx.MmUnmapIoSpace(bar0, 0x100)
    with pytest.raises(BugCheck, match="unmapped at") as stop:
        fx.READ_REGISTER_ULONG(bar0)
    assert stop.value.code == 0x50
    with pytest.raises(BugCheck):
        fx.MmUnmapIoSpace(bar0, 0x100)
    with pytest.raises(BugCheck, match="no MmMapIoSpace"):
        fx.WRITE_REGISTER_ULONG(0xFFFF_C000_7000_0000, 1)
    nothing = fx.MmMapIoSpace(0xD000_0000, 0x10)          # no device decodes it: all ones
    assert fx.READ_REGISTER_ULONG(nothing) == 0xFFFFFFFF


# -- interrupts ------------------------------------------------------------------------------------------------

class IrqDriver:
    fx = None

    def __init__(self, automatic=False, scope=None, create_in="add"):
        self.automatic = automatic
        self.scope = scope
        self.create_in = create_in
        self.log = []
        self.claim = True
        self.interrupt = None

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfDeviceInitSetPnpPowerEventCallbacks(DeviceInit, WDF_PNPPOWER_EVENT_CALLBACKS(
            EvtDevicePrepareHardware=self.prepare, EvtDeviceD0Entry=self.d0entry,
            EvtDeviceD0EntryPostInterruptsEnabled=self.post, EvtDeviceD0ExitPreInterruptsDisabled=self.pre,
            EvtDeviceD0Exit=self.d0exit))
        attributes = WDF_OBJECT_ATTRIBUTES(SynchronizationScope=self.scope) if self.scope else None
        status, self.device = fx.WdfDeviceCreate(DeviceInit, attributes)
        if self.create_in == "add":
            status, self.interrupt = fx.WdfInterruptCreate(self.device, self.config())
        return status

    def config(self, raw=None, translated=None):
        config = WDF_INTERRUPT_CONFIG_INIT(self.isr, self.dpc)
        config.EvtInterruptEnable = self.enable
        config.EvtInterruptDisable = self.disable
        config.AutomaticSerialization = self.automatic
        config.InterruptRaw, config.InterruptTranslated = raw, translated
        return config

    def prepare(self, Device, Raw, Translated):
        self.log.append(("prepare", self.fx.KeGetCurrentIrql()))
        if self.create_in == "prepare":
            raw = self.fx.WdfCmResourceListGetDescriptor(Raw, 1)
            translated = self.fx.WdfCmResourceListGetDescriptor(Translated, 1)
            assert self.fx.WdfInterruptCreate(self.device, self.config())[0] == S.STATUS_INVALID_DEVICE_STATE
            status, self.interrupt = self.fx.WdfInterruptCreate(self.device, self.config(raw, translated))
            return status
        return 0

    def d0entry(self, Device, Previous):
        self.log.append(("d0entry",))
        return 0

    def post(self, Device, Previous):
        self.log.append(("post",))
        return 0

    def pre(self, Device, Target):
        self.log.append(("pre",))
        return 0

    def d0exit(self, Device, Target):
        self.log.append(("d0exit",))
        return 0

    def enable(self, Interrupt, Device):
        self.log.append(("enable", self.fx.KeGetCurrentIrql()))
        return 0

    def disable(self, Interrupt, Device):
        self.log.append(("disable", self.fx.KeGetCurrentIrql()))
        return 0

    def isr(self, Interrupt, MessageID):
        self.log.append(("isr", self.fx.KeGetCurrentIrql()))
        if self.claim:
            self.log.append(("queued", self.fx.WdfInterruptQueueDpcForIsr(Interrupt)))
            self.log.append(("queued", self.fx.WdfInterruptQueueDpcForIsr(Interrupt)))
        return self.claim

    def dpc(self, Interrupt, Device):
        self.log.append(("dpc", self.fx.KeGetCurrentIrql()))


def irq_rig(**kw):
    guest = HighGuest()
    hardware = DeviceHardware(bars=[MemoryBar(0xFE00_0000, 0x100)], interrupt=InterruptResource(level=11))
    driver = IrqDriver(**kw)
    fx = guest.iom.load_driver(driver, service_name="Irq")
    guest.iom.add_device(fx, "i0", hardware=hardware)
    return guest, fx, driver, hardware


def test_interrupt_connects_between_d0entry_and_post_interrupts_enabled_and_disconnects_on_removal():
    guest, fx, driver, hardware = irq_rig()
    assert driver.log == [("prepare", PASSIVE_LEVEL), ("d0entry",), ("enable", 11), ("post",)]
    driver.log.clear()
    guest.iom.remove_device("i0")
    assert driver.log == [("pre",), ("disable", 11), ("d0exit",)]
    assert hardware.interrupt_line.trigger() is False      # nobody listens any more


def test_isr_at_dirql_then_one_dpc_at_dispatch():
    guest, fx, driver, hardware = irq_rig()
    driver.log.clear()
    assert hardware.interrupt_line.trigger()          # from outside any callback: the DPC runs too
    assert driver.log == [("isr", 11), ("queued", True), ("queued", False), ("dpc", DISPATCH_LEVEL)]
    assert fx.WdfInterruptGetDevice(driver.interrupt) == driver.device


def test_interrupt_created_in_prepare_hardware_needs_its_descriptors():
    guest, fx, driver, hardware = irq_rig(create_in="prepare")
    driver.log.clear()
    hardware.interrupt_line.trigger()
    assert driver.log[0] == ("isr", 11)


def test_interrupt_create_statuses():
    guest, fx, driver, hardware = irq_rig()
    assert fx.WdfInterruptCreate(driver.device, driver.config())[0] == S.STATUS_INVALID_DEVICE_STATE  # started
    config = WDF_INTERRUPT_CONFIG(EvtInterruptIsr=None)
    assert fx.WdfInterruptCreate(driver.device, config)[0] == S.STATUS_INVALID_PARAMETER
    config = WDF_INTERRUPT_CONFIG_INIT(driver.isr, None)
    config.Size = 0x10
    assert fx.WdfInterruptCreate(driver.device, config)[0] == S.STATUS_INFO_LENGTH_MISMATCH
    with pytest.raises(BugCheck):
        fx.WdfInterruptCreate(driver.device, None)


def test_interrupt_lock_holds_the_interrupt_pending_and_synchronize_runs_at_dirql():
    guest, fx, driver, hardware = irq_rig()
    driver.log.clear()
    fx.WdfInterruptAcquireLock(driver.interrupt)
    assert fx.KeGetCurrentIrql() == 11
    hardware.interrupt_line.trigger()
    assert driver.log == []                                   # masked while the lock is held
    fx.WdfInterruptReleaseLock(driver.interrupt)
    assert fx.KeGetCurrentIrql() == PASSIVE_LEVEL
    assert driver.log[0] == ("isr", 11)
    seen = []
    assert fx.WdfInterruptSynchronize(driver.interrupt, lambda i, c: seen.append((fx.KeGetCurrentIrql(), c)) or True,
                                      "ctx") is True
    assert seen == [(11, "ctx")]
    fx.WdfInterruptAcquireLock(driver.interrupt)
    with pytest.raises(BugCheck, match="KmdfIrql"):            # at DIRQL already: above its maximum
        fx.WdfInterruptAcquireLock(driver.interrupt)


def test_acquire_lock_above_dispatch_breaks_kmdf_irql():
    guest, fx, driver, hardware = irq_rig()
    with fx.irql(11):
        with pytest.raises(BugCheck) as stop:
            fx.WdfInterruptAcquireLock(driver.interrupt)
    assert stop.value.finding.rule == "KmdfIrql"


def test_automatic_serialization_runs_the_dpc_under_the_device_lock():
    guest, fx, driver, hardware = irq_rig(automatic=True, scope=WdfSynchronizationScopeDevice)
    device = fx._live[driver.device]
    holders = []
    dpc = driver.dpc
    driver.dpc = lambda i, d: holders.append(device.lock.holder) or dpc(i, d)
    fx._live[driver.interrupt].config.EvtInterruptDpc = driver.dpc
    hardware.interrupt_line.trigger()
    guest.iom.run()
    assert holders and holders[0].startswith("EvtInterruptDpc")


def test_without_automatic_serialization_the_dpc_takes_no_lock():
    guest, fx, driver, hardware = irq_rig(scope=WdfSynchronizationScopeDevice)
    assert fx._live[driver.interrupt].dpc_lock() is None
