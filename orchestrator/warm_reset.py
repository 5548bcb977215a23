"""A kept guest made ready for the next scenario in milliseconds: :func:`warm_reset`.

Between two scenarios on one guest the expensive parts (QEMU, the booted
kernel, the SSH login, the translated code TCG has cached) are worth keeping;
what a scenario may have changed is put back:

- the device (host side, no guest round trip): what an admin RESET does
  (queued work dropped, header rewritten, rings zeroed, personality and the
  request ring reset) plus its data memory zeroed, counters cleared and the
  next scenario's fault plan (:meth:`DeviceCore.reset_for_next_user`);
- the pool window (where the framework's pools live) and the low DMA window
  (map registers, common buffers below 4 GiB) scrubbed: holes
  punched in the shared RAM file, so it reads as zeros for the guest, QEMU and
  the device without a page touched;
- in the guest, one shell command of builtins but for what it finds to
  remove: agent servers a scenario left running are killed, files in /tmp
  and the agents' folders under /run removed; the emulated framework is per
  scenario already (the runner unloads its driver);
- then the health check: the device READY with no internal error (host), and
  in the same guest command the guest driver still bound to it with no guest
  I/O in flight or leaked (its sysfs counters); ``agent_info=True`` adds the
  agent's view of the header (one more process in the guest).

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

from device_model.abi import DeviceStatus
from device_model.faults import FaultPlan
from orchestrator.sparse_file import zero_range
from wdfhil.errors import GuestError, WdfhilError

if TYPE_CHECKING:
    from orchestrator.dma_session import DmaSession
    from orchestrator.vm import VM

HEALTH_TIMEOUT_S = 30.0
DEFAULT_DEVICE_NODE = "/dev/wdfhil0"
_IO_MARK = "wdfhil-warm-reset-io"

# Builtins only unless there is something to remove (a fork costs ~9 ms under TCG;
# scanning /proc for agents ~30 ms, so only when an agent server's folder is left).
_KILL_AGENTS = ("for p in /proc/[0-9]*; do read -r c < $p/comm 2>/dev/null && "
                "[ \"$c\" = wdfhil-agent ] && kill -9 ${p#/proc/} 2>/dev/null; done")
_LEFTOVERS = "/tmp/* /tmp/.[!.]* /run/wdfhil-agent-*"
_CLEANUP = (f"for f in /run/wdfhil-agent-*/; do [ -d \"$f\" ] && {{ {_KILL_AGENTS}; break; }}; "
            f"done; for f in {_LEFTOVERS}; do [ -e \"$f\" ] && "
            f"{{ rm -rf {_LEFTOVERS}; break; }}; done")


class WarmResetFailed(GuestError):
    """The guest did not come out of a warm reset healthy; restore it instead."""


@dataclass(frozen=True)
class WarmResetResult:
    seconds: float
    device: str            # the guest's device node that was checked


def guest_reset_command(device_node: str, agent_argv: str | None = None) -> str:
    """The one guest command of a warm reset: clean up, then report the guest
    driver's state (and, with ``agent_argv``, the device header as the agent sees it)."""
    sysfs = shlex.quote(f"/sys/class/wdfhil/{PurePosixPath(device_node).name}")
    command = (f"{_CLEANUP}; read -r n < {sysfs}/io_in_flight && "
               f"read -r l < {sysfs}/io_leaked && echo {_IO_MARK} \"$n\" \"$l\"")
    return f"{command}; {agent_argv} info" if agent_argv else command


def check_health(stdout: str, exit_code: int, command: str, *, agent_info: bool) -> None:
    """WarmResetFailed unless the guest's answer to :func:`guest_reset_command`
    shows its driver bound with no guest I/O in flight or leaked (and, with
    ``agent_info``, the device header READY in the agent's view)."""
    lines = stdout.strip().splitlines()
    io = next((line.split()[1:] for line in lines if line.startswith(_IO_MARK)), None)
    if io != ["0", "0"]:
        raise WarmResetFailed(f"the guest driver is not idle after the scenario (I/O in "
                              f"flight, leaked: {io or 'no device node'})", command=command,
                              exit_code=exit_code, stdout=stdout)
    if not agent_info:
        return
    try:
        answer = json.loads(lines[-1])
    except (ValueError, IndexError):
        answer = {}
    header = answer.get("header") if isinstance(answer, dict) else None
    status = header.get("status_name") if isinstance(header, dict) else None
    if exit_code != 0 or status != "READY" or not answer.get("ok"):
        raise WarmResetFailed(f"the guest does not see the device READY after the reset "
                              f"(status {status}, exit code {exit_code})", command=command,
                              exit_code=exit_code, stdout=stdout)


def scrub_reserved_windows(vm: "VM") -> None:
    """Zeros in the guest's reserved windows, the pool window and the low DMA window
    (RAM the guest kernel never uses; they hold whatever was there before the kernel
    reserved them, then what the last scenario's framework and devices put there),
    through the RAM file."""
    config = vm.config
    for window in (config.pool, config.low_dma_window):
        base, size = window.window
        zero_range(vm.ram_file, config.ram_split.file_offset(base, size), size)


def warm_reset(session: "DmaSession", plan: FaultPlan | None = None, *,
               agent_info: bool = False) -> WarmResetResult:
    """Reset ``session``'s device, pool window and guest for the next scenario and
    check the guest's health; WarmResetFailed (a GuestError) if it is not healthy.
    ``agent_info``: also run the agent (``info``: one process, ~15-35 ms under TCG)
    to see the header through the guest's own mapping of BAR2."""
    began = time.monotonic()
    vm, device, agent = session.vm, session.device, session.agent
    if vm is None or device is None or agent is None or not vm.running:
        raise WarmResetFailed("the session has no running guest with a device to reset")
    device.reset_for_next_user(plan)
    if device.status is not DeviceStatus.READY or device.errors:
        raise WarmResetFailed(f"the device is {device.status.name} after its reset "
                              f"(errors: {device.errors[:3]})")
    try:
        scrub_reserved_windows(vm)
    except OSError as exc:
        raise WarmResetFailed(f"could not scrub the reserved windows: {exc}") from exc
    node = agent.device or DEFAULT_DEVICE_NODE
    argv = f"{shlex.quote(agent.agent_path)} --dev {shlex.quote(node)}" if agent_info else None
    command = guest_reset_command(node, argv)
    try:
        result = vm.run(command, timeout=HEALTH_TIMEOUT_S)
    except WdfhilError as exc:
        raise WarmResetFailed(f"the guest did not answer the warm reset: {exc}",
                              command=command) from exc
    check_health(result.stdout, result.exit_code, command, agent_info=agent_info)
    return WarmResetResult(time.monotonic() - began, node)
