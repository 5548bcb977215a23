"""QEMU started for a restore (``-incoming defer``) reads and writes no guest RAM
before ``migrate-incoming``: the assumption that lets a restore copy the saved
RAM into the RAM file while QEMU starts (``orchestrator.snapshot.RamCopy``).
Checked on the real QEMU and image with a RAM file holding random data where
firmware, option ROMs and the kernel go, and holes elsewhere: after QEMU is up,
has answered QMP and ``info usernet`` (all a restore does before the load), the
file has the same bytes and the same holes."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from orchestrator.guest_config import load_guest_config
from orchestrator.qemu_command import build_qemu_argv
from orchestrator.qemu_process import QemuProcess
from orchestrator.qmp_session import QmpSession
from orchestrator.sparse_file import file_extents
from wdfhil.private_dirs import create_private_files, make_private_dir, remove_tree

MIB = 1 << 20


def filled(memory: int) -> tuple[tuple[int, int], ...]:
    """Where the test's RAM file holds data: the first MiB (real-mode memory, VGA
    hole, option ROMs, BIOS shadow), where the kernel is loaded, the middle, and
    the top of low RAM (where QEMU puts the initrd)."""
    top = min(memory, 2048 * MIB)
    return ((0, MIB), (16 * MIB, 4 * MIB), (top // 2, MIB), (top - 8 * MIB, 8 * MIB))


def fingerprint(path) -> tuple[str, list[tuple[int, int]]]:
    extents = file_extents(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(8 * MIB):
            digest.update(piece)
    return digest.hexdigest(), extents


@pytest.mark.parametrize("guest", ["pc-256m", "q35-1g"])
def test_qemu_leaves_guest_ram_alone_until_migrate_incoming(guest_image, guest):
    config = load_guest_config(guest)
    run_dir = make_private_dir("wdfhil-vm-incoming-")
    process = qmp = None
    sockets: list[socket.socket] = []
    try:
        create_private_files(run_dir, "ram", "qemu.log")
        ram = run_dir / "ram"
        with open(ram, "r+b") as handle:
            handle.truncate(config.memory)
            for offset, length in filled(config.memory):
                handle.seek(offset)
                handle.write(os.urandom(length))
        before = fingerprint(ram)
        assert len(before[1]) == len(filled(config.memory))         # the holes are holes
        console_ours, console_theirs = socket.socketpair()
        qmp_ours, qmp_theirs = socket.socketpair()
        relay_ours, relay_theirs = socket.socketpair()   # the command relay's serial port
        sockets += [console_ours, console_theirs, qmp_ours, qmp_theirs, relay_ours, relay_theirs]
        theirs = (console_theirs.fileno(), qmp_theirs.fileno(), relay_theirs.fileno())
        argv = build_qemu_argv(config, guest_image, accelerator="tcg", ram_file=ram,
                               console_fd=theirs[0], qmp_fd=theirs[1],
                               relay_fd=theirs[2] if guest_image.command_relay else None,
                               name="incoming-ram", incoming=True)
        process = QemuProcess(argv, log_path=run_dir / "qemu.log", pass_fds=theirs)
        process.start()
        qmp = QmpSession("incoming-ram")
        qmp.connect(qmp_ours, timeout=60.0)
        assert qmp.command("query-status")["status"] == "inmigrate"
        assert "HOST_FORWARD" in qmp.hmp("info usernet")
        assert fingerprint(ram) == before, "QEMU changed guest RAM before migrate-incoming"
        assert process.alive()
    finally:
        if process is not None:
            process.stop((lambda: qmp.command("quit", timeout=3.0)) if qmp else None)
        if qmp is not None:
            qmp.close()
        for sock in sockets:
            sock.close()
        remove_tree(run_dir)
