"""The few things a caller needs of a running guest, whatever runs it.

Sessions, scenarios and tests talk to a guest through :class:`GuestMachine`:
run a command, copy a file in or out, map its memory, reach its monitor for
machine-level operations (hot-plug, physical reads), say what went wrong
(console and log tails, run state), and save it for a later restore. A QEMU
VM (:class:`orchestrator.vm.VM`) is one implementation; another backend (a
remote runner, another VMM) implements these methods and every caller works
unchanged. Framework concepts (the pool window) stay out: the guest config
that a machine was started from owns them (``machine.config.pool``).
"""

from __future__ import annotations

import abc
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Protocol

from orchestrator.ssh_session import DEFAULT_COMMAND_TIMEOUT, CommandResult

if TYPE_CHECKING:
    from orchestrator.guest_config import GuestConfig
    from orchestrator.snapshot import Snapshot
    from wdfhil.guest_ram import GuestRam


class Monitor(Protocol):
    """Machine-level control of a guest (QMP for QEMU): commands and events."""

    def command(self, name: str, **args: Any) -> Any:
        """Execute a monitor command; its return value."""

    def hmp(self, command_line: str) -> str:
        """A human-monitor command line (``info mtree``, ``xp``); its text."""

    def events(self) -> list[dict[str, Any]]:
        """The events received so far, oldest first."""

    def wait_event(self, name: str, timeout: float, *,
                   match: Callable[[dict[str, Any]], bool] | None = None,
                   start: int = 0) -> dict[str, Any] | None:
        """The first event ``name`` at index >= ``start`` matching ``match``, or None."""


class GuestMachine(abc.ABC):
    """A booted guest reachable for commands, files and memory; a context manager."""

    name: str
    config: "GuestConfig"

    # -- the guest's own view -------------------------------------------------
    @abc.abstractmethod
    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run a shell command in the guest; its exit code, stdout and stderr.

        Every wait keeps ``timeout`` (GuestCommandTimeout); a guest that dies
        meanwhile (panic, machine gone, fatal run state) raises GuestDied."""

    def run_checked(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
        """Run a command that must succeed; its stdout, else GuestError."""
        return self.run(command, timeout).check()

    @abc.abstractmethod
    def put(self, local: str | Path, remote: str,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Copy a host file into the guest."""

    @abc.abstractmethod
    def get(self, remote: str, local: str | Path,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Copy a guest file to the host."""

    # -- the machine around it ------------------------------------------------
    @abc.abstractmethod
    def open_memory(self) -> "GuestRam":
        """The guest's RAM mapped into this process (the caller closes it)."""

    @property
    @abc.abstractmethod
    def monitor(self) -> Monitor:
        """Machine-level control: hot-plug, physical reads, run state."""

    @abc.abstractmethod
    def console_text(self) -> str:
        """The guest's serial console output so far."""

    @abc.abstractmethod
    def diagnose(self) -> str:
        """What explains a failure: run state, console tail, the machine's log tail."""

    @abc.abstractmethod
    def save(self, path: str | Path | None = None) -> "Snapshot":
        """Save the running guest; a new machine can start from the snapshot."""

    # -- lifecycle ----------------------------------------------------------------
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
