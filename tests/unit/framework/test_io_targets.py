"""I/O targets: a filter over the echo driver (synchronous and asynchronous sends), remote targets,
timeouts, and the internal-IOCTL / WdfMemoryCreatePreallocated case of "Using Memory Buffers"."""

import struct

import pytest

from framework_emu import (IRP_MJ_INTERNAL_DEVICE_CONTROL, KPROCESSOR_MODE, NTSTATUS, STATUS_IO_TIMEOUT,
                           WDF_DRIVER_CONFIG, WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE,
                           WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME, WDF_MEMORY_DESCRIPTOR_INIT_BUFFER,
                           WdfIoQueueDispatchParallel)
from samples.echo import GUID_DEVINTERFACE_ECHO, IOCTL_ECHO_REVERSE, EchoDriver
from samples.filter import IOCTL_FILTER_PROBE_ASYNC, IOCTL_FILTER_PROBE_SYNC, IOCTL_FILTER_STATS, EchoFilterDriver
from samples.guest import InProcessGuest
from samples.internal_ioctl import IOCTL_INTERNAL_SENSOR_READ, SENSOR_READING, SensorDriver, SensorFilterDriver

S = NTSTATUS


def filtered_echo(**echo_options):
    guest = InProcessGuest()
    echo = EchoDriver(**echo_options)
    fx_echo = guest.iom.load_driver(echo, service_name="WDFEcho")
    guest.iom.add_device(fx_echo, "wdfio0")
    filt = EchoFilterDriver()
    fx_filter = guest.iom.load_driver(filt, service_name="EchoFilter")
    guest.iom.add_device(fx_filter, "wdfio0")   # attaches above the echo device
    return guest, echo, filt, fx_echo, fx_filter


@pytest.mark.parametrize("direct", [False, True])
def test_filter_forwards_writes_with_a_completion_routine_and_reads_send_and_forget(direct):
    guest, echo, filt, fx_echo, fx_filter = filtered_echo(direct_io=direct)
    file = guest.open("wdfio0")
    assert echo.events[-1] == "FileCreate"  # the create went down the stack
    data = b"through the filter " * 300
    assert guest.write_file(file, data).result() == (S.STATUS_SUCCESS, len(data))
    assert filt.completions == [(S.STATUS_SUCCESS, len(data))]
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (S.STATUS_SUCCESS, len(data)) and guest.read(buffer) == data
    op, buffer = guest.ioctl(file, IOCTL_FILTER_STATS, b"", 8)
    assert op.result() == (S.STATUS_SUCCESS, 8) and struct.unpack("<Q", guest.read(buffer, 8)) == (len(data),)
    op, buffer = guest.ioctl(file, IOCTL_ECHO_REVERSE, b"abc", 3)   # not the filter's: passed down
    assert op.result() == (S.STATUS_SUCCESS, 3) and guest.read(buffer, 3) == b"cba"
    guest.iom.close(file)
    reports = guest.iom.shutdown()
    assert not any(reports), [str(r) for r in reports]


def test_synchronous_sends_take_descriptors_and_asynchronous_ones_memory_handles():
    guest, echo, filt, fx_echo, fx_filter = filtered_echo(direct_io=True)
    assert fx_echo.WdfGetDriver() != fx_filter.WdfGetDriver()  # each driver has its own handle range
    file = guest.open("wdfio0")
    op, buffer = guest.ioctl(file, IOCTL_FILTER_PROBE_SYNC, b"sync probe", 10)
    assert op.result() == (S.STATUS_SUCCESS, 10) and guest.read(buffer, 10) == b"sync probe"
    op, buffer = guest.ioctl(file, IOCTL_FILTER_PROBE_ASYNC, b"async probe!", 12)
    assert op.result() == (S.STATUS_SUCCESS, 12) and guest.read(buffer, 12) == b"async probe!"
    assert fx_filter.pool.allocations(b"Filt") == []  # the probe buffers went with their requests


def test_synchronous_send_times_out_when_the_lower_driver_holds_the_request():
    """WDF_REQUEST_SEND_OPTIONS timeout: the sent request is cancelled at the deadline and the send
    returns STATUS_IO_TIMEOUT (FxIoTarget::SubmitSync)."""
    guest, echo, filt, fx_echo, fx_filter = filtered_echo(delay_ms=500)  # longer than the probe's 100 ms
    file = guest.open("wdfio0")
    op, _ = guest.ioctl(file, IOCTL_FILTER_PROBE_SYNC, b"slow", 4)
    assert op.result() == (STATUS_IO_TIMEOUT, 0)
    assert "RequestCancel" in echo.events


