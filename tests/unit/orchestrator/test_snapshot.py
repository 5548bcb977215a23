"""A snapshot file that is empty, truncated or altered is refused before QEMU
starts (issue 12): an empty one used to wait out the whole boot timeout, a
corrupted one could be restored "successfully"."""

from __future__ import annotations

import os

import pytest

from orchestrator.guest_config import load_guest_config
from orchestrator.snapshot import MIGRATION_MAGIC, Snapshot
from orchestrator.vm import VM
from wdfhil.errors import ConfigError, SnapshotCorrupted


@pytest.fixture
def saved(tmp_path, fake_image):
    """(snapshot, image): a recorded snapshot of a made-up 1 MiB state."""
    image = fake_image("")
    config = load_guest_config("pc-256m")
    path = tmp_path / "vm.state"
    path.write_bytes(MIGRATION_MAGIC + os.urandom(1 << 20))
    snapshot = Snapshot(path, config=config, image_digest=image.digest, accelerator="tcg")
    snapshot.record()
    yield snapshot, image
    snapshot.close()


def test_a_whole_snapshot_passes(saved):
    snapshot, image = saved
    snapshot.check_compatible(snapshot.config, image)


def test_an_empty_snapshot_is_refused(saved):
    snapshot, image = saved
    snapshot.path.write_bytes(b"")
    with pytest.raises(SnapshotCorrupted, match="empty"):
        snapshot.check_compatible(snapshot.config, image)


def test_a_truncated_snapshot_is_refused_naming_both_sizes(saved):
    snapshot, image = saved
    os.truncate(snapshot.path, 1000)
    with pytest.raises(SnapshotCorrupted) as info:
        snapshot.check_compatible(snapshot.config, image)
    assert "truncated" in str(info.value) and str(snapshot.size) in str(info.value)


def test_a_flipped_byte_is_reported_as_corrupted(saved):
    snapshot, image = saved
    with open(snapshot.path, "r+b") as handle:
        handle.seek(500_000)
        byte = handle.read(1)
        handle.seek(500_000)
        handle.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(SnapshotCorrupted, match="corrupted: CRC-32"):
        snapshot.check_compatible(snapshot.config, image)


def test_a_file_that_is_no_saved_state_is_refused(saved):
    snapshot, image = saved
    snapshot.path.write_bytes(b"not a state" + bytes(100))
    snapshot.size = None  # e.g. a snapshot object never recorded
    with pytest.raises(SnapshotCorrupted, match="not a QEMU saved state"):
        snapshot.check_compatible(snapshot.config, image)


def test_the_vm_refuses_before_starting_qemu(saved):
    snapshot, image = saved
    snapshot.path.write_bytes(b"")
    with pytest.raises(SnapshotCorrupted) as info:
        VM(snapshot.config, image, restore_from=snapshot).start()
    assert isinstance(info.value, ConfigError) and info.value.file == str(snapshot.path)
