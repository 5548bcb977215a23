"""AgentClient against the real agent binary, compiled for and run on this host.

The agent's buffer, pattern, JSON and serve/call code does not need the
device, so it runs here as root (pagemap frames need root); what needs the
device is covered by the end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from guest_images.guest_programs import AGENT_SOURCES, compile_agent, write_abi_header
from orchestrator.agent_client import AgentClient, GuestBuffer, Step, Verification, pattern_bytes
from orchestrator.ssh_session import CommandResult
from wdfhil.errors import GuestDied, GuestError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pagemap frames need root")


class LocalShell:
    """Runs commands with sh on this host, the way VM.run does in the guest."""

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        return CommandResult(command, done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def agent_path(tmp_path_factory) -> str:
    build = tmp_path_factory.mktemp("agent")
    write_abi_header(build)
    return str(compile_agent(AGENT_SOURCES, build, build / "wdfhil-agent"))


@pytest.fixture
def client(agent_path, tmp_path) -> AgentClient:
    # A device path that does not exist: device commands must fail clearly.
    return AgentClient(LocalShell(), agent_path=agent_path, device=str(tmp_path / "wdfhil9"))


def test_version(client):
    assert client.version()["agent"] == "wdfhil-agent"


def test_unaligned_page_crossing_buffer_and_pattern(client):
    results = client.run(Step.alloc("a", 5000, offset=4000, merge=False), Step.fill("a", 99),
                         Step.verify("a", 99), "hexdump a start=90 length=200")
    buffer = GuestBuffer.from_result(results[0])
    assert buffer.offset == 4000 and buffer.gpa == buffer.frames[0] + 4000
    assert [s.length for s in buffer.segments] == [96, 4096, 808]
    assert Verification.from_result(results[2]).match
    assert bytes.fromhex(results[3]["hex"]) == pattern_bytes(99, 200, 90)


def test_verify_reports_the_first_difference(client):
    results = client.run(Step.alloc("a", 300), Step.fill("a", 1),
                         Step.memset("a", pattern_bytes(1, 1, 17)[0] ^ 1, start=17, length=3),
                         Step.verify("a", 1))
    check = Verification.from_result(results[3])
    assert not check.match and check.first_mismatch == 17 and check.checked == 300
    assert 1 <= check.mismatches <= 3


def test_failed_step_names_the_step(client):
    with pytest.raises(GuestError) as caught:
        client.run(Step.alloc("a", 100), "fill a 1 bogus=2")
    assert "step 1 (fill a 1 bogus=2)" in str(caught.value)
    assert "unknown option 'bogus'" in str(caught.value)


def test_device_commands_without_a_device_say_why(client):
    with pytest.raises(GuestError, match="wdfhil_pci.ko loaded"):
        client.info()


def test_bad_arguments(client):
    with pytest.raises(GuestError, match="not a number"):
        client.command("alloc a 12x")
    with pytest.raises(GuestError, match="offset .* inside the first page"):
        client.command("alloc a 100 offset=4096")
    with pytest.raises(GuestError, match="unknown command"):
        client.command("frobnicate")
    with pytest.raises(ValueError):
        Step.alloc("bad name", 1)
    with pytest.raises(ValueError):
        client.run("version; version")


def test_not_json_is_a_guest_error(agent_path):
    client = AgentClient(LocalShell(), agent_path="/bin/echo")
    with pytest.raises(GuestError, match="did not answer with JSON"):
        client.version()


def test_serve_session_keeps_buffers_between_commands(client, tmp_path):
    folder = tmp_path / "serve"
    with client.serve(folder=str(folder)) as session:
        buffer = GuestBuffer.from_result(session.command(Step.alloc("kept", 8192, offset=1)))
        session.command(Step.fill("kept", 5))
        assert Verification.from_result(session.command(Step.verify("kept", 5))).match
        assert session.command(f"gpa kept 0")["gpa"] == buffer.gpa
        with pytest.raises(GuestError, match="already exists"):
            session.command(Step.alloc("kept", 1))
    assert not folder.exists()


def test_call_without_a_server_fails_fast(client, tmp_path, agent_path):
    result = LocalShell().run(f"{agent_path} call {tmp_path / 'nobody'} version --timeout 300")
    assert result.exit_code == 1 and "no agent serving" in result.stdout


class DeadMachine:
    """A machine whose guest died: its run raises GuestDied, as VM.run does."""

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        raise GuestDied("VM x died during the command: the guest kernel panicked",
                        command=command, qemu_exit_code=0, console_tail="Kernel panic")


def test_a_dead_guest_is_not_blamed_on_the_image():
    client = AgentClient(DeadMachine())
    with pytest.raises(GuestDied) as info:
        client.version()
    assert "image current" not in str(info.value) and "panicked" in str(info.value)


def test_only_a_missing_agent_points_at_the_image(client, tmp_path):
    missing = AgentClient(LocalShell(), agent_path=str(tmp_path / "no-agent"))
    with pytest.raises(GuestError, match="is the image current"):
        missing.version()
    crashing = tmp_path / "crashing-agent"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    crashed = AgentClient(LocalShell(), agent_path=str(crashing))
    with pytest.raises(GuestError) as info:
        crashed.version()
    assert "image current" not in str(info.value)


class RecordingShell(LocalShell):
    """LocalShell that keeps the commands it was given."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        self.commands.append(command)
        return super().run(command, timeout)


def test_an_interrupt_sends_the_guest_no_more_commands(agent_path, tmp_path):
    """Ctrl-C (or SIGTERM, a KeyboardInterrupt too) inside ``serve``: the run stops
    and the guest goes, so no quit or kill is sent (each could wait tens of seconds
    on the command channel the interrupted command holds); an error still closes it."""
    shell = RecordingShell()
    client = AgentClient(shell, agent_path=agent_path, device=str(tmp_path / "wdfhil9"))
    folder = tmp_path / "serve"
    with pytest.raises(KeyboardInterrupt):
        with client.serve(folder=str(folder)) as session:
            pid, sent = session.pid, len(shell.commands)
            raise KeyboardInterrupt
    try:
        assert len(shell.commands) == sent
    finally:
        LocalShell().run(f"kill {pid}; rm -rf {folder}")
    with pytest.raises(ValueError):
        with client.serve(folder=str(folder)) as session:
            sent = len(shell.commands)
            raise ValueError("a step failed")
    assert any("quit" in c for c in shell.commands[sent:])
    assert not folder.exists()
