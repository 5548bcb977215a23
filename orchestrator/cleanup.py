"""Nothing outlives a run: signals become exceptions, and a last-resort registry.

Three layers, from the normal path to the last resort:

1. ``with VM(...)`` unwinds on any exception. SIGINT already raises
   KeyboardInterrupt; :func:`install_sigterm_handler` makes SIGTERM raise
   :class:`TerminatedBySignal` (a KeyboardInterrupt) in the main thread too,
   so a CI runner cancelling a job also unwinds the context managers.
   :func:`signals_deferred` keeps a second Ctrl-C from cutting a shutdown
   in half: the signal is held and raised again once cleanup is done.
2. :func:`track` registers a release function with ``weakref.finalize``,
   which runs it when the owner is garbage collected or, at the latest, at
   interpreter exit (for a VM that nobody closed).
3. SIGKILL of the test process runs no Python at all: QEMU dies by
   ``PR_SET_PDEATHSIG`` (see qemu_process), and the run folders left in
   /dev/shm carry the owner's pid in their names, so the next VM started on
   the machine removes those whose owner is dead
   (:func:`sweep_stale_folders`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

from wdfhil.private_dirs import remove_tree

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
FOLDER_PREFIXES = ("wdfhil-vm-", "wdfhil-snap-")
_PID_IN_NAME = re.compile(r"^(?:wdfhil-vm|wdfhil-snap)-(\d+)-")


class TerminatedBySignal(KeyboardInterrupt):
    """SIGTERM (or another stop signal) arrived; raised so ``with`` blocks unwind."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def _raise_terminated(signum: int, frame: Any) -> None:
    raise TerminatedBySignal(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise TerminatedBySignal in the main thread.

    Only when SIGTERM still has its default action (a program or test
    runner with its own handler keeps it) and only from the main thread
    (Python allows no other). Returns whether the handler is ours now.
    """
    if not _in_main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _raise_terminated:
        return True
    if current is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


_deferring = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; raise the first one after.

    Used around shutdown so a Ctrl-C cannot leave QEMU half-stopped. Outside
    the main thread it does nothing (signals are only delivered there).
    """
    global _deferring
    if not _in_main_thread() or _deferring:  # not ours to hold, or held further out
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, hold)
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if pending:
            log.debug("re-raising %s held during cleanup", signal.Signals(pending[0]).name)
            signal.raise_signal(pending[0])


def track(owner: object, release: Callable[[], None]) -> weakref.finalize:
    """Call ``release`` when ``owner`` is collected or at interpreter exit,
    unless the returned finalizer is called (or detached) first.

    ``release`` must not refer to ``owner`` (that would keep it alive).
    """
    return weakref.finalize(owner, release)


def folder_parent() -> Path:
    """Where run and snapshot folders go: /dev/shm (memory) when usable, else the temp dir."""
    if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK | os.X_OK):
        return SHM_DIR
    return Path(tempfile.gettempdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_folders(parents: tuple[Path, ...] | None = None) -> list[Path]:
    """Remove run/snapshot folders whose owning process is dead; the removed ones.

    Only folders owned by this user whose name carries a pid that no longer
    exists are touched, so another live run (ours or a colleague's) is safe.
    """
    if parents is None:
        parents = tuple({folder_parent(), Path(tempfile.gettempdir())})
    removed = []
    for parent in parents:
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _PID_IN_NAME.match(entry.name)
            if not match:
                continue
            try:
                info = entry.lstat()
            except OSError:
                continue
            if info.st_uid != os.getuid() or not entry.is_dir():
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            log.info("removing %s left behind by dead process %d", entry, pid)
            remove_tree(entry)
            removed.append(entry)
    return removed


def owned_folders(pid: int | None = None) -> set[Path]:
    """The run and snapshot folders (RAM and state files inside) of process ``pid``
    (default: this one): what must be gone when its VMs and snapshots are closed."""
    pid = os.getpid() if pid is None else pid
    found: set[Path] = set()
    for parent in {folder_parent(), Path(tempfile.gettempdir())}:
        for prefix in FOLDER_PREFIXES:
            found.update(parent.glob(f"{prefix}{pid}-*"))
    return found


def qemu_children(parent: int | None = None) -> set[int]:
    """Live (not zombie) QEMU processes whose parent is ``parent`` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if int(ppid) == parent and comm.startswith("qemu-system") and state != "Z":
            found.add(int(entry.name))
    return found
