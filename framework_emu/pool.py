"""The kernel pools, carved out of one guest-physical window.

Placement follows the NT pool that the framework sits on:

- A request larger than ``PAGE_SIZE - POOL_HEADER_SIZE`` (4080 bytes; 4016
  for the cache-aligned pools) takes whole pages, page aligned, from the page
  allocator (first fit, lowest
  address first, coalescing on free).
- A smaller request is a *block* inside a pool page: a 16-byte pool header
  (reserved, as the real POOL_HEADER is; not written) followed by the data, 16-byte
  aligned (64 for the CacheAligned pool types). A block never crosses a page.
  Freed blocks go on per-size LIFO free lists, so the block freed last is
  the one handed out next: stale data comes back, as on a real machine.
  A pool page whose blocks are all free goes back to the page allocator.
- Nothing is zeroed.

Paged and nonpaged pools (and NX / cache-aligned variants) use separate pool
pages, as separate pools do. Everything is accounted per tag (poolmon), every
allocation remembers the driver's call site (leak reports), and allocations
can be made to fail on purpose (nth, by tag, with a seeded probability).
Hooks on allocation and free let a sanitizer add guard bytes or poison freed
memory later.

Addresses: the pool works on guest-physical pages and hands out kernel
virtual addresses of the direct map (``kva_base + gpa``); all arithmetic is
plain Python integers, so any window base (above 4 GiB too) works.
"""

from __future__ import annotations

import bisect
import enum
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from .bugcheck import BAD_POOL_CALLER, BPC_DOUBLE_FREE, BPC_NOT_IN_ANY_POOL, BPC_WRONG_TAG, BugCheck
from .callsite import CallSite, format_site
from .errors import ArgumentError
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from .pooltag import format_tag, tag_value
from .recently_freed import RecentlyFreed

POOL_HEADER_SIZE = 16
SMALL_BLOCK_LIMIT = PAGE_SIZE - POOL_HEADER_SIZE  # largest request served from a pool page
MEMORY_ALLOCATION_ALIGNMENT = 16
CACHE_LINE = 64
FREED_BLOCKS_KEPT = 65536  # freed addresses remembered to name a double free


class PoolType(enum.IntEnum):
    """POOL_TYPE of wdm.h (aliases share values, e.g. NonPagedPoolExecute == NonPagedPool)."""

    NonPagedPool = 0
    NonPagedPoolExecute = 0
    PagedPool = 1
    NonPagedPoolMustSucceed = 2
    DontUseThisType = 3
    NonPagedPoolCacheAligned = 4
    PagedPoolCacheAligned = 5
    NonPagedPoolCacheAlignedMustS = 6
    MaxPoolType = 7
    NonPagedPoolBase = 0
    NonPagedPoolBaseMustSucceed = 2
    NonPagedPoolBaseCacheAligned = 4
    NonPagedPoolBaseCacheAlignedMustS = 6
    NonPagedPoolSession = 32
    PagedPoolSession = 33
    NonPagedPoolMustSucceedSession = 34
    DontUseThisTypeSession = 35
    NonPagedPoolCacheAlignedSession = 36
    PagedPoolCacheAlignedSession = 37
    NonPagedPoolCacheAlignedMustSSession = 38
    NonPagedPoolNx = 512
    NonPagedPoolNxCacheAligned = 516
    NonPagedPoolSessionNx = 544


_VALID_POOL_TYPES = frozenset(int(p) for p in PoolType) - {3, 7, 35}


POOL_COLD_ALLOCATION = 0x100
_FX_PAGED_POOL_TYPES = frozenset({int(PoolType.PagedPool), int(PoolType.PagedPoolCacheAligned)})


def is_paged_pool(pool_type: int) -> bool:
    """The kernel's view (BASE_POOL_TYPE_MASK): the base type, bit 0, is PagedPool.

    This is what the pool itself, poolmon and Driver Verifier's pool checks go by
    (PagedPoolSession is paged here)."""
    return (int(pool_type) & 1) == 1


def fx_is_paged_pool_type(pool_type: int) -> bool:
    """The framework's view (wdfpool.cpp FxIsPagedPoolType): only PagedPool and
    PagedPoolCacheAligned, with POOL_COLD_ALLOCATION ignored, are paged [S].

    The session types (PagedPoolSession 33, PagedPoolCacheAlignedSession 37) are
    *not* paged to the framework: WdfMemoryCreate allows them up to DISPATCH_LEVEL,
    embeds a small buffer in its object, and disposes them at any IRQL."""
    return (pool_type & ~POOL_COLD_ALLOCATION) in _FX_PAGED_POOL_TYPES


