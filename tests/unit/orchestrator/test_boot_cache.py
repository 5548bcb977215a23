"""The post-boot state cache without a guest: entries found by key, checked
before use (sizes, CRC-32s of the state file and of the sparse RAM copy), a
damaged one removed and reported, never removed by the snapshots it hands out.
(The e2e tests save and restore real guests: tests/e2e/test_guest_fast.py.)"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from orchestrator.boot_cache import COMPLETE, FORMAT, META_FILE, BootCache, entry_key
from orchestrator.guest_config import load_guest_config
from orchestrator.snapshot import MIGRATION_MAGIC, STATE_FILE, Snapshot, file_crc32
from orchestrator.sparse_file import sparse_crc32
from wdfhil.errors import SnapshotCorrupted


@pytest.fixture
def config():
    return load_guest_config("pc-256m")


def make_entry(cache: BootCache, config, image, accelerator="tcg"):
    """An entry as BootCache.store writes one (a made-up state, a sparse RAM copy)."""
    folder = cache.root_for(image) / cache.key(config, image, accelerator)
    folder.mkdir(parents=True)
    state = folder / STATE_FILE
    state.write_bytes(MIGRATION_MAGIC + os.urandom(300_000))
    ram = Snapshot.ram_path(state)
    with open(ram, "wb") as handle:
        handle.truncate(config.memory)
        handle.seek(16 << 20)
        handle.write(os.urandom(1 << 20))
    meta = {"format": FORMAT, "config": config.name, "image": image.digest, "accelerator": accelerator,
            "qemu": "x", "state_size": state.stat().st_size, "state_crc32": file_crc32(state),
            "ram_size": config.memory, "ram_crc32": sparse_crc32(ram)}
    (folder / META_FILE).write_text(json.dumps(meta))
    (folder / COMPLETE).touch()
    return folder


def test_an_entry_is_found_checked_and_never_removed_by_its_snapshot(tmp_path, fake_image, config):
    image = fake_image("")
    cache = BootCache(tmp_path / "cache")
    assert cache.lookup(config, image, "tcg") is None
    folder = make_entry(cache, config, image)
    snapshot = cache.lookup(config, image, "tcg")
    assert snapshot is not None and snapshot.ram_file == folder / "vm.state.ram"
    assert cache.lookup(config, image, "tcg") is snapshot          # checked once per process
    assert cache.lookup(config, image, "kvm") is None              # another key
    snapshot.close()
    assert (folder / STATE_FILE).exists() and snapshot.ram_file.exists()


def test_the_key_follows_what_the_guest_sees_not_names(fake_image, config):
    image = fake_image("")
    other_image = dataclasses.replace(image, digest="e" * 64)
    renamed = dataclasses.replace(config, name="my-copy", description="same machine")
    bigger = dataclasses.replace(config, memory=512 << 20)
    key = entry_key(config, image, "tcg")
    assert entry_key(renamed, image, "tcg") == key
    assert len({key, entry_key(bigger, image, "tcg"), entry_key(config, other_image, "tcg"),
                entry_key(config, image, "kvm")}) == 4


def test_a_damaged_ram_copy_is_refused_as_a_restore_copies_it(tmp_path, fake_image, config):
    """Its CRC-32 is checked in the copy's own pass (one read of the file, not two)."""
    image = fake_image("")
    cache = BootCache(tmp_path / "cache")
    folder = make_entry(cache, config, image)
    target = tmp_path / "ram"
    snapshot = cache.lookup(config, image, "tcg")
    snapshot.copy_ram(target)                                   # whole: copied, checked
    assert target.read_bytes() == snapshot.ram_file.read_bytes()
    with open(folder / "vm.state.ram", "r+b") as handle:
        handle.seek((16 << 20) + 77)
        byte = handle.read(1)
        handle.seek((16 << 20) + 77)
        handle.write(bytes([byte[0] ^ 0x10]))
    again = BootCache(tmp_path / "cache").lookup(config, image, "tcg")   # a new run
    assert again is not None                                     # size and state are fine
    with pytest.raises(SnapshotCorrupted, match="RAM copy is corrupted"):
        again.copy_ram(target)
    with pytest.raises(SnapshotCorrupted, match="RAM copy is corrupted"):
        snapshot.copy_ram(target)                                # its file changed too


def test_a_written_hole_in_the_ram_copy_is_refused_too(tmp_path, fake_image, config):
    image = fake_image("")
    cache = BootCache(tmp_path / "cache")
    folder = make_entry(cache, config, image)
    with open(folder / "vm.state.ram", "r+b") as handle:   # same size, one more data page
        handle.seek(100 << 20)
        handle.write(b"\1")
    with pytest.raises(SnapshotCorrupted, match="RAM copy is corrupted"):
        cache.lookup(config, image, "tcg").copy_ram(tmp_path / "ram")


