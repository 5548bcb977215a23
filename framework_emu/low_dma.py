"""The platform's low DMA memory: map registers and common buffers a device cannot get elsewhere.

On Windows the HAL sets aside low memory at boot for its map registers (the bounce
pages a device with a narrow DMA mask is given instead of a page it cannot reach),
and AllocateCommonBuffer takes contiguous pages below the device's mask. Neither
comes out of the driver's nonpaged pool. Here the framework may only write guest
RAM the guest kernel never uses, and the pool window can lie above 4 GiB (where a
32-bit device reaches nothing), so the runtime reserves a second range below
4 GiB from the guest kernel (the guest config's ``low_dma`` window) and hands it
to the device's :class:`~framework_emu.hw_resources.DeviceHardware` as a
:class:`LowDmaRegion`: each DMA adapter that needs bounce pages takes one
contiguous run of it (its map registers, so a transfer's bounced pages form one
logical range), and a common buffer the pool cannot give the device comes from it.
"""

from __future__ import annotations

from wdfhil.errors import ConfigError
from wdfhil.physical_memory import PAGE_SIZE


class LowDmaRegion:
    """Whole pages of ``[base, base+size)`` handed out as contiguous runs (first fit).

    Used from the runtime thread only (the framework is single-threaded)."""

    def __init__(self, base: int, size: int) -> None:
        if base < 0 or base % PAGE_SIZE:
            raise ConfigError("must be a page-aligned guest-physical address", field="low_dma.base", value=base)
        if size <= 0 or size % PAGE_SIZE:
            raise ConfigError(f"must be a positive multiple of {PAGE_SIZE}", field="low_dma.size", value=size)
        self.base = base
        self.size = size
        self._runs: dict[int, int] = {}     # start address -> pages, of the runs handed out

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def free_pages(self) -> int:
        return (self.size // PAGE_SIZE) - sum(self._runs.values())

    def allocate(self, pages: int) -> int | None:
        """The address of ``pages`` consecutive free pages, or None when no run is that long."""
        if pages <= 0:
            raise ValueError(f"pages must be positive (got {pages})")
        cursor = self.base
        for start in sorted(self._runs):
            if start - cursor >= pages * PAGE_SIZE:
                break
            cursor = start + self._runs[start] * PAGE_SIZE
        if self.end - cursor < pages * PAGE_SIZE:
            return None
        self._runs[cursor] = pages
        return cursor

    def free(self, address: int) -> None:
        """Give back the run that starts at ``address``."""
        if self._runs.pop(address, None) is None:
            raise ValueError(f"0x{address:x} is not the start of a run of the low DMA region")
