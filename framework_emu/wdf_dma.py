"""The public names of DMA, interrupts and hardware resources, in one place.

``from framework_emu import *`` brings them too; this module keeps the list next to the code.
"""

from .dma_adapter import (DmaAdapter, DmaCapabilities, DmaMappingError, DmaTranslationFault, HalDmaAdapter,
                          IdentityDmaAdapter, MapRegistersBusy, RemappingDmaAdapter, ScatterGatherElement,
                          ScatterGatherList)
from .dma_enabler import (WDF_COMMON_BUFFER_CONFIG, WDF_COMMON_BUFFER_CONFIG_INIT, WDF_DMA_DIRECTION,
                          WDF_DMA_ENABLER_CONFIG, WDF_DMA_ENABLER_CONFIG_INIT, WDF_DMA_ENABLER_CONFIG_NO_SGLIST_PREALLOCATION,
                          WDF_DMA_ENABLER_CONFIG_REQUIRE_SINGLE_TRANSFER, WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS,
                          WDF_DMA_PROFILE, WdfDmaDirectionReadFromDevice, WdfDmaDirectionWriteToDevice,
                          WdfDmaProfilePacket, WdfDmaProfilePacket64, WdfDmaProfileScatterGather,
                          WdfDmaProfileScatterGather64, WdfDmaProfileScatterGather64Duplex,
                          WdfDmaProfileScatterGatherDuplex, WdfDmaProfileSystem, WdfDmaProfileSystemDuplex)
from .dma_transaction import FxDmaTransactionState
from .hw_resources import (CM_PARTIAL_RESOURCE_DESCRIPTOR, CM_RESOURCE_TYPE, CmResourceTypeInterrupt,
                           CmResourceTypeMemory, DeviceHardware, InterruptLine, InterruptResource, MemoryBar,
                           RegisterHandler)
from .interrupt import WDF_INTERRUPT_CONFIG, WDF_INTERRUPT_CONFIG_INIT

__all__ = [
    "CM_PARTIAL_RESOURCE_DESCRIPTOR", "CM_RESOURCE_TYPE", "CmResourceTypeInterrupt", "CmResourceTypeMemory",
    "DeviceHardware", "DmaAdapter", "DmaCapabilities", "DmaMappingError", "DmaTranslationFault",
    "FxDmaTransactionState", "HalDmaAdapter", "IdentityDmaAdapter", "InterruptLine", "InterruptResource",
    "MapRegistersBusy", "MemoryBar", "RegisterHandler", "RemappingDmaAdapter", "ScatterGatherElement",
    "ScatterGatherList", "WDF_COMMON_BUFFER_CONFIG", "WDF_COMMON_BUFFER_CONFIG_INIT", "WDF_DMA_DIRECTION",
    "WDF_DMA_ENABLER_CONFIG", "WDF_DMA_ENABLER_CONFIG_INIT", "WDF_DMA_ENABLER_CONFIG_NO_SGLIST_PREALLOCATION",
    "WDF_DMA_ENABLER_CONFIG_REQUIRE_SINGLE_TRANSFER", "WDF_DMA_ENABLER_UNLIMITED_FRAGMENTS", "WDF_DMA_PROFILE",
    "WDF_INTERRUPT_CONFIG", "WDF_INTERRUPT_CONFIG_INIT", "WdfDmaDirectionReadFromDevice",
    "WdfDmaDirectionWriteToDevice", "WdfDmaProfilePacket", "WdfDmaProfilePacket64", "WdfDmaProfileScatterGather",
    "WdfDmaProfileScatterGather64", "WdfDmaProfileScatterGather64Duplex", "WdfDmaProfileScatterGatherDuplex",
    "WdfDmaProfileSystem", "WdfDmaProfileSystemDuplex",
]
