"""A guest VM with the wdfhil device in it, ready for DMA: :class:`DmaSession`.

Everything the demo and the end-to-end tests need, started in the only
order that works and stopped in the reverse one:

1. the :class:`~device_model.device.EchoDevice` (its ivshmem server must
   listen before QEMU starts);
2. the :class:`~orchestrator.vm.VM` with the device's QEMU arguments;
3. :class:`~wdfhil.guest_ram.GuestRam` mapped from the VM's RAM file
   (layout read from QEMU) and attached to the device;
4. ``wdfhil_pci.ko`` loaded in the guest, ``/dev/wdfhil0`` present.

Teardown is the reverse, except that the device thread is stopped right
after it lets go of guest RAM and before guest RAM is unmapped (a copy in
flight holds a buffer export of the mapping), then the VM goes.

More devices can be hot-plugged into the running VM (:meth:`DmaSession.hotplug`),
each with its own EchoDevice (e.g. a 32-bit DMA mask), and unplugged again.

A session can also start from a saved guest (``restore_from``): QEMU blocks
the migration of an ``ivshmem-doorbell`` device unless ``master=on``, which
needs the guest to be the server's peer 0 (the device server is peer 0), so
saved guests have no device and the session's device is hot-plugged once the
guest is up (``plug_device``); ``on_guest_up(vm)`` runs before that, on a guest
with its module loaded and no device (where :mod:`orchestrator.boot_cache`
saves the post-boot state).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from dataclasses import dataclass
import re
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from device_model.descriptors import FULL_DMA_MASK
from device_model.device import EchoDevice
from device_model.faults import FaultPlan
from orchestrator.hotplug import (AUTO, DEVICE_ID, PciFunction, find_pci_function,
                                  hotplug_bus, hotplug_device, ivshmem_device_args,
                                  unplug_device)
from orchestrator.agent_client import (AgentClient, CompletionRecord, GuestBuffer, Step,
                                       Verification, pattern_bytes)
from orchestrator.guest_config import GuestConfig, load_guest_config
from orchestrator.qemu_fds import (StaleVectorFds, file_identity, numbers_of_eventfds,
                                  own_eventfd_ids, wait_until_released)
from orchestrator.snapshot import Snapshot
from orchestrator.vm import VM
from wdfhil.guest_ram import GuestRam
from wdfhil.errors import DeviceProtocolError, GuestError

if TYPE_CHECKING:
    from guest_images import GuestImage

log = logging.getLogger(__name__)

GUEST_CLASS_DIR = "/sys/class/wdfhil"
DEVICE_WAIT_S = 60.0
XP_CHUNK = 4096
_XP_LINE = re.compile(r"^[0-9a-fA-F]+:((?:\s+0x[0-9a-fA-F]{2})+)\s*$")


def read_physical_xp(qmp: Any, gpa: int, length: int) -> bytes:
    """Guest-physical memory as QEMU itself shows it (HMP ``xp``), independent
    of the device's mapping of the RAM file: the host-side witness in tests."""
    out = bytearray()
    while len(out) < length:
        count = min(XP_CHUNK, length - len(out))
        text = qmp.hmp(f"xp /{count}xb {gpa + len(out):#x}")
        chunk = bytearray()
        for line in text.splitlines():
            match = _XP_LINE.match(line.strip())
            if match:
                chunk += bytes(int(b, 16) for b in match.group(1).split())
        if len(chunk) != count:
            raise GuestError(f"QMP xp of {count} bytes at {gpa + len(out):#x} gave "
                             f"{len(chunk)} bytes", stdout=text[-2000:])
        out += chunk
    return bytes(out[:length])


def _guest_devices(vm: VM) -> set[str]:
    """Names of the wdfhil character devices the guest has (wdfhil0, ...); shell
    builtins only (no ``ls`` fork: ~9 ms under TCG). The unplug's check that the node
    went; a plug learns its node from the driver's BAR2 marker instead."""
    result = vm.run(f"for d in {GUEST_CLASS_DIR}/*; do [ -e \"$d\" ] && echo \"${{d##*/}}\"; "
                    f"done; true")
    return set(result.stdout.split())


def _wait_for_guest_device_gone(vm: VM, path: str, timeout: float = DEVICE_WAIT_S) -> None:
    name = Path(path).name
    deadline = time.monotonic() + timeout
    while name in _guest_devices(vm):
        if time.monotonic() > deadline:
            raise GuestError(f"{path} still present in the guest {timeout:.0f} s after unplug")
        time.sleep(0.1)


