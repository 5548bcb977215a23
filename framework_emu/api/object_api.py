"""Generic object entry points (fxobjectapi.cpp, fxuserobjectapi.cpp, handleapi.cpp)."""

from __future__ import annotations

from typing import Any

from ..attributes import WDF_OBJECT_ATTRIBUTES, WDF_OBJECT_CONTEXT_TYPE_INFO
from ..callsite import caller_site, driver_site, format_site
from ..core import OUT
from ..irql import DISPATCH_LEVEL
from ..ntstatus import NTSTATUS
from ..objects import DESTROYED, FX_TYPE_OBJECT, GeneralObject
from ..verifier import finding_for
from .validation import FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED, validate_object_attributes

_DISPATCH_LEVEL = int(DISPATCH_LEVEL)  # a plain int: comparing an int with an IntEnum is not specialised


class ObjectApi:
    """WdfObjectCreate, WdfObjectDelete, references, typed contexts."""

    def WdfObjectCreate(self, Attributes: WDF_OBJECT_ATTRIBUTES | None, *,
                        Object: Any = OUT) -> tuple[int, int | None]:
        """-> (status, object): a general object (a parent, a context holder)."""
        self._driver_obj or self._require_driver()
        parent = self._resolve_parent(Attributes)
        if Object is None:
            raise self._null("Object")
        self._check_dispatch("WdfObjectCreate")
        # fxuserobjectapi.cpp: an execution level is allowed, a synchronization scope is not.
        status = validate_object_attributes(Attributes, FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED)
        if status:
            return status, None
        site = driver_site()
        obj = GeneralObject(self, site)
        status = self._commit_new(obj, Attributes, parent, site)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, obj.handle

    def WdfObjectDelete(self, Object: int) -> None:
        """Children are cleaned up first; objects that may not be deleted log
        STATUS_CANNOT_DELETE and the call is ignored."""
        obj = self._live.get(Object)
        if obj is None:  # a live object always answers to FX_TYPE_OBJECT (FxObject.__init_subclass__)
            obj = self._bad_handle(Object, FX_TYPE_OBJECT, obj)
        if self._verifier_on and self._irql.current > _DISPATCH_LEVEL:
            self._irql_violation("WdfObjectDelete", DISPATCH_LEVEL, driver_site(), fatal=True)
        if not obj.NO_DELETE_DDI and obj.delete(caller_site()):  # False unless it was CREATED
            return
        if obj.state is DESTROYED:
            return  # a completed request's memory, in record mode: already reported
        site = driver_site()
        if obj.NO_DELETE_DDI:
            self._log(f"WdfObjectDelete: {obj.describe()} does not allow WdfObjectDelete,"
                      f" STATUS_CANNOT_DELETE (0x{NTSTATUS.STATUS_CANNOT_DELETE:08X}) at {format_site(site)}")
            if self._verifier_on:
                self._verifier.report(finding_for(
                    "ObjectDeleteNotAllowed", "warning",
                    f"WdfObjectDelete on {obj.describe()}, which may not be deleted: ignored (STATUS_CANNOT_DELETE)",
                    site, obj, status=NTSTATUS.STATUS_CANNOT_DELETE), fatal=False)
            return
        self._log(f"WdfObjectDelete: {obj.describe()} is already being deleted (at {format_site(site)})")
        if self._verifier_on:
            self._verifier.report(finding_for(
                "DoubleDelete", "warning", f"WdfObjectDelete on {obj.describe()} a second time: ignored",
                site, obj), fatal=False)

    def _referenced_object(self, handle: int, call: str) -> Any:
        """WdfObjectReference/Dereference's checks: NULL first, then the handle, the IRQL."""
        if handle is None or handle == 0:
            raise self._null("Object")
        obj = self._object(handle, FX_TYPE_OBJECT)
        self._check_dispatch(call)
        return None if obj.state is DESTROYED else obj

    def WdfObjectReferenceActual(self, Object: int, Tag: Any, Line: int, File: str) -> None:
        obj = self._referenced_object(Object, "WdfObjectReference")
        if obj is None:
            return
        obj.add_reference()
        if self._verifier_on:
            tags = obj.ref_tags
            if tags is None:
                tags = obj.ref_tags = {}
            entry = tags.get(Tag)
            if entry is None:
                tags[Tag] = [1, (File, Line)]
            else:
                entry[0] += 1
                entry[1] = (File, Line)

    def WdfObjectDereferenceActual(self, Object: int, Tag: Any, Line: int, File: str) -> None:
        obj = self._referenced_object(Object, "WdfObjectDereference")
        if obj is None:
            return
        site = (File, Line)
        if self._verifier_on:
            self._untrack_reference(obj, Tag, site)
        self._deleting_site = site
        try:
            obj.release()
        finally:
            self._deleting_site = None

    def _untrack_reference(self, obj: Any, tag: Any, site: Any) -> None:
        tags = obj.ref_tags
        entry = tags.get(tag) if tags else None
        if entry is None:
            self._verifier.report(finding_for(
                "TagTracker", "error",
                f"WdfObjectDereference with tag {tag!r}, which holds no reference on {obj.describe()}",
                site, obj), fatal=False)
            return
        entry[0] -= 1
        if entry[0] == 0:
            del tags[tag]

    def WdfObjectReference(self, Object: int) -> None:
        file, line = driver_site()
        self.WdfObjectReferenceActual(Object, None, line, file)

    def WdfObjectDereference(self, Object: int) -> None:
        file, line = driver_site()
        self.WdfObjectDereferenceActual(Object, None, line, file)

    def WdfObjectReferenceWithTag(self, Object: int, Tag: Any) -> None:
        file, line = driver_site()
        self.WdfObjectReferenceActual(Object, Tag, line, file)

    def WdfObjectDereferenceWithTag(self, Object: int, Tag: Any) -> None:
        file, line = driver_site()
        self.WdfObjectDereferenceActual(Object, Tag, line, file)

    def WdfObjectGetTypedContext(self, Handle: int, TypeInfo: WDF_OBJECT_CONTEXT_TYPE_INFO) -> int | None:
        """Kernel virtual address of the object's context of that type (zeroed at creation), or None."""
        if Handle is None or Handle == 0:
            raise self._null("Handle")
        obj = self._object(Handle, FX_TYPE_OBJECT)
        want = TypeInfo.UniqueType or TypeInfo
        have = obj.context_type
        if have is not None and (have.UniqueType or have) is want and obj.context_va:
            return obj.context_va
        return None
