"""WDFDMAENABLER and WDFDMATRANSACTION: statuses, staging and the verifier's DMA rules, as
fxdmaenablerapi.cpp, fxdmatransactionapi.cpp and fxdmatransaction*.cpp have them."""

from __future__ import annotations

import pytest

from framework_emu import DISPATCH_LEVEL, PAGE_SIZE, WDF_OBJECT_ATTRIBUTES, BugCheck, NTSTATUS
from framework_emu.bugcheck import WDF_DMA_FATAL_ERROR, WDF_REQUIRED_PARAMETER_IS_NULL, WDF_VIOLATION
from framework_emu.dma_enabler import (WDF_DMA_ENABLER_CONFIG, WDF_DMA_ENABLER_CONFIG_INIT, WdfDmaDirectionReadFromDevice,
                                       WdfDmaDirectionWriteToDevice, WdfDmaProfilePacket64, WdfDmaProfileScatterGather,
                                       WdfDmaProfileScatterGather64, WdfDmaProfileScatterGather64Duplex)
from framework_emu.dma_transaction import FxDmaTransactionState as St
from samples.dma_rig import MIB, bare_device, pattern

S = NTSTATUS


class Programs:
    """EvtProgramDma that records each scatter/gather list (logical address, length pairs)."""

    def __init__(self, fx):
        self.fx = fx
        self.calls = []
        self.irqls = []

    def __call__(self, Transaction, Device, Context, Direction, SgList):
        self.calls.append([(e.Address, e.Length) for e in SgList.Elements])
        self.irqls.append(self.fx.KeGetCurrentIrql())
        return True


def enabler(fx, driver, profile=WdfDmaProfileScatterGather64, maximum=64 << 10):
    status, handle = fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(profile, maximum))
    assert status == 0, hex(status)
    return handle


def mdl_over(fx, gpa, length):
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(gpa), length)
    fx.MmBuildMdlForNonPagedPool(mdl)
    return mdl


def transaction(fx, en):
    status, handle = fx.WdfDmaTransactionCreate(en)
    assert status == 0
    return handle


@pytest.fixture
def rig():
    guest, fx, driver, device = bare_device()
    return fx, driver, enabler(fx, driver)


# -- enablers ---------------------------------------------------------------------------------------------

def test_enabler_create_statuses_in_source_order():
    guest, fx, driver, device = bare_device()
    bad = WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64, 4096)
    bad.Size = 0x40   # the 1.9 size, from a 1.11+ driver
    assert fx.WdfDmaEnablerCreate(driver.device, bad) == (S.STATUS_INFO_LENGTH_MISMATCH, None)
    assert fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(0, 4096)) == (
        S.STATUS_INVALID_PARAMETER, None)
    assert fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(99, 4096)) == (
        S.STATUS_INVALID_PARAMETER, None)
    assert fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64, 0)) == (
        S.STATUS_INVALID_PARAMETER, None)
    _status, other = fx.WdfObjectCreate(None)
    attributes = WDF_OBJECT_ATTRIBUTES(ParentObject=other)     # a parent not under the device
    assert fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64, 4096),
                                  attributes) == (S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID, None)
    with pytest.raises(BugCheck) as stop:
        fx.WdfDmaEnablerCreate(driver.device, None)
    assert stop.value.params[0] == WDF_REQUIRED_PARAMETER_IS_NULL


def test_enabler_create_above_passive_fails_under_the_verifier():
    guest, fx, driver, device = bare_device()
    with fx.irql(DISPATCH_LEVEL):
        status, handle = fx.WdfDmaEnablerCreate(driver.device, WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64,
                                                                                           4096))
    assert (status, handle) == (S.STATUS_INVALID_DEVICE_REQUEST, None)
    assert [f.rule for f in fx.findings] == ["KmdfIrql"]


def test_maximum_length_and_scatter_gather_elements(rig):
    fx, driver, en = rig
    assert fx.WdfDmaEnablerGetMaximumLength(en) == 64 << 10
    assert fx.WdfDmaEnablerGetMaximumScatterGatherElements(en) == 0xFFFFFFFF   # UNLIMITED_FRAGMENTS
    fx.WdfDmaEnablerSetMaximumScatterGatherElements(en, 0)                     # ignored
    assert fx.WdfDmaEnablerGetMaximumScatterGatherElements(en) == 0xFFFFFFFF
    fx.WdfDmaEnablerSetMaximumScatterGatherElements(en, 5)
    assert fx.WdfDmaEnablerGetMaximumScatterGatherElements(en) == 5
    fx.WdfDmaEnablerSetMaximumScatterGatherElements(en, 1 << 40)               # capped
    assert fx.WdfDmaEnablerGetMaximumScatterGatherElements(en) == 0xFFFFFFFF
    assert fx.WdfDmaEnablerGetFragmentLength(en, WdfDmaDirectionReadFromDevice) == 64 << 10


