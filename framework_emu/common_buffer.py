"""WDFCOMMONBUFFER: physically contiguous memory both the driver and the device use
(fxcommonbuffer.cpp).

The HAL's AllocateCommonBuffer gives whole, physically contiguous pages the
device can reach; here they come from the driver's nonpaged pool (the guest's
pool window) or, when the device cannot reach the pool (a 32-bit device, the
window above 4 GiB), from the platform's low DMA region
(:mod:`framework_emu.low_dma`); the logical address is what the enabler's adapter makes of
them (the physical address, or an IOVA under DMA remapping). Alignment as
FxCommonBuffer::AllocateCommonBuffer computes it: an alignment above
PAGE_SIZE - 1 allocates Length + alignment bytes and aligns the *logical*
address up, moving the virtual address by the same offset.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterator

from wdfhil.physical_memory import PAGE_SIZE

from .callsite import CallSite
from .dma_enabler import FX_TYPE_COMMON_BUFFER, DmaEnabler
from .objects import FX_TYPE_OBJECT, FxObject
from .pool import PoolType

COMMON_BUFFER_TAG = b"HalC"   # the emulator's tag for the HAL's common-buffer pages


class CommonBuffer(FxObject):
    WDF_TYPE = FX_TYPE_COMMON_BUFFER
    HANDLE_NAME = "WDFCOMMONBUFFER"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_COMMON_BUFFER})
    DISPOSE_OVERRIDE = True

    raw_va = 0
    raw_la = 0
    aligned_va = 0
    aligned_la = 0
    length = 0
    raw_length = 0
    _release: Callable[[], None]          # gives the pages back where they came from

    def __init__(self, fx: Any, site: CallSite | None, enabler: DmaEnabler) -> None:
        FxObject.__init__(self, fx, site)
        self.enabler = enabler
        self.alignment = enabler.common_buffer_alignment
        self.DESCRIPTION = f"common buffer of {enabler.describe()}"

    def allocate(self, length: int) -> bool:
        """FxCommonBuffer::AllocateCommonBuffer; False: STATUS_INSUFFICIENT_RESOURCES."""
        fx = self.fx
        alignment = self.alignment
        raw_length = length + alignment if alignment > PAGE_SIZE - 1 else length
        pages = (raw_length + PAGE_SIZE - 1) // PAGE_SIZE
        adapter = self.enabler.description(0).adapter
        for va, release in self._candidates(pages):
            try:
                la = adapter.map_common_buffer(va - fx.kva_base, raw_length)
            except Exception:  # the adapter cannot give the device this memory
                release()
                continue
            self.raw_va, self.raw_la, self.length, self.raw_length = va, la, length, raw_length
            self._release = release
            self.aligned_la = (la + alignment) & ~alignment
            self.aligned_va = va + (self.aligned_la - la)
            return True
        return False

    def _candidates(self, pages: int) -> Iterator[tuple[int, Callable[[], None]]]:
        """Pages to try, in order: the nonpaged pool, then the platform's low DMA region."""
        fx = self.fx
        va = fx._pool.allocate(PoolType.NonPagedPool, pages * PAGE_SIZE, COMMON_BUFFER_TAG, self.created_at)
        if va:
            yield va, partial(fx._pool.free, va)
        low_dma = getattr(self.enabler.device.hardware, "low_dma", None)
        if low_dma is not None:
            base = low_dma.allocate(pages)
            if base is not None:
                yield fx.gpa_to_va(base), partial(low_dma.free, base)

    def free_buffer(self) -> None:
        """FxCommonBuffer::FreeCommonBuffer."""
        if self.raw_va:
            if self.enabler.descriptions:
                self.enabler.description(0).adapter.unmap_common_buffer(self.raw_la, self.raw_length)
            self._release()
            self.raw_va = 0

    def dispose(self) -> None:
        self.free_buffer()
        FxObject.dispose(self)

    def free_storage(self) -> None:
        self.free_buffer()
        FxObject.free_storage(self)
