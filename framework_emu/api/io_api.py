"""The I/O model's entry points, as one mixin for :class:`framework_emu.Framework`."""

from __future__ import annotations

from typing import Any

from .device_api import DeviceApi
from .iotarget_api import IoTargetApi
from .queue_api import QueueApi
from .timer_api import TimerApi


class IoModelApi(DeviceApi, QueueApi, IoTargetApi, TimerApi):
    """Devices, queues, request dispatch, I/O targets, timers and locks.

    They need the framework to be a driver of an :class:`IoManager` (which sets ``io_manager``:
    ``IoManager.load_driver`` or ``IoManager.attach``)."""

    io_manager: Any = None
