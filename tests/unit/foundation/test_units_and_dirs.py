"""Sizes as people write them, and private folders that never outlive their use."""

from __future__ import annotations

import os
import stat

import pytest

from wdfhil.private_dirs import cache_dir, private_dir
from wdfhil.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    (4096, 4096), ("4096", 4096), ("4K", 4096), ("256M", 256 << 20), ("1G", 1 << 30),
    ("1GiB", 1 << 30), ("0x1000", 4096), ("2g", 2 << 30),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "M", "1.5G", "-1", -1, True, "12Q"])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


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
