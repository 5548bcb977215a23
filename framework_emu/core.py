"""State and helpers every API group shares: handles, memory access, commit, findings.

:class:`FrameworkCore` is the emulated kernel-plus-framework instance. The
WDF-named entry points live in the ``api`` package, one mixin per object
kind; :class:`framework.Framework` assembles them on top of this core.

Kernel virtual addresses are a direct map of guest-physical memory:
``va = kva_base + gpa``, as a kernel's direct map is, so every buffer has
real frame numbers a device can use.
"""

from __future__ import annotations

from typing import Any

from .api.validation import parent_to_resolve
from .attributes import WDF_OBJECT_ATTRIBUTES, WdfExecutionLevelPassive, context_size
from .bugcheck import (PAGE_FAULT_IN_NONPAGED_AREA, WDF_INVALID_HANDLE, WDF_REQUIRED_PARAMETER_IS_NULL, WDF_VIOLATION,
                       WDF_VERIFIER_FATAL_ERROR, BadAccess, BugCheck, wdf_violation)
from .callsite import CallSite, driver_site, format_site
from .errors import ArgumentError, FrameworkStateError
from .handles import HandleTable
from .irql import DISPATCH_LEVEL, ProcessorIrql, irql_name
from .mdl import MdlTable
from .memory import RequestBufferMemory, allocate_object_storage
from .ntstatus import NTSTATUS
from .objects import FX_TYPE_OBJECT, TYPE_NAMES, FxObject
from wdfhil.physical_memory import PhysicalMemory, PhysicalMemoryError
from .pool import Pool
from .pooltag import FX_TAG
from .system_ptes import SYSTEM_PTE_BASE, SystemPteSpace
from .verifier import Finding, Verifier, finding_for

KVA_DIRECT_MAP_BASE = 0xFFFF_A000_0000_0000
DEFAULT_POOL_WINDOW_START = 1 << 20
IFR_LINES = 4096


class _Out:
    """Marks an output parameter the caller provides (the default); pass None for a NULL pointer."""

    def __repr__(self) -> str:
        return "OUT"


OUT: Any = _Out()


def default_pool_window(memory: PhysicalMemory) -> tuple[int, int]:
    """Everything from 1 MiB up in the first RAM range (the whole range if it is smaller)."""
    start, end = memory.ram_ranges()[0]
    base = max(start, DEFAULT_POOL_WINDOW_START)
    if end - base < 2 * DEFAULT_POOL_WINDOW_START:
        base = start
    return base, end - base


