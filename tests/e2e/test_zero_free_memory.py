"""The guest-side step before a post-boot save (``boot_cache.zero_free_memory``)
zeroes what freed memory held: a guest writes a recognisable pattern into a file
and removes it (its pages, now free, still hold the pattern in the RAM file the
host sees); after the step most of those pages are zeros, and the guest runs on
(its shell, its clock). Without the step every pattern page stays: the test fails."""

from __future__ import annotations

import mmap
import os

import pytest

from orchestrator.boot_cache import zero_free_memory
from orchestrator.sparse_file import data_extents

pytestmark = pytest.mark.e2e

PATTERN = b"wdfhil-stale-page\n"
PATTERN_MIB = 24


def pattern_pages(ram_file) -> int:
    """Pages of the guest's RAM file holding the pattern (as `yes` wrote it)."""
    needle = PATTERN * 4
    count = 0
    fd = os.open(ram_file, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as ram:
            for start, length in data_extents(fd, size):
                for page in range(start, start + length, mmap.PAGESIZE):
                    if ram.find(needle, page, page + mmap.PAGESIZE) >= 0:
                        count += 1
    finally:
        os.close(fd)
    return count


def test_freed_memory_is_zeroed_before_the_save(vm):
    text = PATTERN.decode().strip()
    vm.run_checked(f"yes {text} | head -c {PATTERN_MIB}m > /dev/shm/stale; rm /dev/shm/stale")
    before = pattern_pages(vm.ram_file)
    assert before >= PATTERN_MIB * 256 * 3 // 4     # the freed file's pages, still there

    zero_free_memory(vm)

    after = pattern_pages(vm.ram_file)
    assert after <= before // 4, f"{after} of {before} pattern pages left after the step"
    assert vm.run_checked("echo alive").strip() == "alive"
    assert vm.run_checked("mount | grep -c wdfhil-zero-fill || true").strip() == "0"
