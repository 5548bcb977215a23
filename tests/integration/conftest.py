"""Shared by the device tests on a paused real QEMU: every test here starts
QEMU (marked e2e, skipped without qemu-system-x86_64) and gets a started
EchoDevice in a private folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_paused_qemu import qemu_available, started_device

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip = None if qemu_available() else pytest.mark.skip(reason="qemu-system-x86_64 not installed")
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            if skip is not None:
                item.add_marker(skip)


@pytest.fixture
def device(tmp_path):
    with started_device(tmp_path) as dev:
        yield dev
