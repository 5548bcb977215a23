"""The default image boots under QEMU and serves what the orchestrator relies on.

A deliberately small QEMU runner (not the orchestrator's): the contract's
networking, the serial console on stdout, TCG. Checked: the ready marker,
SSH as root with the image's key against the PINNED host key (and a wrong
pin is refused), SFTP at /usr/lib/sftp-server, the agent, the module,
busybox tools, and /dev/mem on a memmap= reserved range.
"""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import socket
import subprocess
import threading
from typing import Iterator

import paramiko
import pytest

from guest_images import GuestImage
from guest_images.keys import generate_host_key

pytestmark = pytest.mark.e2e

RESERVED = 0x8000000          # 128 MiB into a 256 MiB guest, kept from the kernel by memmap=


class Guest:
    def __init__(self, image: GuestImage) -> None:
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            pytest.skip("qemu-system-x86_64 is not installed")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        cmdline = [*image.kernel_cmdline, f"memmap=1M${RESERVED:#x}"]
        self.command = [
            qemu, "-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", "-kernel", str(image.kernel),
            "-initrd", str(image.initramfs), "-append", " ".join(cmdline),
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"]
        self.image = image
        self.console: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read_console, daemon=True)
        self.reader.start()

    def _read_console(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self.console.append(line)
            if self.image.ready_marker in line or "WDFHIL-INIT-FAILED" in line:
                self.ready.set()
        self.ready.set()  # QEMU ended

    def wait_ready(self, timeout: float = 300) -> None:
        assert self.ready.wait(timeout), "no ready marker:\n" + "".join(self.console[-30:])
        text = "".join(self.console)
        assert self.image.ready_marker in text, "init failed:\n" + text[-3000:]

    def ssh(self, pinned: str | None = None) -> paramiko.SSHClient:
        algorithm, encoded = (pinned or self.image.host_key).split()[:2]
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{self.port}", algorithm,
                                   paramiko.PKey.from_type_string(algorithm,
                                                                  base64.b64decode(encoded)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=self.port, username=self.image.ssh_user,
                       key_filename=str(self.image.client_key), look_for_keys=False,
                       allow_agent=False, timeout=60, banner_timeout=60, auth_timeout=60)
        return client

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.fixture(scope="module")
def guest(image: GuestImage) -> Iterator[Guest]:
    running = Guest(image)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(guest: Guest) -> Iterator[paramiko.SSHClient]:
    with contextlib.closing(guest.ssh()) as connected:
        yield connected


def run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=120)
    status = stdout.channel.recv_exit_status()
    out, err = stdout.read().decode(), stderr.read().decode()
    assert status == 0, f"{command!r} exited {status}: {out}{err}"
    return out


def test_kernel_and_user(client, image) -> None:
    assert run(client, "uname -r").strip() == image.kernel_version
    assert run(client, "id -u").strip() == "0"
    assert "memmap=1M$0x8000000" in run(client, "cat /proc/cmdline")


def test_network_modules_loaded_and_wdfhil_module_not(client) -> None:
    modules = run(client, "cat /proc/modules")
    assert "virtio_net" in modules and "virtio_pci" in modules
    assert "wdfhil_pci" not in modules


def test_agent_and_module_run(client, image) -> None:
    assert "abi_version" in run(client, f"{image.agent_path} version")
    run(client, f"insmod {image.module_path}")
    assert "wdfhil_pci" in run(client, "cat /proc/modules")


def test_busybox_tools(client) -> None:
    out = run(client, "date +%Y >/dev/null && sync && echo abc | dd bs=1 2>/dev/null | cat")
    assert out == "abc\n"


def test_dev_mem_reads_and_writes_the_reserved_range(client) -> None:
    offset = RESERVED + 0x100
    run(client, f"printf WDFHIL | dd of=/dev/mem bs=1 seek={offset} conv=notrunc 2>/dev/null")
    out = run(client, f"dd if=/dev/mem bs=1 skip={offset} count=6 2>/dev/null")
    assert out == "WDFHIL"


def test_sftp(client) -> None:
    with contextlib.closing(client.open_sftp()) as sftp:
        sftp.putfo(io.BytesIO(b"payload"), "/tmp/sftp-test")
        assert sftp.open("/tmp/sftp-test").read() == b"payload"


def test_wrong_host_key_is_refused(guest) -> None:
    with pytest.raises(paramiko.BadHostKeyException):
        guest.ssh(pinned=generate_host_key().public_line).close()
