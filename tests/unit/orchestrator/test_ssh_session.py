"""The SSH session's command protocol, against a local SSH server running /bin/sh.

The server is paramiko's own server side running real shell processes on
this host, so the end markers, exit codes, stream separation, timeouts and
host-key pinning are exercised for real without booting a guest (the
end-to-end tests do that against dropbear in the guest).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import paramiko
import pytest

from orchestrator.ssh_session import (SHELL_COMMAND, GuestCommandTimeout, SshSession,
                                      parse_host_key, wait_for_ssh_banner)
from wdfhil.errors import GuestDied, GuestError


def _copy_out(stream, send) -> None:
    try:
        for chunk in iter(lambda: stream.read1(65536), b""):
            send(chunk)
    except (OSError, EOFError):
        pass  # the client closed the channel or dropped the connection (paramiko: EOFError)


class _ShellServer(paramiko.ServerInterface):
    """Accepts one client key; each exec request runs ``sh -c COMMAND`` locally."""

    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.execs: list[str] = []

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        ok = username == "root" and key.asbytes() == self.client_key.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        self.execs.append(command.decode())
        process = subprocess.Popen(["sh", "-c", command.decode()], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def feed_stdin():
            try:
                for chunk in iter(lambda: channel.recv(65536), b""):
                    process.stdin.write(chunk)
                    process.stdin.flush()
            except (OSError, ValueError):
                pass
            finally:
                try:
                    process.stdin.close()
                except OSError:
                    pass
                if channel.closed:  # closed, not just end of input: stop the command
                    process.kill()

        def run():
            pumps = [threading.Thread(target=_copy_out, args=(process.stdout, channel.sendall)),
                     threading.Thread(target=_copy_out,
                                      args=(process.stderr, channel.sendall_stderr))]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join()
            code = process.wait()
            try:
                channel.send_exit_status(code if code >= 0 else 128 - code)  # as a shell says it
                channel.close()
            except (EOFError, OSError):
                pass  # the client hung up first

        threading.Thread(target=feed_stdin, daemon=True).start()
        threading.Thread(target=run, daemon=True).start()
        return True


@pytest.fixture(scope="module")
def ssh_server():
    host = paramiko.RSAKey.generate(2048)
    client = paramiko.RSAKey.generate(2048)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    servers: list[_ShellServer] = []
    transports: list[paramiko.Transport] = []

    def accept_loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(conn)
            transport.add_server_key(host)
            server = _ShellServer(client)
            servers.append(server)
            transports.append(transport)
            threading.Thread(target=serve, args=(transport, server), daemon=True).start()

    def serve(transport, server):
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError):
            pass  # a banner probe hangs up early; that is its job

    threading.Thread(target=accept_loop, daemon=True).start()
    yield {"port": port, "host_key": f"{host.get_name()} {host.get_base64()}", "client": client,
           "servers": servers}
    listener.close()
    for transport in transports:
        transport.close()


@pytest.fixture
def session(ssh_server, tmp_path):
    key_file = tmp_path / "client_key"
    ssh_server["client"].write_private_key_file(str(key_file))
    ssh = SshSession.connect("127.0.0.1", ssh_server["port"], user="root", client_key=key_file,
                             host_key=ssh_server["host_key"], timeout=20)
    yield ssh
    ssh.close()


def test_exit_code_and_streams_are_kept_apart(session):
    result = session.run("echo out; echo err >&2; printf 'no newline'; false")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "out\nno newline", "err\n")
    assert session.run("exit 7").exit_code == 7


def test_many_commands_share_one_channel(session, ssh_server):
    for number in range(50):
        assert session.run(f"echo {number}").stdout == f"{number}\n"
    assert ssh_server["servers"][-1].execs == [SHELL_COMMAND]


def test_commands_start_in_home_and_have_no_stdin(session):
    session.run("cd /tmp")
    assert session.run("pwd").stdout.strip() != "/tmp"
    assert session.run("cat").stdout == ""  # stdin is /dev/null, not the command stream


def test_the_command_stream_is_out_of_reach(session):
    # the shell reads commands through its own descriptor; stdin is /dev/null and the
    # fd 3 it was opened from is closed, so a command cannot swallow the next ones
    out = session.run("read line; echo read=$?; cat <&3; echo cat=$?", timeout=30).stdout
    assert out.splitlines()[:1] == ["read=1"] and out.splitlines()[1:] != ["cat=0"]
    assert session.run("echo next").stdout == "next\n"


def test_quoting_and_multiline_commands_pass_unchanged(session):
    command = "x='it'\"'\"'s'; echo \"$x\" 'a  b' $((6*7))\nif true; then echo two; fi"
    assert session.run(command).stdout == "it's a  b 42\ntwo\n"


def test_output_cannot_fake_the_end_marker(session):
    result = session.run("echo __wdfhil_end_0000000000000000_1__ 0; echo real")
    assert result.stdout.endswith("real\n") and result.exit_code == 0


def test_exit_and_syntax_errors_end_only_their_command(session):
    assert session.run("echo bye; exit 3").exit_code == 3
    broken = session.run("if then")
    assert broken.exit_code != 0 and "syntax" in broken.stderr.lower()
    assert session.run("echo alive").stdout == "alive\n"


def test_large_output_arrives_whole(session):
    result = session.run("head -c 3000000 /dev/zero | tr '\\0' a; echo; seq 1 20000 >&2")
    assert len(result.stdout) == 3000001 and result.stderr.splitlines()[-1] == "20000"


def test_non_utf8_output_is_replaced_not_fatal(session):
    assert session.run("printf '\\377ok'").stdout == "\ufffdok"


def test_timeout_raises_and_the_next_command_works(session):
    with pytest.raises(GuestCommandTimeout) as info:
        session.run("echo started; sleep 30", timeout=1.0)
    assert info.value.command.startswith("echo started")
    assert session.run("echo next").stdout == "next\n"


def test_run_checked_raises_guest_error_with_everything(session):
    assert session.run_checked("echo fine") == "fine\n"
    with pytest.raises(GuestError) as info:
        session.run_checked("echo partial; echo why >&2; exit 5")
    error = info.value
    assert (error.exit_code, error.stdout, error.stderr) == (5, "partial\n", "why\n")
    assert "exit code: 5" in str(error)


def test_exec_channel_gives_the_same_answers(session):
    result = session.run_exec("echo out; echo err >&2; exit 4")
    assert (result.exit_code, result.stdout, result.stderr) == (4, "out\n", "err\n")


def test_a_different_host_key_is_refused(ssh_server, tmp_path):
    key_file = tmp_path / "client_key"
    ssh_server["client"].write_private_key_file(str(key_file))
    other = paramiko.RSAKey.generate(2048)
    with pytest.raises(GuestError, match="host key"):
        SshSession.connect("127.0.0.1", ssh_server["port"], user="root", client_key=key_file,
                           host_key=f"{other.get_name()} {other.get_base64()}", timeout=20)


def test_host_key_lines_are_parsed_or_refused():
    key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if key is not None:
        assert parse_host_key(f"ssh-ed25519 {key.get_base64()} comment").asbytes() == key.asbytes()
    with pytest.raises(ValueError):
        parse_host_key("ssh-ed25519")
    with pytest.raises(ValueError):
        parse_host_key("ssh-ed25519 not-base64!")


def test_banner_wait_sees_a_server_and_gives_up_on_silence(ssh_server):
    assert wait_for_ssh_banner("127.0.0.1", ssh_server["port"], 10).startswith(b"SSH-")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks
    try:
        port = silent.getsockname()[1]
        assert wait_for_ssh_banner("127.0.0.1", port, 0.5) is None
        assert wait_for_ssh_banner("127.0.0.1", port, 30, alive=lambda: False) is None
    finally:
        silent.close()


# -- a guest that stops answering, as a stopped VM does -------------------------
class _FreezableProxy:
    """TCP between the client and the server that can stop moving bytes, as a
    stopped guest behind QEMU's user network does (the host side still accepts)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.running = threading.Event()
        self.running.set()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._move, args=(a, b), daemon=True).start()

    def _move(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self.running.wait()
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.running.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def frozen_session(ssh_server, tmp_path):
    """(session, proxy): a session through a proxy that ``proxy.running.clear()`` freezes."""
    key_file = tmp_path / "client_key"
    ssh_server["client"].write_private_key_file(str(key_file))
    proxy = _FreezableProxy(ssh_server["port"])
    ssh = SshSession.connect("127.0.0.1", proxy.port, user="root", client_key=key_file,
                             host_key=ssh_server["host_key"], timeout=20)
    yield ssh, proxy
    ssh.close()
    proxy.close()


def test_a_frozen_guest_costs_each_command_its_timeout_not_an_hour(frozen_session):
    """Issue 12's repro: after one timeout the next command opened a channel
    with paramiko's default (3600 s) wait; now every command keeps its timeout."""
    session, proxy = frozen_session
    assert session.run("echo warm").stdout == "warm\n"
    proxy.running.clear()
    for _ in range(3):  # the first on the open shell, the others each opening a new channel
        began = time.monotonic()
        with pytest.raises(GuestCommandTimeout):
            session.run("true", timeout=1.5)
        assert time.monotonic() - began < 30
    began = time.monotonic()
    with pytest.raises(GuestCommandTimeout):
        session.run_exec("true", timeout=1.5)
    with pytest.raises(GuestCommandTimeout):
        session.get("/etc/hostname", "/nonexistent/x", timeout=1.5)
    assert time.monotonic() - began < 60


def test_a_dead_guest_is_reported_by_its_health_not_as_exit_code_minus_one(frozen_session):
    """The connection breaking mid-command (QEMU killed) raises what the health says."""
    session, proxy = frozen_session

    class Health:
        dead = False

        def check(self, command, grace=0.0):
            if self.dead:
                raise GuestDied("QEMU exited", command=command, qemu_exit_code=-9)

        def note(self):
            return ""

    session.health = health = Health()
    assert session.run("true").ok
    threading.Timer(0.5, lambda: (setattr(health, "dead", True), proxy.close())).start()
    with pytest.raises(GuestDied) as info:
        session.run("sleep 20", timeout=60)
    assert info.value.qemu_exit_code == -9 and info.value.command == "sleep 20"


def test_the_health_check_runs_while_a_command_waits(session):
    calls = []

    class Health:
        def check(self, command, grace=0.0):
            calls.append(command)
            if len(calls) > 2:
                raise GuestDied("the guest kernel panicked", command=command)

        def note(self):
            return ""

    session.health = Health()
    began = time.monotonic()
    with pytest.raises(GuestDied, match="panicked"):
        session.run("sleep 30", timeout=60)
    assert time.monotonic() - began < 20


def test_output_kept_on_the_host_is_bounded_and_says_so(session):
    session.max_kept_output = 1 << 20
    result = session.run("head -c 5000000 /dev/zero | tr '\\0' a; echo END", timeout=60)
    assert result.exit_code == 0 and result.truncated
    note = f"\n[wdfhil: {result.stdout_dropped} bytes of output dropped here]\n"
    assert len(result.stdout) < (1 << 20) + 200 and result.stdout.endswith("aaaaEND\n")
    assert note in result.stdout and result.stdout.startswith("aaaa")
    assert len(result.stdout) - len(note) + result.stdout_dropped == 5000004
    small = session.run("echo fine")
    assert small.stdout == "fine\n" and not small.truncated
