"""A host-side stand-in for the guest module's request ring (unit tests only): puts
request entries in BAR2, rings VECTOR_REQUEST, reads completions by index, over
the real ivshmem protocol. Also a device with an endpoint, on in-process RAM."""

from __future__ import annotations

import contextlib
import struct
import time
from typing import Iterator

from device_model.abi import (
    RCQ_OFFSET, RCQE_SIZE, RING_ENTRIES, RQ_OFFSET, RQE_SIZE, VECTOR_IO_COMPLETION,
    VECTOR_REQUEST, IoFlag, IoMajor, RequestCompletion, RequestEntry,
)
from device_model.device import EchoDevice
from device_model.device_memory import U32, Bar2Header
from device_model.ivshmem_client import IvshmemClient
from device_model.request_echo import EchoIoHandler
from device_model.request_ring import RequestEndpoint
from wdfhil.errors import DeviceProtocolError
from wdfhil.physical_memory import PAGE_SIZE, InProcessMemory


class RequestRingDriver:
    """What the guest module does with the request ring, in Python."""

    def __init__(self, client: IvshmemClient) -> None:
        assert client.shm is not None
        self.client = client
        self.bar2 = memoryview(client.shm)
        self.header = Bar2Header(self.bar2)
        self.device_peer = self.header.get("device_peer")

    def post_raw(self, raw: bytes) -> None:
        tail = self.header.get("rq_tail")
        offset = RQ_OFFSET + (tail % RING_ENTRIES) * RQE_SIZE
        self.bar2[offset:offset + RQE_SIZE] = raw.ljust(RQE_SIZE, b"\0")[:RQE_SIZE]
        self.header.set("rq_tail", (tail + 1) & U32)

    def ring(self) -> None:
        self.client.ring(self.device_peer, VECTOR_REQUEST)

    def take(self) -> list[RequestCompletion]:
        head, tail = self.header.get("rcq_head"), self.header.get("rcq_tail")
        out = []
        while head != tail:
            offset = RCQ_OFFSET + (head % RING_ENTRIES) * RCQE_SIZE
            out.append(RequestCompletion.unpack(self.bar2[offset:offset + RCQE_SIZE]))
            head = (head + 1) & U32
        self.header.set("rcq_head", head)
        return out

    def wait(self, count: int, timeout: float = 10.0) -> list[RequestCompletion]:
        deadline = time.monotonic() + timeout
        got: list[RequestCompletion] = []
        while True:
            got += self.take()
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceProtocolError(f"{len(got)} of {count} request completions after "
                                          f"{timeout} s; header {self.header.snapshot()}")
            self.client.wait_interrupt(VECTOR_IO_COMPLETION, min(left, 0.5))

    def request(self, entry: RequestEntry | bytes, timeout: float = 10.0) -> RequestCompletion:
        self.post_raw(entry.pack() if isinstance(entry, RequestEntry) else entry)
        self.ring()
        return self.wait(1, timeout)[0]

    def close(self) -> None:
        self.bar2.release()


def page_entry(memory: InProcessMemory, rid: int, file_id: int, major: IoMajor, gpa: int,
               length: int, *, table_gpa: int = 0, indirect: bool | None = None,
               **fields: int) -> RequestEntry:
    """An entry whose page list covers [gpa, gpa + length) of contiguous RAM (the table,
    if needed, written at ``table_gpa``)."""
    offset = gpa % PAGE_SIZE
    count = (offset + length + PAGE_SIZE - 1) // PAGE_SIZE
    pfns = [gpa // PAGE_SIZE + i for i in range(count)]
    if indirect is None:
        indirect = count > 16
    if indirect:
        memory.write(table_gpa, struct.pack(f"<{count}Q", *pfns))
        return RequestEntry(rid, file_id, major, flags=int(IoFlag.INDIRECT), page_offset=offset,
                            page_length=length, page_count=count, table_gpa=table_gpa, **fields)
    return RequestEntry(rid, file_id, major, page_offset=offset, page_length=length,
                        page_count=count, pfns=tuple(pfns), **fields)


@contextlib.contextmanager
def io_device(tmp_path, memory: InProcessMemory, handler: EchoIoHandler | None = None,
              **endpoint_options) -> Iterator[tuple[EchoDevice, RequestEndpoint, EchoIoHandler,
                                                    RequestRingDriver]]:
    """An EchoDevice with a request endpoint and an echo handler, and a driver for it."""
    handler = handler or EchoIoHandler(store_size=1 << 20)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    with EchoDevice(run_dir) as device:
        device.attach_guest_ram(memory)
        endpoint = RequestEndpoint(device, handler.on_request, on_cancel=handler.on_cancel,
                                   **endpoint_options)
        client = IvshmemClient.connect(device.socket_path)
        driver = RequestRingDriver(client)
        try:
            yield device, endpoint, handler, driver
        finally:
            driver.close()
            client.close()
        assert device.errors == []
