"""The low/high RAM split, checked against the maths and against QEMU itself."""

from __future__ import annotations

import socket
import subprocess

import pytest
from hypothesis import given, strategies as st

from orchestrator.qmp_session import QmpSession
from orchestrator.ram_layout import FOUR_GIB, RamSplit, parse_mtree

MIB = 1 << 20
GIB = 1 << 30


@pytest.mark.parametrize("machine,size,below", [
    ("pc", 256 * MIB, 256 * MIB),
    ("pc", 3 * GIB + 512 * MIB - MIB, 3 * GIB + 512 * MIB - MIB),
    ("pc", 3 * GIB + 512 * MIB, 3 * GIB),
    ("pc", 8 * GIB, 3 * GIB),
    ("q35", 1 * GIB, 1 * GIB),
    ("q35", 2 * GIB + 768 * MIB - MIB, 2 * GIB + 768 * MIB - MIB),
    ("q35", 2 * GIB + 768 * MIB, 2 * GIB),
    ("q35", 3 * GIB, 2 * GIB),
])
def test_split_follows_qemu_rules(machine, size, below):
    split = RamSplit.for_machine(machine, size)
    assert (split.below_4g, split.above_4g) == (below, size - below)


def test_file_offsets_skip_the_pci_hole():
    split = RamSplit.for_machine("q35", 3 * GIB)
    assert split.file_offset(0x1000) == 0x1000
    assert split.file_offset(FOUR_GIB) == 2 * GIB
    assert split.file_offset(FOUR_GIB + 0x5000, 0x1000) == 2 * GIB + 0x5000
    for bad in (2 * GIB, 3 * GIB, FOUR_GIB + GIB):
        with pytest.raises(ValueError):
            split.file_offset(bad)
    with pytest.raises(ValueError):  # a range may not run off the end of low RAM
        split.file_offset(2 * GIB - 0x1000, 0x2000)


def test_unknown_machine_is_refused():
    with pytest.raises(ValueError, match="unknown machine"):
        RamSplit.for_machine("virt", GIB)


@given(st.sampled_from(["pc", "q35"]), st.integers(min_value=64, max_value=16 * 1024))
def test_ranges_cover_the_file_exactly_once(machine, size_mib):
    split = RamSplit.for_machine(machine, size_mib * MIB)
    ranges = split.ranges()
    assert sum(size for _, size in ranges) == size_mib * MIB
    offset = 0
    for start, size in ranges:
        assert split.file_offset(start) == offset and split.holds(start, size)
        assert split.file_offset(start + size - 1) == offset + size - 1
        assert not split.holds(start, size + 1)
        offset += size
    assert all(start + size <= 0xE0000000 or start >= FOUR_GIB for start, size in ranges)


def test_initrd_region_is_under_the_top_of_low_ram():
    split = RamSplit.for_machine("pc", 256 * MIB)
    start, end = split.initrd_region(30 * MIB)
    assert end == 256 * MIB and 256 * MIB - 32 * MIB < start < 256 * MIB - 30 * MIB
    big = RamSplit.for_machine("pc", 3 * GIB)  # initrd_addr_max caps it below 2 GiB
    start, end = big.initrd_region(30 * MIB)
    assert start < 2 * GIB and end == 3 * GIB


def qemu_mtree(machine: str, size: int, tmp_path) -> str:
    """``info mtree`` of a kernel-less QEMU (-S: the guest never runs)."""
    ours, theirs = socket.socketpair()
    argv = ["qemu-system-x86_64", "-machine", f"{machine},memory-backend=ram0", "-accel", "tcg",
            "-m", f"{size // MIB}M", "-nodefaults", "-display", "none", "-S",
            "-object", f"memory-backend-file,id=ram0,size={size},mem-path={tmp_path / 'ram'},"
                       "share=on",
            "-chardev", f"socket,id=qmp,fd={theirs.fileno()}", "-mon", "chardev=qmp,mode=control"]
    process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
    theirs.close()
    qmp = QmpSession("mtree")
    try:
        qmp.connect(ours)
        text = qmp.hmp("info mtree")
        qmp.command("quit")
    finally:
        qmp.close()
        process.wait(30)
    return text


@pytest.mark.parametrize("machine,size", [
    ("pc", 256 * MIB), ("pc", 3 * GIB + 512 * MIB), ("q35", 2 * GIB + 768 * MIB - MIB),
    ("q35", 3 * GIB),
])
def test_qemu_agrees_with_the_maths(machine, size, tmp_path):
    layout = parse_mtree(qemu_mtree(machine, size, tmp_path))  # QEMU's own answer
    split = RamSplit.for_machine(machine, size)
    assert layout.below_4g == split.below_4g and layout.size + 0x60000 == split.size
    for gpa in (0x100000, split.below_4g - 0x1000, FOUR_GIB, FOUR_GIB + split.above_4g - 0x1000):
        if split.holds(gpa, 0x1000):
            assert layout.file_offset(gpa, 0x1000) == split.file_offset(gpa, 0x1000)
