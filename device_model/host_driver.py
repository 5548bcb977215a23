"""A driver for the device that runs on the host, over :class:`IvshmemClient`.

It speaks the same ABI as the guest agent (fill SQ slots, advance sq_tail,
ring, read completions by index), so unit tests, property tests and the
benchmark can drive the real device thread and the real ivshmem protocol
without booting a guest. It is also a readable reference for the guest side.
"""

from __future__ import annotations

import time

from device_model.abi import (
    CQ_OFFSET, CQE_SIZE, RING_ENTRIES, SQ_OFFSET, SQE_SIZE, VECTOR_ADMIN, VECTOR_COMPLETION,
    VECTOR_SUBMIT, AdminCommand, Completion, Descriptor, Segment,
)
from device_model.device_memory import U32, Bar2Header
from device_model.ivshmem_client import IvshmemClient
from wdfhil.errors import DeviceProtocolError


class HostDriver:
    """Submits descriptors and collects completions through BAR2 and the doorbells."""

    def __init__(self, client: IvshmemClient) -> None:
        if client.shm is None:
            raise DeviceProtocolError("the ivshmem client has no shared memory")
        self.client = client
        self.bar2 = memoryview(client.shm)
        self.header = Bar2Header(self.bar2)
        self.device_peer = self.header.get("device_peer")

    def submit_raw(self, raw: bytes) -> int:
        """Put SQE bytes (any content: tests are hostile) in the next slot; its index."""
        tail = self.header.get("sq_tail")
        offset = SQ_OFFSET + (tail % RING_ENTRIES) * SQE_SIZE
        self.bar2[offset:offset + SQE_SIZE] = raw.ljust(SQE_SIZE, b"\0")[:SQE_SIZE]
        self.header.set("sq_tail", (tail + 1) & U32)
        return tail

    def submit(self, descriptor: Descriptor, segments: list[Segment] | None = None) -> int:
        return self.submit_raw(descriptor.pack(segments))

    def ring(self, vector: int = VECTOR_SUBMIT) -> None:
        self.client.ring(self.device_peer, vector)

    def take_completions(self) -> list[Completion]:
        """Completions posted since the last call (advances cq_head)."""
        head, tail = self.header.get("cq_head"), self.header.get("cq_tail")
        out = []
        while head != tail:
            offset = CQ_OFFSET + (head % RING_ENTRIES) * CQE_SIZE
            out.append(Completion.unpack(self.bar2[offset:offset + CQE_SIZE]))
            head = (head + 1) & U32
        self.header.set("cq_head", head)
        return out

    def wait_completions(self, count: int, timeout: float = 10.0) -> list[Completion]:
        """Wait for ``count`` completions, by ring index (interrupts merge)."""
        deadline = time.monotonic() + timeout
        got: list[Completion] = []
        while True:
            got += self.take_completions()
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceProtocolError(
                    f"{len(got)} of {count} completions after {timeout} s; header {self.header.snapshot()}")
            self.client.wait_interrupt(VECTOR_COMPLETION, left)

    def request(self, descriptor: Descriptor, segments: list[Segment] | None = None,
                timeout: float = 10.0) -> Completion:
        """Submit one descriptor, ring, wait for its completion."""
        self.submit(descriptor, segments)
        self.ring()
        return self.wait_completions(1, timeout)[0]

    def request_raw(self, raw: bytes, timeout: float = 10.0) -> Completion:
        """Submit SQE bytes (any content), ring, wait for the completion."""
        self.submit_raw(raw)
        self.ring()
        return self.wait_completions(1, timeout)[0]

    def reset(self, timeout: float = 10.0) -> None:
        """Admin RESET, waiting for admin_done to move."""
        done = self.header.get("admin_done")
        self.header.set("admin_cmd", AdminCommand.RESET)
        self.ring(VECTOR_ADMIN)
        deadline = time.monotonic() + timeout
        while self.header.get("admin_done") == done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceProtocolError("admin RESET not acknowledged")
            self.client.wait_interrupt(VECTOR_COMPLETION, left)

    def close(self) -> None:
        self.bar2.release()
