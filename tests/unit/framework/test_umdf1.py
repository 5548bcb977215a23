"""The UMDF 1 facade: IWDFDriver, IWDFMemory, IObjectCleanup, HRESULTs."""

import pytest

from framework_emu import HRESULT, IRP_MJ_WRITE, BugCheck, PoolType


class Cleanup:
    def __init__(self):
        self.calls = []

    def OnCleanup(self, pWdfObject):
        self.calls.append(pWdfObject)


@pytest.fixture
def driver(fx):
    return fx.umdf1_driver()


@pytest.fixture
def buf(fx):
    return fx.ExAllocatePoolWithTag(PoolType.NonPagedPool, 64, b"Umdf")


def test_create_preallocated_memory_and_use_it(fx, driver, buf):
    hr, memory = driver.CreatePreallocatedWdfMemory(buf, 64, None, None)
    assert hr == HRESULT.S_OK
    assert memory.GetDataBuffer() == (buf, 64) and memory.GetSize() == 64
    assert memory.CopyFromBuffer(0, b"umdf", 4) == HRESULT.S_OK
    out = bytearray(4)
    assert memory.CopyToBuffer(0, out, 4) == HRESULT.S_OK and out == b"umdf"
    assert fx._live[memory.handle].parent is fx._live[fx.driver]  # NULL parent: the driver


def test_on_cleanup_runs_before_destruction_and_the_buffer_is_kept(fx, driver, buf):
    callback = Cleanup()
    hr, memory = driver.CreatePreallocatedWdfMemory(buf, 64, callback, None)
    assert memory.DeleteWdfObject() == HRESULT.S_OK
    assert callback.calls == [memory]
    assert fx.pool.allocation(buf) is not None


def test_parent_object_and_cleanup_with_it(fx, driver, buf):
    callback = Cleanup()
    _, parent = driver.CreatePreallocatedWdfMemory(buf, 64, None, None)
    _, child = driver.CreatePreallocatedWdfMemory(buf + 8, 8, callback, parent)
    parent.DeleteWdfObject()
    assert callback.calls == [child]


def test_bad_arguments_are_e_invalidarg(driver, buf):
    assert driver.CreatePreallocatedWdfMemory(0, 64, None, None) == (HRESULT.E_INVALIDARG, None)
    assert driver.CreatePreallocatedWdfMemory(buf, 0, None, None) == (HRESULT.E_INVALIDARG, None)
    _, memory = driver.CreatePreallocatedWdfMemory(buf, 64, None, None)
    assert memory.CopyFromBuffer(62, b"abcd", 4) == HRESULT.E_INVALIDARG
    assert memory.CopyToBuffer(64, bytearray(1), 1) == HRESULT.E_INVALIDARG
    assert memory.CopyFromBuffer(0, None, 1) == HRESULT.E_INVALIDARG


def test_set_buffer(fx, driver, buf):
    _, memory = driver.CreatePreallocatedWdfMemory(buf, 64, None, None)
    assert memory.SetBuffer(buf + 16, 16) is None
    assert memory.GetDataBuffer() == (buf + 16, 16)
    with pytest.raises(BugCheck):
        memory.SetBuffer(buf, 0)


def test_set_buffer_only_on_preallocated_memory(fx, driver):
    from framework_emu import IWDFMemory

    _, handle, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)
    with pytest.raises(BugCheck) as bc:
        IWDFMemory(fx, handle).SetBuffer(va, 8)
    assert bc.value.params[0] == 0x5 and bc.value.params[2] == 0x1022


def test_deleting_framework_owned_objects_is_access_denied(fx, driver):
    from framework_emu import IWDFMemory

    assert driver.DeleteWdfObject() == HRESULT.E_ACCESSDENIED
    io = fx.present_request(IRP_MJ_WRITE, input_data=b"x")
    _, mem = fx.WdfRequestRetrieveInputMemory(io.handle)
    request_memory = IWDFMemory(fx, mem)
    assert request_memory.DeleteWdfObject() == 0x80070005
    assert request_memory.CopyFromBuffer(0, b"y", 1) == HRESULT.E_ACCESSDENIED  # a write's data is read-only
