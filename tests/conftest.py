"""Fixtures for tests that run guests, and the check that none leaves anything behind.

- ``guest_image`` (session): the default image, built once into the user's
  cache (it persists across runs; a warm cache costs nothing).
- ``vm_factory`` / ``vm`` (function): started VMs, closed after the test;
  ``vm`` is the default guest config (pc-256m).
- every test is wrapped by a check that no QEMU process it started, no run
  or snapshot folder (and so no RAM file) is left afterwards; the same
  check runs once more at the end of the session.
- ``vm_child``: a VM in a separate Python process, for the signal tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.cleanup import owned_folders, qemu_children
from orchestrator.guest_config import DEFAULT_GUEST, GuestConfig, load_guest_config
from orchestrator.vm import VM
from wdfhil.private_dirs import remove_tree


# -- what a process may leave behind ---------------------------------------
def _leftovers(before_pids: set[int], before_folders: set[Path]) -> list[str]:
    problems = []
    for pid in sorted(qemu_children() - before_pids):
        problems.append(f"QEMU process {pid} still runs")
        os.kill(pid, signal.SIGKILL)  # do not let one leak spoil the next test
    for folder in sorted(owned_folders() - before_folders):
        problems.append(f"{folder} still exists ({', '.join(p.name for p in folder.iterdir())})")
        remove_tree(folder)
    return problems


@pytest.fixture(scope="session", autouse=True)
def nothing_left_at_session_end():
    before = (qemu_children(), owned_folders())
    yield
    problems = _leftovers(*before)
    assert not problems, "left behind by the test session: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def nothing_left_by_the_test():
    """Fail the test (at teardown) if it left a QEMU process or a run folder."""
    before = (qemu_children(), owned_folders())
    yield
    problems = _leftovers(*before)
    assert not problems, "left behind by the test: " + "; ".join(problems)


# -- images and VMs ----------------------------------------------------------
@pytest.fixture(scope="session")
def guest_image():
    """The default guest image, built once (cached across runs under cache_dir())."""
    from guest_images import DEFAULT_RECIPE, build_image
    return build_image(DEFAULT_RECIPE)


@pytest.fixture
def vm_factory(guest_image):
    """``vm_factory(config="pc-256m", **VM options)`` -> a started VM, closed after the test."""
    started: list[VM] = []

    def start(config: str | GuestConfig = DEFAULT_GUEST, *, image=None, **options) -> VM:
        if not isinstance(config, GuestConfig):
            config = load_guest_config(config)
        machine = VM(config, image or guest_image, **options)
        started.append(machine)
        machine.start()
        return machine

    yield start
    for machine in reversed(started):
        machine.close()


@pytest.fixture
def vm(vm_factory) -> VM:
    """A booted default guest (pc-256m)."""
    return vm_factory()


# -- a VM in a child process (for the signal tests) ------------------------------
_CHILD_PROGRAM = """
import json, sys, time
from pathlib import Path
from guest_images import GuestImage
from orchestrator.guest_config import load_guest_config
from orchestrator.vm import VM

spec = json.loads(sys.argv[1])
image = dict(spec["image"])
for key in ("kernel", "initramfs", "client_key"):
    image[key] = Path(image[key])
image["kernel_cmdline"] = tuple(image["kernel_cmdline"])
with VM(load_guest_config(spec["config"]), GuestImage(**image),
        boot_timeout=spec["boot_timeout"]) as vm:
    print("READY", vm.qemu_pid, vm.run_dir, flush=True)
    time.sleep(600)
"""


class VmChild:
    """A child Python process that boots a VM and then sleeps inside ``with VM``."""

    def __init__(self, image, config: str, boot_timeout: float) -> None:
        fields = {f.name: getattr(image, f.name) for f in dataclasses.fields(image)}
        spec = {"image": fields, "config": config, "boot_timeout": boot_timeout}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_PROGRAM, json.dumps(spec, default=str)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr = ""

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)

    def wait_ready(self, timeout: float) -> tuple[int, Path]:
        """The child's QEMU pid and run folder, once its guest is up."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the child printed nothing in {timeout} s") from None
        assert line.startswith("READY"), line
        _, pid, folder = line.split()
        return int(pid), Path(folder)

    def wait_for_qemu(self, timeout: float) -> int:
        """The child's QEMU pid, as soon as QEMU runs (before the guest is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = qemu_children(self.pid)
            if children:
                return children.pop()
            assert self.process.poll() is None, self.process.stderr.read()
            time.sleep(0.05)
        raise AssertionError(f"the child started no QEMU within {timeout} s")

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the child's exit; its exit status (stderr kept in ``self.stderr``)."""
        code = self.process.wait(timeout)
        self.stderr = self.process.stderr.read()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def vm_child():
    """``vm_child(image, config="pc-256m", boot_timeout=120)`` -> a started VmChild."""
    children: list[VmChild] = []

    def start(image, config: str = DEFAULT_GUEST, boot_timeout: float = 120.0) -> VmChild:
        child = VmChild(image, config, boot_timeout)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
