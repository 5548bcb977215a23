"""I/O requests (WDFREQUEST), as far as their memory goes.

:class:`IoRequest` is the originator's side (the IRP as the I/O manager and
the caller see it: what was sent, what came back); :class:`Request` is the
framework object the driver gets. The I/O manager part allocates the
buffers the way Windows does for each transfer type:

- buffered I/O (METHOD_BUFFERED, buffered reads/writes): one nonpaged system
  buffer; for an IOCTL it is ``max(input, output)`` bytes and *shared* by
  the input and the output memory (writing output overwrites input);
- direct I/O (METHOD_IN_DIRECT / OUT_DIRECT, direct reads/writes): the data
  sits in its own locked buffer described by an MDL with real PFNs;
- METHOD_NEITHER from user mode: no buffer the framework can hand out.

Which memory is read-only follows FxRequestSystemBuffer / FxRequestOutputBuffer
::GetFlags [S]: a write's data and the input of IN/OUT_DIRECT IOCTLs, and the
output of IN_DIRECT IOCTLs. The input of a METHOD_BUFFERED IOCTL is
*writable* in the real framework (it is the same system buffer as the
output), although drivers are told to treat input as read-only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .callsite import CallSite
from .memory import RequestBufferMemory
from .ntstatus import NTSTATUS
from .objects import FX_TYPE_OBJECT, FX_TYPE_REQUEST, FxObject, lazy_description
from .pool import PoolType

if TYPE_CHECKING:
    from .mdl import Mdl

IRP_MJ_READ = 0x03
IRP_MJ_WRITE = 0x04
IRP_MJ_DEVICE_CONTROL = 0x0E
IRP_MJ_INTERNAL_DEVICE_CONTROL = 0x0F

METHOD_BUFFERED = 0
METHOD_IN_DIRECT = 1
METHOD_OUT_DIRECT = 2
METHOD_NEITHER = 3

FILE_ANY_ACCESS = 0
FILE_READ_ACCESS = 1
FILE_WRITE_ACCESS = 2

IO_SYSTEM_BUFFER_TAG = b"IoSB"  # emulator's tag for I/O manager system buffers
IO_USER_BUFFER_TAG = b"IoUB"    # emulator's tag for the locked "user" buffers of direct I/O


def CTL_CODE(DeviceType: int, Function: int, Method: int, Access: int) -> int:
    return (DeviceType << 16) | (Access << 14) | (Function << 2) | Method


class WDF_REQUEST_TYPE(enum.IntEnum):
    WdfRequestTypeRead = IRP_MJ_READ
    WdfRequestTypeWrite = IRP_MJ_WRITE
    WdfRequestTypeDeviceControl = IRP_MJ_DEVICE_CONTROL
    WdfRequestTypeDeviceControlInternal = IRP_MJ_INTERNAL_DEVICE_CONTROL


RULE_SUFFIX = {  # the request kinds in the names of the verifier rules
    IRP_MJ_READ: "Read",
    IRP_MJ_WRITE: "Write",
    IRP_MJ_DEVICE_CONTROL: "Ioctl",
    IRP_MJ_INTERNAL_DEVICE_CONTROL: "IntIoctl",
}


class KPROCESSOR_MODE(enum.IntEnum):
    KernelMode = 0
    UserMode = 1


@dataclass
class IoRequest:
    """The request as its originator sees it: parameters in, status/information/data out."""

    major: int
    input_length: int = 0
    output_length: int = 0
    ioctl_code: int = 0
    method: int = METHOD_BUFFERED
    direct: bool = False          # direct I/O for reads and writes
    requestor_mode: int = KPROCESSOR_MODE.UserMode
    handle: int = 0               # the WDFREQUEST the driver got
    completed: bool = False
    status: int | None = None
    information: int = 0
    output_data: bytes = b""      # what the originator got back (Information bytes)
    completed_at: CallSite | None = None

    @property
    def kind(self) -> str:
        return RULE_SUFFIX.get(self.major, f"IRP_MJ_0x{self.major:x}")


class Request(FxObject):
    """A WDFREQUEST presented to the driver (framework-owned: WdfObjectDelete is refused)."""

    WDF_TYPE = FX_TYPE_REQUEST
    HANDLE_NAME = "WDFREQUEST"
    QI_TYPES = frozenset({FX_TYPE_OBJECT, FX_TYPE_REQUEST})
    NO_DELETE_DDI = True

    system_buffer = 0
    system_buffer_size = 0
    data_buffer = 0          # direct I/O: the locked buffer the MDL describes
    data_buffer_size = 0
    mdl: "Mdl | None" = None            # Irp->MdlAddress (direct I/O)
    allocated_mdl: "Mdl | None" = None  # m_AllocatedMdl: built over the system buffer on demand
    system_memory: RequestBufferMemory | None = None  # m_SystemBuffer
    output_memory: RequestBufferMemory | None = None  # m_OutputBuffer
    completed = False
    completion_hook: "Callable[[CallSite | None], None] | None" = None  # the I/O model's, after completion

    irp_references = 0

    def __init__(self, fx: Any, site: CallSite | None, io: IoRequest) -> None:
        FxObject.__init__(self, fx, site)
        self.io = io

    DESCRIPTION = lazy_description(  # type: ignore[assignment]
        lambda self: f"{self.io.kind} request")   # "Read request", ...

    def history(self) -> list:
        out = [("presented", self.created_at)]
        out += self.events or []
        if self.destroyed_at is not None and not self.completed:
            out.append(("freed", self.destroyed_at))
        return out

    @property
    def is_ioctl(self) -> bool:
        return self.io.major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL)

    @property
    def user_neither(self) -> bool:
        """METHOD_NEITHER from user mode: pointers the framework may not hand out."""
        io = self.io
        return (io.method == METHOD_NEITHER and io.major == IRP_MJ_DEVICE_CONTROL
                and io.requestor_mode == KPROCESSOR_MODE.UserMode)

    # -- the I/O manager's side ---------------------------------------------------------

    def allocate_buffers(self, input_data: bytes, site: CallSite | None) -> bool:
        """Allocate (and fill) the buffers of this transfer type; False when out of memory."""
        fx = self.fx
        io = self.io
        pool = fx._pool
        if self.is_ioctl:
            if io.method == METHOD_BUFFERED:
                size = max(io.input_length, io.output_length)
            else:
                size = io.input_length
            direct_out = io.method in (METHOD_IN_DIRECT, METHOD_OUT_DIRECT)
            neither_out = io.method == METHOD_NEITHER
            data_size = io.output_length if (direct_out or neither_out) else 0
        else:
            length = io.output_length if io.major == IRP_MJ_READ else io.input_length
            size, data_size = (0, length) if io.direct else (length, 0)
            direct_out = io.direct
        if size:
            self.system_buffer = pool.allocate(PoolType.NonPagedPool, size, IO_SYSTEM_BUFFER_TAG, site)
            if not self.system_buffer:
                return False
            self.system_buffer_size = size
        if data_size:
            self.data_buffer = pool.allocate(PoolType.NonPagedPool, data_size, IO_USER_BUFFER_TAG, site)
            if not self.data_buffer:
                self.free_buffers()
                return False
            self.data_buffer_size = data_size
            if direct_out:
                # The I/O manager probes for write access where the device writes the buffer.
                device_writes = io.major == IRP_MJ_READ or (self.is_ioctl and io.method == METHOD_OUT_DIRECT)
                self.mdl = fx._mdl_table.locked(self.data_buffer, data_size, write=device_writes, site=site)
                if self.mdl is None:
                    self.free_buffers()
                    return False
        if input_data:
            target = self.data_buffer if (io.major == IRP_MJ_WRITE and io.direct) else self.system_buffer
            fx._write(target, input_data)
        return True

    def buffer_ranges(self) -> list[tuple[int, int]]:
        """(va, size) of every buffer this request owns."""
        out = []
        if self.system_buffer:
            out.append((self.system_buffer, self.system_buffer_size))
        if self.data_buffer:
            out.append((self.data_buffer, self.data_buffer_size))
        return out

    def free_mdls(self, site: CallSite | None) -> None:
        """The IRP's MDL and the one the framework built go with the request."""
        table = self.fx._mdl_table
        for attr in ("allocated_mdl", "mdl"):
            mdl = getattr(self, attr)
            if mdl is not None:
                table.free(mdl, site)
                setattr(self, attr, None)

    def free_buffers(self) -> None:
        pool = self.fx._pool
        self.free_mdls(None)
        if self.system_buffer:
            pool.free(self.system_buffer)
            self.system_buffer = 0
        if self.data_buffer:
            pool.free(self.data_buffer)
            self.data_buffer = 0

    # -- what the framework hands to the driver (FxRequest::GetMemoryObject) ------------

    def input_buffer(self, site: CallSite | None = None) -> tuple[int, int, int, bool]:
        """(status, va, length, read_only) of the input buffer (m_SystemBuffer). ``site``: the
        driver's call, for a subclass that maps its buffer on first use."""
        io = self.io
        if self.is_ioctl:
            length = io.input_length
            if length == 0:
                return NTSTATUS.STATUS_BUFFER_TOO_SMALL, 0, 0, False
            if self.user_neither:
                return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, 0, 0, False
            read_only = io.method in (METHOD_IN_DIRECT, METHOD_OUT_DIRECT)
            return NTSTATUS.STATUS_SUCCESS, self.system_buffer, length, read_only
        length = io.output_length if io.major == IRP_MJ_READ else io.input_length
        if length == 0:
            return NTSTATUS.STATUS_BUFFER_TOO_SMALL, 0, 0, False
        va = self.data_buffer if io.direct else self.system_buffer
        return NTSTATUS.STATUS_SUCCESS, va, length, io.major == IRP_MJ_WRITE

    def output_buffer(self, site: CallSite | None = None) -> tuple[int, int, int, bool]:
        """(status, va, length, read_only) of an IOCTL's output (m_OutputBuffer); ``site``: as
        input_buffer's."""
        io = self.io
        length = io.output_length
        if length == 0:
            return NTSTATUS.STATUS_BUFFER_TOO_SMALL, 0, 0, False
        if io.method == METHOD_BUFFERED:
            return NTSTATUS.STATUS_SUCCESS, self.system_buffer, length, False
        if self.user_neither:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, 0, 0, False
        return NTSTATUS.STATUS_SUCCESS, self.data_buffer, length, io.method == METHOD_IN_DIRECT

    # -- MDLs (fxrequestkm.cpp) -------------------------------------------------------------

    def _system_buffer_mdl(self, length: int, site: CallSite | None) -> tuple[int, "Mdl | None"]:
        """The common tail of GetMdl and GetDeviceControlOutputMdl: no buffer or a zero length is
        STATUS_BUFFER_TOO_SMALL; else m_AllocatedMdl, built once (IoAllocateMdl +
        MmBuildMdlForNonPagedPool over the system buffer) and returned to *both* callers, whatever
        length the other asked for."""
        if not self.system_buffer or length == 0:
            return NTSTATUS.STATUS_BUFFER_TOO_SMALL, None
        if self.allocated_mdl is None:
            mdl = self.fx._mdl_table.nonpaged_pool_mdl(self.system_buffer, length, site)
            if mdl is None:
                return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, None
            self.allocated_mdl = mdl
        return NTSTATUS.STATUS_SUCCESS, self.allocated_mdl

    def _irp_mdl(self) -> tuple[int, "Mdl | None"]:
        """Irp->MdlAddress, or STATUS_BUFFER_TOO_SMALL when there is none (a zero length)."""
        if self.mdl is None:
            return NTSTATUS.STATUS_BUFFER_TOO_SMALL, None
        return NTSTATUS.STATUS_SUCCESS, self.mdl

    def get_mdl(self, site: CallSite | None) -> tuple[int, "Mdl | None"]:
        """FxRequest::GetMdl [S]: an IOCTL's *input* (the system buffer, InputBufferLength, for
        METHOD_BUFFERED and both DIRECT methods; METHOD_NEITHER STATUS_INVALID_DEVICE_REQUEST);
        a read or write: direct I/O Irp->MdlAddress, buffered I/O the system buffer."""
        io = self.io
        if self.is_ioctl:
            if io.method == METHOD_NEITHER:
                return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
            return self._system_buffer_mdl(io.input_length, site)
        if io.direct:
            return self._irp_mdl()
        return self._system_buffer_mdl(io.output_length if io.major == IRP_MJ_READ else io.input_length, site)

    def get_device_control_output_mdl(self, site: CallSite | None) -> tuple[int, "Mdl | None"]:
        """FxRequest::GetDeviceControlOutputMdl [S]: only IOCTLs (else STATUS_INVALID_DEVICE_REQUEST);
        METHOD_BUFFERED: an MDL over the system buffer (OutputBufferLength); IN/OUT_DIRECT:
        Irp->MdlAddress; METHOD_NEITHER: STATUS_INVALID_DEVICE_REQUEST, even from kernel mode."""
        io = self.io
        if not self.is_ioctl or io.method == METHOD_NEITHER:
            return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, None
        if io.method == METHOD_BUFFERED:
            return self._system_buffer_mdl(io.output_length, site)
        return self._irp_mdl()

    def memory_object(self, slot: str, label: str, va: int, length: int, read_only: bool,
                      site: CallSite | None) -> RequestBufferMemory:
        """The embedded memory object of a slot ("system" or "output"), made on first use."""
        attr = "output_memory" if slot == "output" else "system_memory"
        mem = getattr(self, attr)
        if mem is None:
            mem = RequestBufferMemory(self.fx, site, self, label, va, length, read_only)
            self.fx._handles.issue(mem)
            setattr(self, attr, mem)
        return mem

    def information_limit(self) -> int | None:
        """The length VerifyCompleteInternal holds Information to: a read's or a write's length,
        a user-mode IOCTL's output length when it has one; None where the framework cannot
        know it (kernel-mode and internal IOCTLs, an IOCTL without output)."""
        io = self.io
        if io.major == IRP_MJ_READ:
            return io.output_length
        if io.major == IRP_MJ_WRITE:
            return io.input_length
        if (io.major == IRP_MJ_DEVICE_CONTROL and io.requestor_mode == KPROCESSOR_MODE.UserMode
                and io.output_length > 0):
            return io.output_length
        return None

    def output_for_originator(self, information: int) -> bytes:
        """The bytes the originator gets back at completion (what the I/O manager copies)."""
        io = self.io
        if io.major == IRP_MJ_WRITE:
            return b""
        limit = min(information, io.output_length)
        if limit <= 0:
            return b""
        if self.is_ioctl and io.method == METHOD_BUFFERED or io.major == IRP_MJ_READ and not io.direct:
            return self.fx._read(self.system_buffer, limit)
        if self.data_buffer:
            return self.fx._read(self.data_buffer, limit)
        return b""
