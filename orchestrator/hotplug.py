"""Attach the device to a VM: QEMU arguments at boot, or QMP hot-plug into a running VM.

Plugging a device in is VM management, so it lives with the VM: the device
model only serves its socket (``device.socket_path``) and knows nothing of
QEMU's monitor. The functions take the VM's own QMP session
(:class:`~orchestrator.qmp_session.QmpMonitor`, or anything with its
``command`` / ``events`` / ``wait_event``). On q35 a PCIe device can only be
hot-plugged into a ``pcie-root-port`` that exists from boot
(:func:`root_port_args`); on pc it goes onto the root bus.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from device_model.abi import NUM_VECTORS, PCI_DEVICE_ID, PCI_VENDOR_ID
from wdfhil.errors import DeviceProtocolError



class QmpMonitor(Protocol):
    """What hot-plug needs of a QMP session: commands and the events QEMU sent."""

    def command(self, name: str, **args: Any) -> Any: ...

    def events(self) -> list[dict[str, Any]]: ...

    def wait_event(self, name: str, timeout: float, *,
                   match: Callable[[dict[str, Any]], bool] | None = None,
                   start: int = 0) -> dict[str, Any] | None: ...


DEVICE_ID = "wdfhil0"
CHARDEV_ID = "wdfhil0-chr"
ROOT_PORT_ID = "wdfhil-rp0"
AUTO = "auto"


@dataclass(frozen=True)
class PciBar:
    index: int
    address: int
    size: int
    kind: str            # "memory" or "io"
    prefetch: bool = False
    mem_64: bool = False


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as ``query-pci`` reports it."""

    bus: int
    slot: int
    function: int
    vendor: int
    device: int
    qdev_id: str
    bars: dict[int, PciBar] = field(default_factory=dict)


def root_port_args(port_id: str = ROOT_PORT_ID, *, chassis: int = 1, slot: int = 1) -> list[str]:
    """QEMU arguments for the q35 root port that later takes a hot-plugged device."""
    return ["-device", f"pcie-root-port,id={port_id},chassis={chassis},slot={slot}"]


def ivshmem_device_args(socket_path: str | os.PathLike[str], *, chardev_id: str = CHARDEV_ID,
                        device_id: str = DEVICE_ID, bus: str | None = None) -> list[str]:
    """QEMU arguments that attach the device at boot (the server must be listening)."""
    device = f"ivshmem-doorbell,chardev={chardev_id},vectors={NUM_VECTORS},id={device_id}"
    if bus:
        device += f",bus={bus}"
    return ["-chardev", f"socket,path={os.fspath(socket_path)},id={chardev_id}", "-device", device]


def _qmp(qmp: QmpMonitor, name: str, **args: Any) -> Any:
    try:
        return qmp.command(name, **args)
    except Exception as exc:   # the session's own error type is not ours to know
        raise DeviceProtocolError(f"QMP {name} {args} failed: {exc}") from exc


def peripheral_ids(qmp: QmpMonitor) -> set[str]:
    """The ids of the devices added with an id (``-device ...,id=`` or device_add)."""
    return {entry["name"] for entry in _qmp(qmp, "qom-list", path="/machine/peripheral")
            if str(entry.get("type", "")).startswith("child<")}


def hotplug_device(qmp: QmpMonitor, socket_path: str | os.PathLike[str], *,
                   device_id: str = DEVICE_ID, chardev_id: str = CHARDEV_ID,
                   bus: str | None = AUTO, locate: bool = True) -> PciFunction | None:
    """``chardev-add`` a socket to the server, ``device_add`` the ivshmem-doorbell.

    ``bus`` AUTO uses the root port ``wdfhil-rp0`` when the VM has one (q35),
    else the root bus (:func:`hotplug_bus`). Returns the new function as
    ``query-pci`` shows it, or None while it cannot show it (a device behind a
    root port appears only once firmware or the guest numbered the port's bus)
    or when not asked to ``locate`` it (one QMP round trip less on a hot path).
    """
    if bus == AUTO:
        bus = hotplug_bus(qmp)
    _qmp(qmp, "chardev-add", id=chardev_id, backend={
        "type": "socket",
        "data": {"addr": {"type": "unix", "data": {"path": os.fspath(socket_path)}},
                 "server": False}})
    args: dict[str, Any] = {"driver": "ivshmem-doorbell", "id": device_id,
                            "chardev": chardev_id, "vectors": NUM_VECTORS}
    if bus:
        args["bus"] = bus
    try:
        _qmp(qmp, "device_add", **args)
    except BaseException:
        try:
            _qmp(qmp, "chardev-remove", id=chardev_id)
        except DeviceProtocolError:
            pass
        raise
    return find_pci_function(qmp, device_id) if locate else None


