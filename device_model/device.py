"""The echo device: the device core with the echo personality.

WRITE copies guest RAM into the device's data memory, READ copies it back,
so every DMA direction can be checked end to end. Everything that is not the
echo (server, BAR2, rings, interrupts, the validated DMA engine, faults,
trace) is the core's (:mod:`device_model.device_core`); this module only says
what a request means.
"""

from __future__ import annotations

import os

from device_model.descriptors import FULL_DMA_MASK, Refusal
from device_model.device_core import SOCKET_NAME, DeviceCore, DeviceStats, DmaOutcome
from device_model.faults import FaultPlan
from device_model.personality import Personality
from device_model.trace import DEFAULT_MAX_BYTES

__all__ = ["EchoDevice", "EchoPersonality", "DeviceStats", "DmaOutcome"]


class EchoPersonality(Personality):
    """Each SQE is one transfer between the guest's segments and the data memory at
    ``device_offset``, completed in the CQ."""

    def submit(self, raw: bytes) -> None:
        core = self.core
        assert core is not None
        plan = core.plan_descriptor(raw)
        if isinstance(plan, Refusal):
            core.refuse(plan)
            return
        core.complete(plan.request_id, core.perform(plan), plan)


class EchoDevice(DeviceCore):
    """The wdfhil PCI device as the guest driver and tests know it: the core + echo.

    Arguments as :class:`DeviceCore`'s, without the personality.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, *,
                 dma_mask: int = FULL_DMA_MASK, segment_align: int = 1,
                 fault_plan: FaultPlan | None = None,
                 trace_path: str | os.PathLike[str] | None = None,
                 trace_max_bytes: int = DEFAULT_MAX_BYTES,
                 socket_name: str = SOCKET_NAME) -> None:
        super().__init__(EchoPersonality(), run_dir, dma_mask=dma_mask,
                         segment_align=segment_align, fault_plan=fault_plan,
                         trace_path=trace_path, trace_max_bytes=trace_max_bytes,
                         socket_name=socket_name)
