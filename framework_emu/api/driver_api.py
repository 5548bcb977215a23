"""The driver object: WdfDriverCreate (fxdriverapi.cpp) and the driver's unload."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..attributes import WDF_OBJECT_ATTRIBUTES
from ..bugcheck import DRIVER_VERIFIER_DETECTED_VIOLATION, DV_POOL_LEAK_ON_UNLOAD
from ..callsite import CallSite, driver_site, format_site
from ..core import OUT
from ..driver import (SERVICES_KEY, SIZEOF_WDF_DRIVER_CONFIG, SIZEOF_WDF_DRIVER_CONFIG_V1_1, WDF_DRIVER_CONFIG,
                      WdfDriverInitNoDispatchOverride, WdfDriverInitNonPnpDriver)
from ..driver import Driver as FxDriver
from ..errors import ArgumentError
from ..irql import PASSIVE_LEVEL
from ..ntstatus import NTSTATUS
from ..objects import DESTROYED, FX_TYPE_DRIVER, FxObject
from ..pool import PoolAllocation, PoolType
from ..pooltag import DDK_DEFAULT_TAG, default_driver_tag, driver_name_from_registry_path, tag_bytes
from ..verifier import Finding
from .validation import (FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED, FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED,
                         FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED, validate_object_attributes)

DRIVER_OBJECT = "DRIVER_OBJECT"  # stands for the PDRIVER_OBJECT the I/O manager passes to DriverEntry


@dataclass
class LeakedObject:
    handle: int
    kind: str
    refcount: int
    created_at: CallSite | None
    references: dict[Any, list] = field(default_factory=dict)  # tag -> [count, last site]

    def __str__(self) -> str:
        text = f"{self.kind} 0x{self.handle:x} still has {self.refcount} reference(s), created at {format_site(self.created_at)}"
        for tag, (count, site) in self.references.items():
            text += f"\n      {count} reference(s) with tag {tag!r}, last taken at {format_site(site)}"
        return text


@dataclass
class LeakReport:
    """What the driver left behind when it unloaded."""

    driver: str
    allocations: list[PoolAllocation]
    objects: list[LeakedObject]

    def __bool__(self) -> bool:
        return bool(self.allocations or self.objects)

    def __str__(self) -> str:
        if not self:
            return f"driver {self.driver} unloaded clean: no pool allocation or object left"
        lines = [f"driver {self.driver} unloaded leaving {len(self.allocations)} pool allocation(s)"
                 f" ({sum(a.size for a in self.allocations)} bytes) and {len(self.objects)} object(s):"]
        lines += [f"  {a!r}" for a in self.allocations]
        lines += [f"  {o}" for o in self.objects]
        return "\n".join(lines)


class DriverApi:
    """WdfDriverCreate, the driver handle, unload."""

    def WdfDriverCreate(self, DriverObject: Any, RegistryPath: str, DriverAttributes: WDF_OBJECT_ATTRIBUTES | None,
                        DriverConfig: WDF_DRIVER_CONFIG, *, Driver: Any = OUT) -> tuple[int, int | None]:
        """-> (status, driver). The pool tag is DriverConfig.DriverPoolTag when set (and
        not ' kdD'), else derived from the service name (see pooltag.default_driver_tag)."""
        if DriverObject is None:
            raise self._null("DriverObject")
        if RegistryPath is None:
            raise self._null("RegistryPath")
        if DriverConfig is None:
            raise self._null("DriverConfig")
        if DriverConfig.Size not in (SIZEOF_WDF_DRIVER_CONFIG, SIZEOF_WDF_DRIVER_CONFIG_V1_1):
            return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH, None
        valid = WdfDriverInitNonPnpDriver | WdfDriverInitNoDispatchOverride
        if DriverConfig.DriverInitFlags & ~valid:
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        site = driver_site()
        if self._verifier_on and self._irql.current > PASSIVE_LEVEL:
            self._irql_violation("WdfDriverCreate", PASSIVE_LEVEL, site, fatal=False,
                                 status=NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
        if not isinstance(RegistryPath, str):
            raise ArgumentError("RegistryPath is a string", field="RegistryPath", value=RegistryPath)
        if self._driver_obj is not None:
            return NTSTATUS.STATUS_DRIVER_INTERNAL_ERROR, None
        name = driver_name_from_registry_path(RegistryPath)
        tag = tag_bytes(DriverConfig.DriverPoolTag, field="DriverPoolTag")
        if DriverConfig.Size != SIZEOF_WDF_DRIVER_CONFIG or tag in (b"\0\0\0\0", DDK_DEFAULT_TAG):
            tag = default_driver_tag(name)
        flags = DriverConfig.DriverInitFlags
        if (not flags & WdfDriverInitNoDispatchOverride and flags & WdfDriverInitNonPnpDriver
                and DriverConfig.EvtDriverDeviceAdd is not None):
            return NTSTATUS.STATUS_INVALID_PARAMETER, None
        status = validate_object_attributes(
            DriverAttributes, FX_VALIDATE_OPTION_PARENT_NOT_ALLOWED | FX_VALIDATE_OPTION_EXECUTION_LEVEL_ALLOWED
            | FX_VALIDATE_OPTION_SYNCHRONIZATION_SCOPE_ALLOWED)
        if status:
            return status, None
        self._driver_tag = tag
        driver = FxDriver(self, site, RegistryPath, name, tag, DriverConfig)
        # FxDriver::Initialize keeps a copy of the registry path in paged pool, with the driver's tag.
        path_bytes = (RegistryPath + "\0").encode("utf-16-le")
        copy = self._pool.allocate(PoolType.PagedPool, len(path_bytes), tag, site)
        if not copy:
            return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
        self._write(copy, path_bytes)
        driver.storage_va = copy
        driver.registry_path_va = copy
        self._commit(driver, DriverAttributes, None, default_parent=False)
        self._driver_obj = driver
        return NTSTATUS.STATUS_SUCCESS, driver.handle

    def WdfGetDriver(self) -> int:
        return self._require_driver().handle

    def WdfDriverGetRegistryPath(self, Driver: int) -> str:
        return self._object(Driver, FX_TYPE_DRIVER).registry_path

    def unload_driver(self) -> LeakReport:
        """Unload the driver: EvtDriverUnload, then delete the driver object (all its
        children are cleaned up and destroyed), then report what is left: pool
        allocations nobody freed and objects somebody still references.

        With the verifier on, leaks are a finding (Driver Verifier's pool tracking
        stops the machine with 0xC4/0x62 in "bugcheck" mode).
        """
        driver = self._require_driver()
        site = driver_site()
        unload = driver.config.EvtDriverUnload
        if unload is not None:
            unload(driver.handle)
        self._verifier.release_quarantine()
        self._deleting_site = site
        try:
            driver.delete(site)
        finally:
            self._deleting_site = None
        self._irql.run_deferred()
        leaked_objects = [
            LeakedObject(obj.handle, obj.HANDLE_NAME, obj.refcount, obj.created_at, dict(obj.ref_tags or {}))
            for obj in list(self._live.values()) if obj.state is not DESTROYED and obj is not driver
            and isinstance(obj, FxObject) and getattr(obj, "request", None) is None]
        self._driver_obj = None
        self._unloaded = True
        report = LeakReport(driver.name, self._pool.allocations(), leaked_objects)
        if report and self._verifier_on:
            self._verifier.report(
                Finding("PoolLeakOnUnload" if report.allocations else "ObjectLeakOnUnload", "error",
                        str(report), site), fatal=True,
                bugcheck=(DRIVER_VERIFIER_DETECTED_VIOLATION, (DV_POOL_LEAK_ON_UNLOAD, 0, 0, len(report.allocations))))
        return report

    def _registry_path_for(self, service_name: str) -> str:
        return service_name if "\\" in service_name else SERVICES_KEY + service_name