@pytest.mark.parametrize("damage", ["ram truncated", "state byte", "meta"])
def test_a_damaged_entry_is_removed_and_reported(tmp_path, fake_image, config, damage):
    image = fake_image("")
    cache = BootCache(tmp_path / "cache")
    folder = make_entry(cache, config, image)
    ram = folder / "vm.state.ram"
    if damage == "ram truncated":
        os.truncate(ram, config.memory - 4096)
    elif damage == "state byte":
        with open(folder / STATE_FILE, "r+b") as handle:
            handle.seek(1000)
            handle.write(b"\0\1\2")
    else:
        (folder / META_FILE).write_text("{not json")
    assert cache.lookup(config, image, "tcg") is None
    assert len(cache.discarded) == 1 and cache.discarded[0]
    assert not folder.exists() and not list(cache.root.glob(".build-*"))


def test_saving_removes_the_states_of_older_images_of_the_same_guest(tmp_path, fake_image,
                                                                      config):
    image = fake_image("")
    old_image = dataclasses.replace(image, digest="0" * 64)
    cache = BootCache(tmp_path / "cache")
    old = make_entry(cache, config, old_image)
    other_guest = make_entry(cache, dataclasses.replace(config, name="q35-1g", machine="q35"),
                             old_image)
    new = make_entry(cache, config, image)
    meta = json.loads((new / META_FILE).read_text())
    cache._prune_superseded(image, new.name, meta)
    assert new.exists() and other_guest.exists() and not old.exists()


def test_a_second_run_waits_for_the_boot_of_the_same_key(tmp_path, fake_image, config):
    """The boot lock: while one run boots a key to save it, another wanting the same
    key waits (then finds the state); another key does not wait."""
    import threading

    image = fake_image("")
    first, second = BootCache(tmp_path / "cache"), BootCache(tmp_path / "cache")
    got, other_key = threading.Event(), threading.Event()

    def want(cache, key_config, event):
        with cache.boot_lock(key_config, image, "tcg"):
            event.set()

    with first.boot_lock(config, image, "tcg"):
        same = threading.Thread(target=want, args=(second, config, got))
        other = threading.Thread(target=want, args=(second, dataclasses.replace(
            config, memory=512 << 20), other_key))
        same.start()
        other.start()
        assert other_key.wait(30)
        assert not got.wait(0.3)      # still booting: the same key waits
    assert got.wait(30)
    same.join()
    other.join()


def _image_in_store(cache_root, digest: str):
    from guest_images.image import GuestImage
    from image_store_helpers import stored_image

    return GuestImage.from_folder(stored_image(cache_root, digest))


def test_states_live_in_their_image_folder_and_go_with_the_image(tmp_path, monkeypatch,
                                                                 config, capsys):
    """`wdfhil image clean` removes an image no recipe builds any more, and with it the
    post-boot states booted from it; the current image keeps its states. States of
    the same guest from another image of the recipe are pruned when one is saved."""
    from guest_images import load_recipe
    from guest_images.cache import image_digest
    from guest_images.lockfile import load_lock
    from orchestrator.cli import main

    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path))
    recipe = load_recipe(None)
    current = _image_in_store(tmp_path, image_digest(recipe, load_lock(recipe.lock_path)))
    stale = _image_in_store(tmp_path, "ab" * 32)
    cache = BootCache()
    stale_entry = make_entry(cache, config, stale)
    other_guest = dataclasses.replace(config, name="q35-1g", machine="q35")
    current_entry = make_entry(cache, other_guest, current)
    assert stale_entry.parent == stale.folder / "boot-states"
    assert current_entry.parent == current.folder / "boot-states"
    assert cache.lookup(config, stale, "tcg") is not None
    assert cache.lookup(other_guest, current, "tcg") is not None

    assert main(["image", "clean"]) == 0
    assert "removed 1 image(s)" in capsys.readouterr().out
    assert not stale.folder.exists() and not stale_entry.exists()
    assert current_entry.exists()
    assert BootCache().lookup(other_guest, current, "tcg") is not None

    again = make_entry(cache, config, _image_in_store(tmp_path, "cd" * 32))
    newer = make_entry(cache, config, current)
    cache._prune_superseded(current, newer.name, json.loads((newer / META_FILE).read_text()))
    assert newer.exists() and current_entry.exists() and not again.exists()


def test_the_states_of_older_versions_are_removed(tmp_path, monkeypatch):
    """Before format 2 the states lived in the cache's boot-states folder."""
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path))
    legacy = tmp_path / "boot-states" / ("a" * 40)
    legacy.mkdir(parents=True)
    (legacy / "vm.state.ram").write_bytes(b"x" * 4096)
    BootCache(tmp_path / "explicit")
    assert legacy.exists()                    # an explicit root leaves the cache alone
    BootCache()
    assert not (tmp_path / "boot-states").exists()
