"""Request-ring entry validation: a copied entry -> a :class:`RequestPlan`, or a Refusal.

A request entry (docs/device-abi.md, "The request ring") is written by the
guest module, which the host must not trust. The checks here are the ones
that need nothing but the entry, guest RAM and the ABI's limits; they run in
one written-out order on a private copy of the entry and of its indirect PFN
table (no TOCTOU), and the first failure names its field, as the DMA ring's
:class:`~device_model.descriptors.Refusal` does. The checks that need the
endpoint's state (the request id already in flight, the file open) come after
these, in :mod:`device_model.request_ring`.

A plan holds only what was proved: the system buffer lies wholly inside one
RAM range, every page of the page list is a whole page of guest RAM, all of
it under ``address_limit``. It holds addresses, not views: the endpoint makes
views of RAM windows it owns, so nothing here keeps guest RAM mapped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from device_model.abi import (
    IO_INLINE_PFNS, IO_MAX_LENGTH, IO_MAX_SYSTEM_BUFFER, RQE_FORMAT, RQE_PFN_OFFSET,
    RQE_RESERVED, RQE_HEAD_SIZE, ErrorReason, IoFlag, IoMajor, IoType, TransferMethod,
)
from device_model.descriptors import FULL_DMA_MASK, RamWindows, Refusal
from wdfhil.physical_memory import PAGE_SIZE

_HEAD = struct.Struct(RQE_FORMAT)
_RESERVED = struct.Struct(f"<{RQE_RESERVED}Q")
_INLINE = struct.Struct(f"<{IO_INLINE_PFNS}Q")
_MAJORS = {int(m): m for m in IoMajor}
_INDIRECT = int(IoFlag.INDIRECT)
_PFN_LIMIT = 1 << (64 - 12)      # a page number whose page ends at or below 2^64
_PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
_NO_BUFFERS = ("ioctl_code", "input_length", "output_length", "file_offset",
               "system_gpa", "system_length", "page_offset", "page_length", "page_count",
               "table_gpa", "user_input", "user_address")
_FIELDS = ("request_id", "file_id", "major", "flags", "ioctl_code", "input_length",
           "output_length", "file_offset", "target_id", "system_gpa", "system_length",
           "page_offset", "page_length", "page_count", "table_gpa", "user_input", "user_address")


@dataclass(frozen=True, slots=True)
class PageRun:
    """The part of one guest page a request's page list covers."""

    pfn: int
    offset: int      # in the page
    length: int

    @property
    def gpa(self) -> int:
        return (self.pfn << _PAGE_SHIFT) + self.offset


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """A validated request entry (checked against RAM and the ABI, not yet the endpoint's state).

    ``system_gpa``/``system_length``: the system buffer (buffered I/O, and the
    input of IN_DIRECT/OUT_DIRECT/NEITHER IOCTLs), 0/0 if none. ``pfns``,
    ``page_offset``, ``page_length``: the caller's pinned pages (direct I/O),
    exactly what an MDL holds (PFN array, ByteOffset, ByteCount). ``method``:
    the IOCTL's transfer method (None for other majors).
    """

    request_id: int
    file_id: int
    major: IoMajor
    ioctl_code: int
    method: TransferMethod | None
    input_length: int
    output_length: int
    file_offset: int
    target_id: int
    system_gpa: int
    system_length: int
    page_offset: int
    page_length: int
    pfns: tuple[int, ...]
    user_input: int
    user_address: int
    indirect: bool

    @property
    def runs(self) -> list[PageRun]:
        """(pfn, offset in page, length) per page of the page list, in order."""
        out, offset, left = [], self.page_offset, self.page_length
        for pfn in self.pfns:
            n = min(PAGE_SIZE - offset, left)
            out.append(PageRun(pfn, offset, n))
            left -= n
            offset = 0
        return out


