"""Private folders (0700) that are always removed, and the user's cache folder.

Run folders hold sockets, keys and guest RAM; nobody else on the machine may
read them, and none may outlive a run.

Every run folder (a folder made here whose name starts with
:data:`RUN_FOLDER_PREFIX`, ``wdfhil-``: a VM's, a snapshot's, a device's)
carries a *liveness lock*: the file :data:`LIVENESS_FILE` inside it, on
which the making process holds an exclusive ``flock`` until it removes the
folder. (Other private folders, such as the image cache's ``.build-*``
scratch folders that are renamed into the cache, get none: nothing sweeps
them by lock, and the lock file would be published with them.) The kernel drops the lock
when the process dies, however it dies, and a lock is a property of the
file, not of a pid, so another PID namespace sharing ``/dev/shm`` sees it
too. A sweeper (``orchestrator.cleanup``) removes a folder only when
:func:`folder_liveness` says nobody holds its lock; pids in folder names
are only for people reading them.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator

LIVENESS_FILE = ".wdfhil-alive.lock"
RUN_FOLDER_PREFIX = "wdfhil-"   # folders named so get a liveness lock and may be swept

_held: dict[str, int] = {}          # folder -> fd holding its liveness lock
_held_guard = threading.Lock()


def _make_private_path(path: Path) -> None:
    """Create ``path`` and its missing parents 0700 (``mkdir(parents=True, mode=...)``
    gives the parents the umask's mode, 0755 usually)."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # the umask may have taken bits away; never adds any


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$WDFHIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/wdfhil``,
    else ``~/.cache/wdfhil``), created 0700 with every folder it creates (an
    existing cache root of ours is made 0700 too: it holds the guests' SSH
    keys), joined with ``parts``."""
    root = os.environ.get("WDFHIL_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "wdfhil"
    _make_private_path(base)
    info = base.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(base, stat.S_IMODE(info.st_mode) & 0o700)
    path = base.joinpath(*parts)
    _make_private_path(path)
    return path


def hold_liveness_lock(folder: str | Path) -> None:
    """Take the liveness lock of ``folder`` for this process (until
    :func:`release_liveness_lock` or :func:`remove_tree`, or death)."""
    key = os.path.abspath(folder)
    fd = os.open(Path(folder) / LIVENESS_FILE,
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Written only once the lock is held: a sweeper that finds the lock
        # free *and* a pid in the file knows the owner got the lock and let go.
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    with _held_guard:
        previous = _held.pop(key, None)
        _held[key] = fd
    if previous is not None:
        os.close(previous)


def release_liveness_lock(folder: str | Path) -> None:
    """Let go of ``folder``'s liveness lock (its folder may now be swept)."""
    with _held_guard:
        fd = _held.pop(os.path.abspath(folder), None)
    if fd is not None:
        os.close(fd)


class Liveness(enum.Enum):
    """What a folder's liveness lock says about its owner."""

    ALIVE = "alive"            # a process holds the lock
    ABANDONED = "abandoned"    # the owner took the lock and is gone
    UNKNOWN = "unknown"        # no lock file, or one not locked yet: being made, or old


def folder_liveness(folder: str | Path) -> Liveness:
    """Ask the folder's lock, without taking it for longer than the question."""
    try:
        fd = os.open(Path(folder) / LIVENESS_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return Liveness.UNKNOWN
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return Liveness.ALIVE
            raise
        # free: abandoned if the owner had taken it (it writes its pid after locking)
        return Liveness.ABANDONED if os.read(fd, 32).strip() else Liveness.UNKNOWN
    finally:
        os.close(fd)


def make_private_dir(prefix: str, parent: str | Path | None = None) -> Path:
    """A fresh 0700 folder (a run folder, with this process's liveness lock,
    when ``prefix`` starts with ``wdfhil-``); the caller owns its removal
    (see :func:`private_dir`, :func:`remove_tree`)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=str(parent) if parent else None))
    try:
        os.chmod(path, 0o700)
        if prefix.startswith(RUN_FOLDER_PREFIX):
            hold_liveness_lock(path)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def create_private_files(folder: str | Path, *names: str) -> None:
    """Create (or empty-keep) files 0600 in ``folder`` before another program
    writes them: QEMU and ``open()`` create files with the umask's 0644, and
    opening an existing file keeps its mode."""
    for name in names:
        fd = os.open(Path(folder) / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def remove_tree(path: str | Path) -> None:
    """Remove a folder and everything in it (then let go of its liveness lock);
    a folder already gone is fine."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        release_liveness_lock(path)


@contextlib.contextmanager
def private_dir(prefix: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A 0700 folder that is removed on leaving, whatever happens inside."""
    path = make_private_dir(prefix, parent)
    try:
        yield path
    finally:
        remove_tree(path)