def is_cache_aligned(pool_type: int) -> bool:
    return (int(pool_type) & 4) == 4


def check_pool_type(pool_type: int, field_name: str = "PoolType") -> int:
    """The pool type as an int, or ArgumentError for a value wdm.h does not define."""
    try:
        value = int(pool_type)
    except (TypeError, ValueError):
        raise ArgumentError("not a POOL_TYPE", field=field_name, value=pool_type) from None
    if value not in _VALID_POOL_TYPES:
        raise ArgumentError("not a usable POOL_TYPE", field=field_name, value=pool_type)
    return value


def pool_kind_name(pool_type: int) -> str:
    """"paged" or "nonpaged", as the kernel classifies the pool type (for messages)."""
    return "paged" if is_paged_pool(pool_type) else "nonpaged"


def pool_kind(pool_type: int) -> str:
    """poolmon's Type column: "Paged" or "Nonp"."""
    return "Paged" if is_paged_pool(pool_type) else "Nonp"


class PageAllocator:
    """Whole guest-physical pages from a set of free extents: first fit, coalescing."""

    def __init__(self, extents: Iterable[tuple[int, int]]) -> None:
        self._starts: list[int] = []
        self._pages: dict[int, int] = {}     # extent start -> pages
        self._by_end: dict[int, int] = {}    # extent end -> start
        self.total_pages = 0
        for start, end in extents:
            start = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            end &= ~(PAGE_SIZE - 1)
            if end > start:
                self._insert(start, (end - start) >> PAGE_SHIFT)
                self.total_pages += (end - start) >> PAGE_SHIFT
        self.free_pages = self.total_pages

    def _insert(self, start: int, pages: int) -> None:
        bisect.insort(self._starts, start)
        self._pages[start] = pages
        self._by_end[start + (pages << PAGE_SHIFT)] = start

    def allocate(self, pages: int) -> int | None:
        """Lowest-address run of ``pages`` contiguous pages, or None."""
        starts = self._starts
        for i, start in enumerate(starts):
            have = self._pages[start]
            if have >= pages:
                del self._pages[start]
                if have == pages:
                    del starts[i]
                    del self._by_end[start + (have << PAGE_SHIFT)]
                else:
                    rest = start + (pages << PAGE_SHIFT)
                    starts[i] = rest
                    self._pages[rest] = have - pages
                    self._by_end[start + (have << PAGE_SHIFT)] = rest
                self.free_pages -= pages
                return start
        return None

    def free(self, start: int, pages: int) -> None:
        self.free_pages += pages
        end = start + (pages << PAGE_SHIFT)
        before = self._by_end.pop(start, None)
        after = self._pages.pop(end, None)
        if before is not None:
            if after is not None:
                del self._starts[bisect.bisect_left(self._starts, end)]
                pages += after
                end += after << PAGE_SHIFT
            self._pages[before] += pages
            self._by_end[end] = before
        elif after is not None:
            self._starts[bisect.bisect_left(self._starts, end)] = start
            self._pages[start] = pages + after
            self._by_end[end + (after << PAGE_SHIFT)] = start
        else:
            bisect.insort(self._starts, start)
            self._pages[start] = pages
            self._by_end[end] = start

    def extents(self) -> list[tuple[int, int]]:
        """Free extents as (start, end) pairs, for tests and diagnostics."""
        return [(s, s + (self._pages[s] << PAGE_SHIFT)) for s in self._starts]


