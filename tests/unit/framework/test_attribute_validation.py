"""WDF_OBJECT_ATTRIBUTES validation in the framework's order
(fxvalidatefunctions.cpp FxValidateObjectAttributes, fxvalidatefunctions.hpp
FxValidateObjectAttributesForParentHandle)."""

import pytest

from framework_emu import NTSTATUS, BugCheck, PoolType, WDF_OBJECT_ATTRIBUTES
from framework_emu.api.validation import (FX_VALIDATE_OPTION_ATTRIBUTES_REQUIRED, FX_VALIDATE_OPTION_PARENT_REQUIRED,
                                          parent_to_resolve, validate_object_attributes)

S = NTSTATUS
attrs = WDF_OBJECT_ATTRIBUTES
BAD_HANDLE = 0x1234_5678


def test_a_bad_parent_in_attributes_of_the_wrong_size_is_not_resolved_FxValidateObjectAttributesForParentHandle(fx):
    """The entry points resolve ParentObject only when FxValidateObjectAttributesForParentHandle
    succeeds, which checks Size first: a wrong Size with a garbage parent returns
    STATUS_INFO_LENGTH_MISMATCH instead of bug-checking on the handle."""
    wrong = attrs(Size=0x20, ParentObject=BAD_HANDLE)
    assert parent_to_resolve(wrong) is None
    assert fx.WdfMemoryCreate(wrong, PoolType.NonPagedPool, 0, 16) == (S.STATUS_INFO_LENGTH_MISMATCH, None, None)
    assert fx.WdfMemoryCreatePreallocated(wrong, fx.kva_base + (2 << 20), 16) == (S.STATUS_INFO_LENGTH_MISMATCH, None)
    assert fx.WdfObjectCreate(wrong) == (S.STATUS_INFO_LENGTH_MISMATCH, None)
    assert (fx.WdfLookasideListCreate(wrong, 16, PoolType.NonPagedPool, None, 0)
            == (S.STATUS_INFO_LENGTH_MISMATCH, None))


def test_a_bad_parent_in_well_sized_attributes_bug_checks_first_FxValidateObjectAttributesForParentHandle(fx):
    with pytest.raises(BugCheck) as bc:
        fx.WdfMemoryCreate(attrs(ParentObject=BAD_HANDLE, ExecutionLevel=9), PoolType.NonPagedPool, 0, 0)
    assert bc.value.params[:2] == (0x5, BAD_HANDLE)


def test_lookaside_create_checks_the_memory_attributes_parent_only_without_a_list_parent_WdfLookasideListCreate(fx):
    """fxlookasidelistapi.cpp: LookasideAttributes' parent is resolved; only when it has none
    (or they are absent or mis-sized) is MemoryAttributes' parent resolved."""
    _, parent = fx.WdfObjectCreate(None)
    assert fx.WdfLookasideListCreate(attrs(ParentObject=parent), 16, PoolType.NonPagedPool,
                                     attrs(ParentObject=parent), 0)[0] == S.STATUS_SUCCESS
    with pytest.raises(BugCheck) as bc:
        fx.WdfLookasideListCreate(None, 16, PoolType.NonPagedPool, attrs(ParentObject=BAD_HANDLE), 0)
    assert bc.value.params[:2] == (0x5, BAD_HANDLE)


def test_attributes_required_and_parent_required_FxValidateObjectAttributes():
    """FX_VALIDATE_OPTION_ATTRIBUTES_REQUIRED: NULL attributes STATUS_WDF_PARENT_NOT_SPECIFIED;
    FX_VALIDATE_OPTION_PARENT_REQUIRED: no ParentObject, the same status (after the size and
    context checks, before the enum ranges)."""
    assert validate_object_attributes(None, FX_VALIDATE_OPTION_ATTRIBUTES_REQUIRED) == S.STATUS_WDF_PARENT_NOT_SPECIFIED
    assert validate_object_attributes(None) == S.STATUS_SUCCESS
    assert validate_object_attributes(attrs(), FX_VALIDATE_OPTION_PARENT_REQUIRED) == S.STATUS_WDF_PARENT_NOT_SPECIFIED
    assert validate_object_attributes(attrs(Size=1), FX_VALIDATE_OPTION_PARENT_REQUIRED) == S.STATUS_INFO_LENGTH_MISMATCH
    assert (validate_object_attributes(attrs(ExecutionLevel=9), FX_VALIDATE_OPTION_PARENT_REQUIRED)
            == S.STATUS_WDF_PARENT_NOT_SPECIFIED)
    assert validate_object_attributes(attrs(ParentObject=8), FX_VALIDATE_OPTION_PARENT_REQUIRED) == S.STATUS_SUCCESS


def test_enum_ranges_compare_as_c_ints_FxValidateObjectAttributes():
    """Range checks are `== Invalid || > last`: a negative level passes them and then fails
    the InheritFromParent check (STATUS_WDF_EXECUTION_LEVEL_INVALID), not the range."""
    assert validate_object_attributes(attrs(ExecutionLevel=-1)) == S.STATUS_WDF_EXECUTION_LEVEL_INVALID
    assert validate_object_attributes(attrs(SynchronizationScope=-1)) == S.STATUS_WDF_SYNCHRONIZATION_SCOPE_INVALID
    assert validate_object_attributes(attrs(ExecutionLevel=4)) == S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
    assert validate_object_attributes(attrs(ExecutionLevel=0)) == S.STATUS_WDF_OBJECT_ATTRIBUTES_INVALID
