"""orchestrator.qemu_fds on this process's own fd table (real eventfds and files)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator import qemu_fds
from wdfhil.errors import DeviceProtocolError



def _kernel_shows_eventfd_ids() -> bool:
    fd = os.eventfd(0)
    try:
        return qemu_fds.own_eventfd_ids([fd]) is not None
    finally:
        os.close(fd)


needs_ids = pytest.mark.skipif(not _kernel_shows_eventfd_ids(),
                               reason="this kernel shows no eventfd-id in fdinfo")


@needs_ids
def test_finds_the_numbers_a_process_holds_our_eventfds_under():
    fds = [os.eventfd(0) for _ in range(3)]
    try:
        stale = qemu_fds.StaleVectorFds(os.getpid())
        assert stale.vector_numbers(qemu_fds.own_eventfd_ids(fds), timeout=1.0) == fds
    finally:
        for fd in fds:
            os.close(fd)


@needs_ids
def test_waiting_for_eventfds_the_process_does_not_hold_times_out():
    fd = os.eventfd(0)
    ids = qemu_fds.own_eventfd_ids([fd])
    os.close(fd)
    assert qemu_fds.numbers_of_eventfds(os.getpid(), ids) == {}


def test_a_stale_number_reused_by_another_fd_is_refused():
    read_end, write_end = os.pipe()
    try:
        stale = qemu_fds.StaleVectorFds(os.getpid(), numbers={read_end, write_end})
        with pytest.raises(DeviceProtocolError, match=rf"\[{read_end}\].*crash QEMU"):
            stale.check_plug([write_end])     # write_end replaced, read_end is another fd
        assert stale.numbers == {read_end}    # still stale: no new handler replaced it
    finally:
        os.close(read_end)
        os.close(write_end)


def test_stale_numbers_replaced_or_not_open_are_safe():
    read_end, write_end = os.pipe()
    os.close(write_end)
    not_open = 1 << 20                        # above any fd this process has
    try:
        stale = qemu_fds.StaleVectorFds(os.getpid(), numbers={read_end, not_open})
        stale.check_plug([read_end])          # replaced, and nothing at the other
        assert stale.numbers == {not_open}
        stale.unplugged([read_end])
        assert stale.numbers == {read_end, not_open}
    finally:
        os.close(read_end)


def test_without_fd_handlers_nothing_is_remembered():
    stale = qemu_fds.StaleVectorFds(os.getpid(), leaves_handlers=False)
    stale.unplugged([5, 6, 7])
    assert stale.numbers == set()


def test_released_once_the_other_process_closed_its_copy(tmp_path):
    path = tmp_path / "shm"
    path.write_bytes(b"x")
    mine = os.open(path, os.O_RDONLY)
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os, sys; sys.stdin.read(1); os.close({mine}); "
                               "print('closed', flush=True); sys.stdin.read(1)"],
        pass_fds=[mine], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    identity = qemu_fds.file_identity(mine)
    try:
        assert qemu_fds.holds_file(child.pid, identity)
        with pytest.raises(DeviceProtocolError, match="still holds"):
            qemu_fds.wait_until_released(child.pid, identity, timeout=0.05)
        child.stdin.write("c")
        child.stdin.flush()
        assert child.stdout.readline() == "closed\n"
        qemu_fds.wait_until_released(child.pid, identity, timeout=5.0)
        assert not qemu_fds.holds_file(child.pid, identity)
    finally:
        child.kill()
        child.wait()
        os.close(mine)
