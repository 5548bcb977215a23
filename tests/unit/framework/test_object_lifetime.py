"""Handles, the parent/child tree, deletion order, references, contexts, stale handles."""

import pytest

from framework_emu import (DISPATCH_LEVEL, NTSTATUS, BugCheck, PoolType, WDF_DECLARE_CONTEXT_TYPE,
                           WDF_OBJECT_ATTRIBUTES)
from framework_emu.errors import ArgumentError
from framework_emu.objects import ObjectState

S = NTSTATUS


attrs = WDF_OBJECT_ATTRIBUTES    # fields by keyword, as WDF_OBJECT_ATTRIBUTES_INIT then assignments


def tracked(fx, log, name, parent=None, **more):
    status, handle = fx.WdfObjectCreate(attrs(
        ParentObject=parent,
        EvtCleanupCallback=lambda h: log.append(("cleanup", name)),
        EvtDestroyCallback=lambda h: log.append(("destroy", name)), **more))
    assert status == S.STATUS_SUCCESS
    return handle


def test_children_are_cleaned_up_first_then_destroyed(fx):
    log = []
    root = tracked(fx, log, "root")
    child = tracked(fx, log, "child", root)
    tracked(fx, log, "grandchild", child)
    tracked(fx, log, "child2", root)
    fx.WdfObjectDelete(root)
    cleanups = [n for e, n in log if e == "cleanup"]
    assert cleanups == ["grandchild", "child", "child2", "root"]
    assert log.index(("cleanup", "root")) < min(log.index(("destroy", n)) for n in ("root", "child", "child2"))
    assert {n for e, n in log if e == "destroy"} == {"root", "child", "grandchild", "child2"}
    assert log.index(("destroy", "grandchild")) < log.index(("destroy", "root"))


def test_callbacks_receive_the_handle(fx):
    got = []
    _, handle = fx.WdfObjectCreate(attrs(EvtCleanupCallback=got.append, EvtDestroyCallback=got.append))
    fx.WdfObjectDelete(handle)
    assert got == [handle, handle]


def test_destroy_waits_for_the_last_reference_cleanup_does_not(fx):
    log = []
    obj = tracked(fx, log, "obj")
    fx.WdfObjectReference(obj)
    fx.WdfObjectDelete(obj)
    assert log == [("cleanup", "obj")]
    assert fx.WdfObjectGetTypedContext(obj, WDF_DECLARE_CONTEXT_TYPE("X", 4)) is None  # handle still valid
    fx.WdfObjectDereference(obj)
    assert log == [("cleanup", "obj"), ("destroy", "obj")]
    with pytest.raises(BugCheck):
        fx.WdfObjectDelete(obj)


def test_memory_buffer_stays_valid_while_referenced_after_delete(fx):
    _, mem, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 5000)
    fx.WdfObjectReferenceWithTag(mem, "dma")
    fx.WdfObjectDelete(mem)
    assert fx.pool.allocation(va) is not None
    assert fx.WdfMemoryCopyFromBuffer(mem, 0, b"ok", 2) == S.STATUS_SUCCESS
    fx.WdfObjectDereferenceWithTag(mem, "dma")
    assert fx.pool.allocation(va) is None


def test_freed_by_dereference_while_it_has_a_parent_is_0x7(fx):
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    with pytest.raises(BugCheck) as bc:
        fx.WdfObjectDereference(mem)
    assert bc.value.params[0] == 0x7 and bc.value.params[1] == mem
    assert "WdfObjectDelete" in str(bc.value)


def test_freed_by_dereference_while_it_has_children_is_0x7(fx):
    _, parent = fx.WdfObjectCreate(None)
    fx.WdfObjectCreate(attrs(ParentObject=parent))
    obj = fx._live[parent]
    obj.parent.children.pop(obj)  # a parentless object with children
    obj.parent = None
    with pytest.raises(BugCheck) as bc:
        fx.WdfObjectDereference(parent)
    assert bc.value.params[0] == 0x7 and "children" in str(bc.value)


@pytest.mark.parametrize("call", ["WdfObjectReference", "WdfObjectDereference"])
def test_null_handle_for_references_is_0x4(fx, call):
    with pytest.raises(BugCheck) as bc:
        getattr(fx, call)(None)
    assert bc.value.params[0] == 0x4


def test_dereference_with_an_unknown_tag_is_a_tag_tracker_finding(fx):
    _, obj = fx.WdfObjectCreate(None)
    fx.WdfObjectReferenceWithTag(obj, "A")
    fx.WdfObjectDereferenceWithTag(obj, "B")
    assert fx.findings[-1].rule == "TagTracker" and fx.findings[-1].site[0] == __file__


def test_driver_may_not_be_deleted_status_cannot_delete_is_logged(fx):
    fx.WdfObjectDelete(fx.driver)
    assert fx._live[fx.driver].state is ObjectState.CREATED
    assert "STATUS_CANNOT_DELETE" in fx.log[-1]
    assert fx.findings[-1].rule == "ObjectDeleteNotAllowed" and fx.findings[-1].status == S.STATUS_CANNOT_DELETE


def test_deleting_twice_while_referenced_is_ignored_and_reported(fx):
    _, obj = fx.WdfObjectCreate(None)
    fx.WdfObjectReference(obj)
    fx.WdfObjectDelete(obj)
    fx.WdfObjectDelete(obj)
    assert fx.findings[-1].rule == "DoubleDelete"


def test_stale_handle_names_the_object_and_where_it_was_deleted(fx):
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    fx.WdfObjectDelete(mem); deleted_line = __import__("inspect").currentframe().f_lineno
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCopyFromBuffer(mem, 0, b"x", 1)
    text = str(bc.value)
    assert bc.value.params[:3] == (0x5, mem, 0x100A)
    assert "stale handle" in text and "WdfMemoryCreate" in text
    assert f"{__file__.split('/')[-1]}:{deleted_line}" in text


