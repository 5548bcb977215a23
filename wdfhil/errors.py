"""The one error root of wdfhil and its few meaningful kinds.

Every error a user can meet derives from :class:`WdfhilError`, so a caller
can catch the project's failures without catching Python's own bugs. Each
kind carries what it needs to explain itself (file and line, the QEMU
command line and console tail, the descriptor field) rather than a bare
message.
"""

from __future__ import annotations

from typing import Any, Sequence


class WdfhilError(Exception):
    """Root of every error wdfhil raises on purpose."""


class ConfigError(WdfhilError):
    """Bad user input in a file (recipe, guest config, scenario) or an argument.

    The message names the file, the line and the field so the user can go
    straight to it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        value: Any = None,
    ) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.value = value
        self.reason = message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")


class ImageBuildError(WdfhilError):
    """A guest image could not be built (package not fetched, tool missing)."""


class LaunchError(WdfhilError):
    """QEMU did not start or the guest did not come up.

    Carries QEMU's exit code, its command line and the tails of its log and
    serial console, because a boot failure is only explained by those.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        command: Sequence[str] = (),
        log_tail: str = "",
        console_tail: str = "",
        run_state: str | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.run_state = run_state
        self.command = list(command)
        self.log_tail = log_tail
        self.console_tail = console_tail
        parts = [message]
        if exit_code is not None:
            parts.append(f"QEMU exit code: {exit_code}")
        if run_state is not None:
            parts.append(f"run state: {run_state}")
        if self.command:
            parts.append("command: " + " ".join(self.command))
        if log_tail:
            parts.append("--- QEMU log (tail) ---\n" + log_tail.rstrip())
        if console_tail:
            parts.append("--- serial console (tail) ---\n" + console_tail.rstrip())
        super().__init__("\n".join(parts))


class GuestError(WdfhilError):
    """A guest command or the guest agent failed or answered nonsense."""

    def __init__(self, message: str, *, command: str | None = None,
                 exit_code: int | None = None, stdout: str = "", stderr: str = "") -> None:
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        parts = [message]
        if command is not None:
            parts.append(f"command: {command}")
        if exit_code is not None:
            parts.append(f"exit code: {exit_code}")
        if stdout:
            parts.append("stdout: " + stdout.rstrip()[-2000:])
        if stderr:
            parts.append("stderr: " + stderr.rstrip()[-2000:])
        super().__init__("\n".join(parts))


class DeviceProtocolError(WdfhilError):
    """The device and its peer (QEMU or the guest) disagree on the protocol or ABI."""


class GuestDied(GuestError):
    """The guest stopped existing as a running machine while we used it: its
    kernel panicked, QEMU exited, or its run state became fatal
    (``internal-error``, ``guest-panicked``, ``shutdown``).

    Unlike a command that merely failed, nothing more can be asked of this
    guest; carries what explains it: why, the run state, QEMU's exit status
    and the tails of the console and of QEMU's log.
    """

    def __init__(self, message: str, *, command: str | None = None,
                 run_state: str | None = None, qemu_exit_code: int | None = None,
                 console_tail: str = "", log_tail: str = "", stdout: str = "",
                 stderr: str = "") -> None:
        self.reason = message
        self.run_state = run_state
        self.qemu_exit_code = qemu_exit_code
        self.console_tail = console_tail
        self.log_tail = log_tail
        details = [message]
        if run_state is not None:
            details.append(f"run state: {run_state}")
        details.append("QEMU still running" if qemu_exit_code is None
                       else f"QEMU exit status: {qemu_exit_code}")
        text = "\n".join(details)
        if log_tail:
            text += "\n--- QEMU log (tail) ---\n" + log_tail.rstrip()
        if console_tail:
            text += "\n--- serial console (tail) ---\n" + console_tail.rstrip()
        super().__init__(text, command=command, stdout=stdout, stderr=stderr)


class SnapshotCorrupted(ConfigError):
    """A saved guest's state file is empty, truncated or does not match its checksum."""
