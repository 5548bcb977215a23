"""A host handler for guest I/O that needs no framework: the echo store.

Until the runtime wires the request ring to the emulated framework, the
end-to-end tests use this: WRITE stores the caller's bytes at the file
offset, READ returns them, the echo IOCTLs copy input to output (one per
transfer method), STATUS IOCTL completes with the NTSTATUS it is given (the
errno mapping test), and requests can be held back to have requests in
flight on purpose. It touches guest memory only through the request's
validated buffers (:class:`~device_model.request_ring.GuestIoRequest`).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from device_model.abi import NTSTATUS, IoMajor, TransferMethod, ctl_code
from device_model.request_ring import GuestIoRequest

FILE_DEVICE_WDFHIL = 0x8000
IOCTL_ECHO = {m: ctl_code(FILE_DEVICE_WDFHIL, 0x800 + int(m), int(m)) for m in TransferMethod}
IOCTL_STATUS = ctl_code(FILE_DEVICE_WDFHIL, 0x810, TransferMethod.BUFFERED)  # in: u32 NTSTATUS
STATUS_SUCCESS = NTSTATUS["STATUS_SUCCESS"]
STATUS_CANCELLED = NTSTATUS["STATUS_CANCELLED"]
STATUS_END_OF_FILE = NTSTATUS["STATUS_END_OF_FILE"]
STATUS_INVALID_PARAMETER = NTSTATUS["STATUS_INVALID_PARAMETER"]
STATUS_INVALID_DEVICE_REQUEST = NTSTATUS["STATUS_INVALID_DEVICE_REQUEST"]


@dataclass
class EchoIoHandler:
    """``on_request``/``on_cancel`` for a :class:`~device_model.request_ring.RequestEndpoint`.

    ``store_size``: bytes of the echo store (a READ past its end is END_OF_FILE).
    ``hold``: majors whose requests are kept in flight (``held``) until
    :meth:`release_held`. ``complete_on_cancel``: a cancelled held request
    completes at once with STATUS_CANCELLED (False: it stays held, as a slow
    driver would keep it). ``log``: (request_id, major, status) per completion.
    """

    store_size: int = 16 << 20
    hold: set[IoMajor] = field(default_factory=set)
    complete_on_cancel: bool = True
    held: list[GuestIoRequest] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    log: list[tuple[int, IoMajor, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = bytearray(self.store_size)
        self._lock = threading.Lock()

    # ---- the callbacks ------------------------------------------------------------
    def on_request(self, request: GuestIoRequest) -> None:
        with self._lock:
            if request.major in self.hold:
                self.held.append(request)
                return
        self.serve(request)

    def on_cancel(self, request: GuestIoRequest) -> None:
        with self._lock:
            self.cancelled.append(request.request_id)
            if request.abandoned or not self.complete_on_cancel or request not in self.held:
                if request.abandoned and request in self.held:
                    self.held.remove(request)
                return
            self.held.remove(request)
        self._complete(request, STATUS_CANCELLED, 0)

    def release_held(self, status: int | None = None) -> int:
        """Complete every held request: served normally (``status`` None) or with
        ``status``; how many."""
        with self._lock:
            held, self.held = [r for r in self.held if not r.completed], []
        for request in held:
            if status is None:
                self.serve(request)
            else:
                self._complete(request, status, 0)
        return len(held)

    # ---- what a request does ----------------------------------------------------------
    def serve(self, request: GuestIoRequest) -> None:
        major = request.major
        if major in (IoMajor.CREATE, IoMajor.CLOSE, IoMajor.CLEANUP):
            self._complete(request, STATUS_SUCCESS, 0)
        elif major == IoMajor.WRITE:
            offset, data = request.file_offset, request.input_bytes()
            if offset + len(data) > len(self.store):
                self._complete(request, STATUS_INVALID_PARAMETER, 0)
                return
            self.store[offset:offset + len(data)] = data
            self._complete(request, STATUS_SUCCESS, len(data))
        elif major == IoMajor.READ:
            offset = request.file_offset
            if offset >= len(self.store):
                self._complete(request, STATUS_END_OF_FILE, 0)
                return
            n = request.write_output(bytes(self.store[offset:offset + request.output_length]))
            self._complete(request, STATUS_SUCCESS, n)
        else:
            self._ioctl(request)

    def _ioctl(self, request: GuestIoRequest) -> None:
        code = request.ioctl_code
        if code == IOCTL_STATUS:
            data = request.input_bytes()
            if len(data) < 4:
                self._complete(request, STATUS_INVALID_PARAMETER, 0)
                return
            self._complete(request, struct.unpack_from("<I", data)[0], 0)
        elif code in IOCTL_ECHO.values() and request.method != TransferMethod.IN_DIRECT:
            # input -> output; the bytes past the input are the store's (so a test
            # sees the output buffer really written end to end)
            data = request.input_bytes()
            out = data + bytes(self.store[len(data):request.output_length])
            self._complete(request, STATUS_SUCCESS, request.write_output(out))
        elif code == IOCTL_ECHO[TransferMethod.IN_DIRECT]:
            # the device reads the "output" pages: they go to the store at the file offset 0
            data = request.read_pages() if request.page_length else b""
            self.store[:len(data)] = data
            self._complete(request, STATUS_SUCCESS, len(data))
        else:
            self._complete(request, STATUS_INVALID_DEVICE_REQUEST, 0)

    def _complete(self, request: GuestIoRequest, status: int, information: int) -> None:
        with self._lock:
            self.log.append((request.request_id, request.major, status))
        request.complete(status, information)