def hotplug_bus(qmp: QmpMonitor) -> str | None:
    """Where AUTO plugs a device: the root port ``wdfhil-rp0`` if the VM has one (q35),
    else None (the root bus, ACPI hot-plug on pc)."""
    return ROOT_PORT_ID if ROOT_PORT_ID in peripheral_ids(qmp) else None


def unplug_device(qmp: QmpMonitor, *, device_id: str = DEVICE_ID,
                  chardev_id: str | None = CHARDEV_ID, timeout: float = 30.0) -> None:
    """``device_del``, wait until QEMU really removed it, then ``chardev-remove``.

    Removal needs the guest's consent on a running pc (ACPI) or q35 (PCIe
    hot-plug) guest; an empty, powered-off q35 slot or a guest that never ran
    lets it go at once. Removing the chardev closes the server connection,
    which is how the device learns its peer left.
    """
    deadline = time.monotonic() + timeout
    if device_id in peripheral_ids(qmp):
        seen = len(qmp.events())
        _qmp(qmp, "device_del", id=device_id)
        deleted = qmp.wait_event("DEVICE_DELETED", timeout, start=seen,
                                 match=lambda event: event.get("data", {}).get("device") == device_id)
        if deleted is None:
            raise DeviceProtocolError(
                f"device_del {device_id}: QEMU still has the device after {timeout:g} s "
                "(the guest did not release it: a pc guest needs ACPI PCI hot-plug, "
                "a q35 guest pciehp)")
    if chardev_id is None:
        return
    # The device lets go of its chardev a moment after it left the QOM tree.
    while chardev_id in {c["label"] for c in _qmp(qmp, "query-chardev")}:
        try:
            _qmp(qmp, "chardev-remove", id=chardev_id)
        except DeviceProtocolError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def list_pci_functions(qmp: QmpMonitor) -> list[PciFunction]:
    """Every function on every bus (bridges and root ports included), from query-pci."""
    functions: list[PciFunction] = []

    def walk(devices: list[dict[str, Any]]) -> None:
        for dev in devices:
            ident = dev.get("id", {})
            bars = {}
            for region in dev.get("regions", []):
                if "bar" in region:
                    bars[region["bar"]] = PciBar(
                        region["bar"], region.get("address", 0), region.get("size", 0),
                        region.get("type", "memory"), bool(region.get("prefetch", False)),
                        bool(region.get("mem_type_64", False)))
            functions.append(PciFunction(dev.get("bus", 0), dev.get("slot", 0), dev.get("function", 0),
                                         ident.get("vendor", 0), ident.get("device", 0),
                                         dev.get("qdev_id", ""), bars))
            bridge = dev.get("pci_bridge")
            if bridge:
                walk(bridge.get("devices", []))

    for bus in _qmp(qmp, "query-pci"):
        walk(bus.get("devices", []))
    return functions


def find_pci_function(qmp: QmpMonitor, device_id: str | None = None) -> PciFunction | None:
    """The ivshmem function with qdev id ``device_id`` (or the first 1af4:1110)."""
    for function in list_pci_functions(qmp):
        if (function.vendor, function.device) != (PCI_VENDOR_ID, PCI_DEVICE_ID):
            continue
        if device_id is None or function.qdev_id == device_id:
            return function
    return None