class SmallBlockHeap:
    """Blocks of one pool (paged / nonpaged / ...) inside pool pages.

    A block is ``units`` 16-byte units: one unit of pool header, then the
    data. Free blocks of each size sit on a LIFO list (a dict popped from
    its end). Pages come from the page allocator; pages whose blocks are all
    free go back to it when it runs short (:meth:`trim`), which keeps the hot
    path to one dict operation per allocation and per free.
    """

    def __init__(self, pages: PageAllocator, alignment: int) -> None:
        self._pages = pages
        self._align = alignment
        # Largest request a block can hold: a 16-aligned block may start at the page's
        # start; an aligned one starts where its data (after the header) is aligned.
        self.max_size = SMALL_BLOCK_LIMIT if alignment == 16 else PAGE_SIZE - alignment - POOL_HEADER_SIZE
        self.free_lists: dict[int, dict[int, None]] = {}  # units -> {block gpa: None}
        self._carved: dict[int, int] = {}  # page gpa -> units handed out of it
        self._bump = 0       # next free byte in the current page
        self._bump_end = 0   # end of the current page (0: none)

    def units_for(self, size: int) -> int:
        units = ((size + 15) >> 4) + 1
        if self._align > 16:
            step = self._align >> 4
            units = (units + step - 1) // step * step
        return units

    def free_list(self, units: int) -> dict[int, None]:
        """The LIFO free list of ``units``-unit blocks (one dict for the heap's life)."""
        bucket = self.free_lists.get(units)
        if bucket is None:
            bucket = self.free_lists[units] = {}
        return bucket

    def allocate(self, units: int) -> int | None:
        """Block (header) address of a ``units``-unit block, or None when pages run out."""
        bucket = self.free_list(units)
        if bucket:
            return bucket.popitem()[0]
        size = units << 4
        pad = 0
        if self._align > 16 and self._bump_end:
            pad = (-(self._bump + POOL_HEADER_SIZE)) % self._align
        if not self._bump_end or self._bump + pad + size > self._bump_end:
            if not self._new_page():
                return None
            pad = (self._align - POOL_HEADER_SIZE) % self._align if self._align > 16 else 0
        block = self._bump + pad
        self._bump = block + size
        self._carved[self._bump_end - PAGE_SIZE] += units + (pad >> 4)
        if pad:
            self._put_free(block - pad, pad >> 4)
        return block

    def _new_page(self) -> bool:
        page = self._pages.allocate(1)
        if page is None:
            return False
        if self._bump_end:
            rest = (self._bump_end - self._bump) >> 4
            if rest:
                self._carved[self._bump_end - PAGE_SIZE] += rest
                self._put_free(self._bump, rest)
        self._carved[page] = 0
        self._bump, self._bump_end = page, page + PAGE_SIZE
        return True

    def _put_free(self, block: int, units: int) -> None:
        self.free_list(units)[block] = None

    def free(self, block: int, units: int) -> None:
        self.free_lists[units][block] = None

    def trim(self) -> int:
        """Give every pool page whose blocks are all free back to the page allocator."""
        free_units: dict[int, int] = {}
        for units, bucket in self.free_lists.items():
            for block in bucket:
                page = block & ~(PAGE_SIZE - 1)
                free_units[page] = free_units.get(page, 0) + units
        current = self._bump_end - PAGE_SIZE if self._bump_end else None
        if current is not None:
            # The page being carved counts its uncarved rest as free.
            free_units[current] = free_units.get(current, 0) + ((self._bump_end - self._bump) >> 4)
        empty = {page for page, n in free_units.items()
                 if n == self._carved.get(page, 0) + (((self._bump_end - self._bump) >> 4) if page == current else 0)}
        if not empty:
            return 0
        if current in empty:
            self._bump = self._bump_end = 0
        for bucket in self.free_lists.values():
            for block in [b for b in bucket if b & ~(PAGE_SIZE - 1) in empty]:
                del bucket[block]
        for page in sorted(empty):
            del self._carved[page]
            self._pages.free(page, 1)
        return len(empty)


class PoolAllocation:
    """One live allocation, as poolmon and a leak report show it (built on demand)."""

    __slots__ = ("va", "size", "tag", "pool_type", "site", "serial")

    def __init__(self, va: int, size: int, tag: bytes, pool_type: int,
                 site: CallSite | None, serial: int) -> None:
        self.va = va
        self.size = size
        self.tag = tag
        self.pool_type = pool_type
        self.site = site
        self.serial = serial

    def __repr__(self) -> str:
        return (f"<pool {format_tag(self.tag)} {pool_kind(self.pool_type)} 0x{self.va:x}+0x{self.size:x}"
                f" from {format_site(self.site)}>")


class LiveBlock(NamedTuple):
    """The pool's record of one live allocation (a tuple: cheap to make on the hot path)."""

    size: int
    tag: bytes
    pool_type: int
    site: CallSite | None
    serial: int
    block: int                          # block (header) or first page, guest-physical
    units: int                          # 16-byte units of a block, or pages
    bucket: dict[int, None] | None      # the block's free list; None for whole pages
    frees: dict[bytes, int]             # the frees-per-tag table of its poolmon Type

    def allocation(self, va: int) -> PoolAllocation:
        return PoolAllocation(va, self.size, self.tag, self.pool_type, self.site, self.serial)


