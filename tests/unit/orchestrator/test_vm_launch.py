"""How a VM fails to start, with stand-in kernels: one LaunchError that explains
itself, at once, and nothing left behind (the autouse check in tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from orchestrator.cleanup import owned_folders, qemu_children, sweep_stale_folders
from orchestrator.guest_config import load_guest_config
from orchestrator.vm import VM
from wdfhil.errors import ConfigError, LaunchError


@pytest.fixture
def config():
    return load_guest_config("pc-256m").with_changes(accelerator="tcg")


def start_failure(config, image, **options) -> LaunchError:
    with pytest.raises(LaunchError) as info:
        with VM(config, image, **options):
            pytest.fail("the VM should not have started")
    return info.value


def test_qemu_refusing_the_kernel_gives_exit_code_command_and_log(config, fake_image):
    error = start_failure(config, fake_image("", kernel_bytes=b"this is not a kernel"))
    assert error.exit_code == 1 and error.command[0] == "qemu-system-x86_64"
    assert "-kernel" in error.command and "kernel" in error.log_tail.lower()
    assert "QEMU exited" in str(error)


def test_kernel_panic_fails_the_boot_at_once(config, fake_image):
    image = fake_image("Linux booting\nKernel panic - not syncing: VFS: Unable to mount root\n")
    error = start_failure(config, image, boot_timeout=600)  # returns long before the timeout
    assert "panicked" in str(error) and "Kernel panic" in error.console_tail
    assert error.exit_code is None  # QEMU was still running; the VM stopped it


def test_silent_guest_times_out_naming_the_marker(config, fake_image):
    error = start_failure(config, fake_image("early boot text\n"), boot_timeout=6)
    assert "WDFHIL-READY" in str(error) and "early boot text" in error.console_tail


def test_ready_guest_without_ssh_times_out_on_the_ssh_banner(config, fake_image):
    error = start_failure(config, fake_image("WDFHIL-READY\n"), boot_timeout=10)
    assert "SSH server did not answer" in str(error)


def test_missing_qemu_binary(config, fake_image):
    error = start_failure(config, fake_image(""), qemu_binary="/nonexistent/qemu-system-x86_64")
    assert "cannot run" in str(error)


def test_pool_over_the_initramfs_is_a_config_error_before_qemu(config, fake_image):
    image = fake_image("")
    os.truncate(image.initramfs, 220 << 20)  # sparse: QEMU would load it over the pool
    image = image.with_file_records()        # as built that way (not a damaged image)
    with pytest.raises(ConfigError) as info:
        VM(config, image).start()
    assert info.value.field == "pool.base" and info.value.file.endswith("pc-256m.yaml")


def test_a_vm_starts_only_once(config, fake_image):
    machine = VM(config, fake_image(""), qemu_binary="/nonexistent/qemu")
    with pytest.raises(LaunchError):
        machine.start()
    with pytest.raises(RuntimeError):
        machine.start()
    machine.close()
    machine.close()  # idempotent


def child_waiting_for_ssh(fake_image, vm_child):
    """A child process whose VM runs QEMU and waits (for ever) for an SSH server."""
    child = vm_child(fake_image("WDFHIL-READY\n"), boot_timeout=600)
    qemu_pid = child.wait_for_qemu(60)
    deadline = time.monotonic() + 60
    while not owned_folders(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, qemu_pid


def test_sigterm_during_boot_unwinds_and_removes_everything(fake_image, vm_child):
    """A child stuck waiting for SSH gets SIGTERM: it stops QEMU and cleans up."""
    child, qemu_pid = child_waiting_for_ssh(fake_image, vm_child)
    assert owned_folders(child.pid)
    os.kill(child.pid, signal.SIGTERM)
    code = child.finish()
    assert code != 0 and "TerminatedBySignal" in child.stderr
    assert not qemu_children(child.pid) and not os.path.exists(f"/proc/{qemu_pid}/exe")
    assert not owned_folders(child.pid)


def test_sigkill_leaves_no_qemu_and_the_next_vm_sweeps_the_folder(fake_image, vm_child):
    child, qemu_pid = child_waiting_for_ssh(fake_image, vm_child)
    left = owned_folders(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    child.finish()
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{qemu_pid}/exe") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{qemu_pid}/exe"), "QEMU outlived its killed parent"
    assert left and all(folder.exists() for folder in left)  # no Python ran to remove them
    removed = sweep_stale_folders()
    assert left <= set(removed) and not owned_folders(child.pid)


def test_a_start_tells_its_progress(config, fake_image):
    steps = []
    with pytest.raises(LaunchError):
        VM(config, fake_image("Kernel panic - not syncing: test\n"), progress=steps.append).start()
    assert any("starting QEMU (tcg)" in step for step in steps)
    assert any("booting (tcg)" in step for step in steps)


def test_a_damaged_image_is_named_before_qemu_starts(config, fake_image):
    """A truncated cached kernel: the start names the file instead of waiting for a
    QEMU that exits early with no clue."""
    image = fake_image("")
    os.truncate(image.kernel, 100)
    with pytest.raises(LaunchError, match=r"vmlinuz .*100 bytes, built with"):
        VM(config, image).start()
