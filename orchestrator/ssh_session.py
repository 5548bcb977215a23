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

Every operation honours the caller's timeout, also against a guest that
stopped answering (paramiko's own waits for a channel open, an exec or a
subsystem request have no deadline, or an hour's): a channel still waiting
at the deadline is closed under the waiter. While waiting, the session asks
its :class:`GuestHealth` (the VM) whether the guest died, so a panic, a QEMU
exit or a fatal run state raises :class:`~wdfhil.errors.GuestDied` at once
instead of a timeout or a made-up exit code. Output kept on the host is
bounded (:data:`MAX_KEPT_OUTPUT` a stream); what is dropped is said.
"""

from __future__ import annotations

import base64
import contextlib
import math
import logging
import secrets
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import paramiko

from wdfhil.errors import GuestDied, GuestError

log = logging.getLogger(__name__)
DEFAULT_COMMAND_TIMEOUT = 120.0
# HOME is set so that the ``cd`` starting each command never complains. The
# shell's script is the channel (fd 3, reopened through /proc), its stdin
# /dev/null; the first line it reads closes the spare fd 3 (SHELL_PRELUDE).
SHELL_COMMAND = 'HOME="${HOME:-/}" exec /bin/sh /proc/self/fd/3 3<&0 </dev/null'
SHELL_PRELUDE = "exec 3<&-\n"
# Output kept per stream and command: the first part and the last _KEPT_TAIL
# bytes; the middle of a longer output is dropped (and said so).
MAX_KEPT_OUTPUT = 8 << 20
_KEPT_TAIL = 256 << 10
_WAIT_SLICE = 0.25  # seconds between two looks at the guest's health while waiting


class GuestCommandTimeout(GuestError):
    """A guest command (or the channel it needs) did not finish in time; its
    shell channel is dropped."""


class GuestHealth(Protocol):
    """What the session asks of whoever runs the guest (the VM) while it waits."""

    def check(self, command: str | None, grace: float = 0.0) -> None:
        """Raise GuestDied if the guest is dead (looking up to ``grace`` seconds)."""

    def note(self) -> str:
        """A few words for a timeout message (``"run state: paused"``), or ''."""


class _NoHealth:
    def check(self, command: str | None, grace: float = 0.0) -> None:
        return None

    def note(self) -> str:
        return ""


@dataclass(frozen=True)
class CommandResult:
    """What a guest command did: its exit code and its two output streams."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    stdout_dropped: int = 0   # bytes of output not kept (MAX_KEPT_OUTPUT)
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def truncated(self) -> bool:
        return bool(self.stdout_dropped or self.stderr_dropped)

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


def deadline_after(timeout: float) -> float:
    """``time.monotonic()`` ``timeout`` seconds from now; ValueError unless finite and > 0
    (a NaN deadline never passes: every wait on it would be for ever)."""
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds above 0, not {timeout!r}")
    return time.monotonic() + timeout


class _Output:
    """One stream's bytes, bounded: the first part and a tail; the middle of a
    longer output is dropped and counted."""

    def __init__(self, limit: int = MAX_KEPT_OUTPUT) -> None:
        self.data = bytearray()
        self.dropped = 0
        self._tail = min(_KEPT_TAIL, limit // 2)
        self._head = limit - self._tail
        self._searched = 0  # where the next marker search may start

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self._head - self._tail
        if excess > 0:
            del self.data[self._head:self._head + excess]
            self.dropped += excess
            if self._searched > self._head:
                self._searched = max(self._head, self._searched - excess)

    def find_line(self, marker: bytes) -> int:
        """Where ``marker`` starts once its line is complete, else -1 (searches only new bytes)."""
        where = self.data.find(marker, self._searched)
        if where < 0:
            self._searched = max(self._searched, len(self.data) - len(marker))
            return -1
        if self.data.find(b"\n", where) < 0:
            self._searched = where
            return -1
        return where

    def text(self, end: int | None = None) -> str:
        data = self.data if end is None else self.data[:end]
        if not self.dropped or len(data) <= self._head:
            return _text(data)
        note = f"\n[wdfhil: {self.dropped} bytes of output dropped here]\n".encode()
        return _text(data[:self._head] + note + data[self._head:])


@contextlib.contextmanager
def _closed_at(deadline: float, channel: paramiko.Channel) -> Iterator[threading.Event]:
    """Close ``channel`` at ``deadline`` if the block is still running (paramiko's
    exec and subsystem requests wait for the server's answer without a deadline);
    the event yielded tells whether it fired."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        try:
            channel.close()
        except Exception:
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


class SshSession:
    """An authenticated SSH connection to a guest."""

    def __init__(self, transport: paramiko.Transport, description: str, *,
                 reconnect: Callable[[float], paramiko.Transport] | None = None,
                 health: GuestHealth | None = None) -> None:
        self._transport = transport
        self.description = description
        self._reconnect = reconnect
        self.health: GuestHealth = health or _NoHealth()
        self.max_kept_output = MAX_KEPT_OUTPUT
        self._shell: paramiko.Channel | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._token = secrets.token_hex(8)
        self._serial = 0

    @classmethod
    def connect(cls, host: str, port: int, *, user: str, client_key: Path, host_key: str,
                timeout: float = 30.0, health: GuestHealth | None = None) -> "SshSession":
        """Connect, check the server's key against ``host_key``, log in with ``client_key``."""
        try:
            pinned = parse_host_key(host_key)
            key = paramiko.PKey.from_path(client_key)
        except (ValueError, OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot load the image's SSH keys: {exc}") from None
        where = f"{user}@{host}:{port}"

        def login(seconds: float) -> paramiko.Transport:
            return _login(host, port, user=user, key=key, pinned=pinned, host_key=host_key,
                          where=where, timeout=seconds)

        return cls(login(timeout), where, reconnect=login, health=health)

    @property
    def active(self) -> bool:
        return self._transport.is_active()

    @property
    def transport(self) -> paramiko.Transport:
        """The authenticated connection, for a channel of one's own (bench/boot.py
        measures the bare SSH round trip on it)."""
        return self._transport

    # -- channels -------------------------------------------------------------
    def _live_transport(self, deadline: float, command: str | None) -> paramiko.Transport:
        """The connection, logged in again (within the deadline) if it was lost."""
        if self._transport.is_active():
            return self._transport
        self.health.check(command)
        if self._reconnect is None:
            raise GuestError(f"the SSH connection to {self.description} is closed",
                             command=command)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout(command, "no time left to log in again")
        self._close_quietly()
        log.info("SSH connection to %s lost; logging in again", self.description)
        try:
            self._transport = self._reconnect(remaining)
        except GuestError:
            self.health.check(command, grace=1.0)
            if time.monotonic() >= deadline - 0.1:   # the login used up the caller's time
                raise self._timeout(command, "could not log in again in time") from None
            raise
        return self._transport

    def _open_channel(self, deadline: float, command: str | None,
                      request: Callable[[paramiko.Channel], None], what: str) -> paramiko.Channel:
        """A new session channel on which ``request`` (exec, subsystem) was accepted,
        all within ``deadline``; GuestCommandTimeout / GuestDied / GuestError otherwise.

        A channel open or request that timed out stays pending on the server: once a
        stopped guest runs again it answers it, and the connection's next open was seen
        to fail with "Channel closed". So after a timeout the connection is dropped (the
        next call logs in again), and a refused open is tried once more on a fresh login
        while time remains."""
        try:
            return self._open_channel_once(deadline, command, request, what)
        except GuestCommandTimeout:
            self._close_quietly()
            raise
        except GuestDied:
            raise
        except GuestError:
            self._close_quietly()
            if self._reconnect is None or time.monotonic() >= deadline:
                raise
            log.info("SSH: %s was refused; logging in again and retrying once", what)
            return self._open_channel_once(deadline, command, request, what)

    def _open_channel_once(self, deadline: float, command: str | None,
                           request: Callable[[paramiko.Channel], None],
                           what: str) -> paramiko.Channel:
        transport = self._live_transport(deadline, command)
        channel = None
        try:
            channel = transport.open_session(timeout=max(0.01, deadline - time.monotonic()))
            with _closed_at(deadline, channel) as fired:
                try:
                    request(channel)
                except (paramiko.SSHException, EOFError, OSError):
                    if fired.is_set():
                        raise self._timeout(command, f"the guest did not accept {what} "
                                            f"in time") from None
                    raise
            return channel
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if channel is not None:
                channel.close()
            self.health.check(command, grace=1.0)
            if time.monotonic() >= deadline or "Timeout opening channel" in str(exc):
                raise self._timeout(command, f"could not open {what}") from None
            raise GuestError(f"cannot open {what} ({self.description}): {exc}",
                             command=command) from None

    def _timeout(self, command: str | None, what: str, stdout: _Output | None = None,
                 stderr: _Output | None = None) -> GuestCommandTimeout:
        note = self.health.note()
        return GuestCommandTimeout(f"{what} ({self.description}){'; ' + note if note else ''}",
                                   command=command,
                                   stdout=stdout.text() if stdout else "",
                                   stderr=stderr.text() if stderr else "")

    # -- commands on the long-lived shell -----------------------------------
    def _open_shell(self, deadline: float, command: str) -> tuple[paramiko.Channel, str]:
        """The shell channel, and what to send before the first command of a new one."""
        if self._shell is None or self._shell.closed or self._shell.exit_status_ready() \
                or not self._transport.is_active():
            self._drop_shell()
            self._shell = self._open_channel(
                deadline, command, lambda channel: channel.exec_command(SHELL_COMMAND),
                "a shell channel")
            return self._shell, SHELL_PRELUDE
        return self._shell, ""

    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run ``command`` with ``sh`` on the long-lived channel (stdin is /dev/null)."""
        deadline = deadline_after(timeout)
        self._serial += 1
        mark = f"__wdfhil_end_{self._token}_{self._serial}__"
        # builtins only, one redirection (the stderr marker's)
        script = f"cd; eval {shlex.quote(command)}; echo {mark} $?; echo {mark} >&2\n"
        channel, prelude = self._open_shell(deadline, command)
        try:
            channel.settimeout(max(0.01, deadline - time.monotonic()))
            channel.sendall((prelude + script).encode())
        except socket.timeout:
            self._drop_shell()
            self.health.check(command)
            raise self._timeout(command, "the guest shell did not take the command in time")
        except (paramiko.SSHException, OSError) as exc:
            self._drop_shell()
            self.health.check(command, grace=1.0)
            raise GuestError(f"cannot send a command to the guest shell ({self.description}): "
                             f"{exc}", command=command) from None
        marker = mark.encode()
        stdout, stderr = _Output(self.max_kept_output), _Output(self.max_kept_output)
        end_out = end_err = -1

        def finished() -> bool:
            nonlocal end_out, end_err
            if end_out < 0:
                end_out = stdout.find_line(marker)
            if end_err < 0:
                end_err = stderr.find_line(marker)
            return end_out >= 0 and end_err >= 0

        done = self._pump(channel, stdout, stderr, finished, deadline, command)
        if done:
            status_line = bytes(stdout.data[end_out:]).split(b"\n", 1)[0]
            return self._result(command, int(status_line.split()[-1]), stdout, stderr,
                                end_out, end_err)
        ended = channel.eof_received or channel.closed
        # The command ended the shell (exit, syntax error): its status is the answer. The
        # server sends it after the EOF, so wait for it *before* closing our end (closing
        # sets the status event with no status: under load that raced and lost once).
        if ended:
            channel.status_event.wait(max(2.0, deadline - time.monotonic()))
        self._drop_shell()
        if ended and channel.exit_status >= 0:
            return self._result(command, channel.exit_status, stdout, stderr)
        self.health.check(command, grace=2.0)
        if ended:
            raise GuestError("the guest shell ended without an exit status (the SSH "
                             "connection broke)", command=command, stdout=stdout.text(),
                             stderr=stderr.text())
        raise self._timeout(command, f"no end after {timeout:g} s", stdout, stderr)

    def _result(self, command: str, code: int, stdout: _Output, stderr: _Output,
                end_out: int | None = None, end_err: int | None = None) -> CommandResult:
        if stdout.dropped or stderr.dropped:
            log.warning("guest command %r: kept %d of its output bytes, dropped %d of stdout "
                        "and %d of stderr", command[:60], self.max_kept_output,
                        stdout.dropped, stderr.dropped)
        return CommandResult(command, code, stdout.text(end_out), stderr.text(end_err),
                             stdout.dropped, stderr.dropped)

    def run_checked(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
        """``run`` that raises GuestError on a non-zero exit code; returns stdout."""
        return self.run(command, timeout).check()

    # -- one exec channel per command (the slow, simple way) ----------------
    def run_exec(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run ``command`` on a new exec channel, as ``ssh host CMD`` does."""
        deadline = deadline_after(timeout)

        def start(channel: paramiko.Channel) -> None:
            channel.exec_command(command)
            channel.shutdown_write()

        channel = self._open_channel(deadline, command, start, "an exec channel")
        stdout, stderr = _Output(self.max_kept_output), _Output(self.max_kept_output)
        try:
            done = self._pump(channel, stdout, stderr, lambda: False, deadline, command,
                              until_eof=True)
            if not done:
                self.health.check(command)
                raise self._timeout(command, f"no end after {timeout:g} s", stdout, stderr)
            if not channel.status_event.wait(max(0.1, deadline - time.monotonic())) \
                    or channel.exit_status < 0:
                self.health.check(command, grace=2.0)
                raise GuestError("the exec channel ended without an exit status",
                                 command=command, stdout=stdout.text(), stderr=stderr.text())
            return self._result(command, channel.exit_status, stdout, stderr)
        finally:
            channel.close()

    def _pump(self, channel: paramiko.Channel, stdout: _Output, stderr: _Output,
              finished: Callable[[], bool], deadline: float, command: str | None,
              until_eof: bool = False) -> bool:
        """Move channel output into the buffers until ``finished()`` (or EOF of
        both streams with ``until_eof``); False on deadline or an early close.
        Between two looks at the channel the guest's health is checked."""
        while True:
            progressed = False
            if channel.recv_ready():
                stdout.add(channel.recv(65536))
                progressed = True
            if channel.recv_stderr_ready():
                stderr.add(channel.recv_stderr(65536))
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
            if not select.select([channel], [], [], min(remaining, _WAIT_SLICE))[0]:
                self.health.check(command)

    def _drop_shell(self) -> None:
        if self._shell is not None:
            try:
                self._shell.close()
            except Exception:
                pass
            self._shell = None

    # -- files --------------------------------------------------------------
    def _sftp_client(self, deadline: float, what: str) -> paramiko.SFTPClient:
        if self._sftp is not None and not self._sftp.get_channel().closed \
                and self._transport.is_active():
            return self._sftp
        self._sftp = None

        def subsystem(channel: paramiko.Channel) -> None:
            channel.invoke_subsystem("sftp")
            channel.settimeout(max(0.01, deadline - time.monotonic()))
            holder.append(paramiko.SFTPClient(channel))  # the version exchange

        holder: list[paramiko.SFTPClient] = []
        self._open_channel(deadline, what, subsystem, "an SFTP channel")
        self._sftp = holder[0]
        return self._sftp

    def _transfer(self, what: str, timeout: float, move: Callable[[paramiko.SFTPClient], None]) -> None:
        deadline = deadline_after(timeout)
        sftp = self._sftp_client(deadline, what)
        channel = sftp.get_channel()
        channel.settimeout(max(0.01, deadline - time.monotonic()))
        with _closed_at(deadline, channel) as fired:
            try:
                move(sftp)
                return
            except (OSError, EOFError, paramiko.SSHException) as exc:
                error = exc
        if isinstance(error, (socket.timeout, EOFError)) or fired.is_set() \
                or channel.closed:
            self._sftp = None
            channel.close()
            self.health.check(what, grace=1.0)
            if fired.is_set() or isinstance(error, socket.timeout):
                raise self._timeout(what, f"not done within {timeout:g} s")
        raise GuestError(f"{what}: {error}") from None

    def put(self, local: str | Path, remote: str,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Copy a host file into the guest (within ``timeout`` seconds)."""
        self._transfer(f"copy {local} to the guest's {remote}", timeout,
                       lambda sftp: sftp.put(str(local), remote))

    def get(self, remote: str, local: str | Path,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Copy a guest file to the host (within ``timeout`` seconds)."""
        self._transfer(f"copy the guest's {remote} to {local}", timeout,
                       lambda sftp: sftp.get(remote, str(local)))

    def _close_quietly(self) -> None:
        for closer in (self._sftp, self._shell, self._transport):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:
                    log.debug("closing SSH part: %s", exc)
        self._sftp = None
        self._shell = None

    def close(self) -> None:
        self._reconnect = None
        self._close_quietly()


def _login(host: str, port: int, *, user: str, key: paramiko.PKey, pinned: paramiko.PKey,
           host_key: str, where: str, timeout: float) -> paramiko.Transport:
    """An authenticated transport, every step of it within ``timeout``."""
    sock = None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small packet a command
        transport = paramiko.Transport(sock)
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        transport.connect(hostkey=pinned, username=user, pkey=key)
        return transport
    except paramiko.SSHException as exc:
        if sock is not None:
            sock.close()
        raise GuestError(f"SSH login to {where} failed: {exc} (the guest's host key must "
                         f"be {host_key.split()[0]} {host_key.split()[1][:20]}...)") from None
    except (OSError, EOFError) as exc:
        if sock is not None:
            sock.close()
        raise GuestError(f"cannot connect to {where}: {exc}") from None


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")
