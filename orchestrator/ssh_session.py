"""Commands and files in the guest over SSH (paramiko), fast.

Opening an SSH channel costs 20-70 ms under TCG, while a command typed into
a shell that is already running returns in a few milliseconds. So a
session keeps one long-lived ``/bin/sh`` on a channel without a terminal
(stdout and stderr stay apart, nothing is echoed) and feeds it one command
at a time through ``eval``; after the command the shell prints an end
marker with the exit status on stdout and one on stderr. The marker carries
a random token, so command output cannot fake it.

Under TCG every guest context switch flushes the emulated TLB, so what the
shell does between two switches is what a command costs: no subshell (a
fork costs ~9 ms), and no per-command redirection. The shell reads its
commands from the channel through ``/proc/self/fd/3`` while its own stdin
is ``/dev/null`` for good, so a command never sees the command stream and
nothing is redirected per command (``</dev/null`` on each command was a
quarter of the guest's time per command). Each command starts in the home folder like an
exec channel, but shell variables and options persist within a session; a
command that ends the shell (``exit 3``, a syntax error) simply reports the
shell's exit status, and the next command gets a new shell. A fresh exec
channel per command (:meth:`SshSession.run_exec`) stays available as the
reference the benchmark compares against. The guest's host key is pinned to
the one the image builder generated; anything else is refused.
"""

from __future__ import annotations

import base64
import logging
import secrets
import select
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from wdfhil.errors import GuestError

log = logging.getLogger(__name__)
DEFAULT_COMMAND_TIMEOUT = 120.0
# HOME is set so that the ``cd`` starting each command never complains. The
# shell's script is the channel (fd 3, reopened through /proc), its stdin
# /dev/null; the first line it reads closes the spare fd 3 (SHELL_PRELUDE).
SHELL_COMMAND = 'HOME="${HOME:-/}" exec /bin/sh /proc/self/fd/3 3<&0 </dev/null'
SHELL_PRELUDE = "exec 3<&-\n"


class GuestCommandTimeout(GuestError):
    """A guest command did not finish in time (its shell channel is dropped)."""


@dataclass(frozen=True)
class CommandResult:
    """What a guest command did: its exit code and its two output streams."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> str:
        """``stdout`` if the command succeeded, else GuestError with everything."""
        if self.exit_code != 0:
            raise GuestError("guest command failed", command=self.command,
                             exit_code=self.exit_code, stdout=self.stdout, stderr=self.stderr)
        return self.stdout


def parse_host_key(text: str) -> paramiko.PKey:
    """A public key from an ``authorized_keys``-style line ("ssh-ed25519 AAAA... [comment]")."""
    parts = text.split()
    if len(parts) < 2:
        raise ValueError(f"not an SSH public key line: {text!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        return paramiko.PKey.from_type_string(parts[0], blob)
    except Exception as exc:
        raise ValueError(f"cannot read SSH public key {parts[0]} {parts[1][:16]}...: {exc}") from None


def wait_for_ssh_banner(host: str, port: int, timeout: float, *,
                        alive: Callable[[], bool] = lambda: True) -> bytes | None:
    """The server's ``SSH-`` banner once it answers, or None (timeout, or ``alive()`` false).

    QEMU's user network accepts a forwarded connection before the guest's
    server listens (and then closes it), so only the banner proves the
    server is up.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=2.0) as sock:
                sock.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
                data = sock.recv(256)
                if data.startswith(b"SSH-"):
                    return data.split(b"\r\n")[0]
        except OSError:
            pass
        time.sleep(0.05)
    return None


