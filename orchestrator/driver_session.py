"""A booted guest whose ``/dev/wdfio0`` is served by your driver: :class:`DriverSession`.

::

    from samples.echo import EchoDriver
    with DriverSession("pc-256m", image, driver=EchoDriver(direct_io=True)) as s:
        s.agent.run(Step.alloc("b", 4096), Step.fill("b", 1), Step.io_write("b"), ...)
        print(s.findings)          # the verifier's findings so far
    print(s.report)                # requests never completed, leaks, findings

A :class:`~orchestrator.dma_session.DmaSession` (device, VM, guest RAM, guest
module) plus the device's request endpoint and a
:class:`~orchestrator.guest_io_runtime.GuestIoRuntime` running the drivers
over the guest's RAM, with their pools in the config's pool window. Closing
ends the runtime first (its report in ``report``), then the session.

With ``busmaster=True`` (or a dict of :class:`~device_model.busmaster.BusMasterDevice`
options: ``address_bits``, ``segment_align``, ``fault_plan``, ``trace_path``, and
``remapping``/``map_registers`` for the platform) the function driver gets a bus-master
device as its hardware (:class:`~orchestrator.busmaster_runtime.BusMasterHardware`, its map
registers in the config's low DMA window): a
second, host-only device core attached to the same guest RAM, so a DMA driver such as
``samples.dma_busmaster`` moves the guest program's bytes with the device's own DMA. The
guest's PCI function stays the echo device, whose request ring carries ``/dev/wdfio0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from device_model.busmaster import BusMasterDevice
from device_model.request_ring import RequestEndpoint
from framework_emu import Finding
from framework_emu.low_dma import LowDmaRegion
from orchestrator.busmaster_runtime import BusMasterHardware, start_busmaster
from orchestrator.dma_session import DmaSession
from orchestrator.guest_config import GuestConfig
from orchestrator.guest_io_runtime import DEFAULT_STACK, GuestIoReport, GuestIoRuntime, no_driver

if TYPE_CHECKING:
    from guest_images import GuestImage


class DriverSession(DmaSession):
    """``driver`` (or ``drivers``: the function driver first, then filters) serving the guest's
    ``/dev/wdfio0``. ``time_rate``, ``open_name``, ``stack``, ``framework_options``: see
    :class:`GuestIoRuntime`; the other options are DmaSession's."""

    def __init__(self, config: GuestConfig | str, image: "GuestImage", *, driver: Any = None,
                 drivers: Sequence[Any] = (), stack: str = DEFAULT_STACK, open_name: str | None = None,
                 time_rate: float = 1.0, framework_options: dict[str, Any] | None = None,
                 busmaster: bool | dict[str, Any] = False, **dma_options: Any) -> None:
        super().__init__(config, image, **dma_options)
        self.drivers = [driver] if driver is not None else list(drivers)
        if not self.drivers or (driver is not None and drivers):
            raise ValueError("give driver= or drivers= (function driver first, then filters)")
        self._runtime_options = dict(stack=stack, open_name=open_name, time_rate=time_rate,
                                     framework_options=framework_options)
        self._busmaster_options = (dict(busmaster) if isinstance(busmaster, dict)
                                   else {} if busmaster else None)
        self.busmaster: BusMasterDevice | None = None
        self.busmaster_hardware: BusMasterHardware | None = None
        self.endpoint: RequestEndpoint | None = None
        self.runtime: GuestIoRuntime | None = None
        self.report: GuestIoReport | None = None

    def start(self) -> "DriverSession":
        super().start()
        try:
            self.endpoint = RequestEndpoint(self.device, no_driver)
            hardware = self._start_busmaster()
            self.runtime = GuestIoRuntime(self.endpoint, self.ram, self.config.pool.window,
                                          self.drivers, hardware=hardware, **self._runtime_options)
            if self.busmaster_hardware is not None:
                self.busmaster_hardware.connect(self.runtime.post)
            self.runtime.start()
        except BaseException:
            self.close()
            raise
        return self

    def _start_busmaster(self) -> Any:
        """The bus-master device on the guest's RAM (its release steps join the session's,
        after the runtime's close and before guest RAM goes); its DeviceHardware, or None."""
        if self._busmaster_options is None:
            return None
        low = self.config.low_dma_window
        self.busmaster_hardware = start_busmaster(self.ram, self._stack, low_dma=LowDmaRegion(low.base, low.size),
                                                  **self._busmaster_options)
        self.busmaster = self.busmaster_hardware.device
        return self.busmaster_hardware.hardware

    @property
    def findings(self) -> list[Finding]:
        """The verifier's findings (live while running, the report's after close)."""
        if self.report is not None:
            return self.report.findings
        return self.runtime.findings() if self.runtime is not None else []

    def close(self) -> None:
        try:
            if self.runtime is not None and self.report is None:
                self.report = self.runtime.close()
        finally:
            super().close()

    def __enter__(self) -> "DriverSession":
        return self.start()
