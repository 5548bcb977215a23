"""Guest commands on a long-lived shell, whatever carries the shell's streams.

Starting a process in a TCG guest costs ~10 ms and opening an SSH channel
20-70 ms, while a command typed into a shell that is already running returns
in a few milliseconds. So a session keeps one long-lived ``/bin/sh`` whose
script is the channel (stdout and stderr stay apart, nothing is echoed) and
feeds it one command at a time through ``eval``; after the command the shell
prints an end marker with the exit status on stdout and one on stderr. The
marker carries a random token, so command output cannot fake it.

Under TCG every guest context switch flushes the emulated TLB, so what the
shell does between two switches is what a command costs: no subshell (a
fork costs ~9 ms), and no per-command redirection. The shell reads its
commands from the channel through ``/proc/self/fd/3`` while its own stdin
is ``/dev/null`` for good, so a command never sees the command stream and
nothing is redirected per command (``</dev/null`` on each command was a
quarter of the guest's time per command). Each command starts in the home
folder like an exec channel, but shell variables and options persist within
a session; a command that ends the shell (``exit 3``, a syntax error) simply
reports the shell's exit status, and the next command gets a new shell.

:class:`ShellCommands` is that protocol, written once; a transport gives it
a channel with paramiko's ``Channel`` interface (``sendall``, ``recv`` and
``recv_stderr`` with their ``*_ready``, ``eof_received``, ``closed``, the exit
status): an SSH session channel (:mod:`orchestrator.ssh_session`) or the
guest's serial command relay (:mod:`orchestrator.serial_shell`). Every command
honours the caller's timeout, also against a guest that stopped answering;
while waiting, the session asks its :class:`GuestHealth` (the VM) whether the
guest died, so a panic, a QEMU exit or a fatal run state raises
:class:`~wdfhil.errors.GuestDied` at once instead of a timeout or a made-up
exit code. Output kept on the host is bounded (:data:`MAX_KEPT_OUTPUT` a
stream); what is dropped is said.
"""

from __future__ import annotations

import logging
import math
import secrets
import select
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from wdfhil.errors import GuestError

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


class ShellCommands:
    """Commands on a long-lived shell; subclasses open the shell's channel."""

    description: str = "the guest"
    # what a failed send raises besides a timeout (the transport's own errors too)
    _send_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, health: GuestHealth | None = None) -> None:
        self.health: GuestHealth = health or _NoHealth()
        self.max_kept_output = MAX_KEPT_OUTPUT
        self._shell: Any = None
        self._token = secrets.token_hex(8)
        self._serial = 0

    def _open_shell(self, deadline: float, command: str) -> tuple[Any, str]:
        """The shell channel, and what to send before the first command of a new one."""
        raise NotImplementedError

    def _wait_readable(self, channel: Any, seconds: float) -> bool:
        """Wait up to ``seconds`` for output or an end on ``channel``; True if some came."""
        return bool(select.select([channel], [], [], seconds)[0])

    def _drop_shell(self) -> None:
        if self._shell is not None:
            try:
                self._shell.close()
            except Exception:
                pass
            self._shell = None

    def _timeout(self, command: str | None, what: str, stdout: _Output | None = None,
                 stderr: _Output | None = None) -> GuestCommandTimeout:
        note = self.health.note()
        return GuestCommandTimeout(f"{what} ({self.description}){'; ' + note if note else ''}",
                                   command=command,
                                   stdout=stdout.text() if stdout else "",
                                   stderr=stderr.text() if stderr else "")

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
        except self._send_errors as exc:
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
            raise GuestError("the guest shell ended without an exit status (the "
                             f"connection broke: {self.description})", command=command,
                             stdout=stdout.text(),
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

    def _pump(self, channel: Any, stdout: _Output, stderr: _Output,
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
            if not self._wait_readable(channel, min(remaining, _WAIT_SLICE)):
                self.health.check(command)


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")
