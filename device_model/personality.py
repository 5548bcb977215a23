"""What a device personality implements: the part of a device that gives DMA a meaning.

The device core (:class:`device_model.device_core.DeviceCore`) is the same
for every device: the ivshmem server, BAR2 and its header, the request and
completion rings, doorbells, MSI-X interrupts, the validated DMA engine,
faults, the trace and the statistics. A personality decides what a doorbell
asks for and what the DMA moves: the echo personality copies each request's
guest buffers into the device's data memory and back; a bus-master
personality (a device a driver programs through registers and a descriptor
ring in guest RAM) reads its registers and walks its ring on a doorbell, and
asks the core for each transfer. Either way, every byte that crosses to or
from guest RAM goes through the core's validation, engine, faults and trace.

All hooks run under the device lock (the core calls them), so a personality
needs no locking of its own for state it touches only from hooks. They run in
the device thread, except the register hooks: a driver's register access runs
in the driver's thread (``DeviceCore.register_read``/``register_write`` take
the lock), and work it starts (a doorbell) goes to the device thread with
``DeviceCore.defer``, as a real device works after the write has returned.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from device_model.abi import VECTOR_SUBMIT
from wdfhil.errors import DeviceProtocolError

if TYPE_CHECKING:
    from device_model.device_core import DeviceCore


class RegisterAccessError(DeviceProtocolError):
    """A register access the device does not decode (no such register, a width it
    does not take, a write to a read-only register): a driver bug, named."""

    def __init__(self, message: str, *, offset: int, width: int) -> None:
        self.offset = offset
        self.width = width
        super().__init__(f"register access at offset {offset:#x}, width {width}: {message}")


class Personality(abc.ABC):
    """The hooks the core calls. Only :meth:`submit` is required."""

    #: Extra feature bits (``abi.Feature``) the personality adds to the header.
    features: int = 0

    def __init__(self) -> None:
        self.core: DeviceCore | None = None

    def bind(self, core: "DeviceCore") -> None:
        """Called once, when the core is built (before any other hook)."""
        self.core = core

    def reset(self) -> None:
        """The core just reset (a new guest peer, admin RESET): the rings are zero,
        pending completions and timers are gone. Drop any per-guest state."""

    def doorbell(self, vector: int) -> None:
        """The guest rang ``vector``. The default serves the request ring on
        VECTOR_SUBMIT (the core copies each new SQE and calls :meth:`submit`);
        a personality with its own registers and descriptor ring reads them here
        and uses the core's DMA service (``plan_segments``, ``perform``,
        ``raise_interrupt``)."""
        if vector == VECTOR_SUBMIT and self.core is not None:
            self.core.serve_request_ring()

    @abc.abstractmethod
    def submit(self, raw: bytes) -> None:
        """One request (a private copy of an SQE). Must end in exactly one
        ``core.complete(...)`` (or ``core.refuse(...)``), now or from a timer."""

    def guest_ram_changed(self, attached: bool) -> None:
        """Guest RAM was attached (True) or detached (False)."""

    def register_read(self, offset: int, width: int) -> int:
        """A driver reads the register at ``offset`` (``width`` bytes). The default
        decodes no register."""
        raise RegisterAccessError("this device has no registers", offset=offset, width=width)

    def register_write(self, offset: int, width: int, value: int) -> None:
        """A driver writes ``value`` to the register at ``offset``. The default
        decodes no register."""
        raise RegisterAccessError("this device has no registers", offset=offset, width=width)
