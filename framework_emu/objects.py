"""The framework's object model: lifetimes, parents, references, callbacks.

This module knows nothing of argument validation (the ``api`` package does
that, in the framework's order); it implements the object state machine of
the real framework (fxobjectstatemachine.cpp), reduced to one thread:

- an object is created with one reference; a parent does not add one;
- WdfObjectDelete disposes the children first (their EvtCleanupCallback,
  grandchildren before children), then the object's own cleanup, then tells
  each child its parent is gone (each drops its creation reference), then
  drops the object's own creation reference;
- EvtDestroyCallback runs when the reference count reaches zero, always
  after cleanup (cleanup is run then if it had not been);
- an object whose count reaches zero while it still has a parent or
  children (WdfObjectDereference instead of WdfObjectDelete) is a
  WDF_VIOLATION 0x7, as in the framework's destructor: after its cleanup
  and destroy callbacks ran (ProcessDestroy, then ~FxObject);
- an object whose dispose must run at PASSIVE_LEVEL (paged-pool memory,
  ExecutionLevel Passive) deleted above PASSIVE_LEVEL is queued and disposed
  when the IRQL comes back down, as the framework's dispose list does.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .bugcheck import WDF_OBJECT_ERROR, wdf_violation
from .callsite import CallSite, format_site

if TYPE_CHECKING:
    from .attributes import WDF_OBJECT_CONTEXT_TYPE_INFO

# WDFTYPE values (fxtypes.h), used as P3 of an invalid-handle bug check.
FX_TYPE_OBJECT = 0x1000
FX_TYPE_DRIVER = 0x1001
FX_TYPE_REQUEST = 0x1008
FX_TYPE_LOOKASIDE = 0x1009
IFX_TYPE_MEMORY = 0x100A
FX_TYPE_USEROBJECT = 0x100C
FX_TYPE_MEMORY_PREALLOCATED = 0x1022
FX_TYPE_REQUEST_MEMORY = 0x1032

TYPE_NAMES = {
    FX_TYPE_OBJECT: "WDFOBJECT",
    FX_TYPE_DRIVER: "WDFDRIVER",
    FX_TYPE_REQUEST: "WDFREQUEST",
    FX_TYPE_LOOKASIDE: "WDFLOOKASIDE",
    IFX_TYPE_MEMORY: "WDFMEMORY",
    FX_TYPE_USEROBJECT: "WDFOBJECT (general)",
    FX_TYPE_MEMORY_PREALLOCATED: "WDFMEMORY (preallocated)",
    FX_TYPE_REQUEST_MEMORY: "WDFMEMORY (request memory)",
}


class ObjectState(enum.IntEnum):
    CREATED = 0
    DISPOSING = 1          # children being disposed, cleanup running
    DISPOSED = 2           # disposed by its parent, waiting for the parent's delete
    DELETED = 3            # deleted and disposed, waiting for the last reference
    DELETE_DEFERRED = 4    # WdfObjectDelete above PASSIVE_LEVEL, waiting for PASSIVE_LEVEL
    DESTROYED = 5          # last reference gone; the handle is dead


# The members as module constants. On Python 3.11 every ``ObjectState.X`` goes
# through EnumType.__getattr__'s hook (about 0.35 us, more than a whole dict
# insert); the framework's own code compares against these (the same objects).
CREATED, DISPOSING, DISPOSED, DELETED, DELETE_DEFERRED, DESTROYED = ObjectState  # in definition order


def lazy_description(make: Callable[[Any], str]) -> property:
    """A ``DESCRIPTION`` made by ``make(self)`` only when a message needs it (objects made
    per request must not format text they will rarely show), and settable like the plain
    class attribute it overrides."""
    def get(self: Any) -> str:
        return self.__dict__.get("_description") or make(self)

    def set_(self: Any, text: str) -> None:
        self._description = text

    return property(get, set_, doc=make.__doc__)


class FxObject:
    """Base of every framework object.

    Rarely used fields are class-level defaults so that creating an object
    only sets what every object has (creation is on the hot path).
    """

    WDF_TYPE = FX_TYPE_OBJECT
    HANDLE_NAME = "WDFOBJECT"
    DESCRIPTION = "framework object"
    QI_TYPES: frozenset[int] = frozenset({FX_TYPE_OBJECT})
    NO_DELETE_DDI = False     # WdfObjectDelete logs STATUS_CANNOT_DELETE and ignores the call
    passive_dispose = False   # dispose/destroy must run at PASSIVE_LEVEL
    # MarkDisposeOverride: the object's dispose() does work (DMA objects), so it never takes the
    # one-step delete. Checked last on that path: +200 instructions per WdfMemoryCreate+Delete
    # pair (43,675 -> 43,875, callgrind, 6,000 - 1,000 pairs / 5,000), +0.5%.
    DISPOSE_OVERRIDE = False

    handle = 0
    state: ObjectState  # set by __init__ (no class default: an enum member there keeps every
    #                     obj.state from being specialised on Python 3.11, as its type is mutable)
    parent: "FxObject | None" = None
    children: "dict[FxObject, None] | None" = None
    cleanup_callback: Callable[[int], Any] | None = None
    destroy_callback: Callable[[int], Any] | None = None
    context_type: "WDF_OBJECT_CONTEXT_TYPE_INFO | None" = None
    context_va = 0
    context_size = 0
    storage_va = 0            # pool block holding the object (and its context), 0: none
    deleted_at: CallSite | None = None
    destroyed_at: CallSite | None = None
    events: list[tuple[str, CallSite | None]] | None = None  # extra history (completion, ...)
    ref_tags: dict[Any, list] | None = None                  # tag -> [count, last site]
    tag = b""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if FX_TYPE_OBJECT not in cls.QI_TYPES:  # WdfObjectDelete relies on it (no per-call check)
            raise TypeError(f"{cls.__name__}.QI_TYPES must contain FX_TYPE_OBJECT: every object is a WDFOBJECT")

    def __init__(self, fx: Any, site: CallSite | None) -> None:
        self.fx = fx
        self.refcount = 1
        self.created_at = site
        self.state = CREATED

    # -- description --------------------------------------------------------------

    def history(self) -> list[tuple[str, CallSite | None]]:
        """(event, driver call site) pairs: created, extra events, deleted, destroyed."""
        out: list[tuple[str, CallSite | None]] = [("created", self.created_at)]
        if self.events:
            out.extend(self.events)
        if self.deleted_at is not None:
            out.append(("deleted", self.deleted_at))
        if self.destroyed_at is not None and self.destroyed_at != self.deleted_at:
            out.append(("freed", self.destroyed_at))
        return out

    def note(self, event: str, site: CallSite | None) -> None:
        if self.events is None:
            self.events = []
        self.events.append((event, site))

    def describe(self) -> str:
        return f"{self.HANDLE_NAME} 0x{self.handle:x} ({self.DESCRIPTION})"

    def format_history(self, indent: str = "    ") -> str:
        return "\n".join(f"{indent}{event} at {format_site(site)}" for event, site in self.history())

    def __repr__(self) -> str:
        return f"<{self.describe()} {self.state.name} refs={self.refcount}>"

    # -- parent and children --------------------------------------------------------

    def add_child(self, child: "FxObject") -> bool:
        """AddChildObjectInternal: False (STATUS_DELETE_PENDING) unless this object is live."""
        if self.state != CREATED:
            return False
        children = self.children
        if children is None:
            children = self.children = {}
        children[child] = None
        child.parent = self
        return True

    def iter_descendants(self) -> Iterator["FxObject"]:
        stack = list(self.children or ())
        while stack:
            obj = stack.pop()
            yield obj
            if obj.children:
                stack.extend(obj.children)

    # -- deletion ---------------------------------------------------------------------

    def needs_passive_dispose(self) -> bool:
        if self.passive_dispose:
            return True
        return any(obj.passive_dispose for obj in self.iter_descendants())

    def delete(self, site: CallSite | None) -> bool:
        """WdfObjectDelete on this object (FxObject::DeleteObject); False if it was already
        being deleted."""
        if self.state is not CREATED:
            if self.state is DISPOSED and self.deleted_at is None:
                # Disposed by its parent, whose deletion is under way (a cleanup callback deleting
                # a sibling or child): the parent destroys it; nothing to complain about.
                self.deleted_at = site
                return True
            return False
        self.deleted_at = site
        fx = self.fx
        if fx._irql.current and self.needs_passive_dispose():
            self.state = DELETE_DEFERRED
            fx._irql.defer_until_passive(self._deferred_delete)
            return True
        if (self.children or self.refcount != 1 or self.cleanup_callback is not None
                or self.destroy_callback is not None or self.DISPOSE_OVERRIDE):
            self._delete_now()
            return True
        # The common case, in one step: a leaf with no callbacks and no extra reference
        # is detached, disposed and destroyed at once.
        parent = self.parent
        if parent is not None:
            self.parent = None
            parent.children.pop(self, None)
        self.refcount = 0
        self.state = DESTROYED
        self.free_storage()
        fx._handles.retire(self)
        return True

    def _deferred_delete(self) -> None:
        """The dispose list's work item: delete, unless a parent's deletion got there first."""
        if self.state is DELETE_DEFERRED:
            self._delete_now()

    def _delete_now(self) -> None:
        fx = self.fx
        outer = fx._deleting_site
        fx._deleting_site = self.deleted_at
        try:
            parent = self.parent
            if parent is not None:
                self.parent = None
                if parent.children is not None:
                    parent.children.pop(self, None)
            self.state = DISPOSING
            if self.children:
                for child in list(self.children):
                    child.dispose_by_parent()
            self.dispose()
            self.state = DELETED
            if self.children:
                self.destroy_children()
            self.release()
        finally:
            fx._deleting_site = outer

    def dispose_by_parent(self) -> None:
        """PerformEarlyDispose: children's cleanup, then this object's own."""
        if self.state != CREATED and self.state != DELETE_DEFERRED:
            return
        self.state = DISPOSING
        if self.children:
            for child in list(self.children):
                child.dispose_by_parent()
        self.dispose()
        self.state = DISPOSED

    def dispose(self) -> None:
        """Dispose: what the object does when it is deleted (before its references go)."""
        callback = self.cleanup_callback
        if callback is not None:
            self.cleanup_callback = None
            callback(self.handle)

    def destroy_children(self) -> None:
        children = self.children
        self.children = None
        for child in list(children):
            child.parent = None
            child.parent_deleted()

    def parent_deleted(self) -> None:
        """ParentDeleteEvent: the parent is gone; drop the creation reference."""
        if self.state == DESTROYED:
            return
        if self.deleted_at is None:
            self.deleted_at = self.fx._deleting_site
        self.state = DELETED
        if self.children:
            self.destroy_children()
        self.release()

    # -- references ---------------------------------------------------------------------

    def add_reference(self) -> None:
        self.refcount += 1

    def release(self) -> None:
        """Drop a reference; the last one destroys the object (FxObject::FinalRelease: at
        PASSIVE_LEVEL for a passive-dispose object, deferred until then)."""
        count = self.refcount - 1
        self.refcount = count
        if count:
            return
        if self.passive_dispose and self.fx._irql.current:
            self.fx._irql.defer_until_passive(self.destroy)
            return
        self.destroy()

    def destroy(self) -> None:
        """ProcessDestroy: cleanup if it never ran, then EvtDestroyCallback; then the destructor
        (~FxObject) bug-checks an object still tied to a parent or children; then free."""
        callback = self.cleanup_callback
        if callback is not None:
            self.cleanup_callback = None
            callback(self.handle)
        callback = self.destroy_callback
        if callback is not None:
            self.destroy_callback = None
            callback(self.handle)
        if self.parent is not None or self.children:
            self._freed_while_attached()
        self.state = DESTROYED
        self.destroyed_at = self.fx._deleting_site or self.deleted_at
        self.free_storage()
        self.fx._handles.retire(self)

    def _freed_while_attached(self) -> None:
        """~FxObject: freed (by WdfObjectDereference) while it still had a parent or children:
        WDF_VIOLATION 0x7, P2 the handle, P3 the object. The callbacks have run by then."""
        why = "a parent" if self.parent is not None else "children"
        raise wdf_violation(
            WDF_OBJECT_ERROR, self.handle, self.storage_va or id(self), 0,
            f"{self.describe()} was freed by WdfObjectDereference while it still had {why};"
            f" it must be deleted with WdfObjectDelete",
            details=self.format_history())

    def free_storage(self) -> None:
        """Give back the pool memory behind the object (subclasses add their buffers)."""
        if self.storage_va:
            self.fx._pool.free(self.storage_va)


class GeneralObject(FxObject):
    """WdfObjectCreate: an object with no behaviour of its own (a parent, a context holder)."""

    WDF_TYPE = FX_TYPE_USEROBJECT
    DESCRIPTION = "general object from WdfObjectCreate"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_USEROBJECT})
