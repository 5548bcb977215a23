"""A kept guest made ready for the next scenario in milliseconds: :func:`warm_reset`.

Between two scenarios on one guest the expensive parts (QEMU, the booted
kernel, the SSH login, the translated code TCG has cached) are worth keeping;
what a scenario may have changed is put back:

- the device (host side, no guest round trip): what an admin RESET does
  (queued work dropped, header rewritten, rings zeroed, personality and the
  request ring reset) plus its data memory zeroed, counters cleared and the
  next scenario's fault plan (:meth:`DeviceCore.reset_for_next_user`);
- the pool window (where the framework's pools live) scrubbed: a hole
  punched in the shared RAM file, so it reads as zeros for the guest, QEMU and
  the device without a page touched;
- in the guest, one shell command of builtins but for what it finds to
  remove: agent servers a scenario left running are killed, files in /tmp
  and the agents' folders under /run removed; the emulated framework is per
  scenario already (the runner unloads its driver);
- then the health check, in the same command: the guest driver has no guest
  I/O in flight or leaked, and the agent sees the device's header READY.

Anything else is a :class:`WarmResetFailed`, and the caller restores the
guest from a saved state instead (:class:`~orchestrator.guest_sessions.GuestSessions`).
A warm reset does not undo what a scenario did elsewhere in the guest
(sysctls, /dev/shm, kernel memory): scenarios that need that pristine guest
get a restore (``GuestSessions(warm_reset=False)``).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from device_model.faults import FaultPlan
from orchestrator.sparse_file import zero_range
from wdfhil.errors import GuestError, WdfhilError

if TYPE_CHECKING:
    from orchestrator.dma_session import DmaSession

HEALTH_TIMEOUT_S = 30.0
_IO_MARK = "wdfhil-warm-reset-io"

# Builtins only unless there is something to remove (a fork costs ~9 ms under TCG).
_CLEANUP = (
    "for p in /proc/[0-9]*; do read -r c < $p/comm 2>/dev/null && "
    "[ \"$c\" = wdfhil-agent ] && kill -9 ${p#/proc/} 2>/dev/null; done; "
    "for f in /tmp/* /tmp/.[!.]* /run/wdfhil-agent-*; do [ -e \"$f\" ] && "
    "{ rm -rf /tmp/* /tmp/.[!.]* /run/wdfhil-agent-*; break; }; done"
)


class WarmResetFailed(GuestError):
    """The guest did not come out of a warm reset healthy; restore it instead."""


@dataclass(frozen=True)
class WarmResetResult:
    seconds: float
    device: str            # the guest's device node that was checked


def guest_reset_command(agent_argv: str, device_node: str) -> str:
    """The one guest command of a warm reset: clean up, then report health."""
    sysfs = shlex.quote(f"/sys/class/wdfhil/{PurePosixPath(device_node).name}")
    return (f"{_CLEANUP}; read -r n < {sysfs}/io_in_flight; read -r l < {sysfs}/io_leaked; "
            f"echo {_IO_MARK} \"$n\" \"$l\"; {agent_argv} info")


def check_health(stdout: str, exit_code: int, command: str) -> None:
    """WarmResetFailed unless the guest's answer to :func:`guest_reset_command`
    shows no guest I/O in flight or leaked and the device header READY."""
    lines = stdout.strip().splitlines()
    io = next((line.split()[1:] for line in lines if line.startswith(_IO_MARK)), None)
    if io != ["0", "0"]:
        raise WarmResetFailed(f"guest I/O not idle after the scenario (in flight, leaked: "
                              f"{io})", command=command, exit_code=exit_code, stdout=stdout)
    try:
        answer = json.loads(lines[-1])
    except (ValueError, IndexError):
        answer = {}
    header = (answer.get("result") or answer).get("header") if isinstance(answer, dict) else None
    status = header.get("status_name") if isinstance(header, dict) else None
    if exit_code != 0 or status != "READY" or not answer.get("ok"):
        raise WarmResetFailed(f"the guest does not see the device READY after the reset "
                              f"(status {status}, exit code {exit_code})", command=command,
                              exit_code=exit_code, stdout=stdout)


def warm_reset(session: "DmaSession", plan: FaultPlan | None = None) -> WarmResetResult:
    """Reset ``session``'s device, pool window and guest for the next scenario and
    check the guest's health; WarmResetFailed (a GuestError) if it is not healthy."""
    began = time.monotonic()
    vm, device, agent = session.vm, session.device, session.agent
    if vm is None or device is None or agent is None or not vm.running:
        raise WarmResetFailed("the session has no running guest with a device to reset")
    device.reset_for_next_user(plan)
    base, size = vm.config.pool.window
    try:
        zero_range(vm.ram_file, vm.config.ram_split.file_offset(base, size), size)
    except OSError as exc:
        raise WarmResetFailed(f"could not scrub the pool window: {exc}") from exc
    node = agent.device or "/dev/wdfhil0"
    argv = f"{shlex.quote(agent.agent_path)} --dev {shlex.quote(node)}"
    command = guest_reset_command(argv, node)
    try:
        result = vm.run(command, timeout=HEALTH_TIMEOUT_S)
    except WdfhilError as exc:
        raise WarmResetFailed(f"the guest did not answer the warm reset: {exc}",
                              command=command) from exc
    check_health(result.stdout, result.exit_code, command)
    return WarmResetResult(time.monotonic() - began, node)
