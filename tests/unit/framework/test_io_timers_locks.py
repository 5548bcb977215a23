"""Timers (fxtimerapi.cpp / fxtimer.cpp), spin and wait locks, strings, and the small calls
drivers make around their I/O."""

import pytest

from framework_emu import (TICKS_PER_MS, ArgumentError, DISPATCH_LEVEL, NTSTATUS, PASSIVE_LEVEL, BugCheck, FrameworkStateError,
                           WDF_DRIVER_CONFIG, WDF_DRIVER_VERSION_AVAILABLE_PARAMS, WDF_EXECUTION_LEVEL,
                           WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE, WDF_OBJECT_ATTRIBUTES, WDF_REL_TIMEOUT_IN_MS,
                           WDF_SYNCHRONIZATION_SCOPE, WDF_TIMER_CONFIG_INIT, WDF_TIMER_CONFIG_INIT_PERIODIC,
                           WDF_DECLARE_CONTEXT_TYPE, POOL_FLAG_NON_PAGED, WdfIoQueueDispatchSequential)
from samples.guest import InProcessGuest

S = NTSTATUS


class Plain:
    fx = None

    def __init__(self, device_attributes=None):
        self.device_attributes = device_attributes

    def DriverEntry(self, DriverObject, RegistryPath):
        return self.fx.WdfDriverCreate(DriverObject, RegistryPath, None,
                                       WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=self.EvtDriverDeviceAdd))[0]

    def EvtDriverDeviceAdd(self, Driver, DeviceInit):
        status, self.device = self.fx.WdfDeviceCreate(DeviceInit, self.device_attributes)
        config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
        config.EvtIoWrite = lambda q, r, n: None
        _, self.queue = self.fx.WdfIoQueueCreate(self.device, config, None)
        return status


def machine(device_attributes=None, **options):
    guest = InProcessGuest()
    driver = Plain(device_attributes)
    fx = guest.iom.load_driver(driver, service_name="WDFTimer", **options)
    guest.iom.add_device(fx, "dev0")
    return guest, driver, fx


def test_one_shot_and_periodic_timers_fire_on_the_emulated_clock_at_dispatch_level():
    guest, driver, fx = machine()
    fired = []
    status, one = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: fired.append(("one", fx.KeGetCurrentIrql()))),
                                    WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    assert status == 0
    status, periodic = fx.WdfTimerCreate(
        WDF_TIMER_CONFIG_INIT_PERIODIC(lambda t: fired.append(("tick", fx.KeGetCurrentIrql())), 10),
        WDF_OBJECT_ATTRIBUTES(ParentObject=driver.queue))
    assert status == 0
    assert fx.WdfTimerStart(one, WDF_REL_TIMEOUT_IN_MS(15)) is False
    fx.WdfTimerStart(periodic, WDF_REL_TIMEOUT_IN_MS(10))
    guest.iom.advance_time(35)
    assert fired == [("tick", DISPATCH_LEVEL), ("one", DISPATCH_LEVEL), ("tick", DISPATCH_LEVEL),
                     ("tick", DISPATCH_LEVEL)]
    assert fx.WdfTimerStop(periodic, True) is True
    guest.iom.advance_time(100)
    assert len(fired) == 4
    assert fx.WdfTimerGetParentObject(periodic) == driver.queue


def test_the_clock_a_runtime_reads_next_timer_due_and_advance_to():
    """What a runtime that makes emulated time follow the wall clock reads (IoManager.now,
    next_timer_due) and moves (advance_to): in ticks, reaching a due time exactly."""
    guest, driver, fx = machine()
    iom = guest.iom
    assert iom.next_timer_due() is None
    start = iom.now
    fired = []
    _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: fired.append(iom.now)),
                                 WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(7))
    due = iom.next_timer_due()
    assert due == start + 7 * TICKS_PER_MS
    iom.advance_to(due - 1)
    assert fired == [] and iom.now == due - 1
    iom.advance_to(due)
    assert fired == [due] and iom.next_timer_due() is None
    iom.advance_to(0)                      # never back
    assert iom.now == due
    with pytest.raises(ArgumentError) as err:
        iom.advance_to(-1)
    assert err.value.field == "ticks"
    fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(5))
    assert fx.WdfTimerStop(timer, False) is True
    assert iom.next_timer_due() is None    # a stopped timer is not due


def test_passive_timer_runs_at_passive_level():
    guest, driver, fx = machine()
    seen = []
    _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: seen.append(fx.KeGetCurrentIrql())),
                                 WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device,
                                                       ExecutionLevel=WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive))
    fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(1))
    guest.iom.advance_time(1)
    assert seen == [PASSIVE_LEVEL]


def test_timer_parent_rules():
    """FxValidateObjectAttributesForParentHandle: a parent is required; FxTimer::Initialize: it must
    be (under) a device or a queue; _GetEffectiveLock: a passive device lock with a dispatch-level
    timer is STATUS_WDF_INCOMPATIBLE_EXECUTION_LEVEL."""
    guest, driver, fx = machine()
    config = WDF_TIMER_CONFIG_INIT(lambda t: None)
    assert fx.WdfTimerCreate(config, None)[0] == S.STATUS_WDF_PARENT_NOT_SPECIFIED
    _, general = fx.WdfObjectCreate(None)
    assert fx.WdfTimerCreate(config, WDF_OBJECT_ATTRIBUTES(ParentObject=general))[0] == S.STATUS_INVALID_DEVICE_REQUEST
    _, child = fx.WdfObjectCreate(WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    assert fx.WdfTimerCreate(config, WDF_OBJECT_ATTRIBUTES(ParentObject=child))[0] == 0
    guest, driver, fx = machine(WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice,
        ExecutionLevel=WDF_EXECUTION_LEVEL.WdfExecutionLevelPassive))
    assert fx.WdfTimerCreate(config, WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))[0] == \
        S.STATUS_WDF_INCOMPATIBLE_EXECUTION_LEVEL


