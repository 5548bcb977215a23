"""The QEMU command line for a guest config and image: a pure function.

Everything about how a guest is wired lives here, so it can be read and
unit-tested in one place:

- guest RAM is a ``memory-backend-file`` with ``share=on`` in the run
  folder, so the device model can map the very pages the guest uses;
- the serial console, QMP and (for images that have it) the command relay's
  second serial port (an ``isa-serial``: no PCI device, so no ACPI routing at
  boot) are sockets QEMU inherits (``fd=N``), one end of a socket pair each:
  nothing to race for or clean up in the file system;
- SSH is forwarded from a port the host picks (``hostfwd=...:0-:22``) and
  read back from ``info usernet`` (:func:`parse_hostfwd_port`), so two VMs
  never collide on a port; that forward is *all* the network the guest
  has: user networking runs with ``restrict=on``, so the guest (untrusted:
  it runs the code under test) reaches neither the host's loopback services
  (10.0.2.2 is the host's 127.0.0.1) nor anything beyond the host;
- on q35 one ``pcie-root-port`` (id :data:`HOTPLUG_ROOT_PORT`) is always
  added so a device can be hot-plugged later; an Intel IOMMU comes first
  among the devices and needs the split IRQ chip;
- ``-incoming defer`` starts a VM that waits for a saved state.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from device_model.abi import BAR2_SIZE
from orchestrator.guest_config import GuestConfig

if TYPE_CHECKING:
    from guest_images import GuestImage

DEFAULT_QEMU = "qemu-system-x86_64"
RAM_BACKEND_ID = "ram0"
CONSOLE_ID = "wdfhil-console"
QMP_ID = "wdfhil-qmp"
RELAY_ID = "wdfhil-relay"
NETDEV_ID = "n0"
HOTPLUG_ROOT_PORT = "wdfhil-rp0"
# Room the port's bridge window keeps for a hot-plugged device's 64-bit
# prefetchable BAR2: the guest cannot assign BAR2 (and the driver refuses the
# device) unless the firmware reserved it at boot.
HOTPLUG_PREF64_RESERVE = f"{2 * BAR2_SIZE >> 20}M"
GUEST_SSH_PORT = 22
TCG_CPU = "qemu64,+rdrand"


def kernel_command_line(config: GuestConfig, image: "GuestImage") -> str:
    """The image's base arguments, then the config's (pool window, IOMMU, extras)."""
    return " ".join([*image.kernel_cmdline, *config.kernel_arguments()])


def user_netdev(netdev_id: str) -> str:
    """The ``-netdev`` of the guest's one NIC: QEMU user networking that only
    carries the SSH forward (``restrict=on`` keeps explicit forwards working)."""
    return f"user,id={netdev_id},restrict=on,hostfwd=tcp:127.0.0.1:0-:{GUEST_SSH_PORT}"


def build_qemu_argv(config: GuestConfig, image: "GuestImage", *, accelerator: str,
                    ram_file: Path, console_fd: int, qmp_fd: int, name: str = "wdfhil",
                    extra_args: Sequence[str] = (), incoming: bool = False,
                    qemu_binary: str = DEFAULT_QEMU, relay_fd: int | None = None) -> list[str]:
    """The full argv of a QEMU that runs ``config`` with ``image``; ``relay_fd``: the
    socket of the guest's command relay port (its second serial port), needed when the
    image has a relay (``image.command_relay``) and ignored otherwise."""
    if accelerator not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be kvm or tcg, got {accelerator!r}")
    machine = [config.machine, f"memory-backend={RAM_BACKEND_ID}"]
    if config.iommu == "intel":
        machine.append("kernel-irqchip=split")
    argv = [
        qemu_binary,
        "-name", f"{name},debug-threads=on",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-accel", accelerator,
        "-machine", ",".join(machine),
    ]
    if accelerator == "kvm":
        argv += ["-cpu", "host"]
    else:
        # RDRAND (emulated by TCG) seeds the guest kernel's RNG as it boots, which
        # dropbear waits for: no virtio-rng device, whose PCI interrupt routing
        # alone cost ~0.2 s of ACPI under TCG (docs/orchestrator.md, boot time).
        argv += ["-cpu", TCG_CPU]
    argv += [
        "-m", str(config.memory // (1 << 20)) + "M",
        "-smp", str(config.cpus),
        "-object", f"memory-backend-file,id={RAM_BACKEND_ID},size={config.memory},"
                   f"mem-path={ram_file},share=on",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", kernel_command_line(config, image),
        "-chardev", f"socket,id={CONSOLE_ID},fd={console_fd}",
        "-serial", f"chardev:{CONSOLE_ID}",
        "-chardev", f"socket,id={QMP_ID},fd={qmp_fd}",
        "-mon", f"chardev={QMP_ID},mode=control",
    ]
    if image.command_relay:
        if relay_fd is None:
            raise ValueError(f"image {image.name} has a command relay: relay_fd is needed")
        argv += ["-chardev", f"socket,id={RELAY_ID},fd={relay_fd}",
                 "-device", f"isa-serial,chardev={RELAY_ID},index=1"]
    if config.iommu == "intel":
        argv += ["-device", "intel-iommu,intremap=on"]
    if config.machine == "q35":
        argv += ["-device", f"pcie-root-port,id={HOTPLUG_ROOT_PORT},chassis=1,"
                            f"pref64-reserve={HOTPLUG_PREF64_RESERVE}"]
    argv += [
        "-netdev", user_netdev(NETDEV_ID),
        "-device", f"virtio-net-pci,netdev={NETDEV_ID}",
    ]
    argv += list(extra_args)
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


_USERNET_HOSTFWD = re.compile(
    r"TCP\[HOST_FORWARD\]\s+\d+\s+(?P<host>[\d.]+)\s+(?P<port>\d+)\s+[\d.]+\s+(?P<guest>\d+)")


def parse_hostfwd_port(usernet_text: str, guest_port: int = GUEST_SSH_PORT) -> int:
    """The host port forwarded to ``guest_port``, from HMP ``info usernet``."""
    for match in _USERNET_HOSTFWD.finditer(usernet_text):
        if int(match.group("guest")) == guest_port and int(match.group("port")) != 0:
            return int(match.group("port"))
    raise ValueError(f"no host forwarding to guest port {guest_port} in 'info usernet':\n"
                     f"{usernet_text}")
