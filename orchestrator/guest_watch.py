"""Is the guest still alive? QEMU's process, its console and its run state.

A guest can die in ways no SSH channel or console marker reports: KVM's
"internal error" leaves QEMU running with its vCPUs stopped in run state
``internal-error`` for ever; a panicking kernel under ``-no-reboot`` makes
QEMU exit and the SSH connection simply drop. Whoever waits on a guest
(the boot's marker wait, every SSH command) asks :meth:`GuestWatch.failure`
between two looks at what it waits for. The cheap signs are read each time
(QEMU's exit status, the console's panic flag); the run state is asked of
QMP at once after an event that changes it (``STOP``, ``SHUTDOWN``,
``GUEST_PANICKED``) and otherwise at most every ``poll_interval`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wdfhil.errors import GuestDied, WdfhilError

if TYPE_CHECKING:
    from orchestrator.qemu_process import QemuProcess
    from orchestrator.qmp_session import QmpSession
    from orchestrator.serial_console import SerialConsole

# Run states from which a guest never comes back by itself.
FATAL_RUN_STATES = frozenset({"internal-error", "guest-panicked", "shutdown"})
_STATE_EVENTS = frozenset({"STOP", "SHUTDOWN", "GUEST_PANICKED", "RESUME"})
POLL_INTERVAL = 1.0


@dataclass(frozen=True)
class GuestFailure:
    """Why a guest is dead: a sentence, the run state if known, QEMU's exit status."""

    reason: str
    run_state: str | None = None
    exit_code: int | None = None


class GuestWatch:
    """The signs of life of one guest; ``failure()`` is None while it lives."""

    def __init__(self, process: "QemuProcess", console: "SerialConsole | None" = None,
                 qmp: "QmpSession | None" = None, *, name: str = "the guest",
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.name = name
        self.process = process
        self.console = console
        self.qmp = qmp
        self.poll_interval = poll_interval
        self.last_run_state: str | None = None
        self._next_poll = 0.0
        self._events_seen = 0
        self._failure: GuestFailure | None = None

    def failure(self, grace: float = 0.0) -> GuestFailure | None:
        """Why the guest is dead, or None; with ``grace``, keep looking that many
        seconds (a dropped connection is often a QEMU that is just exiting)."""
        deadline = time.monotonic() + grace
        while True:
            found = self._look()
            if found is not None or time.monotonic() >= deadline:
                return found
            self.process.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def _look(self) -> GuestFailure | None:
        if self._failure is not None:
            return self._failure
        code = self.process.poll()
        if code is not None and self.console is not None:
            self.console.wait_closed(2.0)  # read what QEMU wrote before it went (a panic)
        panicked = self.console is not None and self.console.panicked
        if panicked:
            if code is None:
                code = self.process.wait(5.0)  # -no-reboot: QEMU is about to exit
            self._failure = GuestFailure("the guest kernel panicked", self.last_run_state, code)
        elif code is not None:
            self._failure = GuestFailure(f"QEMU exited (status {code})", self.last_run_state, code)
        else:
            state = self._poll_run_state()
            if state in FATAL_RUN_STATES:
                self._failure = GuestFailure(f"the guest's run state became {state}", state)
        return self._failure

    def _poll_run_state(self) -> str | None:
        qmp = self.qmp
        if qmp is None:
            return None
        now = time.monotonic()
        events = qmp.events_since(self._events_seen)
        changed = any(e.get("event") in _STATE_EVENTS for e in events)
        self._events_seen += len(events)
        if not changed and now < self._next_poll:
            return self.last_run_state
        self._next_poll = now + self.poll_interval
        try:
            self.last_run_state = str(qmp.command("query-status", timeout=5.0)["status"])
        except WdfhilError:
            return self.last_run_state  # QEMU exiting: the next look sees its exit status
        return self.last_run_state

    def run_state(self) -> str | None:
        """The run state now (asked of QMP), or None if unknown."""
        self._next_poll = 0.0
        self._look()
        return self.last_run_state

    # -- orchestrator.ssh_session.GuestHealth ------------------------------------
    def check(self, command: str | None, grace: float = 0.0) -> None:
        """Raise GuestDied (with the console and QEMU log tails) if the guest is dead."""
        found = self.failure(grace)
        if found is None:
            return
        raise GuestDied(f"{self.name} died during the command: {found.reason}",
                        command=command, run_state=found.run_state,
                        qemu_exit_code=found.exit_code,
                        console_tail=self.console.tail(3000) if self.console else "",
                        log_tail=self.process.log_tail(2000))

    def note(self) -> str:
        state = self.run_state()
        return f"the guest's run state is {state}" if state and state != "running" else ""
