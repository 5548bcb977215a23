"""The UMDF 1 facade's I/O path: IWDFIoRequest memory, CreatePreallocatedWdfMemory over a request's
buffer, IWDFIoTarget formatting with IWDFMemory, completion callbacks. Also FxPkgIo::Dispatch: a
filter's default queue with no handler for a request type forwards it to the lower driver."""

from framework_emu import (HRESULT, NTSTATUS, WDF_DRIVER_CONFIG, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE,
                           WdfIoQueueDispatchParallel)
from framework_emu.umdf1_io import IWDFDevice, IWDFIoRequest
from samples.echo import EchoDriver
from samples.guest import InProcessGuest


class Umdf1StyleFilter:
    """Writes: wrap the request's input buffer with CreatePreallocatedWdfMemory, send a request of
    its own down with FormatRequestForWrite, complete from OnCompletion."""

    fx = None

    def __init__(self):
        self.hresults = []

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        fx.WdfFdoInitSetFilter(DeviceInit)
        status, device = fx.WdfDeviceCreate(DeviceInit, None)
        self.device = IWDFDevice(fx, device)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoWrite = self.OnWrite
        fx.WdfIoQueueCreate(device, config, None)
        return status

    def OnWrite(self, Queue, Request, Length):
        fx = self.fx
        request = IWDFIoRequest(fx, Request)
        size, _offset, _key = request.GetWriteParameters()
        address, _ = request.GetInputMemory().GetDataBuffer()
        hr, wrapped = fx.umdf1_driver().CreatePreallocatedWdfMemory(address, size, None, request)
        self.hresults.append(hr)
        target = self.device.GetDefaultIoTarget()
        hr, mine = self.device.CreateRequest(None, request)
        self.hresults.append(target.FormatRequestForWrite(mine, None, wrapped))
        self.original = request
        mine.SetCompletionCallback(self, None)
        self.hresults.append(mine.Send(target))

    def OnCompletion(self, pWdfRequest, pIoTarget, pParams, pContext):
        self.hresults.append(pParams.GetCompletionStatus())
        self.original.CompleteWithInformation(HRESULT.S_OK, pParams.GetInformation())


def test_umdf1_request_memory_preallocated_wrapper_and_target_formatting():
    guest = InProcessGuest()
    fx_echo = guest.iom.load_driver(EchoDriver(), service_name="WDFEcho")
    guest.iom.add_device(fx_echo, "wdfio0")
    filt = Umdf1StyleFilter()
    fx_filter = guest.iom.load_driver(filt, service_name="Umdf1Filter")
    guest.iom.add_device(fx_filter, "wdfio0")
    file = guest.open("wdfio0")
    assert guest.write_file(file, b"umdf one").result() == (NTSTATUS.STATUS_SUCCESS, 8)
    assert filt.hresults == [HRESULT.S_OK] * 4
    op, buffer = guest.read_file(file, 8)  # the filter's default queue has no EvtIoRead: forwarded down
    assert op.result() == (0, 8) and guest.read(buffer) == b"umdf one"
    assert fx_filter.findings == []
