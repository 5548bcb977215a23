"""The issue's public example, verbatim: it must run."""

from framework_emu import Framework, InProcessMemory, NTSTATUS, PoolType, BugCheck, WDF_OBJECT_ATTRIBUTES  # noqa: F401


def test_issue_example_runs_as_written():
    fx = Framework(InProcessMemory(size=64 << 20), service_name="WDFEcho")
    assert fx.default_pool_tag == b"Echo"            # display order; b"FxDr", b"Abc\x00" per the rule
    status, mem, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 8192)
    assert status == NTSTATUS.STATUS_SUCCESS and va % 4096 == 0
    assert fx.WdfMemoryCopyFromBuffer(mem, 8190, b"abcd", 4) == NTSTATUS.STATUS_INVALID_BUFFER_SIZE
    raised = None
    try:
        fx.WdfMemoryAssignBuffer(mem, va, 16)
    except BugCheck as bc:
        assert bc.code == 0x10D and bc.params[0] == 0x5 and bc.params[2] == 0x1022
        raised = bc
    assert raised is not None, "WdfMemoryAssignBuffer on WdfMemoryCreate memory must bug-check"


def test_attributes_initialised_like_wdf_object_attributes_init():
    attributes = WDF_OBJECT_ATTRIBUTES()
    assert attributes.Size == 0x38
    assert attributes.ExecutionLevel == 1 and attributes.SynchronizationScope == 1
    assert attributes.ParentObject is None and attributes.ContextTypeInfo is None
    assert attributes.EvtCleanupCallback is None and attributes.EvtDestroyCallback is None
    assert attributes.ContextSizeOverride == 0
