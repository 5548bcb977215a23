"""The command relay on the guest's second serial port, in a real guest: commands
need no SSH login, large output comes through the relay's ring in guest RAM, SSH is
still there for files, and a restored guest answers at once, in the shell it kept,
with its clock set to now."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time

import pytest

from orchestrator.serial_shell import SerialShell
from orchestrator.ssh_session import SshSession

pytestmark = pytest.mark.e2e


def test_commands_go_over_the_relay_and_ssh_is_logged_into_only_for_files(vm, tmp_path):
    assert isinstance(vm.commands, SerialShell)
    result = vm.run("echo out; echo err >&2; cat /proc/tty/driver/serial | grep '^1:'; "
                    "exit 5")
    assert result.exit_code == 5
    assert result.stdout.startswith("out\n") and "uart:16550A" in result.stdout
    assert result.stderr == "err\n"
    assert vm._host.ssh is None            # no login so far

    local = tmp_path / "file"
    local.write_bytes(b"over sftp\n")
    vm.put(local, "/tmp/file")              # SSH, logged into now
    assert vm.run_checked("cat /tmp/file") == "over sftp\n"
    assert isinstance(vm.commands, SerialShell)   # commands stay on the relay


def test_large_output_comes_through_the_ring_whole(vm):
    vm.run_checked("head -c 2000000 /dev/urandom > /tmp/big")
    digest = vm.run_checked("sha256sum /tmp/big").split()[0]
    before = vm.commands.ring_bytes
    encoded = vm.run_checked("base64 /tmp/big", timeout=300)
    data = base64.b64decode(encoded)
    assert len(data) == 2000000 and hashlib.sha256(data).hexdigest() == digest
    assert vm.commands.ring_bytes - before >= len(encoded)


def test_a_restored_guest_answers_in_the_shell_it_kept_with_its_clock_set(vm_factory):
    original = vm_factory("pc-256m")
    original.run_checked("KEPT=from-before-the-save")
    original.run_checked(f"date -s @{int(time.time()) - 7200} >/dev/null")  # 2 h behind
    with original.save() as snapshot:
        restored = vm_factory("pc-256m", restore_from=snapshot)
        assert restored._host.ssh is None
        clock, kept = restored.run_checked("date +%s; echo $KEPT").split()
        assert kept == "from-before-the-save"
        assert abs(int(clock) - time.time()) < 600     # set to now, not 2 h behind
        assert restored.run("exit 3").exit_code == 3
        assert restored.run_checked("echo ${KEPT:-a new shell}") == "a new shell\n"


def test_without_the_relay_port_the_guest_boots_and_commands_go_over_ssh(vm_factory,
                                                                         guest_image):
    """An image whose manifest names no relay gets no second serial port: the relay
    cannot open it and ends, init still reports ready, and SSH carries the commands."""
    details = {key: value for key, value in guest_image.details.items()
               if key != "command_relay"}
    machine = vm_factory("pc-256m", image=dataclasses.replace(guest_image, details=details))
    assert isinstance(machine.commands, SshSession)
    assert machine.run_checked("echo over ssh") == "over ssh\n"
    assert "ttyS1" in machine.run_checked("cat /var/log/wdfhil-relay.log")