# Pool.allocate makes a LiveBlock by tuple.__new__ on the field values in order, without the
# Python-level __new__ NamedTuple generates: ~1,700 fewer instructions per allocation
# (callgrind, CPython 3.11; a plain tuple would save ~1,700 more, 4% of a WdfMemoryCreate +
# WdfObjectDelete pair, at the price of positional reads).
_new_live_block = tuple.__new__


@dataclass
class TagStats:
    """One poolmon row."""

    tag: bytes
    kind: str
    allocs: int = 0
    frees: int = 0
    bytes: int = 0

    @property
    def diff(self) -> int:
        return self.allocs - self.frees

    def __str__(self) -> str:
        per = self.bytes // self.diff if self.diff else 0
        return (f"{format_tag(self.tag):<8} {self.kind:<5} {self.allocs:>9} {self.frees:>9}"
                f" {self.diff:>7} {self.bytes:>11} {per:>9}")


@dataclass
class FailureInjection:
    """A seeded plan of allocation failures; ``fired`` lists (serial, tag, size, site)."""

    nth: int | None = None
    tag: bytes | None = None
    probability: float | None = None
    count: int | None = None
    seen: int = 0
    fired: list[tuple[int, bytes, int, CallSite | None]] = field(default_factory=list)
    active: bool = True

    def cancel(self) -> None:
        self.active = False

    def _decide(self, rng: random.Random, tag: bytes) -> bool:
        if self.tag is not None and tag != self.tag:
            return False
        self.seen += 1
        if self.nth is not None and self.seen < self.nth:
            return False
        if self.probability is not None and rng.random() >= self.probability:
            return False
        return True


