"""WdfDriverCreate, the default pool tag rule, and the leak report at unload."""

import pytest

from framework_emu import (DRIVER_OBJECT, NTSTATUS, BugCheck, Framework, InProcessMemory, PoolType,
                           WDF_DRIVER_CONFIG, WDF_OBJECT_ATTRIBUTES, WdfDriverInitNonPnpDriver)
from framework_emu.driver import SIZEOF_WDF_DRIVER_CONFIG_V1_1
from framework_emu.errors import FrameworkStateError

S = NTSTATUS


def framework(service_name="WDFEcho", **kwargs):
    return Framework(InProcessMemory(size=8 << 20), service_name=service_name, **kwargs)


@pytest.mark.parametrize("service,tag", [
    ("WDFEcho", b"Echo"), ("wdfecho", b"echo"), ("Echo", b"Echo"), ("EchoDriver", b"Echo"),
    ("WDFAbc", b"Abc\0"), ("Abc", b"Abc\0"), ("WDFab", b"FxDr"), ("Ab", b"FxDr"), ("WDF", b"FxDr"),
    ("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\WDFSerial", b"Seri"),
    ("A" * 40, b"AAAA"),
])
def test_default_tag_rule(service, tag):
    assert framework(service).default_pool_tag == tag


def test_registry_path_without_a_backslash_gives_the_name_wdf():
    fx = framework(create_driver=False)
    status, _ = fx.WdfDriverCreate(DRIVER_OBJECT, "NoBackslash", None, WDF_DRIVER_CONFIG())
    assert status == S.STATUS_SUCCESS and fx.default_pool_tag == b"FxDr"


@pytest.mark.parametrize("pool_tag,expect", [(b"Mine", b"Mine"), (0x656E694D, b"Mine"), (b"Ddk ", b"Echo"),
                                              (0, b"Echo")])
def test_driver_pool_tag_overrides_unless_zero_or_ddk(pool_tag, expect):
    assert framework(driver_pool_tag=pool_tag).default_pool_tag == expect


def test_old_config_size_ignores_the_pool_tag():
    fx = framework(create_driver=False)
    config = WDF_DRIVER_CONFIG(DriverPoolTag=b"Mine", Size=SIZEOF_WDF_DRIVER_CONFIG_V1_1)
    assert fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, config)[0] == S.STATUS_SUCCESS
    assert fx.default_pool_tag == b"Echo"


def test_driver_create_checks():
    fx = framework(create_driver=False)
    with pytest.raises(BugCheck) as bc:
        fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, None)
    assert bc.value.params[0] == 0x4
    assert fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, WDF_DRIVER_CONFIG(Size=5)) == \
        (S.STATUS_INFO_LENGTH_MISMATCH, None)
    assert fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, WDF_DRIVER_CONFIG(DriverInitFlags=0x80)) == \
        (S.STATUS_INVALID_PARAMETER, None)
    nt4 = WDF_DRIVER_CONFIG(DriverInitFlags=WdfDriverInitNonPnpDriver, EvtDriverDeviceAdd=lambda *a: 0)
    assert fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, nt4) == (S.STATUS_INVALID_PARAMETER, None)
    parented = WDF_OBJECT_ATTRIBUTES()
    parented.ParentObject = 0x10
    assert fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, parented, WDF_DRIVER_CONFIG())[0] == \
        S.STATUS_WDF_PARENT_ASSIGNMENT_NOT_ALLOWED
    status, driver = fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, WDF_DRIVER_CONFIG())
    assert status == S.STATUS_SUCCESS and driver == fx.driver
    assert fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, WDF_DRIVER_CONFIG()) == \
        (S.STATUS_DRIVER_INTERNAL_ERROR, None)


def test_driver_keeps_its_registry_path_in_paged_pool_with_its_tag():
    fx = framework()
    rows = {(r.tag, r.kind): r for r in fx.pool.poolmon()}
    assert rows[(b"Echo", "Paged")].bytes == 2 * (len(fx.registry_path) + 1)
    assert fx.WdfDriverGetRegistryPath(fx.driver) == fx.registry_path


def test_unload_cleans_up_children_and_reports_nothing_when_clean():
    unloaded, cleaned = [], []
    fx = framework(driver_config=WDF_DRIVER_CONFIG(EvtDriverUnload=unloaded.append))
    a = WDF_OBJECT_ATTRIBUTES()
    a.EvtCleanupCallback = cleaned.append
    _, mem, _ = fx.WdfMemoryCreate(a, PoolType.NonPagedPool, 0, 64)
    driver = fx.driver
    report = fx.unload_driver()
    assert unloaded == [driver] and cleaned == [mem]
    assert not report and "clean" in str(report)
    assert fx.pool.bytes_in_use() == 0


def test_unload_reports_leaked_pool_and_references_with_sites(make_fx):
    fx = make_fx(verifier_mode="record")
    leak = fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 48, b"Leak")
    _, obj = fx.WdfObjectCreate(None)
    fx.WdfObjectReferenceWithTag(obj, "forgotten")
    report = fx.unload_driver()
    assert [a.va for a in report.allocations] == [leak] and report.allocations[0].site[0] == __file__
    assert [o.handle for o in report.objects] == [obj] and "forgotten" in report.objects[0].references
    assert "Leak" in str(report) and "forgotten" in str(report)
    assert fx.findings[-1].rule == "PoolLeakOnUnload"


def test_unload_with_leaks_bug_checks_like_driver_verifier(make_fx):
    fx = make_fx()
    fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 48, b"Leak")
    with pytest.raises(BugCheck) as bc:
        fx.unload_driver()
    assert (bc.value.code, bc.value.params[0], bc.value.params[3]) == (0xC4, 0x62, 1)


def test_after_unload_the_framework_is_finished(make_fx):
    fx = make_fx(verifier=False)
    fx.unload_driver()
    with pytest.raises(FrameworkStateError):
        fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