class FrameworkCore:
    """The emulated framework's state; see :class:`framework_emu.Framework` for the API."""

    def __init__(self, memory: PhysicalMemory, *, verifier: bool = True, verifier_mode: str = "bugcheck",
                 pool_window: tuple[int, int] | None = None, seed: int | None = None,
                 kva_base: int = KVA_DIRECT_MAP_BASE) -> None:
        if not isinstance(memory, PhysicalMemory):
            raise ArgumentError("memory must be a PhysicalMemory", field="memory", value=type(memory).__name__)
        self.memory = memory
        self._memory = memory
        self.kva_base = kva_base
        window = pool_window if pool_window is not None else default_pool_window(memory)
        self._pool = Pool(memory, (int(window[0]), int(window[1])), kva_base, seed=seed)
        self._handles = HandleTable()
        self._live = self._handles.live
        self._irql = ProcessorIrql()
        self._verifier = Verifier(bool(verifier), verifier_mode)
        self._verifier_on = bool(verifier)
        self._driver_obj: Any = None
        self._driver_tag = FX_TAG
        self._unloaded = False
        self._deleting_site: CallSite | None = None
        self._mdl_table = MdlTable(self)
        self._system_ptes = SystemPteSpace(memory)  # shared by the drivers of one IoManager
        self.log: list[str] = []  # the framework's trace (its in-flight recorder), newest last

    # -- public state -----------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def findings(self) -> list[Finding]:
        return self._verifier.findings

    @property
    def default_pool_tag(self) -> bytes:
        """The driver's tag in display order (b"Echo"; b"FxDr"; b"Abc\\x00")."""
        return self._driver_tag

    def va_to_gpa(self, va: int) -> int:
        return va - self.kva_base

    def gpa_to_va(self, gpa: int) -> int:
        return gpa + self.kva_base

    def describe(self, handle: int) -> str:
        """What a handle is or was, with its history (for messages and debugging)."""
        obj = self._live.get(handle) or self._handles.graveyard.get(handle)
        if obj is None:
            return f"0x{handle:x}: not a handle this framework knows"
        state = "live" if handle in self._live else "destroyed"
        return f"{obj.describe()} [{state}, {obj.state.name}, refs={obj.refcount}]\n{obj.format_history()}"

    # -- memory access through the direct map ---------------------------------------------

    def _gpa(self, va: int, length: int, write: bool) -> int:
        gpa = va - self.kva_base
        if gpa < 0 or not self._memory.contains(gpa, length):
            raise BugCheck(PAGE_FAULT_IN_NONPAGED_AREA, (va, int(write), 0, 0),
                           f"{'write to' if write else 'read from'} 0x{va:x}+0x{length:x}, which is not"
                           f" mapped memory (at {format_site(driver_site())})")
        return gpa

    def _view(self, va: int, length: int, write: bool = False) -> memoryview:
        try:
            return self._memory.view(va - self.kva_base, length)
        except PhysicalMemoryError:
            if va >= SYSTEM_PTE_BASE:
                return self._system_ptes.view(va, length, write)
            self._gpa(va, length, write)
            raise

    def _read(self, va: int, length: int) -> bytes:
        if va >= SYSTEM_PTE_BASE:  # a system-PTE mapping (frames possibly scattered)
            return self._system_ptes.read(va, length)
        return bytes(self._view(va, length))

    def _write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        if va >= SYSTEM_PTE_BASE:
            self._system_ptes.write(va, data)
            return
        self._view(va, len(data), True)[:] = data

    def read(self, va: int, length: int) -> bytes:
        """Read ``length`` bytes at kernel virtual address ``va`` (as driver code would)."""
        return self._read(va, length)

    def write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at kernel virtual address ``va``."""
        self._write(va, data)

    def view(self, va: int, length: int) -> memoryview:
        """A writable zero-copy view of ``length`` bytes at ``va``."""
        return self._view(va, length, True)

    def _source(self, buffer: Any, length: int, field: str) -> bytes | memoryview:
        """The ``length`` bytes a framework call reads from a buffer argument."""
        if isinstance(buffer, int):
            return self._read(buffer, length)
        try:
            view = memoryview(buffer).cast("B")
        except TypeError:
            raise ArgumentError("a buffer is a kernel virtual address or a bytes-like object",
                                field=field, value=type(buffer).__name__) from None
        if len(view) < length:
            raise ArgumentError(f"the Python buffer holds {len(view)} bytes, the call reads {length}",
                                field=field, value=len(view))
        return view[:length]

    def _sink(self, buffer: Any, data: bytes | memoryview, field: str) -> None:
        """Store ``data`` into a buffer argument the framework writes."""
        if isinstance(buffer, int):
            self._write(buffer, data)
            return
        try:
            view = memoryview(buffer).cast("B")
        except TypeError:
            raise ArgumentError("a buffer is a kernel virtual address or a writable bytes-like object",
                                field=field, value=type(buffer).__name__) from None
        if view.readonly:
            raise ArgumentError("the framework writes this buffer: pass a bytearray or an address",
                                field=field, value=type(buffer).__name__)
        if len(view) < len(data):
            raise ArgumentError(f"the Python buffer holds {len(view)} bytes, the call writes {len(data)}",
                                field=field, value=len(view))
        view[:len(data)] = data

    # -- handles ------------------------------------------------------------------------------

    def _object(self, handle: Any, expected: int) -> Any:
        """FxObjectHandleGetPtr: the object behind ``handle`` answering to type ``expected``."""
        obj = self._live.get(handle)
        if obj is None or expected not in obj.QI_TYPES:
            return self._bad_handle(handle, expected, obj)
        return obj

    def _bad_handle(self, handle: Any, expected: int, obj: Any) -> Any:
        want = TYPE_NAMES.get(expected, f"type 0x{expected:x}")
        if handle is None or handle == 0:
            raise wdf_violation(WDF_INVALID_HANDLE, 0, expected, 0,
                                f"NULL handle where a {want} is required (at {format_site(driver_site())})")
        if not isinstance(handle, int):
            raise ArgumentError(f"a handle is an int, {want} expected", field="handle",
                                value=type(handle).__name__)
        site = driver_site()
        if obj is not None:
            raise wdf_violation(WDF_INVALID_HANDLE, handle, expected, 0,
                                f"handle 0x{handle:x} is a {obj.describe()}, not a {want}"
                                f" (at {format_site(site)})", details=obj.format_history())
        dead = self._handles.graveyard.get(handle)
        if dead is not None:
            if isinstance(dead, RequestBufferMemory) and self._verifier_on:
                request = dead.request
                self._verifier.report(finding_for(
                    f"MemAfterReqCompleted{request.io.kind}A", "error",
                    f"{dead.describe()} used after its request completed", site, dead), fatal=True,
                    bugcheck=(WDF_VIOLATION, (WDF_VERIFIER_FATAL_ERROR, request.handle, handle, 0)))
                if expected in dead.QI_TYPES:
                    return dead  # record mode: go on, as the real machine would, on freed memory
            ended = [(event, at) for event, at in dead.history() if event != "freed"][-1]
            raise wdf_violation(WDF_INVALID_HANDLE, handle, expected, 0,
                                f"stale handle: {dead.describe()} was {ended[0]} at {format_site(ended[1])}"
                                f" and is gone; used again at {format_site(site)}",
                                details=dead.format_history())
        if self._handles.was_issued(handle):
            raise wdf_violation(WDF_INVALID_HANDLE, handle, expected, 0,
                                f"stale handle 0x{handle:x}: its object was destroyed long ago (its history"
                                f" is no longer kept); used at {format_site(site)}")
        raise wdf_violation(WDF_INVALID_HANDLE, handle, expected, 0,
                            f"0x{handle:x} is not a handle (this framework never issued it);"
                            f" {want} expected at {format_site(site)}")

    def _resolve_parent(self, attributes: WDF_OBJECT_ATTRIBUTES | None) -> FxObject | None:
        """The attributes' ParentObject, resolved first as the entry points do
        (FxValidateObjectAttributesForParentHandle, then FxObjectHandleGetPtr): None
        without attributes, with a wrong Size, or without a parent."""
        handle = parent_to_resolve(attributes)
        return None if handle is None else self._object(handle, FX_TYPE_OBJECT)

    @staticmethod
    def _null(what: str) -> BugCheck:
        """FxPointerNotNull: a required pointer is NULL."""
        return wdf_violation(WDF_REQUIRED_PARAMETER_IS_NULL, 0, 0, 0,
                             f"required parameter {what} is NULL (at {format_site(driver_site())})")

    def _require_driver(self) -> Any:
        """The driver object; a call before WdfDriverCreate breaks the DriverCreate rule."""
        if self._driver_obj is not None:
            return self._driver_obj
        if self._unloaded:
            raise FrameworkStateError("the driver was unloaded; this framework instance is finished")
        site = driver_site()
        finding = Finding("DriverCreate", "error",
                          "the driver object must be created (WdfDriverCreate) before any other framework call",
                          site)
        if self._verifier_on:
            self._verifier.report(finding, fatal=True)
        # Without a driver object there is nothing to go on with (the real framework
        # would dereference NULL globals): stop in either mode.
        raise wdf_violation(WDF_VERIFIER_FATAL_ERROR, 0, 0, 0,
                            f"DriverCreate: framework called before WdfDriverCreate (at {format_site(site)})",
                            finding=finding)

    def _commit(self, obj: FxObject, attributes: WDF_OBJECT_ATTRIBUTES | None, parent: Any,
                default_parent: bool = True) -> int:
        """FxObject::Commit: attach to the parent (driver by default), issue the handle,
        take the callbacks and zero the context."""
        if parent is None and default_parent:
            parent = self._driver_obj
        if parent is not None and not parent.add_child(obj):
            obj.free_storage()
            return NTSTATUS.STATUS_DELETE_PENDING
        self._handles.issue(obj)
        if attributes is not None:
            obj.cleanup_callback = attributes.EvtCleanupCallback
            obj.destroy_callback = attributes.EvtDestroyCallback
            if attributes.ExecutionLevel == WdfExecutionLevelPassive:
                obj.passive_dispose = True
            if attributes.ContextTypeInfo is not None:
                obj.context_type = attributes.ContextTypeInfo
                obj.context_size = context_size(attributes)
                if obj.context_va:
                    self._memory.fill(obj.context_va - self.kva_base, obj.context_size, 0)
        return NTSTATUS.STATUS_SUCCESS

    def _log(self, line: str) -> None:
        self.log.append(line)
        if len(self.log) > IFR_LINES:
            del self.log[:len(self.log) - IFR_LINES]

    def _commit_new(self, obj: FxObject, attributes: WDF_OBJECT_ATTRIBUTES | None, parent: Any,
                    site: CallSite | None) -> int:
        """Give a new object the storage its context needs, then commit it."""
        ctx = context_size(attributes)
        if ctx and not obj.storage_va and not allocate_object_storage(self, obj, ctx, site):
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
        return self._commit(obj, attributes, parent)

    # -- verifier helpers ---------------------------------------------------------------------

    def _irql_violation(self, call: str, max_level: int, site: CallSite | None, *, fatal: bool,
                        status: int | None = None) -> Finding:
        """KmdfIrql: ``call`` made above its maximum IRQL."""
        level = self._irql.current
        return self._verifier.report(
            Finding("KmdfIrql", "error",
                    f"{call} called at {irql_name(level)}; its maximum is {irql_name(max_level)}",
                    site, status=status),
            fatal=fatal, bugcheck=(WDF_VIOLATION, (WDF_VERIFIER_FATAL_ERROR, level, max_level, 0)))

    def _check_dispatch(self, call: str) -> None:
        """The common case of KmdfIrql: calls allowed up to DISPATCH_LEVEL."""
        if self._verifier_on and self._irql.current > DISPATCH_LEVEL:
            self._irql_violation(call, DISPATCH_LEVEL, driver_site(), fatal=True)

    def _check_request_buffer(self, va: int, length: int, action: str, site: CallSite | None = None) -> None:
        """BufAfterReqCompleted*: ``va`` lies in a buffer of a request that already completed."""
        entry = self._verifier.quarantined(va, length)
        if entry is None:
            return
        request = entry.request
        finding = finding_for(
            f"BufAfterReqCompleted{request.io.kind}A", "error",
            f"{action} 0x{va:x}+0x{length:x}, a buffer of {request.describe()}, after the request completed",
            site or driver_site(), request)
        finding.access = BadAccess(va, length, None, f"buffer of {request.describe()} (completed)",
                                   entry.start, entry.end, site=finding.site)
        self._verifier.report(finding, fatal=True,
                              bugcheck=(WDF_VIOLATION, (WDF_VERIFIER_FATAL_ERROR, request.handle, va, 0)))
