"""Save a booted guest and start new VMs from it: they come up running, with
the saved memory, their own RAM file and port, and the clock set to now."""

from __future__ import annotations

import secrets
import time

import pytest

from orchestrator.guest_config import check_reserved_windows_in_iomem, load_guest_config
from wdfhil.errors import ConfigError

pytestmark = pytest.mark.e2e


def test_restored_guests_carry_the_saved_state_and_run_beside_the_original(
        vm_factory, guest_image):
    original = vm_factory("pc-256m")
    token = secrets.token_hex(8)
    original.run_checked(f"echo {token} > /tmp/state")
    with original.save() as snapshot:
        assert snapshot.path.is_file() and snapshot.accelerator == original.accelerator
        original.run_checked("echo changed-after-save > /tmp/state")  # the original runs on

        first = vm_factory("pc-256m", restore_from=snapshot)
        assert first.run_checked("cat /tmp/state") == f"{token}\n"
        # its console starts with the saved guest's boot (reports, error tails)
        assert guest_image.ready_marker in first.console_text()
        assert guest_image.ready_marker in (first.run_dir / "console.log").read_text()
        assert original.run_checked("cat /tmp/state") == "changed-after-save\n"
        # two VMs at once, nothing shared
        assert first.ssh_port != original.ssh_port
        assert first.run_dir != original.run_dir and first.ram_file != original.ram_file
        assert first.qmp.command("query-status")["status"] == "running"
        guest_clock = int(first.run_checked("date +%s"))
        assert abs(guest_clock - time.time()) < 120  # set on restore, not the saved time
        first.run_checked("echo changed-in-first > /tmp/state")
        first.close()

        # the same snapshot again: a reset to the saved state
        second = vm_factory("pc-256m", restore_from=snapshot)
        assert second.run_checked("cat /tmp/state") == f"{token}\n"
        # the reserved windows as the guest shows them (ConfigError otherwise)
        check_reserved_windows_in_iomem(second.config, second.run_checked("cat /proc/iomem"))

        with pytest.raises(ConfigError, match="guest config"):
            vm_factory("q35-1g", restore_from=snapshot)
    assert snapshot.closed and not snapshot.path.exists()
    with pytest.raises(ConfigError, match="closed"):
        vm_factory(load_guest_config("pc-256m"), restore_from=snapshot)


def test_a_save_leaves_ram_out_of_the_state_unless_full(vm_factory):
    """x-ignore-shared: the state holds devices and CPUs, RAM goes to a sparse copy
    beside it; full=True puts RAM in the stream. Both restore the saved guest."""
    original = vm_factory("pc-256m")
    token = secrets.token_hex(8)
    original.run_checked(f"echo {token} > /tmp/state")
    with original.save() as light, original.save(full=True) as full:
        assert light.ram_file is not None and light.ram_file.is_file()
        assert light.path.stat().st_size < 8 << 20 < full.path.stat().st_size
        assert light.ram_file.stat().st_size == original.config.memory
        assert light.ram_file.stat().st_blocks * 512 < original.config.memory  # holes kept
        assert full.ram_file is None
        for snapshot in (light, full):
            restored = vm_factory("pc-256m", restore_from=snapshot)
            assert restored.run_checked("cat /tmp/state") == f"{token}\n"
            restored.close()
    assert not light.path.exists() and not light.ram_file.exists()