class SshSession:
    """An authenticated SSH connection to a guest."""

    def __init__(self, transport: paramiko.Transport, description: str) -> None:
        self._transport = transport
        self.description = description
        self._shell: paramiko.Channel | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._token = secrets.token_hex(8)
        self._serial = 0

    @classmethod
    def connect(cls, host: str, port: int, *, user: str, client_key: Path, host_key: str,
                timeout: float = 30.0) -> "SshSession":
        """Connect, check the server's key against ``host_key``, log in with ``client_key``."""
        try:
            pinned = parse_host_key(host_key)
            key = paramiko.PKey.from_path(client_key)
        except (ValueError, OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot load the image's SSH keys: {exc}") from None
        where = f"{user}@{host}:{port}"
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small packet a command
            transport = paramiko.Transport(sock)
            transport.banner_timeout = timeout
            transport.handshake_timeout = timeout
            transport.auth_timeout = timeout
            transport.connect(hostkey=pinned, username=user, pkey=key)
        except paramiko.SSHException as exc:
            if sock is not None:
                sock.close()
            raise GuestError(f"SSH login to {where} failed: {exc} (the guest's host key must "
                             f"be {host_key.split()[0]} {host_key.split()[1][:20]}...)") from None
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise GuestError(f"cannot connect to {where}: {exc}") from None
        return cls(transport, where)

    @property
    def active(self) -> bool:
        return self._transport.is_active()

    @property
    def transport(self) -> paramiko.Transport:
        """The authenticated connection, for a channel of one's own (bench/boot.py
        measures the bare SSH round trip on it)."""
        return self._transport

    # -- commands on the long-lived shell -----------------------------------
    def _open_shell(self) -> tuple[paramiko.Channel, str]:
        """The shell channel, and what to send before the first command of a new one."""
        if self._shell is None or self._shell.closed or self._shell.exit_status_ready():
            channel = self._transport.open_session()
            channel.exec_command(SHELL_COMMAND)
            self._shell = channel
            return channel, SHELL_PRELUDE
        return self._shell, ""

    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run ``command`` with ``sh`` on the long-lived channel (stdin is /dev/null)."""
        self._serial += 1
        mark = f"__wdfhil_end_{self._token}_{self._serial}__"
        # builtins only, one redirection (the stderr marker's)
        script = f"cd; eval {shlex.quote(command)}; echo {mark} $?; echo {mark} >&2\n"
        try:
            channel, prelude = self._open_shell()
            channel.sendall((prelude + script).encode())
        except (paramiko.SSHException, OSError) as exc:
            self._drop_shell()
            raise GuestError(f"cannot send a command to the guest shell ({self.description}): "
                             f"{exc}", command=command) from None
        marker = mark.encode()
        stdout, stderr = bytearray(), bytearray()
        end_out = end_err = -1

        def finished() -> bool:
            nonlocal end_out, end_err
            if end_out < 0:
                end_out = _find_complete_line(stdout, marker)
            if end_err < 0:
                end_err = _find_complete_line(stderr, marker)
            return end_out >= 0 and end_err >= 0

        done = self._pump(channel, stdout, stderr, finished, time.monotonic() + timeout)
        if done:
            status_line = bytes(stdout[end_out:]).split(b"\n", 1)[0]
            return CommandResult(command, int(status_line.split()[-1]), _text(stdout[:end_out]),
                                 _text(stderr[:end_err]))
        ended = channel.eof_received or channel.closed
        if ended and channel.status_event.wait(10.0):
            # the command ended the shell (exit, syntax error): its status is the answer
            self._drop_shell()
            return CommandResult(command, channel.recv_exit_status(), _text(stdout),
                                 _text(stderr))
        self._drop_shell()
        if ended:
            raise GuestError("the guest shell ended without an exit status", command=command,
                             stdout=_text(stdout), stderr=_text(stderr))
        raise GuestCommandTimeout(f"no end after {timeout:g} s", command=command,
                                  stdout=_text(stdout), stderr=_text(stderr))

    def run_checked(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
        """``run`` that raises GuestError on a non-zero exit code; returns stdout."""
        return self.run(command, timeout).check()

    # -- one exec channel per command (the slow, simple way) ----------------
    def run_exec(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run ``command`` on a new exec channel, as ``ssh host CMD`` does."""
        try:
            channel = self._transport.open_session()
            channel.exec_command(command)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError) as exc:
            raise GuestError(f"cannot open an exec channel ({self.description}): {exc}",
                             command=command) from None
        stdout, stderr = bytearray(), bytearray()
        try:
            done = self._pump(channel, stdout, stderr, lambda: False,
                              time.monotonic() + timeout, until_eof=True)
            if not done:
                raise GuestCommandTimeout(f"no end after {timeout:g} s", command=command,
                                          stdout=_text(stdout), stderr=_text(stderr))
            return CommandResult(command, channel.recv_exit_status(), _text(stdout),
                                 _text(stderr))
        finally:
            channel.close()

    @staticmethod
    def _pump(channel: paramiko.Channel, stdout: bytearray, stderr: bytearray,
              finished: Callable[[], bool], deadline: float, until_eof: bool = False) -> bool:
        """Move channel output into the buffers until ``finished()`` (or EOF of
        both streams with ``until_eof``); False on deadline or an early close."""
        while True:
            progressed = False
            if channel.recv_ready():
                stdout += channel.recv(65536)
                progressed = True
            if channel.recv_stderr_ready():
                stderr += channel.recv_stderr(65536)
                progressed = True
            if progressed:
                if finished():
                    return True
                continue
            if channel.eof_received or channel.closed:
                # drain what is left, then decide
                if channel.recv_ready() or channel.recv_stderr_ready():
                    continue
                return until_eof or finished()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([channel], [], [], min(remaining, 1.0))

    def _drop_shell(self) -> None:
        if self._shell is not None:
            try:
                self._shell.close()
            except Exception:
                pass
            self._shell = None

    # -- files --------------------------------------------------------------
    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport)
            except (paramiko.SSHException, OSError) as exc:
                raise GuestError(f"cannot start SFTP ({self.description}): {exc}") from None
            if self._sftp is None:
                raise GuestError(f"the guest refused the SFTP subsystem ({self.description})")
        return self._sftp

    def put(self, local: str | Path, remote: str) -> None:
        """Copy a host file into the guest."""
        try:
            self._sftp_client().put(str(local), remote)
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot copy {local} to the guest's {remote}: {exc}") from None

    def get(self, remote: str, local: str | Path) -> None:
        """Copy a guest file to the host."""
        try:
            self._sftp_client().get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot copy the guest's {remote} to {local}: {exc}") from None

    def close(self) -> None:
        for closer in (self._sftp, self._shell, self._transport):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:
                    log.debug("closing SSH part: %s", exc)
        self._sftp = None
        self._shell = None


def _find_complete_line(buffer: bytearray, marker: bytes) -> int:
    """Where ``marker`` starts, once the line holding it is complete; else -1."""
    where = buffer.find(marker)
    if where < 0 or buffer.find(b"\n", where) < 0:
        return -1
    return where


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")
