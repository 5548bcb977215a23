"""Guest-side helpers of the guest-I/O end-to-end tests (``tests/e2e/test_guest_io.py`` and
``tests/e2e/test_driver_io.py``): the guest module's sysfs counters, and guest agent
processes in the background (start one, its JSON answer going to a file in the guest, and
wait for that answer)."""

from __future__ import annotations

import json
import shlex
import time

WAIT_S = 120.0
SYSFS = "/sys/class/wdfhil/wdfhil0"     # the guest module's counters


def guest_counter(session, name: str) -> int:
    return int(session.vm.run(f"cat {SYSFS}/{name}").check().strip())


def wait_guest_counter(session, name: str, value: int, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while (now := guest_counter(session, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {now}, expected {value}"
        time.sleep(0.2)


def start_agent(session, *steps: str, output: str) -> int:
    """An agent process in the background (its JSON answer goes to ``output``); its pid.
    One step: that command; several: ``run`` them in one process."""
    args = shlex.quote(steps[0]) if len(steps) == 1 else "run " + shlex.quote("; ".join(steps))
    started = session.vm.run(f"rm -f {output}; setsid /usr/bin/wdfhil-agent {args} "
                             f">{output} 2>&1 </dev/null & echo $!").check()
    return int(started.split()[-1])


def agent_answer(session, output: str, timeout: float = WAIT_S) -> dict:
    """The background agent's answer, once it has written it (polled: it is a file)."""
    deadline = time.monotonic() + timeout
    while True:
        text = session.vm.run(f"cat {output} 2>/dev/null").stdout.strip()
        if text:
            return json.loads(text.splitlines()[-1])
        assert time.monotonic() < deadline, f"no answer in {output}"
        time.sleep(0.2)
