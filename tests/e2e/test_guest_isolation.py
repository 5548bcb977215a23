"""The guest reaches only what it must, and what a run leaves on the host is private.

- From inside the guest, the host's loopback (10.0.2.2 in QEMU user
  networking is the host's 127.0.0.1) is unreachable: the VM's NIC runs
  with ``restrict=on``. The proof that the check can fail: the same guest
  reaches the same loopback server through a second NIC without
  ``restrict`` (10.0.3.2 there). Only a server this test runs on the host's
  loopback is ever aimed at.
- Per-run files (RAM file, logs, lock, saved state) are 0600.
- A pool window the guest kernel runs in is refused at start.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import threading

import pytest

from orchestrator.guest_config import PoolWindow, load_guest_config
from orchestrator.vm import VM
from wdfhil.errors import ConfigError

pytestmark = pytest.mark.e2e

PROBE_MAC = "52:54:00:77:03:0f"
# A second NIC on its own user network, restrict=off: the control that shows
# the guest *could* reach the host's loopback if its NIC let it.
PROBE_NIC = ["-netdev", "user,id=probe,restrict=off,net=10.0.3.0/24",
             "-device", f"virtio-net-pci,netdev=probe,mac={PROBE_MAC}"]


class LoopbackServer:
    """An HTTP-ish server on 127.0.0.1:<free port> that records every request line."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.secret = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    first = ""
                self.requests.append(first)  # a connection without a request counts too
                body = self.secret.encode()
                try:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(10)


@pytest.fixture
def loopback_server():
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def two_nic_vm(guest_image):
    """The default guest, plus the unrestricted probe NIC configured as 10.0.3.15."""
    with VM(load_guest_config("pc-256m"), guest_image, extra_qemu_args=PROBE_NIC,
            boot_timeout=300) as machine:
        machine.run_checked(
            "for d in /sys/class/net/*; do "
            f"[ \"$(cat $d/address)\" = {PROBE_MAC} ] && probe=${{d##*/}}; done; "
            "ip addr add 10.0.3.15/24 dev $probe && ip link set $probe up")
        yield machine


def fetch(machine: VM, host: str, port: int, path: str):
    """An HTTP GET with busybox nc (busybox-static's wget crashes in glibc's resolver)."""
    return machine.run(f"printf 'GET /{path} HTTP/1.0\\r\\n\\r\\n' | "
                       f"timeout 10 nc {host} {port}", timeout=60)


def test_the_guest_cannot_reach_the_hosts_loopback(two_nic_vm, loopback_server):
    blocked = fetch(two_nic_vm, "10.0.2.2", loopback_server.port, "via-restricted-nic")
    # the control: the same request through the NIC without restrict=on arrives
    allowed = fetch(two_nic_vm, "10.0.3.2", loopback_server.port, "via-probe-nic")
    assert allowed.exit_code == 0 and allowed.stdout.endswith(loopback_server.secret), allowed
    # refused or timed out (timeout's 124/143), not crashed
    assert blocked.exit_code not in (0, 139) and loopback_server.secret not in blocked.stdout
    # the server saw the probe's request and nothing else
    assert loopback_server.requests == ["GET /via-probe-nic HTTP/1.0"]


def test_ssh_through_the_forward_still_works_and_the_nic_is_restricted(two_nic_vm):
    assert two_nic_vm.run_checked("echo up") == "up\n"
    netdevs = [arg for arg in two_nic_vm.command_line if arg.startswith("user,id=n0,")]
    assert netdevs and "restrict=on" in netdevs[0].split(",")


def test_per_run_files_are_private(two_nic_vm):
    run_dir = two_nic_vm.run_dir
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in run_dir.iterdir()}
    assert {"ram", "qemu.log", "console.log"} <= set(files)
    assert all(mode == 0o600 for mode in files.values()), files
    with two_nic_vm.save() as snapshot:
        assert snapshot.path.stat().st_size > 0
        assert stat.S_IMODE(snapshot.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(snapshot.path.parent.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600
                   for p in snapshot.path.parent.iterdir())


def test_a_pool_window_the_kernel_runs_in_is_refused_at_start(guest_image):
    """pool.base 16M with nokaslr: the kernel's code sits at 0x1000000-0x1e01ef1."""
    config = load_guest_config("pc-256m").with_changes(
        pool=PoolWindow(16 << 20, 64 << 20), kernel_args=("nokaslr",))
    with pytest.raises(ConfigError) as info:
        with VM(config, guest_image, boot_timeout=300):
            pytest.fail("a guest whose kernel runs in the pool window must not be handed out")
    assert info.value.field == "pool.base" and "Kernel code" in str(info.value)
    assert str(info.value).startswith(f"{config.source}:")
    assert os.path.isfile(config.source)
