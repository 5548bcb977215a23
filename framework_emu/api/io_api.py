"""The I/O model's entry points, as one mixin for :class:`framework_emu.Framework`."""

from __future__ import annotations

from typing import Any

from .device_api import DeviceApi
from .iotarget_api import IoTargetApi
from .neither_api import NeitherApi
from .queue_api import QueueApi
from .timer_api import TimerApi


class IoModelApi(DeviceApi, QueueApi, IoTargetApi, TimerApi, NeitherApi):
    """Devices, queues, request dispatch, I/O targets, timers and locks, caller-context I/O.

    They need the framework to be a driver of an :class:`IoManager` (which sets ``io_manager``:
    ``IoManager.load_driver`` or ``IoManager.attach``)."""

    io_manager: Any = None
