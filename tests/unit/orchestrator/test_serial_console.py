"""The console reader: markers, panics and QEMU's exit, as bytes arrive."""

from __future__ import annotations

import socket
import threading

import pytest

from orchestrator.serial_console import ConsoleWait, SerialConsole


@pytest.fixture
def console(tmp_path):
    ours, theirs = socket.socketpair()
    reader = SerialConsole(ours, tmp_path / "console.log").start()
    yield reader, theirs
    theirs.close()
    reader.close()


def test_marker_found_even_when_split_across_writes(console, tmp_path):
    reader, qemu = console
    qemu.sendall(b"booting...\nWDFHIL-RE")
    assert reader.wait_for("WDFHIL-READY", 0.2) is ConsoleWait.TIMEOUT
    threading.Timer(0.1, qemu.sendall, args=(b"ADY\nmore\n",)).start()
    assert reader.wait_for("WDFHIL-READY", 30) is ConsoleWait.FOUND
    qemu.close()
    assert reader.wait_for("never", 30) is ConsoleWait.CLOSED
    assert (tmp_path / "console.log").read_bytes() == b"booting...\nWDFHIL-READY\nmore\n"
    assert reader.text() == "booting...\nWDFHIL-READY\nmore\n"


def test_panic_ends_the_wait_at_once(console):
    reader, qemu = console
    qemu.sendall(b"[ 1.0] Kernel pan")
    qemu.sendall(b"ic - not syncing: VFS: Unable to mount root fs\n")
    assert reader.wait_for("WDFHIL-READY", 30) is ConsoleWait.PANIC
    assert reader.panicked


def test_panic_found_when_it_arrives_a_character_at_a_time(tmp_path):
    """Under load QEMU's serial output reaches us a few characters per read: a marker
    spread over more than two reads was missed (a panic then read as a plain exit)."""
    ours, theirs = socket.socketpair()
    reader = SerialConsole(ours, tmp_path / "console.log")   # not started: we feed it
    try:
        for char in "WDFHIL-READY\n[ 2.4] Kernel panic - not syncing: sysrq\n":
            reader._append(char)
        assert reader.panicked
        assert reader.wait_for("WDFHIL-READY", 0) is ConsoleWait.FOUND
        assert reader.wait_for("sysrq", 0) is ConsoleWait.PANIC   # printed after the panic
    finally:
        theirs.close()
        reader.close()


def test_marker_printed_before_a_panic_still_counts(console):
    reader, qemu = console
    qemu.sendall(b"WDFHIL-READY\nKernel panic - later\n")
    assert reader.wait_for("WDFHIL-READY", 30) is ConsoleWait.FOUND
    assert reader.wait_for("after the panic", 30) is ConsoleWait.PANIC


def test_search_can_start_after_old_output(console):
    reader, qemu = console
    qemu.sendall(b"MARK one\n")
    assert reader.wait_for("MARK", 30) is ConsoleWait.FOUND
    start = reader.position
    assert reader.wait_for("MARK", 0.1, start=start) is ConsoleWait.TIMEOUT
    qemu.sendall(b"MARK two\n")
    assert reader.wait_for("MARK", 30, start=start) is ConsoleWait.FOUND


def test_utf8_split_between_reads_is_decoded_whole(console):
    reader, qemu = console
    text = "température ✓\n".encode()
    qemu.sendall(text[:2])
    qemu.sendall(text[2:12])
    qemu.sendall(text[12:])
    qemu.close()
    assert reader.wait_for("nothing", 30) is ConsoleWait.CLOSED
    assert reader.text() == "température ✓\n" and reader.tail(2) == "✓\n"