def expected_buffers(major: IoMajor, ioctl_code: int, input_length: int, output_length: int,
                     io_type: IoType) -> tuple[int, int]:
    """(system buffer bytes, page list bytes) a request of this kind must carry."""
    if major == IoMajor.READ or major == IoMajor.WRITE:
        length = output_length if major == IoMajor.READ else input_length
        return (length, 0) if io_type == IoType.BUFFERED else (0, length)
    if major in (IoMajor.DEVICE_CONTROL, IoMajor.INTERNAL_DEVICE_CONTROL):
        if ioctl_code & 3 == TransferMethod.BUFFERED:
            return max(input_length, output_length), 0
        return input_length, output_length
    return 0, 0


class RequestValidator:
    """Checks request entries against guest RAM and the ABI's limits.

    ``io_type``: how READ/WRITE buffers travel (the header's ``io_type``).
    ``address_limit``: the highest guest-physical address a buffer may reach
    (all of RAM by default: the host runtime reads these buffers as the CPU
    would; a device's own DMA mask is the framework's DMA enabler's business).
    """

    def __init__(self, ram: RamWindows, *, io_type: IoType = IoType.DIRECT,
                 address_limit: int = FULL_DMA_MASK) -> None:
        self.ram = ram
        self.io_type = io_type
        self.address_limit = address_limit

    def validate(self, raw: bytes) -> RequestPlan | Refusal:
        """Validate one private copy of a request entry (RQE_SIZE bytes)."""
        values = _HEAD.unpack_from(raw, 0)
        f = dict(zip(_FIELDS, values))
        rid = f["request_id"]

        def refuse(reason: ErrorReason, field: str, value: int, message: str) -> Refusal:
            return Refusal(rid, reason, field, value, message)

        major = _MAJORS.get(f["major"])
        if major is None:
            return refuse(ErrorReason.BAD_OPCODE, "major", f["major"], "unknown major function")
        flags = f["flags"]
        if flags & ~_INDIRECT:
            return refuse(ErrorReason.BAD_FLAGS, "flags", flags, "unknown flag bits")
        for i, value in enumerate(_RESERVED.unpack_from(raw, RQE_HEAD_SIZE)):
            if value:
                return refuse(ErrorReason.RESERVED_FIELD, f"reserved[{i}]", value, "must be 0")
        inline = _INLINE.unpack_from(raw, RQE_PFN_OFFSET)
        if major == IoMajor.CANCEL or major in (IoMajor.CREATE, IoMajor.CLOSE, IoMajor.CLEANUP):
            if flags:
                return refuse(ErrorReason.BAD_FLAGS, "flags", flags, f"{major.name} has no buffers")
            for name in _NO_BUFFERS:
                if f[name]:
                    return refuse(ErrorReason.RESERVED_FIELD, name, f[name],
                                  f"{major.name} has no buffers: must be 0")
            for i, pfn in enumerate(inline):
                if pfn:
                    return refuse(ErrorReason.RESERVED_FIELD, f"pfn[{i}]", pfn, "unused: must be 0")
            if major == IoMajor.CANCEL:
                if f["target_id"] == 0:
                    return refuse(ErrorReason.UNKNOWN_REQUEST, "target_id", 0,
                                  "CANCEL names no request")
            elif f["target_id"]:
                return refuse(ErrorReason.RESERVED_FIELD, "target_id", f["target_id"],
                              "only CANCEL names a target")
            return self._plan(f, major, None, ())
        if f["target_id"]:
            return refuse(ErrorReason.RESERVED_FIELD, "target_id", f["target_id"],
                          "only CANCEL names a target")
        code, inp, out = f["ioctl_code"], f["input_length"], f["output_length"]
        method: TransferMethod | None = None
        if major == IoMajor.READ or major == IoMajor.WRITE:
            if code:
                return refuse(ErrorReason.RESERVED_FIELD, "ioctl_code", code,
                              f"{major.name} has no IOCTL code")
            unused = "input_length" if major == IoMajor.READ else "output_length"
            if f[unused]:
                return refuse(ErrorReason.LENGTH_MISMATCH, unused, f[unused],
                              f"{major.name} has no {unused.split('_')[0]} buffer")
        else:
            method = TransferMethod(code & 3)
        if f["user_input"] and method != TransferMethod.NEITHER:
            return refuse(ErrorReason.RESERVED_FIELD, "user_input", f["user_input"],
                          "the caller's input address only for METHOD_NEITHER")
        want_system, want_pages = expected_buffers(major, code, inp, out, self.io_type)
        if f["system_length"] != want_system:
            return refuse(ErrorReason.LENGTH_MISMATCH, "system_length", f["system_length"],
                          f"this request carries a system buffer of {want_system} bytes")
        if want_system > IO_MAX_SYSTEM_BUFFER:
            return refuse(ErrorReason.TRANSFER_TOO_LARGE, "system_length", want_system,
                          f"at most {IO_MAX_SYSTEM_BUFFER} bytes")
        if f["page_length"] != want_pages:
            return refuse(ErrorReason.LENGTH_MISMATCH, "page_length", f["page_length"],
                          f"this request carries a page list of {want_pages} bytes")
        if want_pages > IO_MAX_LENGTH:
            return refuse(ErrorReason.TRANSFER_TOO_LARGE, "page_length", want_pages,
                          f"at most {IO_MAX_LENGTH} bytes")
        gpa = f["system_gpa"]
        if want_system == 0:
            if gpa:
                return refuse(ErrorReason.RESERVED_FIELD, "system_gpa", gpa, "no system buffer: must be 0")
        else:
            refusal = self._check_range(rid, "system_gpa", gpa, want_system)
            if refusal is not None:
                return refusal
        offset, count, table_gpa = f["page_offset"], f["page_count"], f["table_gpa"]
        if want_pages == 0:
            if flags:
                return refuse(ErrorReason.BAD_FLAGS, "flags", flags, "no page list")
            for name in ("page_offset", "page_count", "table_gpa", "user_address"):
                if f[name]:
                    return refuse(ErrorReason.RESERVED_FIELD, name, f[name], "no page list: must be 0")
            for i, pfn in enumerate(inline):
                if pfn:
                    return refuse(ErrorReason.RESERVED_FIELD, f"pfn[{i}]", pfn, "unused: must be 0")
            return self._plan(f, major, method, ())
        if offset >= PAGE_SIZE:
            return refuse(ErrorReason.SEGMENT_ALIGNMENT, "page_offset", offset,
                          f"the offset into the first page must be below {PAGE_SIZE}")
        if f["user_address"] and f["user_address"] % PAGE_SIZE != offset:
            return refuse(ErrorReason.SEGMENT_ALIGNMENT, "user_address", f["user_address"],
                          "the caller's address must lie page_offset bytes into its page")
        pages = (offset + want_pages + PAGE_SIZE - 1) // PAGE_SIZE
        if count != pages:
            return refuse(ErrorReason.BAD_SEGMENT_COUNT, "page_count", count,
                          f"{want_pages} bytes at offset {offset} span {pages} pages")
        if flags & _INDIRECT:
            for i, pfn in enumerate(inline):
                if pfn:
                    return refuse(ErrorReason.RESERVED_FIELD, f"pfn[{i}]", pfn,
                                  "indirect list: inline PFNs must be 0")
            size = 8 * count
            if (table_gpa % 8 or table_gpa + size > 1 << 64 or table_gpa + size - 1 > self.address_limit
                    or self.ram.find(table_gpa, table_gpa + size) < 0):
                return refuse(ErrorReason.INDIRECT_TABLE, "table_gpa", table_gpa,
                              f"a table of {count} PFNs must be 8-byte aligned, inside one guest "
                              "RAM range and under the address limit")
            table = self._copy(table_gpa, size)
            pfns = struct.unpack(f"<{count}Q", table)
            where = "table[{}]"
        else:
            if count > IO_INLINE_PFNS:
                return refuse(ErrorReason.BAD_SEGMENT_COUNT, "page_count", count,
                              f"more than {IO_INLINE_PFNS} pages need the INDIRECT flag")
            if table_gpa:
                return refuse(ErrorReason.RESERVED_FIELD, "table_gpa", table_gpa,
                              "inline list: must be 0")
            for i in range(count, IO_INLINE_PFNS):
                if inline[i]:
                    return refuse(ErrorReason.RESERVED_FIELD, f"pfn[{i}]", inline[i],
                                  "unused: must be 0")
            pfns = inline[:count]
            where = "pfn[{}]"
        refusal = self._check_pages(rid, pfns, where)
        if refusal is not None:
            return refusal
        return self._plan(f, major, method, tuple(pfns), indirect=bool(flags & _INDIRECT))

    # ---- pieces -----------------------------------------------------------------------
    def _plan(self, f: dict, major: IoMajor, method: TransferMethod | None,
              pfns: tuple[int, ...], indirect: bool = False) -> RequestPlan:
        return RequestPlan(
            request_id=f["request_id"], file_id=f["file_id"], major=major,
            ioctl_code=f["ioctl_code"], method=method, input_length=f["input_length"],
            output_length=f["output_length"], file_offset=f["file_offset"],
            target_id=f["target_id"], system_gpa=f["system_gpa"],
            system_length=f["system_length"], page_offset=f["page_offset"] if pfns else 0,
            page_length=f["page_length"], pfns=pfns, user_input=f["user_input"],
            user_address=f["user_address"], indirect=indirect)

    def _check_range(self, rid: int, field: str, gpa: int, length: int) -> Refusal | None:
        end = gpa + length
        if end > 1 << 64 or self.ram.find(gpa, end) < 0:
            return Refusal(rid, ErrorReason.SEGMENT_NOT_IN_RAM, field, gpa,
                           f"{length} bytes at {gpa:#x} are not inside one guest RAM range")
        if end - 1 > self.address_limit:
            return Refusal(rid, ErrorReason.SEGMENT_ABOVE_DMA_MASK, field, gpa,
                           f"ends above the address limit {self.address_limit:#x}")
        return None

    def _check_pages(self, rid: int, pfns: tuple[int, ...] | list[int], where: str) -> Refusal | None:
        """Every page whole inside guest RAM and under the address limit."""
        if not pfns:
            return None
        low, high = min(pfns), max(pfns)
        # One window holding the lowest and the highest page holds them all.
        if (high < _PFN_LIMIT and ((high + 1) << _PAGE_SHIFT) - 1 <= self.address_limit
                and self.ram.find(low << _PAGE_SHIFT, (low + 1) << _PAGE_SHIFT)
                == self.ram.find(high << _PAGE_SHIFT, (high + 1) << _PAGE_SHIFT) >= 0):
            return None
        for i, pfn in enumerate(pfns):
            field = where.format(i)
            if pfn >= _PFN_LIMIT or self.ram.find(pfn << _PAGE_SHIFT, (pfn + 1) << _PAGE_SHIFT) < 0:
                return Refusal(rid, ErrorReason.SEGMENT_NOT_IN_RAM, field, pfn,
                               "the page is not wholly guest RAM")
            if ((pfn + 1) << _PAGE_SHIFT) - 1 > self.address_limit:
                return Refusal(rid, ErrorReason.SEGMENT_ABOVE_DMA_MASK, field, pfn,
                               f"the page ends above the address limit {self.address_limit:#x}")
        return None

    def _copy(self, gpa: int, length: int) -> bytes:
        i = self.ram.find(gpa, gpa + length)
        start, _end, view = self.ram.windows[i]
        return bytes(view[gpa - start:gpa - start + length])
