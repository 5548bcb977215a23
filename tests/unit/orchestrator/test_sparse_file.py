"""Sparse RAM files: the copy keeps holes and data, the checksum sees every data
byte (and only data), a zeroed range reads as zeros for another mapping."""

from __future__ import annotations

import mmap
import os

import pytest

from orchestrator.sparse_file import (copy_sparse, data_extents, file_extents, sparse_crc32,
                                       zero_range)

MIB = 1 << 20


@pytest.fixture
def ram_file(tmp_path):
    """A 64 MiB sparse file with data at 1 MiB, 10 MiB + 123 and the last page."""
    path = tmp_path / "ram"
    with open(path, "wb") as handle:
        handle.truncate(64 * MIB)
        for offset, data in ((MIB, os.urandom(3 * 4096)), (10 * MIB + 123, b"x" * 9000),
                             (64 * MIB - 4096, os.urandom(4096))):
            handle.seek(offset)
            handle.write(data)
    return path


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_the_copy_has_the_same_bytes_and_stays_sparse(ram_file, tmp_path):
    target = tmp_path / "copy"
    target.write_bytes(b"old contents that must go" * 1000)
    assert copy_sparse(ram_file, target) is None
    assert target.read_bytes() == ram_file.read_bytes()
    assert allocated(target) < 2 * MIB   # not 64 MiB
    other = tmp_path / "checked"
    assert copy_sparse(ram_file, other, checksum=True) == sparse_crc32(ram_file)
    assert other.read_bytes() == ram_file.read_bytes() and allocated(other) < 2 * MIB


def test_extents_cover_exactly_the_data(ram_file):
    fd = os.open(ram_file, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)
    data = ram_file.read_bytes()
    covered = bytearray(len(data))
    for start, length in extents:
        covered[start:start + length] = data[start:start + length]
    assert bytes(covered) == data


def test_the_checksum_changes_with_any_data_byte_and_with_a_hole_filled(ram_file, tmp_path):
    before = sparse_crc32(ram_file)
    assert sparse_crc32(ram_file) == before
    copy = tmp_path / "copy"
    copy_sparse(ram_file, copy)
    assert sparse_crc32(copy) == before
    with open(ram_file, "r+b") as handle:
        handle.seek(MIB + 5000)
        byte = handle.read(1)
        handle.seek(MIB + 5000)
        handle.write(bytes([byte[0] ^ 1]))
    assert sparse_crc32(ram_file) != before
    with open(copy, "r+b") as handle:     # a byte written into a hole
        handle.seek(40 * MIB)
        handle.write(b"\1")
    assert sparse_crc32(copy) != before


def test_a_zeroed_range_reads_as_zeros_through_another_mapping(ram_file):
    with open(ram_file, "r+b") as handle, \
            mmap.mmap(handle.fileno(), 0, mmap.MAP_SHARED) as other:   # as QEMU maps it
        assert other[MIB:MIB + 4096] != bytes(4096)
        zero_range(ram_file, MIB, 4 * 4096)
        assert other[MIB:MIB + 4 * 4096] == bytes(4 * 4096)
        assert other[64 * MIB - 4096:] != bytes(4096)                # outside: kept


def test_zero_range_needs_whole_pages(ram_file):
    with pytest.raises(ValueError, match="page-aligned"):
        zero_range(ram_file, 100, 4096)


def test_zero_pages_can_become_holes(tmp_path):
    """A saved guest's zeroed free memory: all-zero pages (written, so data to the
    file system) are left out; the copy reads the same and holds only the rest."""
    source = tmp_path / "ram"
    with open(source, "wb") as handle:
        handle.truncate(16 * MIB)
        handle.seek(MIB)
        handle.write(bytes(8 * MIB))                         # written zeros
        handle.seek(2 * MIB + 4096)
        handle.write(b"\1" * 4096 + bytes(4096) + b"\2" * 10)  # data, a zero page, data
        handle.seek(16 * MIB - 4096)
        handle.write(b"\3" * 4096)                            # the last page
    target = tmp_path / "copy"
    assert copy_sparse(source, target, zero_pages_as_holes=True) is None
    assert target.read_bytes() == source.read_bytes()
    assert allocated(source) >= 8 * MIB
    assert allocated(target) <= 4 * 4096
    assert file_extents(target) == [(2 * MIB + 4096, 4096), (2 * MIB + 3 * 4096, 4096),
                                    (16 * MIB - 4096, 4096)]
    with pytest.raises(ValueError, match="do not go together"):
        copy_sparse(source, target, zero_pages_as_holes=True, checksum=True)


def test_a_copy_into_holes_neither_truncates_nor_resizes_the_target(ram_file, tmp_path):
    """The RAM file of a starting QEMU: sized before QEMU maps it, only written after."""
    target = tmp_path / "fresh"
    with open(target, "wb") as handle:
        handle.truncate(64 * MIB)
    with open(target, "r+b") as handle, \
            mmap.mmap(handle.fileno(), 0, mmap.MAP_SHARED) as mapped:   # as QEMU maps it
        inode = os.stat(target).st_ino
        copy_sparse(ram_file, target, into_holes=True)
        assert mapped[:] == ram_file.read_bytes()            # seen through the mapping
        assert os.stat(target).st_ino == inode
    with open(target, "r+b") as handle:
        handle.truncate(32 * MIB)
    with pytest.raises(ValueError, match=f"{32 * MIB} bytes, not the {64 * MIB}"):
        copy_sparse(ram_file, target, into_holes=True)


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev
                    == os.stat(os.environ.get("TMPDIR", "/tmp")).st_dev,
                    reason="needs /dev/shm on another file system than the temp dir")
def test_a_copy_across_file_systems_is_whole_and_sparse(ram_file, tmp_path):
    """The boot cache's disk to a run folder in /dev/shm (copy_file_range says EXDEV)."""
    from wdfhil.private_dirs import make_private_dir, remove_tree

    folder = make_private_dir("wdfhil-test-", "/dev/shm")
    try:
        target = folder / "ram"
        assert copy_sparse(ram_file, target) is None
        assert target.read_bytes() == ram_file.read_bytes()
        assert allocated(target) < 2 * MIB
    finally:
        remove_tree(folder)
