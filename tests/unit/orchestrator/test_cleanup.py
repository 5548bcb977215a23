"""Signals become exceptions; held signals come back; stale folders go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from orchestrator.cleanup import (TerminatedBySignal, install_sigterm_handler, signals_deferred,
                                  sweep_stale_folders)


@pytest.fixture
def default_sigterm():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_becomes_an_exception(default_sigterm):
    assert install_sigterm_handler()
    with pytest.raises(TerminatedBySignal) as info:
        signal.raise_signal(signal.SIGTERM)
    assert info.value.signum == signal.SIGTERM and isinstance(info.value, KeyboardInterrupt)


def test_a_foreign_sigterm_handler_is_kept(default_sigterm):
    seen = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    assert not install_sigterm_handler()
    signal.raise_signal(signal.SIGTERM)
    assert seen == [signal.SIGTERM]


def test_signals_are_held_during_cleanup_and_raised_after():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            steps.append("cleanup went on")
    assert steps == ["cleanup went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stale_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"wdfhil-vm-{dead.pid}-abc"
    stale_snap = tmp_path / f"wdfhil-snap-{dead.pid}-abc"
    mine = tmp_path / f"wdfhil-vm-{os.getpid()}-abc"
    alive = tmp_path / "wdfhil-vm-1-abc"
    other = tmp_path / f"something-{dead.pid}-abc"
    for folder in (stale, stale_snap, mine, alive, other):
        folder.mkdir()
        (folder / "ram").write_bytes(b"x")
    removed = sweep_stale_folders((tmp_path,))
    assert sorted(removed) == sorted([stale, stale_snap])
    assert not stale.exists() and mine.exists() and alive.exists() and other.exists()
