"""QEMU's file descriptors as ``/proc`` shows them, for a sound re-plug of the device.

Why this exists: QEMU 7.2's ``ivshmem-doorbell``, when it cannot use KVM irqfds (TCG),
watches each of its MSI-X vector eventfds with ``qemu_set_fd_handler`` and never
removes that handler on unplug: ``ivshmem_exit`` closes the eventfds and frees the
handler's data, the handler stays registered on the fd *number*. A later device that
gets one of those numbers for another of its fds (say the device peer's doorbell
eventfd) makes QEMU call the freed handler when that fd turns readable: SIGSEGV in
``object_dynamic_cast_assert`` under ``aio_dispatch`` (docs/decisions.md).

A re-plug is safe when each number with a stale handler is taken by the new device's
own vector eventfd (``qemu_set_fd_handler`` on the same number replaces the stale
handler). The kernel hands out the lowest free numbers, so that happens when the old
device let go of all its fds before the new one is added: QEMU closes the BAR2 memfd
last, an RCU grace period or two after ``DEVICE_DELETED`` (:func:`wait_until_released`).
:class:`StaleVectorFds` remembers the numbers per QEMU process and checks each plug
(:meth:`StaleVectorFds.check_plug`), so an unsafe numbering is a clear error before the
guest rings anything, never a QEMU crash later.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable

from wdfhil.errors import DeviceProtocolError

POLL_S = 0.002   # a look at QEMU's fd table costs ~0.3 ms (30-odd readlinks)


def _eventfd_id(fdinfo_path: str) -> int | None:
    """The kernel's id of an eventfd (``eventfd-id:`` in fdinfo, Linux >= 6.0), or None."""
    try:
        with open(fdinfo_path) as info:
            for line in info:
                if line.startswith("eventfd-id:"):
                    return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def own_eventfd_ids(fds: Iterable[int]) -> list[int] | None:
    """The eventfd ids of this process's ``fds``; None if the kernel does not show them."""
    ids = [_eventfd_id(f"/proc/self/fdinfo/{fd}") for fd in fds]
    return None if any(i is None for i in ids) else [int(i) for i in ids]   # type: ignore[arg-type]


def open_numbers(pid: int) -> set[int]:
    """The fd numbers process ``pid`` has open (empty once it is gone)."""
    try:
        return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return set()


def numbers_of_eventfds(pid: int, ids: list[int]) -> dict[int, int]:
    """eventfd id -> the fd number process ``pid`` holds it under (those it holds)."""
    wanted = set(ids)
    found: dict[int, int] = {}
    for number in open_numbers(pid):
        try:
            if os.readlink(f"/proc/{pid}/fd/{number}") != "anon_inode:[eventfd]":
                continue
        except OSError:
            continue
        eid = _eventfd_id(f"/proc/{pid}/fdinfo/{number}")
        if eid in wanted:
            found[eid] = number
    return found


def file_identity(fd: int) -> tuple[int, int]:
    """(device, inode) of our ``fd``: how another process's copy of it is recognised
    (also after we closed ours)."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def holds_file(pid: int, identity: tuple[int, int]) -> bool:
    """Whether process ``pid`` has the file with ``identity`` (:func:`file_identity`) open."""
    for number in open_numbers(pid):
        try:
            theirs = os.stat(f"/proc/{pid}/fd/{number}")
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == identity:
            return True
    return False


def wait_until_released(pid: int, identity: tuple[int, int], timeout: float) -> None:
    """Wait until QEMU ``pid`` closed its copy of the file with ``identity`` (the
    device's BAR2 memfd: the last fd an unplugged ivshmem lets go of)."""
    deadline = time.monotonic() + timeout
    while holds_file(pid, identity):
        if time.monotonic() > deadline:
            raise DeviceProtocolError(
                f"QEMU (pid {pid}) still holds the unplugged device's shared memory "
                f"{timeout:g} s after device_del")
        time.sleep(POLL_S)


@dataclass
class StaleVectorFds:
    """The fd numbers of one QEMU process that carry a stale ivshmem vector handler.

    ``leaves_handlers``: False under KVM, where ivshmem routes its vectors through
    irqfds and registers no fd handlers."""

    pid: int
    leaves_handlers: bool = True
    numbers: set[int] = field(default_factory=set)

    def vector_numbers(self, ids: list[int], timeout: float) -> list[int]:
        """QEMU's numbers for the eventfds (by id, :func:`own_eventfd_ids`) we sent as
        a device's own vectors, once QEMU took them all (it reads them after realize)."""
        deadline = time.monotonic() + timeout
        while len(found := numbers_of_eventfds(self.pid, ids)) < len(ids):
            if time.monotonic() > deadline:
                raise DeviceProtocolError(
                    f"QEMU (pid {self.pid}) took {len(found)} of the device's {len(ids)} "
                    f"MSI-X eventfds within {timeout:g} s")
            time.sleep(POLL_S)
        return [found[i] for i in ids]

    def check_plug(self, vector_numbers: list[int]) -> None:
        """After a plug: every stale number QEMU has open again must be one of the new
        device's vector numbers (whose handler replaced the stale one)."""
        replaced = set(vector_numbers)
        unsafe = sorted((self.numbers - replaced) & open_numbers(self.pid))
        self.numbers -= replaced
        if unsafe:
            raise DeviceProtocolError(
                f"QEMU fd number(s) {unsafe} still carry the MSI-X handler of an unplugged "
                "ivshmem device (QEMU 7.2 without irqfd never removes it) and now hold "
                "another fd of the new device: using it would crash QEMU. Plug it into a "
                "fresh guest (restore) instead")

    def unplugged(self, vector_numbers: list[int]) -> None:
        """The device with these vector numbers left: its handlers stay behind."""
        if self.leaves_handlers:
            self.numbers |= set(vector_numbers)
