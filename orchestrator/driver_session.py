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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from device_model.request_ring import RequestEndpoint
from framework_emu import Finding
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
                 **dma_options: Any) -> None:
        super().__init__(config, image, **dma_options)
        self.drivers = [driver] if driver is not None else list(drivers)
        if not self.drivers or (driver is not None and drivers):
            raise ValueError("give driver= or drivers= (function driver first, then filters)")
        self._runtime_options = dict(stack=stack, open_name=open_name, time_rate=time_rate,
                                     framework_options=framework_options)
        self.endpoint: RequestEndpoint | None = None
        self.runtime: GuestIoRuntime | None = None
        self.report: GuestIoReport | None = None

    def start(self) -> "DriverSession":
        super().start()
        try:
            self.endpoint = RequestEndpoint(self.device, no_driver)
            self.runtime = GuestIoRuntime(self.endpoint, self.ram, self.config.pool.window,
                                          self.drivers, **self._runtime_options).start()
        except BaseException:
            self.close()
            raise
        return self

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
