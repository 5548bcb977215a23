"""Fixtures for the device model's unit tests: a running EchoDevice with in-process
guest RAM that has a hole (low RAM plus RAM above 4 GiB), and a host-side
driver connected to it through the real ivshmem protocol."""

from __future__ import annotations

from typing import Iterator

import pytest

from device_model.device import EchoDevice
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from wdfhil.physical_memory import InProcessMemory

from device_helpers import holey_memory


@pytest.fixture
def memory() -> InProcessMemory:
    return holey_memory()


@pytest.fixture
def device(tmp_path, memory) -> Iterator[EchoDevice]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    with EchoDevice(run_dir, trace_path=tmp_path / "trace.jsonl") as dev:
        dev.attach_guest_ram(memory)
        yield dev
        assert dev.errors == []


@pytest.fixture
def driver(device) -> Iterator[HostDriver]:
    client = IvshmemClient.connect(device.socket_path)
    drv = HostDriver(client)
    try:
        yield drv
    finally:
        drv.close()
        client.close()
