"""WdfDmaTransactionInitializeUsingRequest against each kind of request (fxdmatransactionapi.cpp):
the direction must match the request, the MDL comes from GetMdl or GetDeviceControlOutputMdl,
a zero length is STATUS_INVALID_DEVICE_REQUEST."""

from __future__ import annotations

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_NEITHER,
                           METHOD_OUT_DIRECT, NTSTATUS, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WdfDeviceIoDirect,
                           WdfIoQueueDispatchParallel)
from framework_emu.dma_enabler import (WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaDirectionReadFromDevice,
                                       WdfDmaDirectionWriteToDevice, WdfDmaProfileScatterGather64)
from samples.dma_rig import HighGuest

S = NTSTATUS
R, W = WdfDmaDirectionReadFromDevice, WdfDmaDirectionWriteToDevice


class HoldDriver:
    fx = None

    def __init__(self):
        self.held = []

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfDeviceInitSetIoType(DeviceInit, WdfDeviceIoDirect)
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoRead = config.EvtIoWrite = lambda q, r, n: self.held.append(r)
        config.EvtIoDeviceControl = lambda q, r, o, i, c: self.held.append(r)
        fx.WdfIoQueueCreate(self.device, config, None)
        status, self.enabler = fx.WdfDmaEnablerCreate(self.device, WDF_DMA_ENABLER_CONFIG_INIT(
            WdfDmaProfileScatterGather64, 1 << 16))
        return status


def rig():
    guest = HighGuest()
    driver = HoldDriver()
    fx = guest.iom.load_driver(driver, service_name="Hold")
    guest.iom.add_device(fx, "h0")
    status, t = fx.WdfDmaTransactionCreate(driver.enabler)
    return guest, fx, driver, t, guest.open("h0")


def program(*args):
    return True


def test_read_and_write_directions_must_match():
    guest, fx, driver, t, file = rig()
    guest.write_file(file, b"abc" * 100)
    (write,) = driver.held
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, write, program, R) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, write, program, 9) == S.STATUS_INVALID_PARAMETER
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, write, program, W) == 0
    assert fx.WdfDmaTransactionGetRequest(t) == write
    assert fx.WdfDmaTransactionGetDevice(t) == driver.device
    fx.WdfDmaTransactionRelease(t)
    assert fx.WdfDmaTransactionGetRequest(t) is None
    guest.read_file(file, 10)
    read = driver.held[1]
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, read, program, W) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, read, program, R) == 0
    fx.WdfDmaTransactionRelease(t)
    for request in driver.held:
        fx.WdfRequestComplete(request, 0)


def test_ioctl_methods():
    guest, fx, driver, t, file = rig()
    codes = {m: CTL_CODE(0x22, 0x900 + m, m, FILE_ANY_ACCESS) for m in
             (METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT, METHOD_NEITHER)}
    guest.ioctl(file, codes[METHOD_BUFFERED], b"in" * 10, 0)
    guest.ioctl(file, codes[METHOD_IN_DIRECT], b"in", 64)
    guest.ioctl(file, codes[METHOD_OUT_DIRECT], b"", 64)
    guest.ioctl(file, codes[METHOD_NEITHER], b"", 0)
    buffered, in_direct, out_direct, neither = driver.held
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, buffered, program, R) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, buffered, program, W) == 0        # InputBufferLength
    fx.WdfDmaTransactionRelease(t)
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, in_direct, program, R) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, in_direct, program, W) == 0       # the output MDL
    fx.WdfDmaTransactionRelease(t)
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, out_direct, program, W) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, out_direct, program, R) == 0
    fx.WdfDmaTransactionRelease(t)
    assert fx.WdfDmaTransactionInitializeUsingRequest(t, neither, program, R) == S.STATUS_INVALID_DEVICE_REQUEST
    assert fx.findings[-1].rule == "DmaInvalidIoctlMethod"
    for request in driver.held:
        fx.WdfRequestComplete(request, 0)


def test_initialize_using_offset():
    guest, fx, driver, t, file = rig()
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(2 << 20), 8192)
    fx.MmBuildMdlForNonPagedPool(mdl)
    seen = []
    assert fx.WdfDmaTransactionInitializeUsingOffset(
        t, lambda *a: seen.append([(e.Address, e.Length) for e in a[4].Elements]), W, mdl, 100, 50) == 0
    fx.WdfDmaTransactionExecute(t)
    assert seen == [[((2 << 20) + 100, 50)]]