def test_duplex_profile_has_an_adapter_per_direction(rig):
    fx, driver, _en = rig
    en = enabler(fx, driver, WdfDmaProfileScatterGather64Duplex)
    read = fx.WdfDmaEnablerWdmGetDmaAdapter(en, WdfDmaDirectionReadFromDevice)
    write = fx.WdfDmaEnablerWdmGetDmaAdapter(en, WdfDmaDirectionWriteToDevice)
    assert read is not None and write is not None and read is not write
    assert fx.WdfDmaEnablerWdmGetDmaAdapter(en, 7) is None
    assert fx.findings[-1].rule == "DmaInvalidDirection"


def test_32_bit_enabler_on_a_machine_with_high_ram_gets_map_registers_and_a_shorter_fragment():
    guest, fx, driver, device = bare_device(map_registers=16)
    en = enabler(fx, driver, WdfDmaProfileScatterGather, 64 << 10)
    # FxDmaEnabler::InitializeResources: min(MaximumLength, (map registers - 1) pages)
    assert fx.WdfDmaEnablerGetFragmentLength(en, WdfDmaDirectionWriteToDevice) == 15 * PAGE_SIZE
    adapter = fx.WdfDmaEnablerWdmGetDmaAdapter(en, WdfDmaDirectionWriteToDevice)
    assert adapter.number_of_map_registers == 16 and adapter.free_map_registers == 16
    fx.WdfObjectDelete(en)                       # the bounce pages go back with the adapter
    assert all(r.allocations == [] for r in guest.iom.shutdown())


# -- initialize -------------------------------------------------------------------------------------------

def test_initialize_statuses(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    program = Programs(fx)
    mdl = mdl_over(fx, 2 * MIB, 3 * PAGE_SIZE)
    va = mdl.virtual_address()
    with pytest.raises(BugCheck) as stop:
        fx.WdfDmaTransactionInitialize(t, None, WdfDmaDirectionWriteToDevice, mdl, va, 100)
    assert stop.value.params[0] == WDF_REQUIRED_PARAMETER_IS_NULL
    with pytest.raises(BugCheck):
        fx.WdfDmaTransactionInitialize(t, program, WdfDmaDirectionWriteToDevice, None, va, 100)
    assert fx.WdfDmaTransactionInitialize(t, program, WdfDmaDirectionWriteToDevice, mdl, va, 0) == \
        S.STATUS_INVALID_PARAMETER
    assert fx.WdfDmaTransactionInitialize(t, program, 5, mdl, va, 100) == S.STATUS_INVALID_PARAMETER
    assert fx.WdfDmaTransactionInitialize(t, program, WdfDmaDirectionWriteToDevice, mdl, va - 1, 100) == \
        S.STATUS_INVALID_PARAMETER
    assert fx.WdfDmaTransactionInitialize(t, program, WdfDmaDirectionWriteToDevice, mdl, va + 3 * PAGE_SIZE, 1) == \
        S.STATUS_INVALID_PARAMETER
    assert fx.WdfDmaTransactionInitialize(t, program, WdfDmaDirectionWriteToDevice, mdl, va + 10, 100) == 0


def test_packet_profile_refuses_a_length_past_the_mdl(rig):
    fx, driver, _ = rig
    en = enabler(fx, driver, WdfDmaProfilePacket64)
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    # no chained MDLs for a packet profile without DMA v3 (SupportsChainedMdls)
    assert fx.WdfDmaTransactionInitialize(t, Programs(fx), WdfDmaDirectionWriteToDevice, mdl,
                                          mdl.virtual_address() + 100, PAGE_SIZE) == S.STATUS_INVALID_PARAMETER


def test_too_fragmented(rig):
    fx, driver, en = rig
    fx.WdfDmaEnablerSetMaximumScatterGatherElements(en, 2)
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB + 0x800, 2 * PAGE_SIZE)   # crosses into a third page
    status = fx.WdfDmaTransactionInitialize(t, Programs(fx), WdfDmaDirectionWriteToDevice, mdl,
                                            mdl.virtual_address(), 2 * PAGE_SIZE)
    assert status == S.STATUS_WDF_TOO_FRAGMENTED
    assert fx._live[t].dma_state == St.FxDmaTransactionStateReleased   # Initialize failed: ReleaseForReuse
    # the same transaction takes a buffer that fits
    assert fx.WdfDmaTransactionInitialize(t, Programs(fx), WdfDmaDirectionWriteToDevice, mdl,
                                          mdl.virtual_address(), PAGE_SIZE) == 0


