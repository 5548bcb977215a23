"""The ivshmem server side of QEMU's ivshmem-doorbell: a UNIX socket that hands
each connecting QEMU the shared memory (BAR2) and the eventfds for doorbells.

Protocol (QEMU docs/specs/ivshmem-spec.rst): the server only sends, each
message an 8-byte little-endian signed integer, some with one fd by
SCM_RIGHTS. On connect: 0 (protocol version); the client's peer id; -1 with
the shared-memory fd; then, once per vector, another peer's id with one of its
eventfds; last, the client's own id once per vector with the eventfds QEMU
turns into MSI-X interrupts. Later, a peer id without fd means that peer left.

Unlike QEMU's contrib server, which lets any two clients signal each other,
this server is itself a peer (the device, id ``DEVICE_PEER_ID``) and each
client (a VM) is only told about the device: a guest rings the device, the
device interrupts a guest. Clients may come and go (hot-unplug and replug);
each new one gets a fresh id. The server does no I/O of its own: it registers
its sockets with a selector that the device thread runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import selectors
import socket
import stat
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from device_model.abi import NUM_VECTORS
from wdfhil.errors import ConfigError, DeviceProtocolError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 0
DEVICE_PEER_ID = 0
MAX_PEER_ID = 0xFFFF           # doorbell values carry the peer in 16 bits
SEND_TIMEOUT_S = 5.0
_UNIX_PATH_MAX = 107


def new_eventfd() -> int:
    """A non-blocking, close-on-exec eventfd (counter semantics: writes add up)."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def drain_eventfd(fd: int) -> int:
    """Read and reset an eventfd's counter; 0 if nothing was signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def create_shared_memory(name: str, size: int) -> int:
    """An anonymous memfd of ``size`` bytes (a power of two, as PCI BARs must be).

    memfd leaves nothing in /dev/shm or the file system; the size is sealed so
    no peer can shrink it under the device's mapping.
    """
    if size <= 0 or size & (size - 1):
        raise ConfigError("shared memory size must be a power of two", field="size", value=size)
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class ClientPeer:
    """A connected ivshmem client (a QEMU ivshmem device) and its own eventfds."""

    peer_id: int
    sock: socket.socket
    eventfds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.eventfds:
            _close_quietly(fd)
        self.eventfds.clear()
        self.sock.close()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class IvshmemServer:
    """Listens on ``socket_path`` and serves ``shm_fd`` and eventfds to clients.

    ``own_eventfds[v]`` is the device's doorbell for vector ``v``: QEMU writes
    it when the guest rings ``DEVICE_PEER_ID``. :meth:`interrupt` writes a
    client's own eventfd, which QEMU turns into MSI-X vector ``v``. The
    callbacks run in the selector's thread.
    """

    def __init__(self, socket_path: str | os.PathLike[str], shm_fd: int, *,
                 vectors: int = NUM_VECTORS,
                 on_peer_connected: Callable[[int], None] | None = None,
                 on_peer_left: Callable[[int], None] | None = None) -> None:
        self.socket_path = Path(socket_path)
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise ConfigError("UNIX socket path is too long (at most 107 bytes)",
                              field="socket_path", value=str(self.socket_path))
        if not 1 <= vectors <= 64:
            raise ConfigError("vectors must be 1..64", field="vectors", value=vectors)
        self.shm_fd = shm_fd
        self.vectors = vectors
        self.on_peer_connected = on_peer_connected
        self.on_peer_left = on_peer_left
        self.own_eventfds: list[int] = []
        self._clients: dict[int, ClientPeer] = {}
        self._lock = threading.Lock()
        self._next_id = DEVICE_PEER_ID + 1
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self.connections_total = 0

    # ---- lifecycle -------------------------------------------------------------
    def listen(self) -> None:
        """Create the device's eventfds and listen (before QEMU starts)."""
        if self._listener is not None:
            return
        try:
            self.own_eventfds = [new_eventfd() for _ in range(self.vectors)]
            if self.socket_path.is_socket():
                self.socket_path.unlink()   # stale socket of a crashed run in our own folder
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._listener = listener
            listener.bind(str(self.socket_path))
            os.chmod(self.socket_path, stat.S_IRUSR | stat.S_IWUSR)
            listener.listen(8)
            listener.setblocking(False)
        except BaseException:
            self.close()
            raise

    def register(self, selector: selectors.BaseSelector) -> None:
        """Watch the listening socket (and later each client) with ``selector``.

        Each key's data is a callable to run when the fd is readable.
        """
        if self._listener is None:
            raise DeviceProtocolError("IvshmemServer.register() before listen()")
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        """Drop every client, close every fd, remove the socket file."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            self._unregister(client.sock)
            client.close()
        if self._listener is not None:
            self._unregister(self._listener)
            self._listener.close()
            self._listener = None
            try:
                if self.socket_path.is_socket():
                    self.socket_path.unlink()
            except OSError:
                pass
        for fd in self.own_eventfds:
            _close_quietly(fd)
        self.own_eventfds = []

    # ---- peers -----------------------------------------------------------------
    @property
    def peer_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._clients)

    def client_eventfds(self, peer_id: int) -> list[int]:
        """Client ``peer_id``'s own eventfds (its MSI-X vectors; QEMU holds copies:
        the hot-plug path finds QEMU's numbers for them), empty if it is not connected."""
        with self._lock:
            client = self._clients.get(peer_id)
            return list(client.eventfds) if client is not None else []

    def interrupt(self, peer_id: int, vector: int) -> bool:
        """Raise ``vector`` at client ``peer_id``; False if it is not connected."""
        with self._lock:
            client = self._clients.get(peer_id)
            if client is None or not 0 <= vector < len(client.eventfds):
                return False
            os.eventfd_write(client.eventfds[vector], 1)
            return True

    def interrupt_all(self, vector: int) -> int:
        """Raise ``vector`` at every connected client; how many were signalled."""
        count = 0
        with self._lock:
            for client in self._clients.values():
                if 0 <= vector < len(client.eventfds):
                    os.eventfd_write(client.eventfds[vector], 1)
                    count += 1
        return count

    def _allocate_id(self) -> int:
        for _ in range(MAX_PEER_ID):
            candidate = self._next_id
            self._next_id = candidate + 1 if candidate < MAX_PEER_ID else DEVICE_PEER_ID + 1
            if candidate not in self._clients:
                return candidate
        raise DeviceProtocolError("no free ivshmem peer id (65535 clients connected?)")

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.settimeout(SEND_TIMEOUT_S)
        with self._lock:
            peer_id = self._allocate_id()
            client = ClientPeer(peer_id, conn)
            try:
                client.eventfds = [new_eventfd() for _ in range(self.vectors)]
            except OSError:
                client.close()
                raise
            self._clients[peer_id] = client
        self.connections_total += 1
        # Before the client hears anything: the device is ready for it (fresh
        # rings) by the time it could ring.
        if self.on_peer_connected:
            self.on_peer_connected(peer_id)
        try:
            self._send_setup(client)
        except OSError as exc:
            log.warning("ivshmem client %d failed during setup: %s", peer_id, exc)
            self.drop_peer(peer_id)
            return
        conn.setblocking(False)
        if self._selector is not None:
            self._selector.register(conn, selectors.EVENT_READ, lambda: self._on_readable(client))
        log.info("ivshmem client %d connected", peer_id)

    def _send_setup(self, client: ClientPeer) -> None:
        send = _Sender(client.sock)
        send(PROTOCOL_VERSION)
        send(client.peer_id)
        send(-1, self.shm_fd)
        for fd in self.own_eventfds:
            send(DEVICE_PEER_ID, fd)
        for fd in client.eventfds:
            send(client.peer_id, fd)

    def _on_readable(self, client: ClientPeer) -> None:
        """Clients never send: readable means gone (EOF) or misbehaving."""
        try:
            data = client.sock.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            log.warning("ivshmem client %d sent %d unexpected bytes; dropping it",
                        client.peer_id, len(data))
        self.drop_peer(client.peer_id)

    def drop_peer(self, peer_id: int) -> None:
        """Forget a client: close its socket and eventfds."""
        with self._lock:
            client = self._clients.pop(peer_id, None)
        if client is None:
            return
        self._unregister(client.sock)
        client.close()
        log.info("ivshmem client %d left", peer_id)
        if self.on_peer_left:
            self.on_peer_left(peer_id)

    def _unregister(self, sock: socket.socket) -> None:
        if self._selector is None:
            return
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass


class _Sender:
    """Sends protocol messages: an 8-byte little-endian integer, optionally one fd."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __call__(self, value: int, fd: int | None = None) -> None:
        data = struct.pack("<q", value)
        if fd is None:
            sent = self.sock.send(data)
        else:
            sent = socket.send_fds(self.sock, [data], [fd])
        if sent != len(data):
            raise OSError(f"short send of an ivshmem message ({sent} of 8 bytes)")
