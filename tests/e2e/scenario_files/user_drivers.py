"""A user's own drivers, next to their scenario files (``driver: {class: user_drivers.py:NAME}``)."""

from framework_emu import IRP_MJ_READ, NTSTATUS
from samples.echo import EchoDriver


class ShortReadDriver(EchoDriver):
    """The echo sample, but every read answers one byte short: the guest sees it."""

    def _finish(self, Request, status, information):
        read = self.fx.WdfRequestGetParameters(Request).Type == IRP_MJ_READ
        super()._finish(Request, status, information - 1 if read and information else information)


class NoDeviceDriver(EchoDriver):
    """EvtDriverDeviceAdd fails: the driver never serves /dev/wdfio0."""

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