def test_initialize_twice_is_a_dma_fatal_error(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    assert fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 10) == 0
    with pytest.raises(BugCheck) as stop:
        fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 10)
    assert stop.value.code == WDF_VIOLATION
    assert stop.value.params[:3] == (WDF_DMA_FATAL_ERROR, t, St.FxDmaTransactionStateInitialized)


# -- execute, staging, completion ------------------------------------------------------------------------------

def test_execute_before_initialize_is_a_dma_fatal_error(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    with pytest.raises(BugCheck) as stop:
        fx.WdfDmaTransactionExecute(t)
    assert stop.value.params[:3] == (WDF_DMA_FATAL_ERROR, t, St.FxDmaTransactionStateCreated)


def test_staging_by_maximum_length_with_program_dma_at_dispatch(rig):
    fx, driver, _ = rig
    en = enabler(fx, driver, WdfDmaProfileScatterGather64, 2 * PAGE_SIZE)
    t = transaction(fx, en)
    program = Programs(fx)
    mdl = mdl_over(fx, 2 * MIB + 0x100, 5 * PAGE_SIZE)
    assert fx.WdfDmaTransactionInitialize(t, program, 1, mdl, mdl.virtual_address(), 5 * PAGE_SIZE) == 0
    assert fx.WdfDmaTransactionExecute(t, "ctx") == 0
    assert program.calls == [[(2 * MIB + 0x100, 2 * PAGE_SIZE)]] and program.irqls == [DISPATCH_LEVEL]
    assert fx.WdfDmaTransactionGetCurrentDmaTransferLength(t) == 2 * PAGE_SIZE
    assert fx.WdfDmaTransactionDmaCompleted(t) == (False, S.STATUS_MORE_PROCESSING_REQUIRED)
    assert fx.WdfDmaTransactionGetBytesTransferred(t) == 2 * PAGE_SIZE
    assert fx.WdfDmaTransactionDmaCompleted(t) == (False, S.STATUS_MORE_PROCESSING_REQUIRED)
    assert fx.WdfDmaTransactionDmaCompleted(t) == (True, S.STATUS_SUCCESS)
    assert [c[0] for c in program.calls] == [(2 * MIB + 0x100, 8192), (2 * MIB + 0x2100, 8192),
                                             (2 * MIB + 0x4100, 4096)]
    assert fx.WdfDmaTransactionGetBytesTransferred(t) == 5 * PAGE_SIZE
    assert fx.WdfDmaTransactionGetCurrentDmaTransferLength(t) == 0


def test_completed_twice_is_a_dma_fatal_error(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 100)
    fx.WdfDmaTransactionExecute(t)
    assert fx.WdfDmaTransactionDmaCompleted(t) == (True, 0)
    with pytest.raises(BugCheck) as stop:
        fx.WdfDmaTransactionDmaCompleted(t)
    assert stop.value.params[:3] == (WDF_DMA_FATAL_ERROR, t, St.FxDmaTransactionStateTransferCompleted)
    assert "DmaTransactionState" in [f.rule for f in fx.findings]


def test_completed_with_length_restages_the_rest_and_final_ends_early(rig):
    fx, driver, _ = rig
    en = enabler(fx, driver, WdfDmaProfileScatterGather64, 2 * PAGE_SIZE)
    t = transaction(fx, en)
    program = Programs(fx)
    mdl = mdl_over(fx, 2 * MIB, 4 * PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, program, 0, mdl, mdl.virtual_address(), 4 * PAGE_SIZE)
    fx.WdfDmaTransactionExecute(t)
    assert fx.WdfDmaTransactionDmaCompletedWithLength(t, 100) == (False, S.STATUS_MORE_PROCESSING_REQUIRED)
    assert program.calls[1][0] == (2 * MIB + 100, 2 * PAGE_SIZE)    # from where the device stopped
    assert fx.WdfDmaTransactionDmaCompletedFinal(t, 50) == (True, S.STATUS_SUCCESS)
    assert fx.WdfDmaTransactionGetBytesTransferred(t) == 150


def test_completed_with_more_than_asked_is_invalid_parameter(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, Programs(fx), 0, mdl, mdl.virtual_address(), 100)
    fx.WdfDmaTransactionExecute(t)
    assert fx.WdfDmaTransactionDmaCompletedWithLength(t, 101) == (True, S.STATUS_INVALID_PARAMETER)
    assert fx.findings[-1].rule == "DmaCompletedLength"
    assert fx._live[t].dma_state == St.FxDmaTransactionStateTransferFailed


def test_set_maximum_length_only_lowers(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    program = Programs(fx)
    mdl = mdl_over(fx, 2 * MIB, 3 * PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, program, 1, mdl, mdl.virtual_address(), 3 * PAGE_SIZE)
    fx.WdfDmaTransactionSetMaximumLength(t, 1 << 30)        # above the adapter's: ignored
    fx.WdfDmaTransactionSetMaximumLength(t, PAGE_SIZE)
    fx.WdfDmaTransactionExecute(t)
    assert program.calls == [[(2 * MIB, PAGE_SIZE)]]


def test_chained_mdls_fragment_across_the_chain(rig):
    fx, driver, _ = rig
    en = enabler(fx, driver, WdfDmaProfileScatterGather64, 3000)
    t = transaction(fx, en)
    program = Programs(fx)
    first = mdl_over(fx, 2 * MIB + 0x10, 2000)
    second = mdl_over(fx, 3 * MIB, 5000)
    first.Next = second
    fx.WdfDmaTransactionInitialize(t, program, 1, first, first.virtual_address(), 7000)
    fx.WdfDmaTransactionExecute(t)
    while not fx.WdfDmaTransactionDmaCompleted(t)[0]:
        pass
    flat = [piece for call in program.calls for piece in call]
    assert flat == [(2 * MIB + 0x10, 2000), (3 * MIB, 1000), (3 * MIB + 1000, 3000), (3 * MIB + 4000, 1000)]


def test_release_and_delete_during_transfer_are_dma_fatal_errors(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 100)
    fx.WdfDmaTransactionExecute(t)
    with pytest.raises(BugCheck) as stop:
        fx.WdfDmaTransactionRelease(t)
    assert stop.value.params[:3] == (WDF_DMA_FATAL_ERROR, t, St.FxDmaTransactionStateTransfer)
    with pytest.raises(BugCheck) as stop:
        fx.WdfObjectDelete(t)
    assert stop.value.params[:2] == (WDF_DMA_FATAL_ERROR, t)


def test_deleting_the_enabler_with_a_transaction_in_flight_is_a_dma_fatal_error(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 100)
    fx.WdfDmaTransactionExecute(t)
    with pytest.raises(BugCheck) as stop:
        fx.WdfObjectDelete(en)
    assert stop.value.params[:3] == (WDF_DMA_FATAL_ERROR, t, St.FxDmaTransactionStateTransfer)


def test_release_then_reuse(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    for _ in range(3):
        assert fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 100) == 0
        assert fx.WdfDmaTransactionExecute(t) == 0
        assert fx.WdfDmaTransactionDmaCompleted(t) == (True, 0)
        assert fx.WdfDmaTransactionRelease(t) == 0
        assert fx.WdfDmaTransactionRelease(t) == 0          # already released: a no-op


def test_dma_completed_from_the_isr_breaks_kmdf_irql(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 100)
    fx.WdfDmaTransactionExecute(t)
    with fx.irql(9):
        with pytest.raises(BugCheck) as stop:
            fx.WdfDmaTransactionDmaCompleted(t)
    assert stop.value.finding.rule == "KmdfIrql"


# -- packet profile ----------------------------------------------------------------------------------------------

def test_packet_profile_maps_one_contiguous_run_at_a_time_and_one_transaction_per_device(rig):
    fx, driver, _ = rig
    en = enabler(fx, driver, WdfDmaProfilePacket64, 64 << 10)
    t = transaction(fx, en)
    program = Programs(fx)
    # a buffer whose second page is not physically after its first (a system-PTE style MDL)
    mdl = fx.IoAllocateMdl(fx.gpa_to_va(2 * MIB + 0x200), 2 * PAGE_SIZE)
    pfns = fx.MmGetMdlPfnArray(mdl)
    pfns[0], pfns[1], pfns[2] = (2 * MIB) >> 12, (5 * MIB) >> 12, ((5 * MIB) >> 12) + 1
    fx.WdfDmaTransactionInitialize(t, program, 1, mdl, mdl.virtual_address(), 2 * PAGE_SIZE)
    assert fx.WdfDmaTransactionExecute(t) == 0
    assert program.calls == [[(2 * MIB + 0x200, PAGE_SIZE - 0x200)]]
    other = transaction(fx, en)
    mdl2 = mdl_over(fx, 3 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(other, Programs(fx), 1, mdl2, mdl2.virtual_address(), 10)
    assert fx.WdfDmaTransactionExecute(other) == S.STATUS_WDF_BUSY   # AcquireDmaPacketTransaction
    assert fx.WdfDmaTransactionDmaCompleted(t) == (False, S.STATUS_MORE_PROCESSING_REQUIRED)
    assert program.calls[1] == [(5 * MIB, PAGE_SIZE + 0x200)]
    assert fx.WdfDmaTransactionDmaCompleted(t) == (True, 0)


# -- DMA version 3 additions ------------------------------------------------------------------------------------

def v3_enabler(fx, driver, profile=WdfDmaProfileScatterGather64, maximum=64 << 10):
    config = WDF_DMA_ENABLER_CONFIG_INIT(profile, maximum)
    config.WdmDmaVersionOverride = 3
    status, handle = fx.WdfDmaEnablerCreate(driver.device, config)
    assert status == 0
    return handle


def test_single_transfer_requirement_needs_v3_and_fails_a_long_transfer(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    fx.WdfDmaTransactionSetSingleTransferRequirement(t, True)          # not DMA v3: ignored, a break
    assert fx.findings[-1].rule == "DmaVersion3Required"
    en3 = v3_enabler(fx, driver, maximum=PAGE_SIZE)
    t3 = transaction(fx, en3)
    fx.WdfDmaTransactionSetSingleTransferRequirement(t3, True)
    mdl = mdl_over(fx, 2 * MIB, 2 * PAGE_SIZE)
    assert fx.WdfDmaTransactionInitialize(t3, Programs(fx), 1, mdl, mdl.virtual_address(), 2 * PAGE_SIZE) == \
        S.STATUS_WDF_TOO_MANY_TRANSFERS
    assert fx.WdfDmaTransactionInitialize(t3, Programs(fx), 1, mdl, mdl.virtual_address(), PAGE_SIZE) == 0
    fx.WdfDmaTransactionSetSingleTransferRequirement(t3, False)       # already initialized: a break
    assert fx.findings[-1].rule == "DmaSingleTransferState"


def test_enabler_flag_require_single_transfer_needs_v3():
    guest, fx, driver, device = bare_device()
    config = WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64, 4096)
    config.Flags = 1
    assert fx.WdfDmaEnablerCreate(driver.device, config) == (S.STATUS_INVALID_PARAMETER, None)


def test_config_defaults_match_the_init_macro():
    config = WDF_DMA_ENABLER_CONFIG_INIT(WdfDmaProfileScatterGather64, 4096)
    assert config.Size == 0x50 and config.WdmDmaVersionOverride == 0 and config.AddressWidthOverride == 0
    assert WDF_DMA_ENABLER_CONFIG().Profile == 0


def test_bytes_written_reach_the_device_unchanged(rig):
    fx, driver, en = rig
    t = transaction(fx, en)
    data = pattern(5000)
    fx.write(fx.gpa_to_va(2 * MIB + 7), data)
    program = Programs(fx)
    mdl = mdl_over(fx, 2 * MIB + 7, len(data))
    fx.WdfDmaTransactionInitialize(t, program, 1, mdl, mdl.virtual_address(), len(data))
    fx.WdfDmaTransactionExecute(t)
    assert b"".join(fx.memory.read(a, n) for a, n in program.calls[0]) == data


def test_without_the_verifier_release_during_a_transfer_is_not_checked():
    guest, fx, driver, device = bare_device(verifier=False)
    en = enabler(fx, driver)
    t = transaction(fx, en)
    mdl = mdl_over(fx, 2 * MIB, PAGE_SIZE)
    fx.WdfDmaTransactionInitialize(t, Programs(fx), 1, mdl, mdl.virtual_address(), 100)
    fx.WdfDmaTransactionExecute(t)
    assert fx.WdfDmaTransactionRelease(t) == 0
    assert fx._live[t].dma_state == St.FxDmaTransactionStateReleased