class RemoteClient:
    """A driver of another stack that opens the echo device by its interface and talks to it."""

    fx = None

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        fx = self.fx
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoWrite = self.EvtIoWrite
        fx.WdfIoQueueCreate(self.device, config, None)
        return status

    def EvtIoWrite(self, Queue, Request, Length):
        fx = self.fx
        status, target = fx.WdfIoTargetCreate(self.device, None)
        assert fx.WdfIoTargetOpen(target, WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME("nosuch")) == \
            S.STATUS_OBJECT_NAME_NOT_FOUND
        status = fx.WdfIoTargetOpen(target, WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME(GUID_DEVINTERFACE_ECHO))
        _, inp, _ = fx.WdfRequestRetrieveInputBuffer(Request, 1)
        status, written = fx.WdfIoTargetSendWriteSynchronously(target, None,
                                                               WDF_MEMORY_DESCRIPTOR_INIT_BUFFER(inp, Length))
        fx.WdfObjectDelete(target)
        fx.WdfRequestCompleteWithInformation(Request, status, written)


def test_remote_target_opened_by_the_name_of_another_emulated_device():
    guest = InProcessGuest()
    echo = EchoDriver()
    fx_echo = guest.iom.load_driver(echo, service_name="WDFEcho")
    guest.iom.add_device(fx_echo, "wdfio0")
    fx_client = guest.iom.load_driver(RemoteClient(), service_name="Client")
    guest.iom.add_device(fx_client, "client0")
    file = guest.open("client0")
    assert guest.write_file(file, b"via remote").result() == (S.STATUS_SUCCESS, 10)
    echo_file = guest.open("wdfio0")
    op, buffer = guest.read_file(echo_file, 10)
    assert op.result() == (S.STATUS_SUCCESS, 10) and guest.read(buffer) == b"via remote"


def line_of(code):
    import samples.internal_ioctl as module
    with open(module.__file__) as source:
        return next(n for n, line in enumerate(source, 1) if code in line)


def sensor_stack(*, complete_early, lower_delay_ms=5):
    guest = InProcessGuest()
    sensor = SensorDriver(delay_ms=lower_delay_ms)
    fx_sensor = guest.iom.load_driver(sensor, service_name="Sensor", verifier_mode="record")
    guest.iom.add_device(fx_sensor, "sensor0")
    filt = SensorFilterDriver(complete_early=complete_early)
    fx_filter = guest.iom.load_driver(filt, service_name="SensorFilter", verifier_mode="record")
    guest.iom.add_device(fx_filter, "sensor0")
    file = guest.iom.open("sensor0", requestor_mode=KPROCESSOR_MODE.KernelMode)
    buffer = guest.kernel_buffer(SENSOR_READING.pack(7, 0))
    op = guest.iom.submit(file, IRP_MJ_INTERNAL_DEVICE_CONTROL, ioctl_code=IOCTL_INTERNAL_SENSOR_READ,
                          input_length=SENSOR_READING.size, system_buffer=buffer,
                          requestor_mode=KPROCESSOR_MODE.KernelMode)
    return guest, filt, fx_sensor, fx_filter, op, buffer


def test_preallocated_wrapper_of_an_internal_ioctl_structure_passed_down_correctly():
    """The filter completes the caller's request only from the completion routine: no finding, and
    the lower driver's answer is in the caller's structure."""
    guest, filt, fx_sensor, fx_filter, op, buffer = sensor_stack(complete_early=False)
    assert not op.done
    guest.iom.advance_time(5)
    assert op.result() == (S.STATUS_SUCCESS, 8)
    assert SENSOR_READING.unpack(guest.read(buffer)) == (7, 700) and filt.answers == [700]
    assert fx_filter.findings == [] and fx_sensor.findings == []


def test_touching_the_wrapped_structure_after_completing_its_request_names_both_call_sites():
    """BufAfterReqCompletedIntIoctlA: the filter completed the caller's request right after sending;
    its completion routine then reads the structure through the preallocated memory. The finding
    names the touch (its site), where the memory was created (WdfMemoryCreatePreallocated), and
    the request's presentation and completion. The lower driver, touching its own view of the same
    buffer after that completion, gets the same finding."""
    guest, filt, fx_sensor, fx_filter, op, buffer = sensor_stack(complete_early=True)
    assert op.result() == (S.STATUS_SUCCESS, 8)   # completed early, before the lower driver answered
    guest.iom.advance_time(5)
    upper = [f for f in fx_filter.findings if f.rule == "BufAfterReqCompletedIntIoctlA"]
    assert len(upper) == 1
    text = str(upper[0])
    assert "WdfMemoryCopyToBuffer through WDFMEMORY" in text and "preallocated memory" in text
    created = line_of("fx.WdfMemoryCreatePreallocated(")
    touched = line_of("fx.WdfMemoryCopyToBuffer(memory, 0, answer")
    assert f"internal_ioctl.py:{created})" in text                                # where it was wrapped
    assert upper[0].site[0].endswith("internal_ioctl.py") and upper[0].site[1] == touched  # where touched
    assert "completed at samples/internal_ioctl.py" in text
    lower = [f for f in fx_sensor.findings if f.rule == "BufAfterReqCompletedIntIoctlA"]
    assert lower, "the lower driver touched the buffer after the caller's request completed"


