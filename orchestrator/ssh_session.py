"""Commands and files in the guest over SSH (paramiko).

Commands run on a long-lived shell on one SSH channel (the protocol of
:class:`~orchestrator.guest_shell.ShellCommands`); a fresh exec channel per
command (:meth:`SshSession.run_exec`) stays available as the reference the
benchmark compares against, and files move over SFTP. The guest's host key is
pinned to the one the image builder generated; anything else is refused.

Every operation honours the caller's timeout, also against a guest that
stopped answering (paramiko's own waits for a channel open, an exec or a
subsystem request have no deadline, or an hour's): a channel still waiting
at the deadline is closed under the waiter. A lost connection is logged into
again within the caller's deadline.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import paramiko

from orchestrator.guest_shell import (DEFAULT_COMMAND_TIMEOUT, MAX_KEPT_OUTPUT, SHELL_COMMAND,
                                      SHELL_PRELUDE, CommandResult, GuestCommandTimeout,
                                      GuestHealth, ShellCommands, _Output, deadline_after)
from wdfhil.errors import GuestDied, GuestError

__all__ = ["DEFAULT_COMMAND_TIMEOUT", "MAX_KEPT_OUTPUT", "SHELL_COMMAND", "CommandResult",
           "GuestCommandTimeout", "GuestHealth", "SshSession", "deadline_after",
           "parse_host_key", "wait_for_ssh_banner"]

log = logging.getLogger(__name__)


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


class SshSession(ShellCommands):
    """An authenticated SSH connection to a guest."""

    _send_errors = (paramiko.SSHException, OSError)

    def __init__(self, transport: paramiko.Transport, description: str, *,
                 reconnect: Callable[[float], paramiko.Transport] | None = None,
                 health: GuestHealth | None = None) -> None:
        super().__init__(health)
        self._transport = transport
        self.description = description
        self._reconnect = reconnect
        self._sftp: paramiko.SFTPClient | None = None

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
