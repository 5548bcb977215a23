"""The client side of the ivshmem protocol, in Python: what QEMU's ivshmem
device does when it connects, without QEMU.

It lets tests and benchmarks act as a VM towards the device (receive the
shared memory and eventfds, ring the device's doorbells, wait for its
interrupts) so the whole protocol is exercised in-process; the real VM path
is covered by the integration tests.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import time
from pathlib import Path

from device_model.abi import NUM_VECTORS
from device_model.ivshmem_server import PROTOCOL_VERSION, drain_eventfd
from wdfhil.errors import DeviceProtocolError


class IvshmemClient:
    """A connected ivshmem client: its id, the shared memory and the peers' eventfds."""

    def __init__(self, sock: socket.socket, vectors: int) -> None:
        self.sock = sock
        self.vectors = vectors
        self.peer_id = -1
        self.shm_fd = -1
        self.shm: mmap.mmap | None = None
        self.peers: dict[int, list[int]] = {}    # other peers' eventfds, per vector
        self.own_eventfds: list[int] = []         # interrupts to us arrive here
        self.left: list[int] = []                 # peers announced as gone

    @classmethod
    def connect(cls, socket_path: str | os.PathLike[str], *, vectors: int = NUM_VECTORS,
                timeout: float = 10.0) -> "IvshmemClient":
        """Connect and read the setup messages up to our own last eventfd."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        client = cls(sock, vectors)
        try:
            sock.settimeout(timeout)
            sock.connect(str(Path(socket_path)))
            client._read_setup(time.monotonic() + timeout)
        except BaseException:
            client.close()
            raise
        return client

    def _recv(self) -> tuple[int, int]:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 8, 1)
        if len(data) != 8:
            for fd in fds:
                os.close(fd)
            raise DeviceProtocolError(f"ivshmem server sent {len(data)} bytes, expected 8")
        return struct.unpack("<q", data)[0], (fds[0] if fds else -1)

    def _read_setup(self, deadline: float) -> None:
        version, fd = self._recv()
        if version != PROTOCOL_VERSION or fd != -1:
            raise DeviceProtocolError(f"ivshmem server sent version {version} (fd {fd})")
        self.peer_id, fd = self._recv()
        if self.peer_id < 0 or fd != -1:
            raise DeviceProtocolError(f"ivshmem server sent a bad id message {self.peer_id}")
        while len(self.own_eventfds) < self.vectors:
            if time.monotonic() > deadline:
                raise DeviceProtocolError("ivshmem setup did not complete in time")
            self._handle(*self._recv())
        if self.shm is None:
            raise DeviceProtocolError("ivshmem server sent no shared memory")

    def _handle(self, value: int, fd: int) -> None:
        if value == -1:
            if fd < 0:
                raise DeviceProtocolError("ivshmem shared-memory message without fd")
            self.shm_fd = fd
            size = os.fstat(fd).st_size
            self.shm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        elif fd < 0:
            self.left.append(value)
            for efd in self.peers.pop(value, []):
                os.close(efd)
        elif value == self.peer_id:
            self.own_eventfds.append(fd)
        else:
            self.peers.setdefault(value, []).append(fd)

    def poll_messages(self) -> None:
        """Handle any messages that arrived since setup (peers leaving)."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    self._handle(*self._recv())
                except BlockingIOError:
                    return
        finally:
            self.sock.settimeout(10.0)

    def ring(self, peer_id: int, vector: int) -> None:
        """Ring a peer's doorbell (what a guest's BAR0 doorbell write does)."""
        os.eventfd_write(self.peers[peer_id][vector], 1)

    def wait_interrupt(self, vector: int, timeout: float) -> int:
        """Block until ``vector`` is raised at us; the merged count, 0 on timeout."""
        fd = self.own_eventfds[vector]
        count = drain_eventfd(fd)
        if count:
            return count
        ready, _, _ = select.select([fd], [], [], timeout)
        return drain_eventfd(fd) if ready else 0

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        for fd in [self.shm_fd, *self.own_eventfds, *(f for fds in self.peers.values() for f in fds)]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.shm_fd = -1
        self.own_eventfds = []
        self.peers = {}
        self.sock.close()

    def __enter__(self) -> "IvshmemClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
