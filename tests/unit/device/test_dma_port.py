"""The framework's DMA port: MDL spans, the identity adapter, and the runtime's adapter
over a real device, end to end on in-process memory (framework MDL -> port ->
device DMA -> the framework reads what landed)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from device_model.abi import CompletionStatus, Descriptor, Opcode
from device_model.device import EchoDevice
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from framework_emu import NTSTATUS, Framework, InProcessMemory, PoolType
from framework_emu.dma_adapter import (
    DmaCapabilities, DmaMappingError, IdentityDmaAdapter, mdl_spans,
)
from orchestrator.dma_port import DeviceDmaAdapter, device_segments
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE


def test_mdl_spans_follow_byte_offset_and_count():
    assert mdl_spans([7, 9, 8, 100], 300, 10_000) == [
        (7, 300, PAGE_SIZE - 300), (9, 0, PAGE_SIZE), (8, 0, 10_000 - (PAGE_SIZE - 300) - PAGE_SIZE)]
    assert mdl_spans([5], 0, PAGE_SIZE) == [(5, 0, PAGE_SIZE)]
    with pytest.raises(DmaMappingError, match="ends"):
        mdl_spans([1, 2], 100, 3 * PAGE_SIZE)
    with pytest.raises(DmaMappingError):
        mdl_spans([1], PAGE_SIZE, 1)


def test_identity_adapter_is_physical_addresses():
    adapter = IdentityDmaAdapter()
    sg = adapter.map([(3, 16, 100), (4, 0, 50)], to_device=True)
    assert sg.pairs() == [((3 << PAGE_SHIFT) + 16, 100), (4 << PAGE_SHIFT, 50)]
    assert sg.length == 150 and adapter.capabilities.address_bits == 64
    adapter.unmap(sg)
    with pytest.raises(DmaMappingError, match="twice"):
        adapter.unmap(sg)


def device_like(dma_mask=(1 << 64) - 1, segment_align=1):
    return SimpleNamespace(dma_mask=dma_mask, segment_align=segment_align)


def test_device_adapter_merges_contiguous_pages_and_counts_map_registers():
    adapter = DeviceDmaAdapter(device_like(), map_registers=5)
    caps = adapter.capabilities
    assert caps.dma_mask == (1 << 64) - 1 and caps.alignment == 1 and caps.map_registers == 5
    sg = adapter.map(mdl_spans([10, 11, 12, 40], 8, 3 * PAGE_SIZE), to_device=False)
    assert sg.pairs() == [((10 << PAGE_SHIFT) + 8, 3 * PAGE_SIZE - 8), (40 << PAGE_SHIFT, 8)]
    assert adapter.map_registers_in_use == 4
    with pytest.raises(DmaMappingError, match="map registers"):
        adapter.map(mdl_spans([1, 2], 0, 2 * PAGE_SIZE), to_device=True)
    adapter.unmap(sg)
    assert adapter.map_registers_in_use == 0
    assert [(s.gpa, s.length) for s in device_segments(sg)] == sg.pairs()


def test_device_adapter_refuses_what_the_device_cannot_reach():
    adapter = DeviceDmaAdapter(device_like(dma_mask=(1 << 32) - 1, segment_align=512))
    with pytest.raises(DmaMappingError) as info:
        adapter.map([(1, 0, PAGE_SIZE), ((1 << 32) >> PAGE_SHIFT, 0, PAGE_SIZE)], to_device=True)
    assert info.value.index == 1 and "DMA mask" in str(info.value)
    with pytest.raises(DmaMappingError, match="aligned"):
        adapter.map([(1, 100, 512)], to_device=True)
    assert adapter.map_registers_in_use == 0


def test_capabilities_default_to_a_64_bit_bus_master():
    assert DmaCapabilities().address_bits == 64


def test_framework_mdl_through_the_port_into_the_device_and_back(tmp_path):
    """A framework buffer's MDL becomes the device's scatter/gather list through the
    port; the real device thread DMAs a pattern into it; the framework reads it."""
    memory = InProcessMemory(size=32 << 20)
    fx = Framework(memory, service_name="WDFEcho", verifier=False)
    size, offset = 10_000, 300
    status, buffer, va = fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 3 * PAGE_SIZE)
    assert status == NTSTATUS.STATUS_SUCCESS
    mdl = fx.IoAllocateMdl(va + offset, size)
    fx.MmBuildMdlForNonPagedPool(mdl)
    payload = os.urandom(size)
    with EchoDevice(tmp_path) as device, IvshmemClient.connect(device.socket_path) as client:
        device.attach_guest_ram(memory)
        driver = HostDriver(client)
        adapter = DeviceDmaAdapter(device)
        try:
            device.memory.data[:size] = payload
            sg = adapter.map(mdl_spans(fx.MmGetMdlPfnArray(mdl), fx.MmGetMdlByteOffset(mdl),
                                       fx.MmGetMdlByteCount(mdl)), to_device=False)
            segments = device_segments(sg)
            done = driver.request(Descriptor(Opcode.READ, 0, len(segments), 5, 0, size), segments)
            adapter.unmap(sg)
            assert (done.status, done.transferred) == (CompletionStatus.OK, size)
        finally:
            driver.close()
        device.detach_guest_ram()
        assert device.errors == []
    seen = bytearray(size)
    assert fx.WdfMemoryCopyToBuffer(buffer, offset, seen, size) == NTSTATUS.STATUS_SUCCESS
    assert bytes(seen) == payload
    fx.IoFreeMdl(mdl)
    fx.WdfObjectDelete(buffer)
