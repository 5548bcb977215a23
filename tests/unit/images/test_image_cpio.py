"""The newc writer: what the kernel unpacks, checked against the format and host cpio."""

from __future__ import annotations

import shutil
import stat
import subprocess
from io import BytesIO
from pathlib import Path

import pytest

from guest_images.cpio import CpioEntry, read_initramfs, read_newc, write_initramfs, write_newc
from guest_images.rootfs import GuestTree


def _sample_tree() -> GuestTree:
    tree = GuestTree()
    tree.add_file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
    tree.add_symlink("bin/sh", "/bin/busybox")
    tree.add_dir("root", 0o700)
    tree.add_file("root/.ssh/authorized_keys", b"ssh-ed25519 AAAA test\n", 0o600)
    tree.add_char_device("dev/console", 5, 1, 0o600)
    tree.add_file("empty", b"")
    return tree


def test_round_trip_keeps_modes_data_and_devices(tmp_path: Path) -> None:
    tree = _sample_tree()
    path = tmp_path / "initramfs.cpio.gz"
    write_initramfs(tree.entries(), path)
    entries = read_initramfs(path)
    assert stat.S_IMODE(entries["."].mode) == 0o755 and entries["."].is_dir
    assert entries["bin/busybox"].data == tree.get("bin/busybox").data
    assert stat.S_IMODE(entries["bin/busybox"].mode) == 0o755
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"/bin/busybox"
    assert stat.S_IMODE(entries["root"].mode) == 0o700
    assert stat.S_IMODE(entries["root/.ssh/authorized_keys"].mode) == 0o600
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert entries["empty"].data == b""
    # parents were created and come before their children
    order = [entry.path for entry in tree.entries()]
    assert order.index("root") < order.index("root/.ssh") < order.index(
        "root/.ssh/authorized_keys")


def test_layout_is_newc_aligned() -> None:
    out = BytesIO()
    write_newc([CpioEntry("a", stat.S_IFREG | 0o644, b"xyz")], out)
    data = out.getvalue()
    assert data[:6] == b"070701"
    assert len(data) % 4 == 0
    header = data[:110]
    assert int(header[6 + 8 * 6:14 + 8 * 6], 16) == 3       # filesize
    assert int(header[6 + 8 * 2:14 + 8 * 2], 16) == 0       # uid root
    assert int(header[6 + 8 * 11:14 + 8 * 11], 16) == 2     # "a\0"
    assert data[112:115] == b"xyz"                          # 110 + 2 padded to 112
    assert b"TRAILER!!!" in data
    assert [e.path for e in read_newc(data)] == ["a"]


def test_archive_is_reproducible(tmp_path: Path) -> None:
    write_initramfs(_sample_tree().entries(), tmp_path / "one")
    write_initramfs(_sample_tree().entries(), tmp_path / "two")
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


def test_host_cpio_reads_it_as_root_owned(tmp_path: Path) -> None:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("cpio is not installed")
    path = tmp_path / "plain.cpio"
    write_initramfs(_sample_tree().entries(), path, compress=False)
    listing = subprocess.run([cpio, "-itv", "--quiet"], stdin=path.open("rb"),
                             capture_output=True, text=True, check=True).stdout
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in listing.splitlines()}
    assert lines["bin/busybox"].startswith("-rwxr-xr-x")
    assert lines["root"].startswith("drwx------")
    assert lines["dev/console"].startswith("crw-------")
    assert all(" root " in line for line in listing.splitlines())


def test_folder_cannot_become_a_file() -> None:
    tree = GuestTree()
    tree.add_dir("etc")
    from wdfhil.errors import ImageBuildError
    with pytest.raises(ImageBuildError, match="folder"):
        tree.add_file("etc", b"x")
