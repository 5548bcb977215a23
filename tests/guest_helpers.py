"""Guest-side helpers of the guest-I/O end-to-end tests (``tests/e2e/test_guest_io*.py`` and
``tests/e2e/test_driver_io*.py``): the guest module's sysfs counters, guest agent
processes in the background (start one, its JSON answer going to a file in the guest, and
wait for that answer), and the round trip across 4 GiB of the q35-3g-highmem tests."""

from __future__ import annotations

import json
import shlex
import time

from orchestrator.agent_client import GuestBuffer, IoResult, Step, Verification, pattern_bytes

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


def write_read_across_4g(session, source_where: str, target_where: str,
                         size: int = (1 << 20) + 77, seed: int = 12
                         ) -> tuple[GuestBuffer, GuestBuffer]:
    """A page-crossing buffer (from 4095 bytes into its first page) written to the device
    from one side of 4 GiB and read back into a buffer on the other side (from byte 1),
    checked in the guest, then through QEMU's own view of the read buffer's first and
    last pieces (QMP xp). The written and the read buffer, for the request checks."""
    results = session.agent.run(
        Step.alloc("src", size, offset=4095, where=source_where), Step.fill("src", seed),
        Step.io_write("src", offset=0), Step.alloc("dst", size, offset=1, where=target_where),
        Step.memset("dst", 0), Step.io_read("dst", offset=0), Step.verify("dst", seed))
    src, dst = GuestBuffer.from_result(results[0]), GuestBuffer.from_result(results[3])
    by_place = {source_where: src, target_where: dst}
    assert by_place["high"].above_4g and by_place["low"].below_4g
    assert IoResult.from_result(results[2]).result == size
    assert IoResult.from_result(results[5]).result == size
    assert Verification.from_result(results[6]).match
    assert session.read_physical(dst.gpa, 4095) == pattern_bytes(seed, 4095)
    tail = dst.segments[-1]
    assert session.read_physical(tail.gpa, tail.length) == pattern_bytes(
        seed, tail.length, start=size - tail.length)
    return src, dst