class IoctlClient(RemoteClient):
    """Sends IOCTL_ECHO_REVERSE to the echo stack: synchronously with descriptors, then asynchronously
    with memory handles (WdfIoTargetFormatRequestForIoctl); distinct input and output buffers go
    through one intermediate buffer (FxIoContext's double buffering) copied back at completion."""

    def EvtIoWrite(self, Queue, Request, Length):
        fx = self.fx
        self.results = []
        from framework_emu import (WDF_DEVICE_POWER_POLICY_IDLE_SETTINGS, WDF_MEMORY_DESCRIPTOR_INIT_HANDLE,
                                   WDF_OBJECT_ATTRIBUTES, PoolType)
        self.results.append(fx.WdfDeviceAssignS0IdleSettings(self.device, WDF_DEVICE_POWER_POLICY_IDLE_SETTINGS()))
        _, target = fx.WdfIoTargetCreate(self.device, None)
        fx.WdfIoTargetOpen(target, WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME("wdfio0"))
        _, in_mem = fx.WdfRequestRetrieveInputMemory(Request)
        _, out_mem, out_va = fx.WdfMemoryCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=Request), PoolType.NonPagedPoolNx,
                                                b"Ictl", Length)
        status, returned = fx.WdfIoTargetSendIoctlSynchronously(
            target, None, IOCTL_ECHO_REVERSE, WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(in_mem),
            WDF_MEMORY_DESCRIPTOR_INIT_HANDLE(out_mem))
        self.results.append((status, returned, fx.read(out_va, returned)))
        fx.RtlZeroMemory(out_va, Length)
        _, mine = fx.WdfRequestCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=Request), target)
        assert fx.WdfIoTargetFormatRequestForIoctl(target, mine, IOCTL_ECHO_REVERSE, in_mem, None, out_mem, None) == 0

        def done(R, T, Params, Context):
            self.results.append((Params.IoStatus.Status, Params.IoStatus.Information, fx.read(out_va, Length),
                                 Params.IoControlCode == IOCTL_ECHO_REVERSE))
            fx.WdfObjectDelete(R)   # releases the references formatting took on the request's memory
            fx.WdfRequestCompleteWithInformation(Request, 0, Length)
        fx.WdfRequestSetCompletionRoutine(mine, done, None)
        fx.WdfRequestSend(mine, target, None)


def test_ioctl_sends_with_distinct_input_and_output_buffers():
    guest = InProcessGuest()
    fx_echo = guest.iom.load_driver(EchoDriver(), service_name="WDFEcho")
    guest.iom.add_device(fx_echo, "wdfio0")
    client = IoctlClient()
    fx_client = guest.iom.load_driver(client, service_name="Client")
    guest.iom.add_device(fx_client, "client0")
    file = guest.open("client0")
    assert guest.write_file(file, b"stressed").result() == (0, 8)
    assert client.results == [0, (0, 8, b"desserts"), (0, 8, b"desserts", True)]
    assert fx_client.pool.allocations(b"FxIC") == []   # the intermediate buffers went back


class MdlForwarder(RemoteClient):
    """Direct I/O on top: passes its read's MDL (the guest caller's frames) to the echo stack in a
    WDF_MEMORY_DESCRIPTOR_INIT_MDL with WdfIoTargetSendReadSynchronously."""

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        from framework_emu import WdfDeviceIoDirect
        fx = self.fx
        fx.WdfDeviceInitSetIoType(DeviceInit, WdfDeviceIoDirect)
        status, self.device = fx.WdfDeviceCreate(DeviceInit, None)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchParallel)
        config.EvtIoRead = self.EvtIoRead
        fx.WdfIoQueueCreate(self.device, config, None)
        return status

    def EvtIoRead(self, Queue, Request, Length):
        from framework_emu import WDF_MEMORY_DESCRIPTOR_INIT_MDL
        fx = self.fx
        _, target = fx.WdfIoTargetCreate(self.device, None)
        fx.WdfIoTargetOpen(target, WDF_IO_TARGET_OPEN_PARAMS_INIT_OPEN_BY_NAME("wdfio0"))
        _, mdl = fx.WdfRequestRetrieveOutputWdmMdl(Request)
        status, read = fx.WdfIoTargetSendReadSynchronously(target, None, WDF_MEMORY_DESCRIPTOR_INIT_MDL(mdl, Length))
        fx.WdfObjectDelete(target)
        fx.WdfRequestCompleteWithInformation(Request, status, read)


def test_a_request_mdl_passed_in_a_descriptor_reaches_the_caller_frames():
    guest = InProcessGuest()
    fx_echo = guest.iom.load_driver(EchoDriver(), service_name="WDFEcho")
    guest.iom.add_device(fx_echo, "wdfio0")
    echo_file = guest.open("wdfio0")
    data = bytes(range(200)) * 30
    guest.write_file(echo_file, data).result()
    fx_fwd = guest.iom.load_driver(MdlForwarder(), service_name="Fwd")
    guest.iom.add_device(fx_fwd, "fwd0")
    file = guest.open("fwd0")
    op, buffer = guest.read_file(file, len(data))
    assert op.result() == (0, len(data)) and guest.read(buffer) == data
