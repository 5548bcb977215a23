"""Hardware as a driver sees it: resource lists (fxresourceapi.cpp), MmMapIoSpace and the
register accessors (wdm.h), interrupts (fxinterruptapi.cpp)."""

from __future__ import annotations

import struct
from typing import Any, Callable

from ..bugcheck import PAGE_FAULT_IN_NONPAGED_AREA, BugCheck
from ..callsite import driver_site, format_site
from ..core import OUT
from ..device import FX_TYPE_DEVICE
from ..errors import ArgumentError
from ..hw_resources import FX_TYPE_CM_RES_LIST, CM_PARTIAL_RESOURCE_DESCRIPTOR, CmResourceList, IoMapping
from ..interrupt import FX_TYPE_INTERRUPT, SIZEOF_WDF_INTERRUPT_CONFIG, WDF_INTERRUPT_CONFIG
from ..interrupt import Interrupt as FxInterrupt
from ..irql import HIGH_LEVEL
from ..ntstatus import NTSTATUS
from .validation import validate_object_attributes

MmNonCached = 0
PAGE_READWRITE = 0x04
PAGE_NOCACHE = 0x200
_WIDTHS = {"UCHAR": 1, "USHORT": 2, "ULONG": 4, "ULONG64": 8}
_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


class HardwareApi:
    """WdfCmResourceList*, MmMapIoSpace(Ex), MmUnmapIoSpace, MmGetSystemRoutineAddress,
    READ_/WRITE_REGISTER_* (and the _BUFFER_ forms), WdfInterrupt*."""

    #: kernel routines MmGetSystemRoutineAddress does not find (e.g. {"MmMapIoSpaceEx"} for a
    #: system older than Windows 10, where drivers fall back to MmMapIoSpace)
    missing_system_routines: frozenset[str] = frozenset()

    # -- resource lists -------------------------------------------------------------------------------

    def _resources(self, handle: int) -> CmResourceList:
        return self._object(handle, FX_TYPE_CM_RES_LIST)

    def WdfCmResourceListGetCount(self, List: int) -> int:
        return len(self._resources(List).descriptors)

    def WdfCmResourceListGetDescriptor(self, List: int, Index: int) -> CM_PARTIAL_RESOURCE_DESCRIPTOR | None:
        """The Index'th descriptor, or NULL (None) past the end."""
        descriptors = self._resources(List).descriptors
        return descriptors[Index] if 0 <= Index < len(descriptors) else None

    # -- I/O space -------------------------------------------------------------------------------------

    def MmGetSystemRoutineAddress(self, SystemRoutineName: str) -> Callable[..., Any] | None:
        """A kernel routine by name (the emulated ones), or None when the system lacks it."""
        name = str(SystemRoutineName)
        if name in self.missing_system_routines or not name.startswith(("Mm", "Ke", "Io", "Ex", "Rtl")):
            return None
        return getattr(self, name, None)

    def MmMapIoSpace(self, PhysicalAddress: int, NumberOfBytes: int, CacheType: int = MmNonCached) -> int | None:
        """A system virtual address for device memory; READ_/WRITE_REGISTER_* through it reach the
        device's register handler. NumberOfBytes 0: NULL."""
        return self._map_io_space(PhysicalAddress, NumberOfBytes, "MmMapIoSpace")

    def MmMapIoSpaceEx(self, PhysicalAddress: int, NumberOfBytes: int,
                       Protect: int = PAGE_READWRITE | PAGE_NOCACHE) -> int | None:
        return self._map_io_space(PhysicalAddress, NumberOfBytes, "MmMapIoSpaceEx")

    def _map_io_space(self, physical: int, length: int, call: str) -> int | None:
        self._check_dispatch(call)
        if length <= 0:
            return None
        mapping = self.io_manager.io_space.map(int(physical), int(length), driver_site())
        if mapping.hardware is None:
            self._log(f"{call}(0x{physical:x}, 0x{length:x}): no device decodes this range (reads are all ones)")
        return mapping.va

    def MmUnmapIoSpace(self, BaseAddress: int, NumberOfBytes: int) -> None:
        mapping = self.io_manager.io_space.find(BaseAddress, max(int(NumberOfBytes), 1))
        if mapping is None or mapping.va != BaseAddress or mapping.unmapped_at is not None:
            raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (BaseAddress, 0, 0, 0),
                           f"MmUnmapIoSpace(0x{BaseAddress:x}) of an address MmMapIoSpace did not return"
                           f" (or unmapped twice) at {format_site(driver_site())}")
        mapping.unmapped_at = driver_site() or ("<driver>", 0)

    def _register(self, address: int, width: int, write: bool) -> IoMapping:
        if not isinstance(address, int):
            raise ArgumentError("a register is a virtual address from MmMapIoSpace", field="Register",
                                value=type(address).__name__)
        mapping = self.io_manager.io_space.find(address, width)
        if mapping is None or mapping.unmapped_at is not None:
            why = (f"its mapping was unmapped at {format_site(mapping.unmapped_at)}" if mapping is not None
                   else "no MmMapIoSpace mapping covers it")
            raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (address, int(write), 0, 0),
                           f"register {'write' if write else 'read'} at 0x{address:x}: {why}"
                           f" (at {format_site(driver_site())})")
        return mapping

    def _read_register(self, address: int, width: int) -> int:
        mapping = self._register(address, width, False)
        hardware = mapping.hardware
        if hardware is None or hardware.registers is None:
            return ALL_ONES[width]
        value = hardware.registers.read(mapping.bar, mapping.offset + address - mapping.va, width)
        return int(value) & ALL_ONES[width]

    def _write_register(self, address: int, width: int, value: int) -> None:
        mapping = self._register(address, width, True)
        hardware = mapping.hardware
        if hardware is not None and hardware.registers is not None:
            hardware.registers.write(mapping.bar, mapping.offset + address - mapping.va, width,
                                     int(value) & ALL_ONES[width])

    def READ_REGISTER_UCHAR(self, Register: int) -> int:
        return self._read_register(Register, 1)

    def READ_REGISTER_USHORT(self, Register: int) -> int:
        return self._read_register(Register, 2)

    def READ_REGISTER_ULONG(self, Register: int) -> int:
        return self._read_register(Register, 4)

    def READ_REGISTER_ULONG64(self, Register: int) -> int:
        return self._read_register(Register, 8)

    def WRITE_REGISTER_UCHAR(self, Register: int, Value: int) -> None:
        self._write_register(Register, 1, Value)

    def WRITE_REGISTER_USHORT(self, Register: int, Value: int) -> None:
        self._write_register(Register, 2, Value)

    def WRITE_REGISTER_ULONG(self, Register: int, Value: int) -> None:
        self._write_register(Register, 4, Value)

    def WRITE_REGISTER_ULONG64(self, Register: int, Value: int) -> None:
        self._write_register(Register, 8, Value)

    def _read_buffer(self, register: int, buffer: Any, count: int, width: int) -> None:
        """READ_REGISTER_BUFFER_*: ``count`` reads of the same register into the buffer."""
        fmt = _FORMATS[width]
        data = b"".join(struct.pack(fmt, self._read_register(register, width)) for _ in range(int(count)))
        self._sink(buffer, data, "Buffer")

    def _write_buffer(self, register: int, buffer: Any, count: int, width: int) -> None:
        data = bytes(self._source(buffer, int(count) * width, "Buffer"))
        for (value,) in struct.iter_unpack(_FORMATS[width], data):
            self._write_register(register, width, value)

    def READ_REGISTER_BUFFER_UCHAR(self, Register: int, Buffer: Any, Count: int) -> None:
        self._read_buffer(Register, Buffer, Count, 1)

    def READ_REGISTER_BUFFER_USHORT(self, Register: int, Buffer: Any, Count: int) -> None:
        self._read_buffer(Register, Buffer, Count, 2)

    def READ_REGISTER_BUFFER_ULONG(self, Register: int, Buffer: Any, Count: int) -> None:
        self._read_buffer(Register, Buffer, Count, 4)

    def READ_REGISTER_BUFFER_ULONG64(self, Register: int, Buffer: Any, Count: int) -> None:
        self._read_buffer(Register, Buffer, Count, 8)

    def WRITE_REGISTER_BUFFER_UCHAR(self, Register: int, Buffer: Any, Count: int) -> None:
        self._write_buffer(Register, Buffer, Count, 1)

    def WRITE_REGISTER_BUFFER_USHORT(self, Register: int, Buffer: Any, Count: int) -> None:
        self._write_buffer(Register, Buffer, Count, 2)

    def WRITE_REGISTER_BUFFER_ULONG(self, Register: int, Buffer: Any, Count: int) -> None:
        self._write_buffer(Register, Buffer, Count, 4)

    def WRITE_REGISTER_BUFFER_ULONG64(self, Register: int, Buffer: Any, Count: int) -> None:
        self._write_buffer(Register, Buffer, Count, 8)

    def MmGetPhysicalAddress(self, BaseAddress: int) -> int:
        """The physical address behind a kernel virtual address (the direct map or a system-PTE
        mapping): what a driver that bypasses the DMA API gives its device."""
        if self._system_ptes.holds(BaseAddress):
            return self._system_ptes.segments(BaseAddress, 1)[0][0]
        return self._gpa(BaseAddress, 1, False)

    # -- interrupts ----------------------------------------------------------------------------------------

    def WdfInterruptCreate(self, Device: int, Configuration: WDF_INTERRUPT_CONFIG, Attributes: Any = None, *,
                           Interrupt: Any = OUT) -> tuple[int, int | None]:
        """-> (status, interrupt), as fxinterruptapi.cpp: NULL Configuration/Interrupt 0x10D/0x4;
        wrong Size STATUS_INFO_LENGTH_MISMATCH; no EvtInterruptIsr STATUS_INVALID_PARAMETER;
        attributes; a ParentObject STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED [I]; outside
        EvtDriverDeviceAdd and EvtDevicePrepareHardware STATUS_INVALID_DEVICE_STATE; the raw and
        translated descriptors: none in EvtDriverDeviceAdd (STATUS_INVALID_PARAMETER), both in
        PrepareHardware (STATUS_INVALID_DEVICE_STATE); a DPC and a work item
        STATUS_INVALID_PARAMETER. The interrupt connects when the device enters D0."""
        device = self._object(Device, FX_TYPE_DEVICE)
        if Configuration is None:
            raise self._null("Configuration")
        if Interrupt is None:
            raise self._null("Interrupt")
        self._check_passive("WdfInterruptCreate")
        if Configuration.Size != SIZEOF_WDF_INTERRUPT_CONFIG:
            return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH, None
        if Configuration.EvtInterruptIsr is None:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        status = validate_object_attributes(Attributes)
        if status:
            return status, None
        if Attributes is not None and Attributes.ParentObject:
            return NTSTATUS.STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED, None
        in_add = not device.started and not getattr(device, "preparing_hardware", False)
        if device.started and not getattr(device, "preparing_hardware", False):
            return NTSTATUS.STATUS_INVALID_DEVICE_STATE, None
        if in_add and (Configuration.InterruptRaw is not None or Configuration.InterruptTranslated is not None):
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        if not in_add and (Configuration.InterruptRaw is None or Configuration.InterruptTranslated is None):
            return NTSTATUS.STATUS_INVALID_DEVICE_STATE, None
        if Configuration.EvtInterruptDpc is not None and Configuration.EvtInterruptWorkItem is not None:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        if Configuration.PassiveHandling:
            return NTSTATUS.STATUS_NOT_SUPPORTED, None
        site = driver_site()
        interrupt = FxInterrupt(self, site, device, Configuration)
        status = self._commit_new(interrupt, Attributes, device, site)
        if status:
            return status, None
        interrupt.assign(Configuration.InterruptTranslated)
        device.interrupts.append(interrupt)
        return NTSTATUS.STATUS_SUCCESS, interrupt.handle

    def _interrupt(self, handle: int) -> FxInterrupt:
        return self._object(handle, FX_TYPE_INTERRUPT)

    def WdfInterruptQueueDpcForIsr(self, Interrupt: int) -> bool:
        """Queue the DPC (from the ISR; any IRQL up to HIGH_LEVEL); FALSE if already queued."""
        interrupt = self._interrupt(Interrupt)
        if self._verifier_on and self._irql.current > HIGH_LEVEL:
            self._irql_violation("WdfInterruptQueueDpcForIsr", HIGH_LEVEL, driver_site(), fatal=True)
        return interrupt.queue_dpc()

    def WdfInterruptAcquireLock(self, Interrupt: int) -> None:
        """Raise to the interrupt's DIRQL holding its lock (from DISPATCH_LEVEL or below)."""
        interrupt = self._interrupt(Interrupt)
        self._check_dispatch("WdfInterruptAcquireLock")
        interrupt.acquire_lock("WdfInterruptAcquireLock")

    def WdfInterruptReleaseLock(self, Interrupt: int) -> None:
        interrupt = self._interrupt(Interrupt)
        interrupt.release_lock("WdfInterruptReleaseLock")

    def WdfInterruptSynchronize(self, Interrupt: int, Callback: Callable[[int, Any], bool], Context: Any = None) -> bool:
        """Run Callback(Interrupt, Context) at DIRQL under the interrupt lock; its result."""
        interrupt = self._interrupt(Interrupt)
        self._check_dispatch("WdfInterruptSynchronize")
        if Callback is None:
            raise self._null("Callback")
        interrupt.acquire_lock("WdfInterruptSynchronize")
        try:
            return bool(Callback(interrupt.handle, Context))
        finally:
            interrupt.release_lock("WdfInterruptSynchronize")

    def WdfInterruptGetDevice(self, Interrupt: int) -> int:
        return self._interrupt(Interrupt).device.handle