def test_timer_callback_holds_the_device_lock_under_device_scope():
    guest, driver, fx = machine(WDF_OBJECT_ATTRIBUTES(
        SynchronizationScope=WDF_SYNCHRONIZATION_SCOPE.WdfSynchronizationScopeDevice))
    holders = []
    device = fx._object(driver.device, 0x1002)
    _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: holders.append(device.lock.holder)),
                                 WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    fx.WdfTimerStart(timer, 0)
    guest.iom.run()
    assert holders and "EvtTimerFunc" in holders[0]


def test_timer_stop_with_wait_from_its_own_callback_is_a_finding():
    guest, driver, fx = machine(verifier_mode="record")
    results = []
    _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: results.append(fx.WdfTimerStop(t, True))),
                                 WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(1))
    guest.iom.advance_time(1)
    assert results == [False] and [f.rule for f in fx.findings] == ["TimerStopWaitInCallback"]


def test_spin_lock_raises_to_dispatch_and_recursion_stops_the_machine():
    guest, driver, fx = machine()
    _, lock = fx.WdfSpinLockCreate(None)
    fx.WdfSpinLockAcquire(lock)
    assert fx.KeGetCurrentIrql() == DISPATCH_LEVEL
    with pytest.raises(BugCheck, match="already held"):
        fx.WdfSpinLockAcquire(lock)
    fx.WdfSpinLockRelease(lock)
    assert fx.KeGetCurrentIrql() == PASSIVE_LEVEL


def test_wait_lock_timeout_and_a_wait_that_would_hang():
    guest, driver, fx = machine()
    _, lock = fx.WdfWaitLockCreate(None)
    assert fx.WdfWaitLockAcquire(lock) == 0
    assert fx.WdfWaitLockAcquire(lock, 0) == S.STATUS_TIMEOUT
    with pytest.raises(FrameworkStateError, match="waits forever"):
        fx.WdfWaitLockAcquire(lock)
    fx.WdfWaitLockRelease(lock)
    assert fx.WdfWaitLockAcquire(lock, WDF_REL_TIMEOUT_IN_MS(5)) == 0


def test_strings_versions_verifier_break_delay_and_pool2():
    guest, driver, fx = machine(verifier_mode="record")
    status, string = fx.WdfStringCreate("\\DosDevices\\Echo", WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    assert status == 0 and fx.WdfStringGetUnicodeString(string) == "\\DosDevices\\Echo"
    assert fx.WdfDriverIsVersionAvailable(fx.WdfGetDriver(), WDF_DRIVER_VERSION_AVAILABLE_PARAMS(1, 15))
    assert not fx.WdfDriverIsVersionAvailable(fx.WdfGetDriver(), WDF_DRIVER_VERSION_AVAILABLE_PARAMS(2, 0))
    fx.WdfVerifierDbgBreakPoint()
    assert [f.rule for f in fx.findings] == ["WdfVerifierDbgBreakPoint"]
    fired = []
    _, timer = fx.WdfTimerCreate(WDF_TIMER_CONFIG_INIT(lambda t: fired.append(1)),
                                 WDF_OBJECT_ATTRIBUTES(ParentObject=driver.device))
    fx.WdfTimerStart(timer, WDF_REL_TIMEOUT_IN_MS(3))
    fx.KeDelayExecutionThread(0, False, WDF_REL_TIMEOUT_IN_MS(5))   # the clock moves: the timer fires
    assert fired == [1]
    va = fx.ExAllocatePool2(POOL_FLAG_NON_PAGED, 64, b"Test")
    fx.RtlCopyMemory(va, b"x" * 64, 64)
    fx.RtlZeroMemory(va, 64)
    assert fx.read(va, 64) == bytes(64)
    fx.ExFreePool(va)


def test_typed_contexts_on_devices_queues_and_requests():
    """WdfDeviceInitSetRequestAttributes: every request gets a zeroed context of that type."""
    info = WDF_DECLARE_CONTEXT_TYPE("REQUEST_CONTEXT", 16)
    device_info = WDF_DECLARE_CONTEXT_TYPE("DEVICE_CONTEXT", 32)
    seen = {}

    class WithContexts(Plain):
        def EvtDriverDeviceAdd(self, Driver, DeviceInit):
            fx = self.fx
            fx.WdfDeviceInitSetRequestAttributes(DeviceInit, WDF_OBJECT_ATTRIBUTES(ContextTypeInfo=info))
            status, self.device = fx.WdfDeviceCreate(DeviceInit, WDF_OBJECT_ATTRIBUTES(ContextTypeInfo=device_info))
            config = WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(WdfIoQueueDispatchSequential)
            config.EvtIoWrite = self.EvtIoWrite
            fx.WdfIoQueueCreate(self.device, config, None)
            return status

        def EvtIoWrite(self, Queue, Request, Length):
            context = self.fx.WdfObjectGetTypedContext(Request, info)
            seen["request"] = self.fx.read(context, 16)
            seen["device"] = self.fx.WdfObjectGetTypedContext(self.device, device_info)
            self.fx.WdfRequestComplete(Request, 0)

    guest = InProcessGuest()
    fx = guest.iom.load_driver(WithContexts(), service_name="WDFCtx")
    guest.iom.add_device(fx, "dev0")
    file = guest.open("dev0")
    assert guest.write_file(file, b"x").result() == (0, 0)
    assert seen["request"] == bytes(16) and seen["device"]
