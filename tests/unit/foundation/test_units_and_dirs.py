"""Sizes as people write them, and private folders that never outlive their use."""

from __future__ import annotations

import os
import stat

import pytest

from wdfhil.private_dirs import (LIVENESS_FILE, Liveness, cache_dir, create_private_files,
                                 folder_liveness, hold_liveness_lock, make_private_dir,
                                 private_dir, release_liveness_lock, remove_tree)
from wdfhil.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    (4096, 4096), ("4096", 4096), ("4K", 4096), ("256M", 256 << 20), ("1G", 1 << 30),
    ("1GiB", 1 << 30), ("0x1000", 4096), ("2g", 2 << 30), (" 256 M ", 256 << 20),
    ("0xfff", 0xFFF), ("8KB", 8192), (0, 0),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad, message", [
    ("", "an empty value is not a size; write whole bytes"),
    ("M", "M is not a size; write whole bytes, with an optional K, M, G or T (powers of "
          "1024): 4096, 256M, 1G, 0x1000"),
    ("1.5G", "1.5G is not a size; write whole bytes"),
    ("12Q", "12Q is not a size; write whole bytes"),
    (" 0xZZ ", "0xZZ is not a size; write whole bytes"),      # not Python's int() message
    ("0x-5", "0x-5 is not a size; write whole bytes"),
    ("-1", "-1 is negative; a size is 0 or more"),
    ("-4K", "-4K is negative; a size is 0 or more"),
    (-1, "-1 is negative; a size is 0 or more"),
    (True, "true (a yes/no value) is not a size; write whole bytes"),
    ("1\nG", "1\\nG is not a size"),                          # one line, escaped
    ("9" * 60 + "Q", "9" * 40 + "... is not a size"),          # bounded
])
def test_parse_size_refuses_naming_the_value_as_written(bad, message):
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    assert str(info.value).startswith(message)
    assert "'" not in str(info.value) and '"' not in str(info.value)   # no repr() quoting


def test_a_bad_size_in_a_file_names_file_line_field_and_value(tmp_path):
    from orchestrator.guest_config import load_guest_config
    from wdfhil.errors import ConfigError

    folder = tmp_path / "guests"
    folder.mkdir()
    (folder / "bad.yaml").write_text("description: x\nmachine: pc\nmemory: 1.5G\ncpus: 1\n"
                                     "pool: {base: 64M, size: 64M}\n")
    with pytest.raises(ConfigError) as info:
        load_guest_config("bad", (str(folder),))
    assert str(info.value) == (f"{folder / 'bad.yaml'}:3: field 'memory': 1.5G is not a size; "
                               "write whole bytes, with an optional K, M, G or T (powers of "
                               "1024): 4096, 256M, 1G, 0x1000")


def test_format_size_round_trips():
    for size in (4096, 1 << 20, 3 << 30, 4097, 64 << 20):
        assert parse_size(format_size(size)) == size


def test_private_dir_is_0700_and_removed_even_on_error(tmp_path):
    seen = None
    with pytest.raises(RuntimeError):
        with private_dir("t-", parent=tmp_path) as path:
            seen = path
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
            (path / "f").write_text("x")
            raise RuntimeError("boom")
    assert seen is not None and not seen.exists()


def test_cache_dir_honours_override(tmp_path, monkeypatch):
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path / "c"))
    path = cache_dir("images")
    assert path == tmp_path / "c" / "images" and path.is_dir()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_dir_creates_every_missing_folder_0700(tmp_path, monkeypatch):
    monkeypatch.delenv("WDFHIL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    old_umask = os.umask(0o022)
    try:
        path = cache_dir("images", "recipe")
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "home", tmp_path / "home" / ".cache",
                   tmp_path / "home" / ".cache" / "wdfhil", path.parent, path):
        assert mode(folder) == 0o700, folder


def test_an_open_cache_root_of_ours_is_closed(tmp_path, monkeypatch):
    root = tmp_path / "c"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(root))
    cache_dir()
    assert mode(root) == 0o700


def test_private_files_are_0600_whatever_the_umask_and_stay_so(tmp_path):
    old_umask = os.umask(0o022)
    try:
        with private_dir("t-", parent=tmp_path) as folder:
            create_private_files(folder, "ram", "qemu.log")
            assert mode(folder / "ram") == mode(folder / "qemu.log") == 0o600
            with open(folder / "qemu.log", "ab") as log:  # as QemuProcess opens its log
                log.write(b"x")
            assert mode(folder / "qemu.log") == 0o600
    finally:
        os.umask(old_umask)


def test_a_run_folder_holds_its_liveness_lock_until_removed(tmp_path):
    with private_dir("wdfhil-t-", parent=tmp_path) as folder:
        assert mode(folder / LIVENESS_FILE) == 0o600
        assert folder_liveness(folder) is Liveness.ALIVE
        release_liveness_lock(folder)
        assert folder_liveness(folder) is Liveness.ABANDONED
        hold_liveness_lock(folder)
        assert folder_liveness(folder) is Liveness.ALIVE
    assert folder_liveness(folder) is Liveness.UNKNOWN  # gone
    assert not folder.exists()


def test_other_private_folders_get_no_lock_file(tmp_path):
    """The image cache renames its .build-* scratch folder into the cache: no lock inside."""
    with private_dir(".build-", parent=tmp_path) as folder:
        assert list(folder.iterdir()) == [] and folder_liveness(folder) is Liveness.UNKNOWN


def test_the_lock_is_released_when_the_folder_is_removed(tmp_path):
    folder = make_private_dir("wdfhil-t-", tmp_path)
    fds_before = len(os.listdir("/proc/self/fd"))
    remove_tree(folder)
    assert len(os.listdir("/proc/self/fd")) == fds_before - 1
    remove_tree(folder)  # again: nothing to do
