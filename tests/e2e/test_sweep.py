"""Cleanup never deletes what is alive, and misses nothing.

- A sweep from another PID namespace sharing /dev/shm (where the VM's pid
  means nothing) leaves a live VM's run folder and RAM file alone: the
  folder's liveness lock decides, not the pid in its name.
- SIGHUP (the terminal closed) unwinds a process running a VM like SIGTERM:
  no QEMU, no run folder, no 256 MiB RAM file left.
- The device folder (``wdfhil-dev-*``) of a killed process is swept.

The namespace test runs its VM with the run folders in a private folder of
its own on the same tmpfs and sweeps only that one: a sweep of all of
/dev/shm from another namespace would judge other people's folders too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.cleanup import owned_folders, qemu_children, sweep_stale_folders
from orchestrator.guest_config import load_guest_config
from wdfhil.guest_ram import GuestRam, RamLayout
from wdfhil.private_dirs import LIVENESS_FILE, Liveness, folder_liveness, remove_tree

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

_VM_IN_FOLDER = """
import json, sys, time
from pathlib import Path
import orchestrator.cleanup as cleanup
from guest_images import build_image
from orchestrator.guest_config import load_guest_config
from orchestrator.vm import VM

cleanup.SHM_DIR = Path(sys.argv[1])   # run folders go here instead of /dev/shm itself
with VM(load_guest_config("pc-256m"), build_image(None), boot_timeout=300) as vm:
    print(json.dumps({"run_dir": str(vm.run_dir), "qemu": vm.qemu_pid}), flush=True)
    sys.stdin.readline()              # until the test says so
    print(vm.run_checked("echo still-here"), flush=True)
"""

_SWEEP = """
import sys
from pathlib import Path
from orchestrator.cleanup import sweep_stale_folders
print(" ".join(p.name for p in sweep_stale_folders((Path(sys.argv[1]),))))
"""


@pytest.fixture
def shm_parent():
    """A private folder on /dev/shm (the tmpfs run folders live on), removed after."""
    path = Path(tempfile.mkdtemp(prefix="harden-sweep-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a PID namespace")
def test_a_sweep_from_another_pid_namespace_leaves_a_live_vm_alone(guest_image, shm_parent):
    child = subprocess.Popen([sys.executable, "-c", _VM_IN_FOLDER, str(shm_parent)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        started = json.loads(line)
        run_dir = Path(started["run_dir"])
        assert run_dir.parent == shm_parent and (run_dir / "ram").is_file()
        assert folder_liveness(run_dir) is Liveness.ALIVE
        swept = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _SWEEP,
             str(shm_parent)], cwd=ROOT, check=True, capture_output=True, text=True,
            timeout=120)
        assert swept.stdout.split() == [], swept
        # the RAM file is still the guest's memory and the guest still answers
        with GuestRam.open(run_dir / "ram", RamLayout.single(load_guest_config("pc-256m").memory)):
            pass
        child.stdin.write("go on\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "still-here"
        assert child.wait(120) == 0
        assert not run_dir.exists() and not os.path.exists(f"/proc/{started['qemu']}/exe")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_sighup_in_a_process_running_a_vm_removes_everything(guest_image, vm_child):
    child = vm_child(guest_image, "pc-256m", boot_timeout=300)
    qemu_pid, run_dir = child.wait_ready(360)
    assert (run_dir / "ram").stat().st_size == load_guest_config("pc-256m").memory
    os.kill(child.pid, signal.SIGHUP)
    code = child.finish()
    assert code != 0 and "TerminatedBySignal: terminated by SIGHUP" in child.stderr
    assert not os.path.exists(f"/proc/{qemu_pid}/exe"), "QEMU outlived the hung-up run"
    assert not qemu_children(child.pid)
    assert not run_dir.exists() and not owned_folders(child.pid)


_DEVICE_THEN_KILLED = """
import os, signal
from device_model.device import EchoDevice
device = EchoDevice().start()
print(device.run_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_device_folder_of_a_killed_process_is_swept():
    child = subprocess.run([sys.executable, "-c", _DEVICE_THEN_KILLED], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    folder = Path(child.stdout.strip())
    try:
        assert folder.name.startswith("wdfhil-dev-") and (folder / LIVENESS_FILE).is_file()
        assert folder in sweep_stale_folders((folder.parent,))
        assert not folder.exists()
    finally:
        remove_tree(folder)
