"""The object state machine on the last dereference and on delete, as
fxobjectstatemachine.cpp and fxobject.cpp order it."""

import pytest

from framework_emu import DISPATCH_LEVEL, BugCheck, PoolType, WDF_OBJECT_ATTRIBUTES
from framework_emu.objects import ObjectState

attrs = WDF_OBJECT_ATTRIBUTES


def test_callbacks_run_before_the_0x7_bug_check_ProcessDestroy_then_FxObject_destructor(fx):
    """FinalRelease -> ProcessDestroy (EvtCleanupCallback, EvtDestroyCallback) -> SelfDestruct ->
    ~FxObject, which bug-checks 0x7 for an object still attached to its parent: the driver's
    callbacks have already run when the machine stops."""
    events = []
    _, obj = fx.WdfObjectCreate(attrs(EvtCleanupCallback=lambda h: events.append("cleanup"),
                                      EvtDestroyCallback=lambda h: events.append("destroy")))
    with pytest.raises(BugCheck) as bc:
        fx.WdfObjectDereference(obj)
    assert events == ["cleanup", "destroy"] and bc.value.params[:2] == (0x7, obj)


def test_a_child_freed_by_dereference_during_its_parents_dispose_is_0x7_FxObject_destructor(fx):
    """~FxObject checks m_ParentObject whatever the state: a child disposed by its parent
    (still attached) whose last reference the driver drops in its own cleanup callback."""
    _, parent = fx.WdfObjectCreate(None)
    child = []

    def drop_last_reference(handle):
        fx.WdfObjectDereference(handle)

    _, child_handle = fx.WdfObjectCreate(attrs(ParentObject=parent, EvtCleanupCallback=drop_last_reference))
    child.append(child_handle)
    with pytest.raises(BugCheck) as bc:
        fx.WdfObjectDelete(parent)
    assert bc.value.params[:2] == (0x7, child_handle) and "a parent" in str(bc.value)


def test_delete_of_an_object_its_parent_disposed_is_quietly_accepted_DeleteObject(fx):
    """FxObject::DeleteObject in FxObjectStateDisposed: the parent is being deleted
    (RemoveChildObjectInternal -> STATUS_DELETE_PENDING), the object waits for the parent's
    ParentDeleteEvent: no double-delete complaint, destroyed once with the parent."""
    _, parent = fx.WdfObjectCreate(None)
    _, child = fx.WdfObjectCreate(attrs(ParentObject=parent))
    destroyed = []
    _, sibling = fx.WdfObjectCreate(attrs(ParentObject=parent, EvtDestroyCallback=destroyed.append))
    fx._live[child].cleanup_callback = lambda h: fx.WdfObjectDelete(sibling)   # runs while disposing
    before = len(fx.findings)
    fx.WdfObjectDelete(parent)
    assert [f.rule for f in fx.findings[before:]] == [] and destroyed == [sibling]
    assert sibling not in fx._live and fx._handles.graveyard[sibling].refcount == 0


def test_a_second_delete_of_a_live_object_is_dropped_DeleteObject(fx):
    """DeleteObject in DeletedAndDisposed (kept alive by a reference): the event is dropped."""
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    fx.WdfObjectReference(mem)
    fx.WdfObjectDelete(mem)
    fx.WdfObjectDelete(mem)
    assert fx._live[mem].state is ObjectState.DELETED and fx.findings[-1].rule == "DoubleDelete"
    fx.WdfObjectDereference(mem)
    assert mem not in fx._live


def test_children_cleanup_before_parent_cleanup_then_destroy_DisposeChildrenWorker(fx):
    """DisposeChildrenWorker: every child's PerformEarlyDispose (its cleanup), then the parent's
    CallCleanup; DeletedAndDisposedWorkerLocked: DestroyChildren, then the parent's release."""
    events = []

    def cb(name):
        return lambda h: events.append(name)

    _, parent = fx.WdfObjectCreate(attrs(EvtCleanupCallback=cb("parent cleanup"),
                                         EvtDestroyCallback=cb("parent destroy")))
    fx.WdfObjectCreate(attrs(ParentObject=parent, EvtCleanupCallback=cb("child cleanup"),
                             EvtDestroyCallback=cb("child destroy")))
    fx.WdfObjectDelete(parent)
    assert events == ["child cleanup", "parent cleanup", "child destroy", "parent destroy"]


def test_passive_objects_last_release_above_passive_is_deferred_FinalRelease(fx):
    """FinalRelease: ShouldDeferDisposeLocked -> FxObjectStateDeferedDestroy, ProcessDestroy at
    PASSIVE_LEVEL."""
    destroyed = []
    _, obj = fx.WdfObjectCreate(attrs(ExecutionLevel=2, EvtDestroyCallback=destroyed.append))
    fx.WdfObjectReference(obj)
    fx.WdfObjectDelete(obj)
    with fx.irql(DISPATCH_LEVEL):
        fx.WdfObjectDereference(obj)
        assert destroyed == []
    assert destroyed == [obj]
