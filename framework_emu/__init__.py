"""framework_emu: the WDF framework's memory objects, emulated over real (guest) memory.

Public API: :class:`Framework` and the WDF types and constants a driver uses.
See docs/framework-emu.md.
"""

from .api.driver_api import DRIVER_OBJECT, LeakReport
from .api.mdl_api import HighPagePriority, LowPagePriority, MdlMappingNoExecute, NormalPagePriority
from .api.memory_api import WDF_ALIGN_SIZE_DOWN, WDF_ALIGN_SIZE_UP
from .api.pool_api import (POOL_FLAG_CACHE_ALIGNED, POOL_FLAG_NON_PAGED, POOL_FLAG_NON_PAGED_EXECUTE,
                           POOL_FLAG_PAGED, POOL_FLAG_UNINITIALIZED)
from .attributes import (WDF_DECLARE_CONTEXT_TYPE, WDF_EXECUTION_LEVEL, WDF_OBJECT_ATTRIBUTES,
                         WDF_OBJECT_ATTRIBUTES_INIT_CONTEXT_TYPE, WDF_OBJECT_CONTEXT_TYPE_INFO,
                         WDF_SYNCHRONIZATION_SCOPE)
from .bugcheck import WDF_VIOLATION, BugCheck
from .callsite import CallSite, format_site
from .core import KVA_DIRECT_MAP_BASE, OUT
from .memory_descriptor import (WDF_MEMORY_DESCRIPTOR, WDF_MEMORY_DESCRIPTOR_INIT_BUFFER, WDF_MEMORY_DESCRIPTOR_INIT_HANDLE,
                         WDF_MEMORY_DESCRIPTOR_INIT_MDL, WDF_MEMORY_DESCRIPTOR_TYPE, WDFMEMORY_OFFSET,
                         DescribedBuffer, MemoryDescriptorNoBufferAllowed, MemoryDescriptorNullAllowed)
from .driver import WDF_DRIVER_CONFIG, WdfDriverInitNoDispatchOverride, WdfDriverInitNonPnpDriver
from .errors import ArgumentError, FrameworkStateError
from .framework import Framework
from .irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, KIRQL, PASSIVE_LEVEL
from .mdl import (ADDRESS_AND_SIZE_TO_SPAN_PAGES, BYTE_OFFSET, MDL_ALLOCATED_FIXED_SIZE, MDL_IO_SPACE,
                  MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED, MDL_PARTIAL, MDL_PARTIAL_HAS_BEEN_MAPPED,
                  MDL_SOURCE_IS_NONPAGED_POOL, MDL_WRITE_OPERATION, PAGE_ALIGN, Mdl, MmSizeOfMdl, iter_mdl_chain)
from .ntstatus import HRESULT, NT_SUCCESS, NTSTATUS, SUCCEEDED
from .objects import (FX_TYPE_LOOKASIDE, FX_TYPE_MEMORY_PREALLOCATED, FX_TYPE_OBJECT, FX_TYPE_REQUEST,
                      FX_TYPE_REQUEST_MEMORY, IFX_TYPE_MEMORY)
from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE, InProcessMemory, PhysicalMemory, PhysicalMemoryError
from .pool import PoolType
from .request import (CTL_CODE, FILE_ANY_ACCESS, FILE_READ_ACCESS, FILE_WRITE_ACCESS, IRP_MJ_DEVICE_CONTROL,
                      IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE, KPROCESSOR_MODE, METHOD_BUFFERED,
                      METHOD_IN_DIRECT, METHOD_NEITHER, METHOD_OUT_DIRECT, IoRequest, WDF_REQUEST_TYPE)
from .umdf1 import IObjectCleanup, IWDFDriver, IWDFMemory, IWDFObject
from .verifier import Finding
from . import wdf_dma, wdf_io
from .wdf_dma import *  # noqa: F401,F403  (DMA, interrupts, resources; the list lives in wdf_dma.py)
from .wdf_io import *  # noqa: F401,F403  (the I/O model's names; the list lives in wdf_io.py)

