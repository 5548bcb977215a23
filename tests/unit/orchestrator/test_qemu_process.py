"""QEMU processes: the stop ladder, and death with the parent even on SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from orchestrator.qemu_process import QemuProcess
from orchestrator.qmp_session import QmpSession

IDLE_QEMU = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S"]


def process_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for a reaper that is not us."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return False


def idle_qemu_with_monitor(tmp_path) -> tuple[QemuProcess, socket.socket]:
    """A started idle QEMU and our end of its QMP socket pair."""
    ours, theirs = socket.socketpair()
    process = QemuProcess(IDLE_QEMU + ["-chardev", f"socket,id=q,fd={theirs.fileno()}",
                                       "-mon", "chardev=q,mode=control"],
                          log_path=tmp_path / "qemu.log", pass_fds=(theirs.fileno(),))
    process.start()
    theirs.close()
    return process, ours


def test_qmp_quit_is_the_first_rung(tmp_path):
    process, ours = idle_qemu_with_monitor(tmp_path)
    qmp = QmpSession("quit-test")
    try:
        qmp.connect(ours)
        assert process.alive()
        assert process.stop(lambda: qmp.command("quit")) == 0  # QEMU's own clean exit
    finally:
        qmp.close()
    assert not process.alive()


def test_sigterm_when_there_is_no_qmp(tmp_path):
    process, ours = idle_qemu_with_monitor(tmp_path)
    ours.settimeout(30)
    assert b"QMP" in ours.recv(4096)  # up, with its signal handlers in place
    code = process.stop(None)
    ours.close()
    # SIGTERM ended it: QEMU's handler exits 0 ("terminating on signal 15"), or the
    # default action if it arrived before QEMU installed the handler; never SIGKILL
    assert code in (0, -signal.SIGTERM) and not process.alive()


def test_sigkill_when_sigterm_is_ignored(tmp_path):
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(600)"]
    process = QemuProcess(stubborn, log_path=tmp_path / "log")
    process.start()
    deadline = time.monotonic() + 30
    while "ready" not in process.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.stop(None, term_grace=0.5) == -signal.SIGKILL


def test_child_dies_when_its_parent_is_killed(tmp_path):
    """SIGKILL of the process that started QEMU leaves no QEMU behind."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from orchestrator.qemu_process import QemuProcess
        process = QemuProcess({IDLE_QEMU!r}, log_path=Path({str(tmp_path / 'qemu.log')!r}))
        process.start()
        print(process.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(parent.stdout.readline())
        assert not process_gone(qemu_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        assert wait_gone(qemu_pid), "QEMU survived the SIGKILL of its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_failed_quit_request_is_not_waited_out(tmp_path):
    """A Ctrl-C early in a boot (QMP not up yet) used to wait the whole quit grace
    for a QEMU nobody had asked to quit; now SIGTERM follows at once."""
    process, ours = idle_qemu_with_monitor(tmp_path)
    waits = []
    real_wait = process.wait
    process.wait = lambda timeout: (waits.append(timeout), real_wait(timeout))[1]

    def quit_fails():
        raise ConnectionError("QMP is not connected")

    code = process.stop(quit_fails, quit_grace=300)
    ours.close()
    assert 300 not in waits and code in (0, -signal.SIGTERM) and not process.alive()


def test_the_spawn_wrapper_runs_nothing_once_its_parent_is_gone(tmp_path):
    """The window between spawn and the death signal: a wrapper whose parent is no
    longer the process it was told (``$0``) exits instead of starting QEMU."""
    from orchestrator.qemu_process import _death_watch_wrapper

    wrapper = _death_watch_wrapper()
    if not wrapper:
        import pytest
        pytest.skip("no setpriv here: the preexec_fn path is used")
    marker = tmp_path / "ran"
    command = ["/bin/sh", "-c", f"touch {marker}"]
    gone = subprocess.run([*wrapper, "1", *command], check=False)     # pid 1 is not our parent
    assert gone.returncode == 125 and not marker.exists()
    here = subprocess.run([*wrapper, str(os.getpid()), *command], check=False)
    assert here.returncode == 0 and marker.exists()


def test_the_reported_command_line_is_qemus_own(tmp_path):
    process = QemuProcess(["sleep", "30"], log_path=tmp_path / "log")
    process.start()
    try:
        assert process.argv == ["sleep", "30"]
        deadline = time.monotonic() + 30          # the wrapper becomes sleep (same pid)
        while os.path.basename(os.readlink(f"/proc/{process.pid}/exe")) != "sleep":
            assert time.monotonic() < deadline, "the wrapper never became the command"
            time.sleep(0.01)
        with open(f"/proc/{process.pid}/cmdline") as cmdline:
            assert cmdline.read().split("\0")[1:2] == ["30"]
    finally:
        process.stop(None, term_grace=1)
