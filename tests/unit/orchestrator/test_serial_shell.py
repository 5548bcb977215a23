"""The serial command relay, both ends real: the guest agent's ``relay`` (compiled
here from its C sources) on a pseudo-terminal of this host, and SerialShell on a
socket bridged to the terminal's other side, as QEMU's isa-serial chardev bridges it
in a guest. Frames, sync, stream separation, shells that end, timeouts, a second
host-side link on the same relay (a restored guest) and garbage on the line are
exercised without booting a guest; tests/e2e/test_serial_relay.py does it in one.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from guest_images.guest_programs import AGENT_SOURCES, compile_agent, write_abi_header
from orchestrator.guest_shell import GuestCommandTimeout
from orchestrator.serial_shell import HEADER, MAGIC, SerialShell
from wdfhil.errors import GuestError


@pytest.fixture(scope="module")
def agent_path(tmp_path_factory) -> str:
    build = tmp_path_factory.mktemp("agent")
    write_abi_header(build)
    return str(compile_agent(AGENT_SOURCES, build, build / "wdfhil-agent"))


class ProcessMemory:
    """The relay process's memory by physical address (its pagemap: we are root), as the
    host reads a guest's RAM: the ring's pages are locked in the relay, so their frames
    stay put."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._frames: dict[int, int] = {}

    def _lookup(self, frame: int) -> int:
        if frame not in self._frames:
            with open(f"/proc/{self.pid}/maps") as maps, \
                    open(f"/proc/{self.pid}/pagemap", "rb") as pagemap:
                for line in maps:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    if end - start > 64 << 20:
                        continue
                    pagemap.seek(start // 4096 * 8)
                    entries = pagemap.read((end - start) // 4096 * 8)
                    for index in range(len(entries) // 8):
                        entry = int.from_bytes(entries[index * 8:index * 8 + 8], "little")
                        if entry >> 63:
                            self._frames[entry & ((1 << 55) - 1)] = start + index * 4096
        return self._frames[frame]

    def read(self, gpa: int, length: int) -> bytes:
        virtual = self._lookup(gpa // 4096) + gpa % 4096
        with open(f"/proc/{self.pid}/mem", "rb") as mem:
            mem.seek(virtual)
            return mem.read(length)


class Line:
    """A relay on a pty and the host's socket end, copied to and from the pty by a
    thread (what QEMU's serial chardev does); ``inject`` puts bytes on the host's side."""

    def __init__(self, agent: str, folder: Path) -> None:
        self.master, slave = os.openpty()
        tty = os.ttyname(slave)
        ready = folder / "relay.ready"
        self.process = subprocess.Popen([agent, "relay", tty, str(ready)],
                                        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(slave)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert self.process.poll() is None, self.process.stderr.read()
            assert time.monotonic() < deadline, "the relay never became ready"
            time.sleep(0.01)
        self._stop = threading.Event()
        self.host: socket.socket | None = None
        self._ours: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def connect(self) -> socket.socket:
        """A fresh host socket on the line (a new QEMU chardev after a restore)."""
        self.disconnect()
        self.host, self._ours = socket.socketpair()
        self._stop.clear()
        self._thread = threading.Thread(target=self._copy, args=(self._ours,), daemon=True)
        self._thread.start()
        return self.host

    def inject(self, data: bytes) -> None:
        assert self._ours is not None
        self._ours.sendall(data)

    def _copy(self, ours: socket.socket) -> None:
        while not self._stop.is_set():
            ready = select.select([self.master, ours], [], [], 0.1)[0]
            try:
                if self.master in ready:
                    ours.sendall(os.read(self.master, 65536))
                if ours in ready:
                    data = ours.recv(65536)
                    if not data:
                        return
                    os.write(self.master, data)
            except OSError:
                return

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._ours is not None:
            self._ours.close()
        self._ours = None

    def close(self) -> None:
        self.disconnect()
        self.process.kill()
        self.process.wait(10)
        self.process.stderr.close()
        os.close(self.master)


@pytest.fixture
def line(agent_path, tmp_path):
    relay = Line(agent_path, tmp_path)
    yield relay
    relay.close()


@pytest.fixture
def shell(line):
    session = SerialShell(line.connect(), "test guest")
    yield session
    session.close()


def test_streams_apart_and_exit_codes(shell):
    result = shell.run("echo out; echo err >&2; printf 'no newline'; false")
    assert result.exit_code == 1
    assert result.stdout == "out\nno newline"
    assert result.stderr == "err\n"
    assert shell.run("true").ok


def test_state_persists_within_a_shell_and_commands_start_at_home(shell):
    shell.run_checked("cd /tmp; X=41")
    assert shell.run_checked("echo $((X + 1)) $PWD").split() == ["42", os.path.expanduser("~root")
                                                                 if os.path.isdir("/root")
                                                                 else "/"]


def test_a_command_that_ends_the_shell_gives_its_status_and_the_next_gets_a_new_one(shell):
    shell.run_checked("Y=1")
    assert shell.run("echo bye; exit 7").exit_code == 7
    assert shell.run_checked("echo ${Y:-unset}").strip() == "unset"


def test_output_larger_than_a_frame_arrives_whole(shell):
    out = shell.run_checked("head -c 300000 /dev/zero | tr '\\0' x")
    assert out == "x" * 300000
    assert shell.ring_bytes == 0     # no guest memory to read: all of it on the line


def test_a_command_past_its_timeout_is_a_timeout_and_the_shell_is_replaced(shell):
    with pytest.raises(GuestCommandTimeout):
        shell.run("sleep 30", timeout=1.0)
    assert shell.run_checked("echo again", timeout=30).strip() == "again"


def test_a_second_link_on_the_same_relay_syncs_past_leftovers(line, agent_path):
    first = SerialShell(line.connect(), "first life")
    first.run_checked("echo one")
    first.close()
    # a restored guest: a new socket, with the old life's bytes (a frame cut in the
    # middle, and a frame that looks like a sync answer with another nonce) on the line
    second = SerialShell(line.connect(), "second life")
    try:
        line.inject(HEADER.pack(MAGIC, b"O", 5, 100) + b"partial")
        line.inject(HEADER.pack(MAGIC, b"S", 0, 16) + bytes(16) + b"W\x00garbage")
        assert second.run_checked("echo two").strip() == "two"
        line.inject(b"not a frame " * 10000 + b"W")     # garbage between two commands
        assert second.run_checked("echo three").strip() == "three"
    finally:
        second.close()


def test_a_new_link_adopts_the_idle_shell_a_saved_guest_kept(line):
    first = SerialShell(line.connect(), "saved guest")
    first.run_checked("KEPT=yes")
    line.disconnect()    # saved between two commands: this host vanishes, the shell stays
    second = SerialShell(line.connect(), "restored guest")
    try:
        assert second.run_checked("echo ${KEPT:-new shell}").strip() == "yes"
        assert second.run("exit 4").exit_code == 4        # ... and it ends as any shell
        assert second.run_checked("echo ${KEPT:-new shell}").strip() == "new shell"
    finally:
        second.close()
        first.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the relay's page frames need root")
def test_output_through_the_ring_arrives_whole_and_in_order(line):
    """Bulk output: the relay's ring (256 KiB) wraps several times and waits for the
    host's acknowledgements; stdout and stderr pieces stay apart and in order."""
    session = SerialShell(line.connect(), "test guest",
                          read_memory=ProcessMemory(line.process.pid).read)
    try:
        command = ("i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); "
                   "done; head -c 1500000 /dev/zero | tr '\\0' y")
        result = session.run(command, timeout=60)
        assert result.stdout == "".join(f"out{i}\n" for i in range(300)) + "y" * 1500000
        assert result.stderr == "".join(f"err{i}\n" for i in range(300))
        assert session.ring_bytes >= len(result.stdout) + len(result.stderr)
        assert session.run_checked("echo small").strip() == "small"
    finally:
        session.close()


def test_a_lost_line_is_an_error_not_a_hang(line):
    session = SerialShell(line.connect(), "test guest")
    try:
        session.run_checked("true")
        line.disconnect()        # QEMU's end closes
        with pytest.raises(GuestError):
            session.run("true", timeout=10)
    finally:
        session.close()