__all__ = [
    "ADDRESS_AND_SIZE_TO_SPAN_PAGES",
    "APC_LEVEL",
    "ArgumentError",
    "BYTE_OFFSET",
    "BugCheck",
    "CTL_CODE",
    "CallSite",
    "DISPATCH_LEVEL",
    "DRIVER_OBJECT",
    "DescribedBuffer",
    "FILE_ANY_ACCESS",
    "FILE_READ_ACCESS",
    "FILE_WRITE_ACCESS",
    "FX_TYPE_LOOKASIDE",
    "FX_TYPE_MEMORY_PREALLOCATED",
    "FX_TYPE_OBJECT",
    "FX_TYPE_REQUEST",
    "FX_TYPE_REQUEST_MEMORY",
    "Finding",
    "Framework",
    "FrameworkStateError",
    "HIGH_LEVEL",
    "HRESULT",
    "HighPagePriority",
    "IFX_TYPE_MEMORY",
    "IObjectCleanup",
    "IRP_MJ_DEVICE_CONTROL",
    "IRP_MJ_INTERNAL_DEVICE_CONTROL",
    "IRP_MJ_READ",
    "IRP_MJ_WRITE",
    "IWDFDriver",
    "IWDFMemory",
    "IWDFObject",
    "InProcessMemory",
    "IoRequest",
    "KIRQL",
    "KPROCESSOR_MODE",
    "KVA_DIRECT_MAP_BASE",
    "LeakReport",
    "LowPagePriority",
    "MDL_ALLOCATED_FIXED_SIZE",
    "MDL_IO_SPACE",
    "MDL_MAPPED_TO_SYSTEM_VA",
    "MDL_PAGES_LOCKED",
    "MDL_PARTIAL",
    "MDL_PARTIAL_HAS_BEEN_MAPPED",
    "MDL_SOURCE_IS_NONPAGED_POOL",
    "MDL_WRITE_OPERATION",
    "METHOD_BUFFERED",
    "METHOD_IN_DIRECT",
    "METHOD_NEITHER",
    "METHOD_OUT_DIRECT",
    "Mdl",
    "MdlMappingNoExecute",
    "MemoryDescriptorNoBufferAllowed",
    "MemoryDescriptorNullAllowed",
    "MmSizeOfMdl",
    "NTSTATUS",
    "NT_SUCCESS",
    "NormalPagePriority",
    "OUT",
    "PAGE_ALIGN",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "PASSIVE_LEVEL",
    "POOL_FLAG_CACHE_ALIGNED",
    "POOL_FLAG_NON_PAGED",
    "POOL_FLAG_NON_PAGED_EXECUTE",
    "POOL_FLAG_PAGED",
    "POOL_FLAG_UNINITIALIZED",
    "PhysicalMemory",
    "PhysicalMemoryError",
    "PoolType",
    "SUCCEEDED",
    "WDFMEMORY_OFFSET",
    "WDF_ALIGN_SIZE_DOWN",
    "WDF_ALIGN_SIZE_UP",
    "WDF_DECLARE_CONTEXT_TYPE",
    "WDF_DRIVER_CONFIG",
    "WDF_EXECUTION_LEVEL",
    "WDF_MEMORY_DESCRIPTOR",
    "WDF_MEMORY_DESCRIPTOR_INIT_BUFFER",
    "WDF_MEMORY_DESCRIPTOR_INIT_HANDLE",
    "WDF_MEMORY_DESCRIPTOR_INIT_MDL",
    "WDF_MEMORY_DESCRIPTOR_TYPE",
    "WDF_OBJECT_ATTRIBUTES",
    "WDF_OBJECT_ATTRIBUTES_INIT_CONTEXT_TYPE",
    "WDF_OBJECT_CONTEXT_TYPE_INFO",
    "WDF_REQUEST_TYPE",
    "WDF_SYNCHRONIZATION_SCOPE",
    "WDF_VIOLATION",
    "WdfDriverInitNoDispatchOverride",
    "WdfDriverInitNonPnpDriver",
    "format_site",
    "iter_mdl_chain",
]
__all__ += wdf_io.__all__
__all__ += wdf_dma.__all__