def test_children_deleted_with_their_parent_are_stale_with_the_parent_delete_site(fx):
    _, parent = fx.WdfObjectCreate(None)
    _, mem, _ = fx.WdfMemoryCreate(attrs(ParentObject=parent), PoolType.NonPagedPool, 0, 16)
    fx.WdfObjectDelete(parent)
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryGetBuffer(mem)
    assert "deleted at" in str(bc.value) and "<unknown>" not in str(bc.value).split("deleted at")[1].splitlines()[0]


def test_garbage_and_wrong_kind_handles(fx):
    with pytest.raises(BugCheck) as bc:
        fx.WdfObjectDelete(0x41414140)
    assert "never issued" in str(bc.value)
    with pytest.raises(BugCheck) as bc:
        fx.WdfObjectDelete(0)
    assert bc.value.params[:3] == (0x5, 0, 0x1000)
    with pytest.raises(ArgumentError):
        fx.WdfObjectDelete("handle")


def test_handles_are_never_reused(fx):
    seen = set()
    for _ in range(50):
        _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
        assert mem not in seen
        seen.add(mem)
        fx.WdfObjectDelete(mem)


def test_typed_context_is_zeroed_and_found_by_type(fx):
    ctx = WDF_DECLARE_CONTEXT_TYPE("DEVICE_CONTEXT", 40)
    other = WDF_DECLARE_CONTEXT_TYPE("OTHER", 40)
    _, mem, _ = fx.WdfMemoryCreate(attrs(ContextTypeInfo=ctx), PoolType.NonPagedPool, 0, 5000)
    va = fx.WdfObjectGetTypedContext(mem, ctx)
    assert va and fx.read(va, 40) == b"\0" * 40
    assert fx.WdfObjectGetTypedContext(mem, other) is None
    _, obj = fx.WdfObjectCreate(attrs(ContextTypeInfo=ctx, ContextSizeOverride=64))
    assert fx.read(fx.WdfObjectGetTypedContext(obj, ctx), 64) == b"\0" * 64


def test_embedded_buffer_context_lies_after_the_buffer(fx_off):
    ctx = WDF_DECLARE_CONTEXT_TYPE("CTX", 8)
    _, mem, va = fx_off.WdfMemoryCreate(attrs(ContextTypeInfo=ctx), PoolType.NonPagedPool, 0, 100)
    assert va + 100 <= fx_off.WdfObjectGetTypedContext(mem, ctx) < va + 100 + 64


def test_passive_objects_deleted_at_dispatch_are_disposed_back_at_passive(fx):
    log = []
    obj = tracked(fx, log, "passive", ExecutionLevel=2)
    old = fx.KeRaiseIrql(DISPATCH_LEVEL)
    fx.WdfObjectDelete(obj)
    assert log == []  # deferred to the dispose list
    fx.KeLowerIrql(old)
    assert log == [("cleanup", "passive"), ("destroy", "passive")]


def test_paged_memory_deleted_at_dispatch_is_freed_at_passive(fx):
    _, mem, va = fx.WdfMemoryCreate(None, PoolType.PagedPool, 0, 64)
    with fx.irql(DISPATCH_LEVEL):
        fx.WdfObjectDelete(mem)
        assert fx.pool.allocation(va) is not None
    assert fx.pool.allocation(va) is None


def test_general_objects_take_an_execution_level_but_no_scope_WdfObjectCreate(fx):
    """fxuserobjectapi.cpp WdfObjectCreate validates with FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED
    only: a synchronization scope other than InheritFromParent/None is refused."""
    assert fx.WdfObjectCreate(attrs(ExecutionLevel=2))[0] == S.STATUS_SUCCESS
    assert fx.WdfObjectCreate(attrs(ExecutionLevel=2, SynchronizationScope=4))[0] == S.STATUS_SUCCESS
    assert (fx.WdfObjectCreate(attrs(ExecutionLevel=2, SynchronizationScope=2))[0]
            == S.STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID)


def test_describe_tells_the_story_of_a_handle(fx):
    _, mem, _ = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    assert "live" in fx.describe(mem)
    fx.WdfObjectDelete(mem)
    assert "destroyed" in fx.describe(mem) and "deleted at" in fx.describe(mem)


def test_a_deferred_child_deleted_with_its_parent_meanwhile_is_disposed_once(fx):
    log = []
    parent = tracked(fx, log, "parent")
    child = tracked(fx, log, "child", parent, ExecutionLevel=2)
    with fx.irql(DISPATCH_LEVEL):
        fx.WdfObjectDelete(child)          # deferred: passive cleanup
    # lowering ran it already; now a parent delete must not dispose it again
    fx.WdfObjectDelete(parent)
    assert log.count(("cleanup", "child")) == 1 and log.count(("destroy", "child")) == 1
    log.clear()
    parent = tracked(fx, log, "parent")
    child = tracked(fx, log, "child", parent, ExecutionLevel=2)
    old = fx.KeRaiseIrql(DISPATCH_LEVEL)
    fx.WdfObjectDelete(child)              # deferred
    fx.KeLowerIrql(1)                      # still above PASSIVE_LEVEL: nothing ran
    fx._irql.current = 0                   # parent deleted at PASSIVE_LEVEL before the work item ran
    fx.WdfObjectDelete(parent)
    fx._irql.current = 1
    fx.KeLowerIrql(old)                    # the stale work item must do nothing
    assert log.count(("cleanup", "child")) == 1 and log.count(("destroy", "child")) == 1
    assert fx._handles.graveyard[child].refcount == 0  # released exactly once
