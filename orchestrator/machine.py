"""The few things a caller needs of a running guest, whatever runs it.

Scenario helpers and the device glue talk to a guest through this small
interface: run a command, copy a file in or out, read the console, know
the reserved pool window. A QEMU VM (:class:`orchestrator.vm.VM`) is one
implementation; another backend (a remote machine, a different VMM) can be
added by implementing these methods, without touching the callers.
"""

from __future__ import annotations

import abc
from pathlib import Path
from types import TracebackType

from orchestrator.ssh_session import DEFAULT_COMMAND_TIMEOUT, CommandResult


class GuestMachine(abc.ABC):
    """A booted guest reachable for commands and files; a context manager."""

    @abc.abstractmethod
    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run a shell command in the guest; its exit code, stdout and stderr."""

    def run_checked(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
        """Run a command that must succeed; its stdout, else GuestError."""
        return self.run(command, timeout).check()

    @abc.abstractmethod
    def put(self, local: str | Path, remote: str) -> None:
        """Copy a host file into the guest."""

    @abc.abstractmethod
    def get(self, remote: str, local: str | Path) -> None:
        """Copy a guest file to the host."""

    @abc.abstractmethod
    def console_text(self) -> str:
        """The guest's serial console output so far."""

    @property
    @abc.abstractmethod
    def pool_window(self) -> tuple[int, int]:
        """``(base, size)`` of the guest-physical range reserved for pools."""

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the guest up (boot or restore); raises LaunchError on failure."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the guest and remove everything it left on the host; idempotent."""

    def __enter__(self) -> "GuestMachine":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
