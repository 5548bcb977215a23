"""The ivshmem server protocol, checked message by message with a raw socket,
and the device's behaviour when peers come and go."""

from __future__ import annotations

import os
import socket
import stat
import struct

import pytest

from device_model.abi import BAR2_SIZE, MAGIC, NUM_VECTORS, VECTOR_COMPLETION, VECTOR_SUBMIT
from device_model.device import EchoDevice
from device_model.ivshmem_client import IvshmemClient
from device_model.ivshmem_server import DEVICE_PEER_ID, create_shared_memory
from wdfhil.errors import ConfigError

from device_helpers import open_fds


def recv_message(sock: socket.socket) -> tuple[int, int]:
    data, fds, _flags, _addr = socket.recv_fds(sock, 8, 1)
    assert len(data) == 8
    return struct.unpack("<q", data)[0], (fds[0] if fds else -1)


def test_setup_messages_follow_the_spec(tmp_path):
    with EchoDevice(tmp_path) as dev:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(dev.socket_path))
        received = []
        try:
            messages = [recv_message(sock) for _ in range(3 + 2 * NUM_VECTORS)]
            received = [fd for _v, fd in messages if fd >= 0]
            values = [v for v, _fd in messages]
            has_fd = [fd >= 0 for _v, fd in messages]
            own = values[1]
            assert values == [0, own, -1] + [DEVICE_PEER_ID] * NUM_VECTORS + [own] * NUM_VECTORS
            assert has_fd == [False, False, True] + [True] * (2 * NUM_VECTORS)
            assert own != DEVICE_PEER_ID and 0 < own <= 0xFFFF
            shm_fd = messages[2][1]
            assert os.fstat(shm_fd).st_size == BAR2_SIZE
            assert os.pread(shm_fd, 4, 0) == struct.pack("<I", MAGIC)
            # Our own eventfds are the interrupts: a write from the device arrives.
            assert dev.wait_for_peer(10) == own
            dev.server.interrupt(own, VECTOR_COMPLETION)
            assert os.eventfd_read(messages[3 + NUM_VECTORS + VECTOR_COMPLETION][1]) == 1
        finally:
            for fd in received:
                os.close(fd)
            sock.close()


def test_socket_is_private_and_removed(tmp_path):
    with EchoDevice(tmp_path) as dev:
        mode = os.stat(dev.socket_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not dev.socket_path.exists()
    assert tmp_path.exists()          # the caller's folder stays


def test_own_run_dir_is_0700_and_removed():
    with EchoDevice() as dev:
        assert stat.S_IMODE(os.stat(dev.run_dir).st_mode) == 0o700
        run_dir = dev.run_dir
    assert not run_dir.exists()


def test_peer_leaves_and_a_new_one_connects(tmp_path):
    with EchoDevice(tmp_path) as dev:
        first = IvshmemClient.connect(dev.socket_path)
        assert dev.wait_for_peer(10) == first.peer_id
        first_id = first.peer_id
        first.close()
        dev.wait_for_no_peer(first_id, 10)
        second = IvshmemClient.connect(dev.socket_path)
        try:
            assert second.peer_id != first_id
            assert dev.wait_for_peer(10) == second.peer_id
            assert dev.header()["guest_peer"] == second.peer_id
            # The new peer is served: its doorbell reaches the device.
            second.ring(DEVICE_PEER_ID, VECTOR_SUBMIT)
            second.wait_interrupt(VECTOR_COMPLETION, 0.0)
        finally:
            second.close()
        assert dev.errors == []


def test_two_clients_and_peer_left_message(tmp_path):
    with EchoDevice(tmp_path) as dev:
        a = IvshmemClient.connect(dev.socket_path)
        b = IvshmemClient.connect(dev.socket_path)
        try:
            assert sorted(dev.peers) == sorted([a.peer_id, b.peer_id])
            # Clients only learn about the device, never about each other.
            assert set(a.peers) == {DEVICE_PEER_ID} and set(b.peers) == {DEVICE_PEER_ID}
            assert dev.server.interrupt_all(VECTOR_COMPLETION) == 2
            assert a.wait_interrupt(VECTOR_COMPLETION, 10) == 1
            assert b.wait_interrupt(VECTOR_COMPLETION, 10) == 1
        finally:
            a.close()
            b.close()


def test_misbehaving_client_is_dropped(tmp_path):
    with EchoDevice(tmp_path) as dev:
        client = IvshmemClient.connect(dev.socket_path)
        try:
            client.sock.send(b"clients never talk")
            dev.wait_for_no_peer(client.peer_id, 10)
        finally:
            client.close()
        assert dev.errors == []


def test_close_releases_every_fd(tmp_path):
    before = open_fds()
    dev = EchoDevice(tmp_path, trace_path=tmp_path / "t.jsonl").start()
    clients = [IvshmemClient.connect(dev.socket_path) for _ in range(3)]
    clients[0].close()
    dev.close()
    for c in clients[1:]:
        c.close()
    assert open_fds() == before
    assert list(tmp_path.iterdir()) == [tmp_path / "t.jsonl"]


def test_shared_memory_must_be_a_power_of_two():
    with pytest.raises(ConfigError, match="power of two"):
        create_shared_memory("x", 3 << 20)


def test_socket_path_length_is_checked(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="too long"):
        EchoDevice(deep)
