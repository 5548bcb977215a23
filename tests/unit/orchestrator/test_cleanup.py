"""Signals become exceptions; held signals come back; stale folders go."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cleanup import (UNLOCKED_GRACE_S, TerminatedBySignal, install_sigterm_handler,
                                  signals_deferred, sweep_stale_folders)
from wdfhil.private_dirs import (LIVENESS_FILE, Liveness, folder_liveness, make_private_dir,
                                 remove_tree)


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


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def age(folder, seconds: float = UNLOCKED_GRACE_S + 10) -> None:
    past = time.time() - seconds
    os.utime(folder, (past, past))


def test_unlocked_folders_of_dead_processes_are_removed_once_old(tmp_path):
    """Folders without a liveness lock (an older wdfhil's): the pid rule, after a grace."""
    pid = dead_pid()
    stale = tmp_path / f"wdfhil-vm-{pid}-abc"
    stale_snap = tmp_path / f"wdfhil-snap-{pid}-abc"
    fresh = tmp_path / f"wdfhil-vm-{pid}-new"   # may be a folder being made right now
    mine = tmp_path / f"wdfhil-vm-{os.getpid()}-abc"
    alive = tmp_path / "wdfhil-vm-1-abc"
    no_pid = tmp_path / "wdfhil-dev-abc"
    other = tmp_path / f"something-{pid}-abc"
    for folder in (stale, stale_snap, fresh, mine, alive, no_pid, other):
        folder.mkdir()
        (folder / "ram").write_bytes(b"x")
    for folder in (stale, stale_snap, mine, alive, no_pid, other):
        age(folder)
    removed = sweep_stale_folders((tmp_path,))
    assert sorted(removed) == sorted([stale, stale_snap])
    assert all(folder.exists() for folder in (fresh, mine, alive, no_pid, other))


_MAKE_AND_DIE = """
import os, sys
from wdfhil.private_dirs import make_private_dir
for prefix in sys.argv[2:]:
    folder = make_private_dir(prefix, sys.argv[1])
    (folder / "ram").write_bytes(b"x" * 4096)
os._exit(0)  # no cleanup runs: as if killed
"""


def test_folders_of_a_process_that_died_are_removed_whatever_their_name(tmp_path):
    """A killed DmaSession's device folder (wdfhil-dev-*, no pid in it) is swept too."""
    subprocess.run([sys.executable, "-c", _MAKE_AND_DIE, str(tmp_path), "wdfhil-dev-",
                    "wdfhil-vm-1-", "wdfhil-qemu-"], check=True)
    left = sorted(tmp_path.iterdir())
    assert [p.name.rsplit("-", 1)[0] for p in left] == ["wdfhil-dev", "wdfhil-qemu", "wdfhil-vm-1"]
    assert all(folder_liveness(p) is Liveness.ABANDONED for p in left)
    assert sorted(sweep_stale_folders((tmp_path,))) == left
    assert not list(tmp_path.iterdir())


def test_a_locked_folder_survives_though_its_pid_looks_dead(tmp_path):
    """What another PID namespace sees: the pid in the name is nobody, the lock is held."""
    folder = make_private_dir(f"wdfhil-vm-{dead_pid()}-", tmp_path)
    device = make_private_dir("wdfhil-dev-", tmp_path)
    try:
        age(folder)
        assert folder_liveness(folder) is Liveness.ALIVE
        assert sweep_stale_folders((tmp_path,)) == []
        assert folder.is_dir() and device.is_dir()
    finally:
        remove_tree(folder)
        remove_tree(device)
    assert not folder.exists() and not list(tmp_path.iterdir())


_SWEEP = """
import sys
from pathlib import Path
from orchestrator.cleanup import sweep_stale_folders
print(" ".join(p.name for p in sweep_stale_folders((Path(sys.argv[1]),))))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a PID namespace")
def test_a_sweep_from_another_pid_namespace_keeps_live_folders(tmp_path):
    live = make_private_dir(f"wdfhil-vm-{os.getpid()}-", tmp_path)
    (live / "ram").write_bytes(b"x" * 4096)
    # the control: an unlocked folder of this (live) process, old enough for the pid rule
    unlocked = tmp_path / f"wdfhil-vm-{os.getpid()}-unlocked"
    unlocked.mkdir()
    age(unlocked)
    try:
        swept = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _SWEEP,
             str(tmp_path)], check=True, capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).resolve().parents[3]).stdout.split()
        # our pid means nothing in there: the pid rule took the unlocked folder ...
        assert swept == [unlocked.name] and not unlocked.exists()
        # ... and only the lock kept the live one
        assert (live / "ram").read_bytes() == b"x" * 4096
    finally:
        remove_tree(live)


def test_a_folder_being_made_is_not_swept(tmp_path):
    """Between mkdir and the lock (an empty, unlocked lock file) the folder is left alone."""
    folder = tmp_path / f"wdfhil-vm-{dead_pid()}-new"
    folder.mkdir()
    (folder / LIVENESS_FILE).touch()
    assert folder_liveness(folder) is Liveness.UNKNOWN
    assert sweep_stale_folders((tmp_path,)) == [] and folder.exists()


def test_sighup_becomes_an_exception_like_sigterm(default_sigterm):
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert install_sigterm_handler()
        with pytest.raises(TerminatedBySignal) as info:
            signal.raise_signal(signal.SIGHUP)
        assert info.value.signum == signal.SIGHUP
        steps = []
        with pytest.raises(TerminatedBySignal):
            with signals_deferred():
                signal.raise_signal(signal.SIGHUP)
                steps.append("cleanup went on")
        assert steps == ["cleanup went on"]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_an_ignored_sighup_stays_ignored(default_sigterm):
    """``nohup`` asked for it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert install_sigterm_handler()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
