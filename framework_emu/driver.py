"""The driver object (WDFDRIVER) and its configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .callsite import CallSite
from .objects import FX_TYPE_DRIVER, FX_TYPE_OBJECT, FxObject

SIZEOF_WDF_DRIVER_CONFIG = 0x20
SIZEOF_WDF_DRIVER_CONFIG_V1_1 = 0x1C
WdfDriverInitNonPnpDriver = 0x1
WdfDriverInitNoDispatchOverride = 0x2
SERVICES_KEY = "\\Registry\\Machine\\System\\CurrentControlSet\\Services\\"


@dataclass
class WDF_DRIVER_CONFIG:
    """As WDF_DRIVER_CONFIG_INIT leaves it (x64 size)."""

    EvtDriverDeviceAdd: Callable[..., Any] | None = None
    EvtDriverUnload: Callable[[int], Any] | None = None
    DriverInitFlags: int = 0
    DriverPoolTag: int | bytes = 0
    Size: int = SIZEOF_WDF_DRIVER_CONFIG


class Driver(FxObject):
    """WDFDRIVER: the root of the object tree; the driver may not delete it."""

    WDF_TYPE = FX_TYPE_DRIVER
    HANDLE_NAME = "WDFDRIVER"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_DRIVER})
    NO_DELETE_DDI = True

    def __init__(self, fx: Any, site: CallSite | None, registry_path: str, name: str,
                 tag: bytes, config: WDF_DRIVER_CONFIG) -> None:
        FxObject.__init__(self, fx, site)
        self.registry_path = registry_path
        self.name = name
        self.tag = tag
        self.config = config
        self.children = {}
        self.DESCRIPTION = f"driver {name}"
