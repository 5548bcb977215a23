"""Fixtures for the framework emulator's unit tests (in-process memory, no VM)."""

from __future__ import annotations

import pytest

from framework_emu import Framework, InProcessMemory

MIB = 1 << 20


def make_framework(*, size: int = 32 * MIB, service_name: str = "WDFEcho", **kwargs) -> Framework:
    return Framework(InProcessMemory(size=size), service_name=service_name, **kwargs)


@pytest.fixture
def fx() -> Framework:
    """Verifier on, bug-check mode (the defaults)."""
    return make_framework()


@pytest.fixture
def fx_record() -> Framework:
    """Verifier on, findings recorded and the call goes on."""
    return make_framework(verifier_mode="record")


@pytest.fixture
def fx_off() -> Framework:
    """Verifier off (production layout, no rule checks)."""
    return make_framework(verifier=False)


@pytest.fixture
def make_fx():
    """A factory: make_fx(seed=1, verifier=False, ...) -> Framework."""
    return make_framework
