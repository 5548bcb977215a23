"""Bug checks of the emulated machine.

A bug check stops the emulated "driver": it is raised as :class:`BugCheck`
with the Windows code and its four parameters, and a message that names the
violation, the object and the driver's file:line. Where the verifier runs in
"record" mode, rule findings are recorded instead; a bug check that the real
framework raises unconditionally (invalid handle, NULL required pointer,
object freed by dereference) is always raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from wdfhil.errors import WdfhilError

if TYPE_CHECKING:
    from .verifier import Finding

# Bug check codes.
IRQL_NOT_GREATER_OR_EQUAL = 0x09
IRQL_NOT_LESS_OR_EQUAL = 0x0A
PAGE_FAULT_IN_NONPAGED_AREA = 0x50
DRIVER_VERIFIER_DETECTED_VIOLATION = 0xC4
BAD_POOL_CALLER = 0xC2
DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL = 0xD5
DRIVER_VERIFIER_DMA_VIOLATION = 0xE6
WDF_VIOLATION = 0x10D

BUGCHECK_NAMES = {
    IRQL_NOT_GREATER_OR_EQUAL: "IRQL_NOT_GREATER_OR_EQUAL",
    IRQL_NOT_LESS_OR_EQUAL: "IRQL_NOT_LESS_OR_EQUAL",
    PAGE_FAULT_IN_NONPAGED_AREA: "PAGE_FAULT_IN_NONPAGED_AREA",
    DRIVER_VERIFIER_DETECTED_VIOLATION: "DRIVER_VERIFIER_DETECTED_VIOLATION",
    BAD_POOL_CALLER: "BAD_POOL_CALLER",
    DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL: "DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL",
    DRIVER_VERIFIER_DMA_VIOLATION: "DRIVER_VERIFIER_DMA_VIOLATION",
    WDF_VIOLATION: "WDF_VIOLATION",
}

# WDF_VIOLATION parameter 1.
WDF_VERIFIER_FATAL_ERROR = 0x3
WDF_REQUIRED_PARAMETER_IS_NULL = 0x4
WDF_INVALID_HANDLE = 0x5
WDF_REQUEST_FATAL_ERROR = 0x6
WDF_OBJECT_ERROR = 0x7
WDF_DMA_FATAL_ERROR = 0x8

# WDF_REQUEST_FATAL_ERROR parameter 2 (wdfbugcodes.h).
WDF_REQUEST_FATAL_ERROR_INFORMATION_LENGTH_MISMATCH = 0x4

# DRIVER_VERIFIER_DETECTED_VIOLATION (0xC4) parameter 1, as the bug check reference lists them [D].
DV_ZERO_BYTE_ALLOCATION = 0x00        # P2 IRQL, P3 pool type, P4 bytes
DV_PAGED_ALLOCATION_IRQL = 0x01       # P2 IRQL, P3 pool type, P4 bytes: paged pool above APC_LEVEL
DV_NONPAGED_ALLOCATION_IRQL = 0x02    # P2 IRQL, P3 pool type, P4 bytes: nonpaged pool above DISPATCH_LEVEL
DV_FREE_BAD_ADDRESS = 0x10            # P2 address, 0, 0: not returned by an allocation
DV_PAGED_FREE_IRQL = 0x11             # P2 IRQL, P3 pool type, P4 address
DV_NONPAGED_FREE_IRQL = 0x12          # P2 IRQL, P3 pool type, P4 address
DV_DOUBLE_FREE = 0x13                 # P2 reserved, P3 pool header, P4 header contents
DV_POOL_LEAK_ON_UNLOAD = 0x62         # P2 driver name, P3 reserved, P4 allocations not freed

# BAD_POOL_CALLER (0xC2) parameter 1 [D].
BPC_DOUBLE_FREE = 0x07                # P2 reserved, P3 pool header contents, P4 address
BPC_WRONG_TAG = 0x0A                  # P2 address, P3 allocator's tag, P4 tag used to free
BPC_NOT_IN_ANY_POOL = 0x42            # P2 address, 0, 0
BPC_ZERO_TAG = 0x9B                   # P2 pool type, P3 bytes, P4 caller's address

WDF_P1_NAMES = {
    WDF_VERIFIER_FATAL_ERROR: "WDF_VERIFIER_FATAL_ERROR",
    WDF_REQUIRED_PARAMETER_IS_NULL: "WDF_REQUIRED_PARAMETER_IS_NULL",
    WDF_INVALID_HANDLE: "WDF_INVALID_HANDLE",
    WDF_REQUEST_FATAL_ERROR: "WDF_REQUEST_FATAL_ERROR",
    WDF_OBJECT_ERROR: "WDF_OBJECT_ERROR",
    WDF_DMA_FATAL_ERROR: "WDF_DMA_FATAL_ERROR",
}


@dataclass(frozen=True)
class BadAccess:
    """Where an offending CPU access went, for reports that draw it (the pool map
    of orchestrator.report_html) rather than parse a message: ``length`` bytes at
    kernel address ``address``; the object it touched or ran past (``what``, its
    range ``start``..``end``); the bytes it must not have touched beyond that
    object, if any (``redzone``: a guard page after a system mapping); ``site``
    (not in ``to_json``: a report writes sites its own way)."""

    address: int
    length: int
    write: bool | None                  # None: the call does not say (a copy's source or target)
    what: str
    start: int
    end: int
    redzone: tuple[int, int] | None = None
    redzone_what: str = ""
    site: tuple[str, int] | None = None  # the driver's line that made the access

    def to_json(self) -> dict:
        return {"address": self.address, "length": self.length, "write": self.write,
                "object": {"what": self.what, "start": self.start, "end": self.end},
                "redzone": ({"what": self.redzone_what, "start": self.redzone[0],
                             "end": self.redzone[1]} if self.redzone else None)}


class BugCheck(WdfhilError):
    """The emulated machine stopped: ``code`` and four ``params`` as KeBugCheckEx got them.

    ``violation`` is a one-line description; ``finding`` is the verifier
    finding that caused it, when a rule did; ``access`` where a bad memory access
    went (a page fault the emulator can place), else the finding's own.
    """

    def __init__(self, code: int, params: Sequence[int], violation: str,
                 *, finding: "Finding | None" = None, details: str = "",
                 access: BadAccess | None = None) -> None:
        p = [int(x) & 0xFFFFFFFFFFFFFFFF for x in params]
        p = (p + [0, 0, 0, 0])[:4]
        self.code = code
        self.params = tuple(p)
        self.violation = violation
        self.finding = finding
        self.access = access or (finding.access if finding is not None else None)
        self.details = details
        self.name = BUGCHECK_NAMES.get(code, f"BUGCHECK_0x{code:X}")
        head = f"{self.name} (0x{code:X}) P1=0x{p[0]:X} P2=0x{p[1]:X} P3=0x{p[2]:X} P4=0x{p[3]:X}"
        text = f"{head}: {violation}"
        if details:
            text += "\n" + details
        super().__init__(text)


def wdf_violation(p1: int, p2: int, p3: int, p4: int, violation: str, **kw) -> BugCheck:
    """A 0x10D bug check whose message starts with the P1 name."""
    name = WDF_P1_NAMES.get(p1, f"0x{p1:X}")
    return BugCheck(WDF_VIOLATION, (p1, p2, p3, p4), f"{name}: {violation}", **kw)