class Pool:
    """All pools of the emulated kernel over one guest-physical window."""

    def __init__(self, memory: PhysicalMemory, window: tuple[int, int], kva_base: int,
                 *, seed: int | None = None) -> None:
        base, size = window
        if size <= 0:
            raise ArgumentError("the pool window is empty", field="pool_window", value=window)
        ram = [(max(a, base), min(b, base + size)) for a, b in memory.ram_ranges()]
        ram = [(a, b) for a, b in ram if b - a >= PAGE_SIZE]
        if not ram:
            raise ArgumentError(
                f"the pool window 0x{base:x}+0x{size:x} holds no RAM page "
                f"(RAM: {', '.join(f'0x{a:x}-0x{b:x}' for a, b in memory.ram_ranges())})",
                field="pool_window", value=window)
        self.memory = memory
        self.window = (base, size)
        self.kva_base = kva_base
        self.pages = PageAllocator(ram)
        self._heaps: dict[tuple[str, int], SmallBlockHeap] = {}
        self.live: dict[int, LiveBlock] = {}
        self._heap_by_type: dict[int, SmallBlockHeap] = {}
        # (pool_type << 12) | size -> (free list, units, heap, frees table) of a request
        # a pool page serves: the placement arithmetic, done once per size.
        self._size_classes: dict[int, tuple[dict[int, None] | None, int, SmallBlockHeap | None, dict[bytes, int]]] = {}
        self.recently_freed: RecentlyFreed[int, tuple[bytes, CallSite | None]] = RecentlyFreed(FREED_BLOCKS_KEPT)
        # tag -> frees, one table per poolmon Type. Only frees are counted as they happen:
        # allocations and bytes still out are read off ``live`` when poolmon is asked.
        self._nonpaged_frees: dict[bytes, int] = {}
        self._paged_frees: dict[bytes, int] = {}
        self._small_offset = POOL_HEADER_SIZE + kva_base
        self.serial = 0
        self.failed = 0
        self._rng = random.Random(seed)
        self._injections: list[FailureInjection] = []
        self.on_allocate: list[Callable[[PoolAllocation], None]] = []
        self.on_free: list[Callable[[PoolAllocation], None]] = []
        self.free_fill: int | None = None  # byte written over freed memory (poisoning), off by default

    # -- allocation ---------------------------------------------------------------------

    def _heap(self, pool_type: int) -> SmallBlockHeap:
        heap = self._heap_by_type.get(pool_type)
        if heap is None:
            key = (pool_kind(pool_type) + ("Nx" if pool_type & 512 else ""),
                   CACHE_LINE if is_cache_aligned(pool_type) else MEMORY_ALLOCATION_ALIGNMENT)
            heap = self._heaps.get(key)
            if heap is None:
                heap = self._heaps[key] = SmallBlockHeap(self.pages, key[1])
            self._heap_by_type[pool_type] = heap
        return heap

    def _frees_table(self, pool_type: int) -> dict[bytes, int]:
        """The tag -> frees table of ``pool_type``'s poolmon Type."""
        return self._paged_frees if is_paged_pool(pool_type) else self._nonpaged_frees

    def _size_class(self, pool_type: int, size: int) -> tuple:
        """Where a ``size``-byte request (0 < size <= SMALL_BLOCK_LIMIT) of ``pool_type`` goes:
        (free list, units, heap, frees table); free list and heap are None when the
        request is too large for the pool's blocks (the cache-aligned pools) and takes pages."""
        heap = self._heap(pool_type)
        frees = self._frees_table(pool_type)
        if size > heap.max_size:
            size_class = (None, (size + PAGE_SIZE - 1) >> PAGE_SHIFT, None, frees)
        else:
            units = heap.units_for(size)
            size_class = (heap.free_list(units), units, heap, frees)
        self._size_classes[(pool_type << 12) | size] = size_class
        return size_class

    def allocate(self, pool_type: int, size: int, tag: bytes, site: CallSite | None = None) -> int:
        """Kernel virtual address of ``size`` fresh (not zeroed) bytes, or 0 on failure."""
        self.serial = serial = self.serial + 1
        if self._injections and self._inject(tag, size, site):
            self.failed += 1
            return 0
        if 0 < size <= SMALL_BLOCK_LIMIT:  # (pool_type << 12) | size is then unique per pair
            bucket, units, heap, frees = (self._size_classes.get((pool_type << 12) | size)
                                          or self._size_class(pool_type, size))
        else:
            bucket = heap = None
            units = (size + PAGE_SIZE - 1) >> PAGE_SHIFT or 1
            frees = self._frees_table(pool_type)
        if bucket:
            block = bucket.popitem()[0]
            va = block + self._small_offset
        elif heap is not None:
            block = heap.allocate(units)
            if block is None:
                block = heap.allocate(units) if self.trim() else None
                if block is None:
                    self.failed += 1
                    return 0
            va = block + self._small_offset
        else:
            block = self.pages.allocate(units)
            if block is None:
                block = self.pages.allocate(units) if self.trim() else None
                if block is None:
                    self.failed += 1
                    return 0
            va = block + self.kva_base
        self.live[va] = record = _new_live_block(LiveBlock, (size, tag, pool_type, site, serial, block, units,
                                                             bucket, frees))
        if self.on_allocate:
            allocation = record.allocation(va)
            for hook in self.on_allocate:
                hook(allocation)
        return va

    def free(self, va: int, tag: bytes | None = None, site: CallSite | None = None) -> int:
        """Return an allocation, giving back its size; ``tag`` (ExFreePoolWithTag) must match.

        Bad frees bug-check BAD_POOL_CALLER (0xC2) as the kernel does [D]: P1 0x07
        for a double free (P3 the header contents: the tag here), 0x0A for a wrong
        tag, 0x42 for an address that is no allocation. (Under Driver Verifier the
        driver's own frees are checked first, with 0xC4 codes: api/pool_api.py.)
        """
        rec = self.live.pop(va, None)
        if rec is None:
            freed = self.recently_freed.get(va)
            if freed is not None:
                raise BugCheck(BAD_POOL_CALLER, (BPC_DOUBLE_FREE, 0, tag_value(freed[0]), va),
                               f"double free of pool block 0x{va:x} (tag {format_tag(freed[0])}),"
                               f" first freed at {format_site(freed[1])}, again at {format_site(site)}")
            raise BugCheck(BAD_POOL_CALLER, (BPC_NOT_IN_ANY_POOL, va, 0, 0),
                           f"attempt to free 0x{va:x}, which is not a pool allocation (at {format_site(site)})")
        size, rtag, pool_type, rsite, serial, block, units, bucket, frees = rec
        if tag is not None and tag != rtag:
            self.live[va] = rec
            raise BugCheck(BAD_POOL_CALLER, (BPC_WRONG_TAG, va, tag_value(rtag), tag_value(tag)),
                           f"ExFreePoolWithTag of 0x{va:x} with tag {format_tag(tag)}, but it was"
                           f" allocated with tag {format_tag(rtag)} at {format_site(rsite)}")
        frees[rtag] = frees.get(rtag, 0) + 1
        if self.on_free:
            info = PoolAllocation(va, size, rtag, pool_type, rsite, serial)
            for hook in self.on_free:
                hook(info)
        if self.free_fill is not None:
            self.memory.fill(va - self.kva_base, size, self.free_fill)
        if bucket is None:
            self.pages.free(block, units)
        else:
            bucket[block] = None
        self.recently_freed.remember(va, (rtag, site))
        return size

    def trim(self) -> int:
        """Return fully free pool pages of every heap to the page allocator; pages given back."""
        return sum(heap.trim() for heap in self._heaps.values())

    # -- failure injection ----------------------------------------------------------------

    def inject_failures(self, *, nth: int | None = None, tag: bytes | None = None,
                        probability: float | None = None, count: int | None = None) -> FailureInjection:
        """Make allocations fail on purpose (counted from now, seeded by the framework's seed).

        - ``nth=N``: the Nth allocation from now fails (once, unless ``count``
          or ``probability`` is given);
        - ``tag=b"Echo"``: only allocations with that tag count (alone: all of them fail);
        - ``probability=p``: each counted allocation fails with probability p;
        - ``count=K``: stop after K failures.
        """
        if nth is not None and nth < 1:
            raise ArgumentError("nth counts from 1", field="nth", value=nth)
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ArgumentError("a probability is between 0 and 1", field="probability", value=probability)
        plan = FailureInjection(nth=nth, tag=tag, probability=probability, count=count)
        self._injections.append(plan)
        return plan

    def _inject(self, tag: bytes, size: int, site: CallSite | None) -> bool:
        fail = False
        for plan in self._injections:
            if plan.active and plan._decide(self._rng, tag):
                plan.fired.append((self.serial, tag, size, site))
                fail = True
                if plan.count is not None:
                    plan.active = len(plan.fired) < plan.count
                elif plan.nth is not None and plan.probability is None:
                    plan.active = False
        if fail or not all(p.active for p in self._injections):
            self._injections = [p for p in self._injections if p.active]
        return fail

    # -- accounting -------------------------------------------------------------------------

    def _counts(self, tag: bytes | None = None) -> dict[tuple[bytes, str], list[int]]:
        """(tag, poolmon Type) -> [allocs, frees, bytes still allocated], for one tag or all.

        Frees are counted as they happen; every allocation not freed is in ``live``,
        so allocs = frees + live allocations and bytes = their sizes."""
        rows: dict[tuple[bytes, str], list[int]] = {}
        for kind, frees in (("Nonp", self._nonpaged_frees), ("Paged", self._paged_frees)):
            for t, count in frees.items():
                if tag is None or t == tag:
                    rows[(t, kind)] = [count, count, 0]
        for rec in self.live.values():
            if tag is None or rec.tag == tag:
                key = (rec.tag, pool_kind(rec.pool_type))
                row = rows.get(key)
                if row is None:
                    row = rows[key] = [0, 0, 0]
                row[0] += 1
                row[2] += rec.size
        return rows

    def poolmon(self) -> list[TagStats]:
        """Per-tag rows (poolmon), most outstanding bytes first."""
        rows = [TagStats(tag, kind, c[0], c[1], c[2]) for (tag, kind), c in self._counts().items()]
        return sorted(rows, key=lambda s: (-s.bytes, s.tag, s.kind))

    def tag_stats(self, tag: bytes) -> TagStats:
        """Paged and nonpaged counts of one tag added together."""
        total = TagStats(tag, "All")
        for c in self._counts(tag).values():
            total.allocs += c[0]
            total.frees += c[1]
            total.bytes += c[2]
        return total

    def format_poolmon(self) -> str:
        head = f"{'Tag':<8} {'Type':<5} {'Allocs':>9} {'Frees':>9} {'Diff':>7} {'Bytes':>11} {'Per Alloc':>9}"
        return "\n".join([head] + [str(s) for s in self.poolmon()])

    def bytes_in_use(self, tag: bytes | None = None) -> int:
        return sum(rec.size for rec in self.live.values() if tag is None or rec.tag == tag)

    def allocation(self, va: int) -> PoolAllocation | None:
        """The live allocation starting at ``va``."""
        rec = self.live.get(va)
        return None if rec is None else rec.allocation(va)

    def allocations(self, tag: bytes | None = None) -> list[PoolAllocation]:
        """Live allocations (oldest first), optionally of one tag."""
        out = [r.allocation(va) for va, r in self.live.items() if tag is None or r.tag == tag]
        out.sort(key=lambda a: a.serial)
        return out
