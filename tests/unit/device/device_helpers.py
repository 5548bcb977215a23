"""Helpers shared by the device model's unit tests (a unique module name: pytest
imports test folders' modules by their base name)."""

from __future__ import annotations

import os

from wdfhil.physical_memory import InProcessMemory

MIB = 1 << 20
GIB = 1 << 30
LOW = (0, MIB)
HIGH = (4 * GIB, 4 * GIB + MIB)


def holey_memory() -> InProcessMemory:
    """1 MiB at 0 and 1 MiB at 4 GiB: the PCI hole and the 4 GiB boundary in miniature."""
    return InProcessMemory(ranges=[LOW, HIGH])


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}