class HotpluggedDevice:
    """A device added to a running session; :meth:`unplug` (or ``with``) removes it."""

    def __init__(self, session: "DmaSession", device: EchoDevice, device_id: str,
                 bus: str | None = AUTO) -> None:
        self.session = session
        self.device = device
        self.device_id = device_id
        self.bus = bus
        self.chardev_id = f"{device_id}-chr"
        self._function: PciFunction | None = None
        self.guest_path: str | None = None
        self._plugged = False
        self._closed = False
        # Recognised in QEMU's fd table at unplug, also if the device is closed by then.
        self._shm_identity: tuple[int, int] | None = None
        self._vector_ids: list[int] | None = None

    @property
    def agent(self) -> AgentClient:
        """An agent client that talks to this device (``--dev /dev/wdfhilN``)."""
        if self.guest_path is None:
            raise RuntimeError(f"{self.device_id} is not plugged in")
        return AgentClient(self.session.vm, device=self.guest_path)

    @property
    def function(self) -> PciFunction | None:
        """The PCI function as QEMU's ``query-pci`` shows it (asked once, when wanted:
        not on the plug's path)."""
        if self._function is None and self._plugged:
            self._function = find_pci_function(self.session.vm.monitor, self.device_id)
        return self._function

    def plug(self) -> "HotpluggedDevice":
        """Add the device and wait until the guest driver bound it: its probe writes
        ``driver_minor`` into BAR2 and rings, no command runs in the guest."""
        vm = self.session.vm
        try:
            self.device.start()
            self.device.attach_guest_ram(self.session.ram)
            bus = self.session.hotplug_bus() if self.bus == AUTO else self.bus
            hotplug_device(vm.monitor, self.device.socket_path, device_id=self.device_id,
                           chardev_id=self.chardev_id, bus=bus, locate=False)
            self._plugged = True
            server = self.device.server
            self._shm_identity = file_identity(server.shm_fd)
            self._vector_ids = own_eventfd_ids(server.client_eventfds(self.device.wait_for_peer()))
            stale = self.session.stale_vector_fds()
            if stale.numbers and self._vector_ids:   # handlers of an earlier device are left
                stale.check_plug(stale.vector_numbers(self._vector_ids, DEVICE_WAIT_S))
            self.guest_path = f"/dev/wdfhil{self._wait_for_driver()}"
        except BaseException:
            self.unplug()
            raise
        log.info("hot-plugged %s, guest %s", self.device_id, self.guest_path)
        return self

    def _wait_for_driver(self) -> int:
        try:
            return self.device.wait_for_driver(DEVICE_WAIT_S)
        except DeviceProtocolError as exc:
            dmesg = self.session.vm.run("dmesg | tail -20").stdout
            raise GuestError(f"{exc} (see dmesg below)", stdout=dmesg) from None

    def unplug(self) -> None:
        """device_del (the guest driver's remove() runs), then stop the device (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._plugged:
                self._plugged = False
                stale = self.session.stale_vector_fds()
                numbers = (list(numbers_of_eventfds(stale.pid, self._vector_ids).values())
                           if self._vector_ids else [])
                unplug_device(self.session.vm.monitor, device_id=self.device_id,
                              chardev_id=self.chardev_id)
                # Gone from QEMU only once it closed the BAR2 memfd (its last fd): a
                # device plugged before that gets shifted fd numbers (see qemu_fds).
                if self._shm_identity is not None:
                    wait_until_released(stale.pid, self._shm_identity, DEVICE_WAIT_S)
                stale.unplugged(numbers)
                if self.guest_path is not None:
                    _wait_for_guest_device_gone(self.session.vm, self.guest_path)
        finally:
            self.guest_path = None
            self.device.close()     # also lets go of guest RAM

    def __enter__(self) -> "HotpluggedDevice":
        return self.plug()

    def __exit__(self, *exc: object) -> None:
        self.unplug()


class DmaSession:
    """EchoDevice + VM + GuestRam + the guest driver, as one context manager.

    ``config``: a GuestConfig or the name of one (``pc-256m``, ``q35-3g-highmem``).
    ``device_at_boot``: False boots without the device (hot-plug it later).
    ``dma_mask``, ``segment_align``, ``fault_plan``, ``trace_path``: the
    boot device's EchoDevice settings. ``restore_from``: start from this saved
    guest instead of booting. ``plug_device``: the session's device is
    hot-plugged once the guest is up (after ``on_guest_up(vm)``) instead of
    being there at boot; implied by ``restore_from``.
    """

    def __init__(self, config: GuestConfig | str, image: "GuestImage", *,
                 device_at_boot: bool = True, dma_mask: int = FULL_DMA_MASK,
                 segment_align: int = 1, fault_plan: FaultPlan | None = None,
                 trace_path: str | Path | None = None, extra_qemu_args: tuple[str, ...] = (),
                 boot_timeout: float = 120.0, restore_from: Snapshot | None = None,
                 plug_device: bool = False,
                 on_guest_up: Callable[[VM], None] | None = None) -> None:
        self.config = load_guest_config(config) if isinstance(config, str) else config
        self.image = image
        self.restore_from = restore_from
        self.plug_device = plug_device or restore_from is not None
        self.on_guest_up = on_guest_up
        self.device_at_boot = device_at_boot and not self.plug_device
        self._device_settings = dict(dma_mask=dma_mask, segment_align=segment_align,
                                     fault_plan=fault_plan, trace_path=trace_path)
        self.extra_qemu_args = tuple(extra_qemu_args)
        self.boot_timeout = boot_timeout
        self.device: EchoDevice | None = None
        self.vm: VM | None = None
        self.ram: GuestRam | None = None
        self.agent: AgentClient | None = None
        self._stack = contextlib.ExitStack()
        self._hotplug_ids = 0
        self._stale_vector_fds: StaleVectorFds | None = None
        self.plug_seconds: float | None = None   # the session device's hot-plug (bench)
        self._hotplug_bus: tuple[str | None] | None = None

    def start(self) -> "DmaSession":
        stack = self._stack
        try:
            qemu_args: list[str] = []
            if self.device_at_boot:
                self.device = EchoDevice(**self._device_settings)
                stack.callback(self.device.close)
                self.device.start()
                qemu_args = ivshmem_device_args(self.device.socket_path)
            self.vm = VM(self.config, self.image,
                         extra_qemu_args=(*qemu_args, *self.extra_qemu_args),
                         boot_timeout=self.boot_timeout, restore_from=self.restore_from)
            stack.enter_context(self.vm)
            self.ram = self.vm.open_memory()
            stack.callback(self._close_ram)
            if self.device is not None:
                # Stopped (again: close is idempotent) before guest RAM is unmapped,
                # so no device thread can be half-way through a copy at that point.
                stack.callback(self.device.close)
                self.device.attach_guest_ram(self.ram)
                stack.callback(self.device.detach_guest_ram)
            self.load_module()
            self.agent = AgentClient(self.vm)
            if self.on_guest_up is not None:
                self.on_guest_up(self.vm)
            if self.plug_device:
                self._plug_session_device()
            elif self.device is not None:
                self.device.wait_for_peer()
                try:   # insmod probed it: bound by now, or never
                    self.device.wait_for_driver(5.0)
                except DeviceProtocolError:
                    dmesg = self.vm.run("dmesg | tail -20").stdout
                    raise GuestError("wdfhil_pci.ko loaded but /dev/wdfhil0 did not appear",
                                     stdout=dmesg) from None
        except BaseException:
            stack.close()
            raise
        return self

    def _plug_session_device(self) -> None:
        """Hot-plug the session's own device (the boot device's settings) and make
        it ``self.device``, with the agent talking to it."""
        self._hotplug_ids += 1
        plugged = HotpluggedDevice(self, EchoDevice(**self._device_settings),
                                   f"{DEVICE_ID}-s{self._hotplug_ids}")
        began = time.monotonic()
        plugged.plug()
        self.plug_seconds = time.monotonic() - began
        self.device = plugged.device
        # Like the boot device: stopped before guest RAM is unmapped; QEMU goes
        # with the VM, so no device_del (its guest-side wait) at close.
        self._stack.callback(self.device.close)
        self._stack.callback(self.device.detach_guest_ram)
        self.agent = AgentClient(self.vm, device=plugged.guest_path)

    def hotplug_bus(self) -> str | None:
        """Where AUTO hot-plugs go in this VM (asked of QEMU once)."""
        if self._hotplug_bus is None:
            self._hotplug_bus = (hotplug_bus(self.vm.monitor),)
        return self._hotplug_bus[0]

    def stale_vector_fds(self) -> StaleVectorFds:
        """This QEMU's fd numbers with a stale ivshmem vector handler (see qemu_fds)."""
        pid = self.vm.qemu_pid
        if self._stale_vector_fds is None or self._stale_vector_fds.pid != pid:
            self._stale_vector_fds = StaleVectorFds(pid if pid is not None else -1,
                                                    leaves_handlers=self.vm.accelerator != "kvm")
        return self._stale_vector_fds

    def _close_ram(self) -> None:
        # Views of guest RAM held by objects in reference cycles (framework
        # objects point at their parents and children) go only when the cycle
        # collector runs; unmapping before that fails.
        gc.collect()
        self.ram.close()

    def load_module(self) -> None:
        """insmod the guest driver (once); it binds every device present and later ones."""
        path = shlex.quote(self.image.module_path)
        self.vm.run(f"[ -d /sys/module/wdfhil_pci ] || insmod {path}").check()

    def hotplug(self, *, dma_mask: int = FULL_DMA_MASK, segment_align: int = 1,
                fault_plan: FaultPlan | None = None,
                trace_path: str | Path | None = None, bus: str | None = AUTO) -> HotpluggedDevice:
        """A new EchoDevice hot-plugged into the running VM (use ``with``).

        ``bus`` AUTO: on q35 behind the root port ``wdfhil-rp0`` (one device
        at a time there), on pc onto the root bus (ACPI hot-plug)."""
        self._hotplug_ids += 1
        device_id = f"{DEVICE_ID}-hp{self._hotplug_ids}"
        device = EchoDevice(dma_mask=dma_mask, segment_align=segment_align,
                            fault_plan=fault_plan, trace_path=trace_path)
        return HotpluggedDevice(self, device, device_id, bus)

    def read_physical(self, gpa: int, length: int) -> bytes:
        """Guest-physical bytes through QMP ``xp`` (QEMU's view, not the device's)."""
        return read_physical_xp(self.vm.monitor, gpa, length)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "DmaSession":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class EchoRoundTrip:
    """One WRITE-then-READ through the echo device and what each side saw."""

    source: GuestBuffer
    target: GuestBuffer
    write: CompletionRecord
    read: CompletionRecord
    write_indirect: bool
    read_indirect: bool
    guest_verify: Verification      # the agent's check of the target buffer
    host_target_bytes: bytes        # the target's bytes through QMP xp, segment by segment
    device_bytes: bytes             # the device's data memory after the WRITE
    expected: bytes                 # the pattern

    @property
    def ok(self) -> bool:
        return (self.write.status == 0 and self.read.status == 0 and self.guest_verify.match
                and self.host_target_bytes == self.expected and self.device_bytes == self.expected)


