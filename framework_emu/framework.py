"""The emulated WDF framework: state (core) plus every group of entry points (api)."""

from __future__ import annotations

from .api.memory_descriptor_api import MemoryDescriptorApi
from .api.dma_api import DmaApi
from .api.hw_api import HardwareApi
from .api.driver_api import DRIVER_OBJECT, DriverApi
from .api.io_api import IoModelApi
from .api.irql_api import IrqlApi
from .api.lookaside_api import LookasideApi
from .api.mdl_api import MdlApi
from .api.memory_api import MemoryApi
from .api.object_api import ObjectApi
from .api.pool_api import PoolApi
from .api.request_api import RequestApi
from .core import KVA_DIRECT_MAP_BASE, FrameworkCore
from .driver import WDF_DRIVER_CONFIG
from .errors import FrameworkStateError
from .ntstatus import status_name
from wdfhil.physical_memory import PhysicalMemory
from .pool import FailureInjection
from .umdf1 import IWDFDriver


class Framework(FrameworkCore, DriverApi, ObjectApi, MemoryApi, LookasideApi, MdlApi, RequestApi, PoolApi,
                IrqlApi, MemoryDescriptorApi, IoModelApi, DmaApi, HardwareApi):
    """A WDF driver's view of the framework, over any :class:`PhysicalMemory`.

    ``Framework(memory, service_name="WDFEcho")`` creates the driver object
    (WdfDriverCreate) unless ``create_driver=False``. The verifier is on
    unless ``verifier=False``; ``verifier_mode`` is "bugcheck" (fatal
    findings raise :class:`BugCheck`) or "record". ``pool_window`` is the
    (guest-physical base, size) the pools carve (the ``memmap=`` range of a
    VM); by default everything from 1 MiB up in the first RAM range.
    ``seed`` seeds allocation-failure injection.

    Conventions: entry points keep their WDF names and argument order;
    output parameters come back as a tuple after the status; handles are
    ints; buffers are kernel virtual addresses (the direct map of
    guest-physical memory) or, where the framework reads or writes them,
    Python bytes-like objects.
    """

    def __init__(self, memory: PhysicalMemory, *, service_name: str, driver_pool_tag: int | bytes = 0,
                 verifier: bool = True, verifier_mode: str = "bugcheck",
                 pool_window: tuple[int, int] | None = None, seed: int | None = None,
                 create_driver: bool = True, driver_config: WDF_DRIVER_CONFIG | None = None,
                 kva_base: int = KVA_DIRECT_MAP_BASE) -> None:
        FrameworkCore.__init__(self, memory, verifier=verifier, verifier_mode=verifier_mode,
                               pool_window=pool_window, seed=seed, kva_base=kva_base)
        self.service_name = service_name
        self.registry_path = self._registry_path_for(service_name)
        if create_driver:
            config = driver_config or WDF_DRIVER_CONFIG(DriverPoolTag=driver_pool_tag)
            status, _driver = self.WdfDriverCreate(DRIVER_OBJECT, self.registry_path, None, config)
            if status:
                raise FrameworkStateError(f"WdfDriverCreate for {service_name!r} failed: {status_name(status)}")

    @property
    def driver(self) -> int:
        """The WDFDRIVER handle."""
        return self._require_driver().handle

    def umdf1_driver(self) -> IWDFDriver:
        """The driver as a UMDF 1 IWDFDriver interface."""
        return IWDFDriver(self, self._require_driver().handle)

    def inject_allocation_failures(self, *, nth: int | None = None, tag: int | bytes | None = None,
                                   probability: float | None = None, count: int | None = None) -> FailureInjection:
        """Make pool allocations fail on purpose (see Pool.inject_failures); seeded by ``seed``."""
        from .pooltag import tag_bytes

        return self._pool.inject_failures(nth=nth, tag=None if tag is None else tag_bytes(tag, field="tag"),
                                          probability=probability, count=count)
