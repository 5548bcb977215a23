"""One booted default guest (pc-256m), checked from every side: SSH commands,
SFTP, the reserved pool window in the guest's own /proc/iomem, the shared
RAM file that *is* guest memory, QMP, the console, the run folder."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import secrets
import stat

import pytest

from orchestrator.ram_layout import parse_mtree
from orchestrator.cleanup import folder_parent
from orchestrator.guest_config import load_guest_config
from orchestrator.vm import VM
from wdfhil.errors import GuestError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared_vm(guest_image):
    """Booted once for the read-mostly checks of this module."""
    with VM(load_guest_config("pc-256m"), guest_image) as machine:
        yield machine


def test_command_over_ssh_gives_exit_code_and_both_streams(shared_vm, guest_image):
    result = shared_vm.run("uname -r; echo to-stderr >&2; exit 3")
    assert result.exit_code == 3
    assert result.stdout == guest_image.kernel_version + "\n"
    assert result.stderr == "to-stderr\n"
    assert shared_vm.run_checked("echo $((40 + 2))") == "42\n"
    with pytest.raises(GuestError) as info:
        shared_vm.run_checked("ls /no/such/file")
    assert info.value.exit_code != 0 and "no/such/file" in info.value.stderr


def test_file_round_trip_over_sftp(shared_vm, tmp_path):
    payload = secrets.token_bytes(300_000)
    source, back = tmp_path / "payload.bin", tmp_path / "back.bin"
    source.write_bytes(payload)
    shared_vm.put(source, "/tmp/payload.bin")
    guest_sum = shared_vm.run_checked("sha256sum /tmp/payload.bin").split()[0]
    assert guest_sum == hashlib.sha256(payload).hexdigest()
    shared_vm.get("/tmp/payload.bin", back)
    assert back.read_bytes() == payload
    with pytest.raises(GuestError):
        shared_vm.get("/no/such/file", tmp_path / "nothing")


def iomem_entries(text: str) -> list[tuple[int, int, str]]:
    """Top-level (unindented) /proc/iomem entries: (start, end inclusive, name)."""
    entries = []
    for line in text.splitlines():
        match = re.match(r"^([0-9a-f]+)-([0-9a-f]+) : (.+)$", line)
        if match:
            entries.append((int(match.group(1), 16), int(match.group(2), 16), match.group(3)))
    return entries


def test_guest_iomem_shows_the_pool_window_reserved(shared_vm):
    """The pool window and the low DMA window are Reserved in the guest's own view (one
    Reserved line may hold both when they touch) and no System RAM overlaps them."""
    entries = iomem_entries(shared_vm.run_checked("cat /proc/iomem"))
    cmdline = shared_vm.run_checked("cat /proc/cmdline")
    for window in (shared_vm.config.pool.window, shared_vm.config.low_dma_window.window):
        base, size = window
        last = base + size - 1
        assert any(name == "Reserved" and start <= base and end >= last
                   for start, end, name in entries), f"{base:#x}+{size:#x} not Reserved"
        for start, end, name in entries:
            if name == "System RAM":
                assert end < base or start > last, "the kernel uses part of a reserved window"
        assert f"memmap={size >> 20}M${base:#x}" in cmdline


def test_the_ram_file_is_guest_memory(shared_vm):
    """Bytes written into the RAM file appear at that guest-physical address, and back."""
    base, size = shared_vm.config.pool.window
    offset = shared_vm.config.ram_split.file_offset(base + 0x3000, 64)
    host_text = f"from-host-{secrets.token_hex(8)}".encode()
    guest_text = f"from-guest-{secrets.token_hex(8)}"
    with open(shared_vm.ram_file, "r+b") as handle, \
            mmap.mmap(handle.fileno(), 0, mmap.MAP_SHARED) as ram:
        ram[offset:offset + len(host_text)] = host_text
        seen = shared_vm.run_checked(
            f"dd if=/dev/mem bs=1 skip={base + 0x3000} count={len(host_text)} 2>/dev/null")
        assert seen.encode() == host_text
        shared_vm.run_checked(f"printf '%s' {guest_text} | "
                              f"dd of=/dev/mem bs=1 seek={base + 0x3800} conv=notrunc 2>/dev/null")
        start = offset + 0x800
        assert ram[start:start + len(guest_text)] == guest_text.encode()


def test_run_folder_is_private_and_holds_the_shared_ram_file(shared_vm):
    folder = shared_vm.run_dir
    assert folder.parent == folder_parent()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert shared_vm.ram_file.stat().st_size == shared_vm.config.memory
    backend = [a for a in shared_vm.command_line if a.startswith("memory-backend-file")]
    assert backend == [f"memory-backend-file,id=ram0,size={shared_vm.config.memory},"
                       f"mem-path={shared_vm.ram_file},share=on"]
    assert all(len(str(path)) < 108 for path in folder.iterdir())  # UNIX socket path limit
    assert shared_vm.accelerator in ("kvm", "tcg")


def test_qmp_answers_and_agrees_on_the_ram_layout(shared_vm):
    assert shared_vm.qmp.command("query-status")["status"] == "running"
    layout = parse_mtree(shared_vm.qmp.hmp("info mtree"))
    assert layout.below_4g == shared_vm.config.ram_split.below_4g
    base, size = shared_vm.config.pool.window
    assert layout.file_offset(base, size) == shared_vm.config.ram_split.file_offset(base, size)


def test_console_holds_the_boot_log_and_ssh_is_on_localhost_only(shared_vm, guest_image):
    text = shared_vm.console_text()
    assert guest_image.ready_marker in text
    forward = [a for a in shared_vm.command_line if "hostfwd=" in a]
    assert forward == ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:0-:22"]
    assert 1024 <= shared_vm.ssh_port < 65536
    assert os.path.basename(shared_vm.command_line[0]).startswith("qemu-system")
