"""The driver under test of a scenario (``driver:``): found and checked when the file is
loaded, run for the scenario's steps on a booted guest, its report turned into findings.

Loading (:func:`check_driver`): ``module:Class`` is imported as Python imports it;
``FILE.py:Class`` is a file next to the scenario (a user's driver, or a small buggy one
kept with its scenarios), imported once per path. The options are bound to the class's
signature then, so a wrong option is a ``file:line: field 'driver.options'`` error and
not a TypeError in the middle of a run.

Running (:class:`ScenarioDriver`): the guest's device gets one request endpoint for its
whole life (:func:`request_endpoint`: a device takes one), and each scenario its own
:class:`~orchestrator.guest_io_runtime.GuestIoRuntime` (fresh driver instances, fresh
IoManager over the guest's pool window), so scenarios sharing a guest share no driver
state. With the busmaster personality the function driver's hardware is a fresh
bus-master device on the guest's RAM, closed with the scenario.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from orchestrator.scenario_schema import Checked
from wdfhil.errors import WdfhilError

if TYPE_CHECKING:
    from device_model.request_ring import RequestEndpoint
    from framework_emu import Finding
    from orchestrator.dma_session import DmaSession
    from orchestrator.guest_io_runtime import GuestIoReport, GuestIoRuntime
    from orchestrator.scenario import Scenario


# -- loading ------------------------------------------------------------------------------
def _import_file(path: Path) -> ModuleType:
    """A driver file next to a scenario, imported once per resolved path (its module name
    is derived from the path, so two folders' ``drivers.py`` do not collide)."""
    path = path.resolve()
    name = "wdfhil_scenario_" + path.stem.replace("-", "_") + "_" + hashlib.sha1(
        str(path).encode()).hexdigest()[:8]
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _module(ref: str, base: Path) -> ModuleType:
    if ref.endswith(".py"):
        path = base / ref
        if not path.is_file():
            raise ImportError(f"no such file: {path}")
        return _import_file(path)
    return importlib.import_module(ref)


def load_class(spec: Checked, base: Path) -> tuple[type, ModuleType]:
    """The class ``spec['class']`` names and its module; ConfigError at the field's line."""
    ref = spec["class"]
    module_ref, _, class_name = ref.rpartition(":")
    try:
        module = _module(module_ref, base)
    except Exception as exc:      # ImportError, or the module's own error while importing
        raise spec.error("class", f"cannot import {module_ref}: {type(exc).__name__}: {exc}",
                         ref) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise spec.error("class", f"{module_ref} has no class {class_name}", ref)
    if not any(callable(getattr(cls, entry, None)) for entry in ("DriverEntry", "EvtDriverDeviceAdd")):
        raise spec.error("class", f"{class_name} has neither DriverEntry nor EvtDriverDeviceAdd: "
                         f"not a driver class", ref)
    try:
        inspect.signature(cls).bind(**spec["options"])
    except TypeError as exc:
        raise spec.error("options", f"{class_name} does not take these options: {exc}",
                         dict(spec["options"])) from None
    return cls, module


def check_driver(driver: Checked, base: Path) -> list[ModuleType]:
    """Import every class of ``driver:`` and bind its options; the modules, function
    driver's first (where IOCTL names are looked up)."""
    return [load_class(spec, base)[1] for spec in (driver, *driver["filters"])]


def resolve_code(args: Checked, key: str, modules: list[ModuleType]) -> int:
    """An IOCTL given by name: ``NAME`` in the driver's modules, or ``module:NAME``."""
    name = args[key]
    if ":" in name:
        module_ref, _, attr = name.rpartition(":")
        try:
            places = [importlib.import_module(module_ref)]
        except ImportError as exc:
            raise args.error(key, f"cannot import {module_ref}: {exc}", name) from None
    else:
        places, attr = modules, name
    for module in places:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    where = ", ".join(m.__name__ for m in places)
    raise args.error(key, f"no integer {attr} in {where}", name)


# -- running ------------------------------------------------------------------------------
class DriverStartError(WdfhilError):
    """The driver under test did not start (its DriverEntry or EvtDriverDeviceAdd failed, or
    its device did not start): the scenario fails there; the platform is fine."""


def request_endpoint(session: "DmaSession") -> "RequestEndpoint":
    """The device's request endpoint (``/dev/wdfio0``'s ring), made on first use and kept
    on the session: a device takes one endpoint for its life."""
    endpoint = getattr(session, "endpoint", None)
    if endpoint is None:
        from device_model.request_ring import RequestEndpoint
        from orchestrator.guest_io_runtime import no_driver

        endpoint = RequestEndpoint(session.device, no_driver)
        session.endpoint = endpoint      # type: ignore[attr-defined]
    return endpoint


@dataclass
class BugCheckFinding:
    """A bug check that stopped the driver's emulated machine, as one more finding
    (``rule`` BugCheck) so expectations name it like any other."""

    bugcheck: Any
    rule: str = "BugCheck"
    severity: str = "error"

    @property
    def handle(self) -> None:
        return None

    @property
    def object_kind(self) -> str | None:
        finding = getattr(self.bugcheck, "finding", None)
        return finding.object_kind if finding is not None else None

    @property
    def site(self) -> Any:
        finding = getattr(self.bugcheck, "finding", None)
        return finding.site if finding is not None else None

    @property
    def code(self) -> int:
        return self.bugcheck.code

    @property
    def message(self) -> str:
        return str(self.bugcheck).splitlines()[0]


class ScenarioDriver:
    """The scenario's driver stack on ``session``'s ``/dev/wdfio0`` (use as a context
    manager, or :meth:`start` then :meth:`close`, which gives the runtime's report)."""

    def __init__(self, scenario: "Scenario", session: "DmaSession | None") -> None:
        self.scenario = scenario
        self.session = session
        self.runtime: "GuestIoRuntime | None" = None
        self.report: "GuestIoReport | None" = None
        self.busmaster: Any = None
        self._stack = contextlib.ExitStack()

    def instances(self) -> list[Any]:
        spec = self.scenario.driver
        base = self.scenario.path.parent
        return [load_class(s, base)[0](**s["options"]) for s in (spec, *spec["filters"])]

    def start(self) -> "ScenarioDriver":
        from orchestrator.guest_io_runtime import GuestIoRuntime

        session, scenario = self.session, self.scenario
        try:
            endpoint = request_endpoint(session)
            hardware = None
            if scenario.busmaster:
                hardware = self._start_busmaster()
            self.runtime = GuestIoRuntime(
                endpoint, session.ram, session.vm.config.pool.window, self.instances(),
                hardware=hardware,
                framework_options={"verifier_mode": scenario.driver["verifier"]})
            self._stack.callback(self._close_runtime)
            if self.busmaster is not None:
                self.busmaster.connect(self.runtime.post)
            try:
                self.runtime.start()
            except WdfhilError as exc:       # DriverEntry or EvtDriverDeviceAdd failed
                raise DriverStartError(str(exc)) from exc
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start_busmaster(self) -> Any:
        from framework_emu.low_dma import LowDmaRegion
        from orchestrator.busmaster_runtime import start_busmaster
        from orchestrator.guest_sessions import fault_plan

        device = self.scenario.device
        low = self.session.config.low_dma_window        # the platform's map registers
        self.busmaster = start_busmaster(
            self.session.ram, self._stack, address_bits=device["dma_bits"],
            segment_align=device["segment_align"], fault_plan=fault_plan(self.scenario),
            remapping=device["remapping"], low_dma=LowDmaRegion(low.base, low.size))
        return self.busmaster.hardware

    def _close_runtime(self) -> None:
        from device_model.abi import IoType

        if self.runtime is not None and self.report is None:
            self.report = self.runtime.close()
            self.runtime.endpoint.set_io_type(IoType.DIRECT)    # as a fresh endpoint has it

    def close(self) -> "GuestIoReport | None":
        """Unload the drivers (requests still held end ENODEV in the guest), close the
        bus-master device; the runtime's report."""
        self._stack.close()
        return self.report

    def findings(self) -> list[Any]:
        """The report's findings, and its bug check as a ``BugCheck`` finding."""
        if self.report is None:
            return []
        found: list[Any] = list(self.report.findings)
        if self.report.bugcheck is not None:
            found.append(BugCheckFinding(self.report.bugcheck))
        return found

    def injected_faults(self) -> list[Any]:
        return list(self.busmaster.device.fault_plan.injected) if self.busmaster else []

    def __enter__(self) -> "ScenarioDriver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

