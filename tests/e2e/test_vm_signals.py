"""Interrupted and failing runs leave nothing: Ctrl-C in a process running a
VM, and a guest kernel that panics while booting."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.cleanup import owned_folders, qemu_children
from orchestrator.guest_config import load_guest_config
from orchestrator.vm import VM
from wdfhil.errors import LaunchError

pytestmark = pytest.mark.e2e


def test_sigint_in_a_process_running_a_vm_removes_everything(guest_image, vm_child):
    child = vm_child(guest_image, "pc-256m", boot_timeout=300)
    qemu_pid, run_dir = child.wait_ready(360)
    assert run_dir.is_dir() and (run_dir / "ram").is_file()
    os.kill(child.pid, signal.SIGINT)
    child.finish()
    assert "KeyboardInterrupt" in child.stderr
    assert not os.path.exists(f"/proc/{qemu_pid}/exe"), "QEMU outlived the interrupted run"
    assert not qemu_children(child.pid)
    assert not run_dir.exists() and not owned_folders(child.pid)


def test_a_panicking_guest_kernel_fails_the_launch_with_its_console(guest_image):
    config = load_guest_config("pc-256m").with_changes(kernel_args=("rdinit=/no-such-init",))
    with pytest.raises(LaunchError) as info:
        with VM(config, guest_image, boot_timeout=300):
            pytest.fail("the guest should not have come up")
    error = info.value
    assert "Kernel panic" in error.console_tail
    assert "panicked" in str(error) or "QEMU exited" in str(error)
    assert "rdinit=/no-such-init" in " ".join(error.command)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8, 2.0])
def test_ctrl_c_at_any_moment_of_a_cli_boot_exits_cleanly(delay):
    """Ctrl-C early in `wdfhil vm run` (imports, probe, QEMU starting, QMP not up yet,
    booting): exit 130, no traceback (asyncio's included), nothing left behind. It
    used to wait out the 10 s QMP quit grace after a quit that had already failed."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    wdfhil = Path(sys.executable).with_name("wdfhil")
    if not wdfhil.exists():
        pytest.skip("the wdfhil script is not installed in this environment")
    child = subprocess.Popen([str(wdfhil), "vm", "run", "--", "true"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    if child.returncode == 1 and "init_import_site" in err:
        # on a loaded host the signal can land while the interpreter itself is still
        # starting (importing `site`), before any wdfhil code runs: CPython's own exit
        assert not qemu_children(child.pid) and not owned_folders(child.pid)
        return
    assert child.returncode in (0, 130), err  # 0: it finished before the signal
    assert "Traceback" not in err and "Task was destroyed" not in err, err
    assert not qemu_children(child.pid) and not owned_folders(child.pid)
