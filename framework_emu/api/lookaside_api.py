"""Lookaside lists (fxlookasidelistapi.cpp)."""

from __future__ import annotations

from typing import Any

from ..attributes import WDF_OBJECT_ATTRIBUTES
from ..callsite import driver_site
from ..core import OUT
from ..irql import APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL
from ..lookaside import LookasideList
from ..ntstatus import NTSTATUS
from ..objects import FX_TYPE_LOOKASIDE, FX_TYPE_OBJECT
from ..pool import _VALID_POOL_TYPES, check_pool_type, fx_is_paged_pool_type
from ..pooltag import tag_bytes
from .validation import check_size, validate_object_attributes


class LookasideApi:
    """WdfLookasideListCreate, WdfMemoryCreateFromLookaside."""

    def WdfLookasideListCreate(self, LookasideAttributes: WDF_OBJECT_ATTRIBUTES | None, BufferSize: int,
                               PoolType: int, MemoryAttributes: WDF_OBJECT_ATTRIBUTES | None,
                               PoolTag: int | bytes, *, PLookaside: Any = OUT) -> tuple[int, int | None]:
        """-> (status, lookaside). The memory objects' parent comes from MemoryAttributes
        (default: the driver), not from the list, whatever a reader of the documentation
        expects [S]. Paged lists need PASSIVE_LEVEL under the verifier (a status)."""
        self._driver_obj or self._require_driver()
        if type(PoolType) is not int or PoolType not in _VALID_POOL_TYPES:
            PoolType = check_pool_type(PoolType)  # a plain int from here on (IntEnum hashes slowly)
        parent = self._resolve_parent(LookasideAttributes)
        if parent is None:
            self._resolve_parent(MemoryAttributes)   # checked, as the source does, but not the list's parent
        if PLookaside is None:
            raise self._null("PLookaside")
        if BufferSize == 0:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        check_size(BufferSize, "BufferSize")
        for attributes in (LookasideAttributes, MemoryAttributes):
            status = validate_object_attributes(attributes)
            if status:
                return status, None
        tag = tag_bytes(PoolTag) if PoolTag else self._driver_tag
        site = driver_site()
        if fx_is_paged_pool_type(PoolType):
            if self._verifier_on and self._irql.current > PASSIVE_LEVEL:
                self._irql_violation("WdfLookasideListCreate (paged)", PASSIVE_LEVEL, site, fatal=False,
                                     status=NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
                return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
        else:
            self._check_dispatch("WdfLookasideListCreate")
        lookaside = LookasideList(self, site, BufferSize, PoolType, tag, MemoryAttributes)
        status = self._commit_new(lookaside, LookasideAttributes, parent, site)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, lookaside.handle

    def WdfMemoryCreateFromLookaside(self, Lookaside: int, *, Memory: Any = OUT) -> tuple[int, int | None]:
        """-> (status, memory). Reuses the block freed last: its old contents come back."""
        lookaside = self._object(Lookaside, FX_TYPE_LOOKASIDE)
        if Memory is None:
            raise self._null("Memory")
        site = driver_site()
        max_level = APC_LEVEL if fx_is_paged_pool_type(lookaside.pool_type) else DISPATCH_LEVEL
        if self._verifier_on and self._irql.current > max_level:
            self._irql_violation("WdfMemoryCreateFromLookaside", max_level, site, fatal=True)
        attributes = lookaside.memory_attributes
        parent = None
        if attributes is not None and attributes.ParentObject:
            parent = self._object(attributes.ParentObject, FX_TYPE_OBJECT)
        mem = lookaside.allocate_memory(site)
        if mem is None:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
        status = self._commit(mem, attributes, parent)
        if status:
            return status, None
        return NTSTATUS.STATUS_SUCCESS, mem.handle
