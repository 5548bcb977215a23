"""A stand-in for the guest program and its kernel module, on in-process memory.

It does what the guest side does for each syscall: a kernel buffer (one
physically contiguous run) for buffered I/O, the caller's pages for direct
I/O -- deliberately scattered and out of order, as a real process's pages
are -- then :meth:`IoManager.submit`, then the data back out of guest
memory. On a VM the ring and the guest module do this; the framework side
is the same.
"""

from __future__ import annotations

from typing import Any

from wdfhil.physical_memory import PhysicalMemory

from framework_emu import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE, PAGE_SHIFT, PAGE_SIZE, InProcessMemory,
                           IoManager, IoOperation, OpenFile, SystemBuffer, UserPages)

MIB = 1 << 20


class InProcessGuest:
    """Guest RAM of ``memory_size`` bytes; the framework's pools take the top ``pool_size`` bytes,
    guest buffers come from below (from 1 MiB up). ``memory``: the RAM to use instead of a new
    InProcessMemory (a bench puts GuestRam there, the runtime's memory on a VM)."""

    _next_user_va = 0x7FF6_1000_0000   # each user buffer its own caller address (the next one's)

    def __init__(self, memory_size: int = 64 * MIB, pool_size: int = 32 * MIB, *,
                 memory: PhysicalMemory | None = None) -> None:
        self.memory = memory if memory is not None else InProcessMemory(memory_size)
        self.iom = IoManager(self.memory, pool_window=(memory_size - pool_size, pool_size))
        self._next_frame = MIB >> PAGE_SHIFT
        self._limit = (memory_size - pool_size) >> PAGE_SHIFT

    def _frames(self, count: int) -> list[int]:
        if self._next_frame + count > self._limit:
            raise MemoryError("the in-process guest ran out of frames")
        first = self._next_frame
        self._next_frame += count + 1  # a gap between buffers
        return list(range(first, first + count))

    def kernel_buffer(self, data: bytes | int) -> SystemBuffer:
        """A physically contiguous kernel buffer holding ``data`` (or ``data`` zero bytes)."""
        size = data if isinstance(data, int) else len(data)
        frames = self._frames(max(1, (size + PAGE_SIZE - 1) >> PAGE_SHIFT))
        gpa = frames[0] << PAGE_SHIFT
        if not isinstance(data, int):
            self.memory.write(gpa, data)
        return SystemBuffer(gpa, size)

    def user_buffer(self, data: bytes | int, offset: int = 0x234) -> UserPages:
        """The caller's buffer: its pages are not contiguous and come in reverse order."""
        size = data if isinstance(data, int) else len(data)
        pages = max(1, (offset + size + PAGE_SIZE - 1) >> PAGE_SHIFT)
        frames = [f for f in self._frames(2 * pages)[::2]][::-1]
        buffer = UserPages(tuple(frames), offset, size, user_va=self._next_user_va)
        self._next_user_va += (pages + 1) << PAGE_SHIFT
        if not isinstance(data, int):
            self.write(buffer, data)
        return buffer

    @staticmethod
    def _pieces(buffer: UserPages, length: int) -> list[tuple[int, int]]:
        """(gpa, length) of each page's part of the buffer, in order."""
        out, remaining, offset = [], length, buffer.offset
        for pfn in buffer.pfns:
            if remaining <= 0:
                break
            n = min(PAGE_SIZE - offset, remaining)
            out.append(((pfn << PAGE_SHIFT) + offset, n))
            remaining -= n
            offset = 0
        return out

    def read(self, buffer: SystemBuffer | UserPages, length: int | None = None) -> bytes:
        if isinstance(buffer, SystemBuffer):
            return self.memory.read(buffer.gpa, buffer.size if length is None else length)
        pieces = self._pieces(buffer, buffer.length if length is None else length)
        return b"".join(self.memory.read(gpa, n) for gpa, n in pieces)

    def write(self, buffer: SystemBuffer | UserPages, data: bytes) -> None:
        if isinstance(buffer, SystemBuffer):
            self.memory.write(buffer.gpa, data)
            return
        done = 0
        for gpa, n in self._pieces(buffer, len(data)):
            self.memory.write(gpa, data[done:done + n])
            done += n

    # -- syscalls -----------------------------------------------------------------------------

    def open(self, name: str) -> OpenFile:
        return self.iom.open(name)

    def write_file(self, file: OpenFile, data: bytes, **kwargs: Any) -> IoOperation:
        """write(2): the data in a kernel buffer (buffered) or the caller's pages (direct)."""
        if self.iom.transfer_type(file, IRP_MJ_WRITE) == "direct":
            return self.iom.submit(file, IRP_MJ_WRITE, length=len(data), user_pages=self.user_buffer(data), **kwargs)
        return self.iom.submit(file, IRP_MJ_WRITE, length=len(data), system_buffer=self.kernel_buffer(data), **kwargs)

    def read_file(self, file: OpenFile, length: int, **kwargs: Any) -> tuple[IoOperation, Any]:
        """read(2): returns the operation and the buffer to read the data from once it is done."""
        if self.iom.transfer_type(file, IRP_MJ_READ) == "direct":
            buffer: Any = self.user_buffer(length)
            return self.iom.submit(file, IRP_MJ_READ, length=length, user_pages=buffer, **kwargs), buffer
        buffer = self.kernel_buffer(length)
        return self.iom.submit(file, IRP_MJ_READ, length=length, system_buffer=buffer, **kwargs), buffer

    def ioctl(self, file: OpenFile, code: int, data: bytes, output_length: int) -> tuple[IoOperation, Any]:
        """ioctl(2): METHOD_BUFFERED shares one kernel buffer; direct methods put the output in
        the caller's pages; METHOD_NEITHER hands over the caller's input and output pages (for
        EvtIoInCallerContext). Returns the operation and the buffer the output lands in."""
        kind = self.iom.transfer_type(file, IRP_MJ_DEVICE_CONTROL, code)
        if kind == "buffered":
            buffer = self.kernel_buffer(max(len(data), output_length))
            self.memory.write(buffer.gpa, data)
            return self.iom.submit(file, IRP_MJ_DEVICE_CONTROL, ioctl_code=code, input_length=len(data),
                                   output_length=output_length, system_buffer=buffer), buffer
        if kind == "direct":
            pages = self.user_buffer(output_length) if output_length else None
            system = self.kernel_buffer(data) if data else None
            return self.iom.submit(file, IRP_MJ_DEVICE_CONTROL, ioctl_code=code, input_length=len(data),
                                   output_length=output_length, system_buffer=system, user_pages=pages), pages
        # METHOD_NEITHER: the caller's own pages, input and output, as the guest module sends them
        pages = self.user_buffer(output_length) if output_length else None
        inputs = self.user_buffer(data) if data else None
        return self.iom.submit(file, IRP_MJ_DEVICE_CONTROL, ioctl_code=code, input_length=len(data),
                               output_length=output_length, user_pages=pages, input_pages=inputs), pages
