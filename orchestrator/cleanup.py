"""Nothing outlives a run: signals become exceptions, and a last-resort registry.

Three layers, from the normal path to the last resort:

1. ``with VM(...)`` unwinds on any exception. SIGINT already raises
   KeyboardInterrupt; :func:`install_sigterm_handler` makes SIGTERM and
   SIGHUP (the terminal closed) raise :class:`TerminatedBySignal` (a
   KeyboardInterrupt) in the main thread too, so a CI runner cancelling a
   job, or a closed terminal, also unwinds the context managers.
   :func:`signals_deferred` keeps a second Ctrl-C from cutting a shutdown
   in half: the signal is held and raised again once cleanup is done.
2. :func:`track` registers a release function with ``weakref.finalize``,
   which runs it when the owner is garbage collected or, at the latest, at
   interpreter exit (for a VM that nobody closed).
3. SIGKILL of the test process runs no Python at all: QEMU dies by
   ``PR_SET_PDEATHSIG`` (see qemu_process), and the folders left behind
   (``wdfhil-vm-*``, ``wdfhil-snap-*`` in /dev/shm, ``wdfhil-dev-*`` in the
   temp dir, any ``wdfhil-*`` made by ``make_private_dir``) are removed by
   the next VM started on the machine or ``wdfhil vm sweep``
   (:func:`sweep_stale_folders`). Liveness is the folder's lock
   (``wdfhil.private_dirs``), which the kernel drops when its owner dies;
   a pid in a name means nothing in another PID namespace, so it is only
   consulted for folders without a lock (made by an older wdfhil), and then
   only once they are :data:`UNLOCKED_GRACE_S` old.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

from wdfhil.private_dirs import RUN_FOLDER_PREFIX, Liveness, folder_liveness, remove_tree

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
FOLDER_PREFIXES = ("wdfhil-vm-", "wdfhil-snap-")
_PID_IN_NAME = re.compile(r"^(?:wdfhil-vm|wdfhil-snap)-(\d+)-")
# A folder without a liveness lock is either being made this instant (the
# lock comes right after mkdir) or was left by a wdfhil without locks.
UNLOCKED_GRACE_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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
    """Make SIGTERM and SIGHUP raise TerminatedBySignal in the main thread.

    Each only when it still has its default action (a program or test
    runner with its own handler keeps it; ``nohup`` keeps SIGHUP ignored)
    and only from the main thread (Python allows no other). Returns whether
    the SIGTERM handler is ours now.
    """
    if not _in_main_thread():
        return False
    ours = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)
            current = _raise_terminated
        ours[sig] = current is _raise_terminated
    return ours[signal.SIGTERM]


_deferring = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the block runs; raise the first one after.

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

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
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


def _abandoned(entry: Path, info: os.stat_result) -> bool:
    """Whether nobody alive owns the folder ``entry`` (see the module's docstring)."""
    liveness = folder_liveness(entry)
    if liveness is not Liveness.UNKNOWN:
        return liveness is Liveness.ABANDONED
    match = _PID_IN_NAME.match(entry.name)
    if match is None:
        return False  # no lock and no pid: nothing tells us its owner is gone
    pid = int(match.group(1))
    if pid == os.getpid() or _pid_alive(pid):
        return False
    return time.time() - info.st_mtime > UNLOCKED_GRACE_S


def sweep_stale_folders(parents: tuple[Path, ...] | None = None) -> list[Path]:
    """Remove our folders whose owner is gone; the removed ones.

    Only this user's ``wdfhil-*`` folders are looked at, and only those whose
    liveness lock nobody holds are removed, so a live run (ours, a
    colleague's, or one in another PID namespace sharing /dev/shm) is safe.
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
            if not entry.name.startswith(RUN_FOLDER_PREFIX):
                continue
            try:
                info = entry.lstat()
            except OSError:
                continue
            if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
                continue
            if not _abandoned(entry, info):
                continue
            log.info("removing %s: its owner is gone", entry)
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