def echo_roundtrip(session: DmaSession, *, size: int, seed: int, source_offset: int = 0,
                   target_offset: int = 0, source: str | None = None, target: str | None = None,
                   where: str = "any", target_where: str | None = None, merge: bool = True,
                   device_offset: int = 0, agent: AgentClient | None = None,
                   device: EchoDevice | None = None) -> EchoRoundTrip:
    """The guest fills a buffer, WRITEs it to the device, READs it back into a
    second buffer and verifies it, all in one agent process; then the host
    reads the target through QMP ``xp`` at the GPAs the agent reported.

    ``source``/``target``: agent commands that create buffers named ``src``
    and ``dst`` (e.g. ``Step.phys(...)``) instead of ``alloc`` ones."""
    agent = agent or session.agent
    device = device or session.device
    source = source or Step.alloc("src", size, offset=source_offset, where=where, merge=merge)
    target = target or Step.alloc("dst", size, offset=target_offset,
                                  where=target_where or where, merge=merge)
    results = agent.run(source, target, Step.fill("src", seed), Step.memset("dst", 0),
                        Step.write("src", device_offset), Step.read("dst", device_offset),
                        Step.verify("dst", seed))
    src, dst = GuestBuffer.from_result(results[0]), GuestBuffer.from_result(results[1])
    host = b"".join(session.read_physical(seg.gpa, seg.length) for seg in dst.segments)
    return EchoRoundTrip(
        source=src, target=dst,
        write=CompletionRecord.from_result(results[4]),
        read=CompletionRecord.from_result(results[5]),
        write_indirect=results[4]["descriptor"]["indirect"],
        read_indirect=results[5]["descriptor"]["indirect"],
        guest_verify=Verification.from_result(results[6]),
        host_target_bytes=host,
        device_bytes=device.read_data(device_offset, size) if device is not None else b"",
        expected=pattern_bytes(seed, size))
