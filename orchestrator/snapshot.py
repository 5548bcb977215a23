"""Saved guests: a booted VM written to a file, and new VMs started from it.

A cold boot costs seconds under TCG; restoring a saved guest costs a
fraction of that, so the scenario runner resets a guest between scenarios
by restoring one snapshot again and again. QEMU 7.2 has no ``file:``
migration URI, so the state goes through ``exec:cat``: ``migrate`` to
``exec:cat > FILE`` with the guest stopped (one pass, nothing dirtied
meanwhile), and ``migrate-incoming`` from the file, handed to QEMU as a
descriptor (``fd:``), into a QEMU started with ``-incoming defer`` and the same
machine.

A :class:`Snapshot` owns its file: closing it (or leaving its ``with``
block, or losing the last reference, or the interpreter exiting) removes
it. It remembers the guest config, the image digest and the accelerator
it was taken with, and refuses to restore into anything else.

It also remembers the file's size and CRC-32 (taken right after the save;
~0.07 s per 100 MiB here) and checks them before each restore, so an empty,
truncated or altered file is refused at once as
:class:`~wdfhil.errors.SnapshotCorrupted` instead of failing late in QEMU
(an empty file waited out the whole boot timeout) or, worse, restoring
"successfully". The CRC is computed again only when the file's size, inode
or modification time changed since it was last checked.

Guest RAM is a shared file, so by default a save leaves it out of the
migration stream (QEMU's ``x-ignore-shared`` capability: a state file of a few
hundred KB instead of all of RAM) and keeps a sparse copy of the RAM file
beside the state file, taken while the guest is stopped; a restore copies it
into the new VM's RAM file before ``migrate-incoming`` (:mod:`orchestrator.sparse_file`:
data extents only, so a guest that touched 60 MiB of its 256 costs 60 MiB).
All-zero pages become holes in the copy, so what a restore copies is the data
the guest really holds. ``full=True`` keeps the old all-in-the-stream save. The
RAM copy has its own size and (sparse) CRC-32, checked like the state file's:
the first restore in a process checks it as it copies (one read); later ones
copy in the kernel while QEMU starts (:class:`RamCopy`).

A snapshot that does not own its files (``owned=False``: the cached post-boot
states of :mod:`orchestrator.boot_cache`) never removes them.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
import zlib
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Sequence

from orchestrator.cleanup import folder_parent, track
from orchestrator.guest_config import GuestConfig
from orchestrator.qmp_session import QmpError, QmpSession
from orchestrator.sparse_file import copy_sparse, sparse_crc32
from wdfhil.errors import ConfigError, LaunchError, SnapshotCorrupted
from wdfhil.private_dirs import create_private_files, make_private_dir, remove_tree

if TYPE_CHECKING:
    from guest_images import GuestImage

STATE_FILE = "vm.state"
RAM_COPY_SUFFIX = ".ram"  # the RAM copy sits beside the state file: vm.state.ram
CONSOLE_SUFFIX = ".console"  # the saved guest's console text so far (for diagnostics)
IGNORE_SHARED = "x-ignore-shared"
MIGRATION_TIMEOUT = 300.0
_UNLIMITED_BANDWIDTH = 1 << 40  # bytes/s; the default (128 MiB/s) would throttle the save
MIGRATION_MAGIC = b"QEVM"  # QEMU_VM_FILE_MAGIC, the first bytes of a migration stream


def file_crc32(path: Path) -> int:
    """The CRC-32 of a file, read in 8 MiB pieces."""
    crc = 0
    with open(path, "rb") as handle:
        while piece := handle.read(8 << 20):
            crc = zlib.crc32(piece, crc)
    return crc


def _remove_snapshot_files(paths: tuple[Path, ...], folder: Path | None) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    if folder is not None:
        remove_tree(folder)


class Snapshot:
    """A saved guest state file and what it belongs to."""

    def __init__(self, path: Path, *, config: GuestConfig, image_digest: str, accelerator: str,
                 extra_qemu_args: Sequence[str] = (), folder: Path | None = None,
                 ram_file: Path | None = None, owned: bool = True) -> None:
        self.path = Path(path)
        self.ram_file = Path(ram_file) if ram_file is not None else None  # x-ignore-shared save
        # what the guest had printed on its console when saved (its boot): a restored
        # VM's console log starts with it, so reports and errors show the boot
        self.console_file = self.console_path(self.path)
        self.config = config
        self.image_digest = image_digest
        self.accelerator = accelerator
        self.extra_qemu_args = tuple(extra_qemu_args)
        self.size: int | None = None      # of the file as saved (record())
        self.crc32: int | None = None
        self.ram_size: int | None = None  # of the RAM copy
        self.ram_crc32: int | None = None
        self._checked_stat: tuple[int, int, int] | None = None
        self._checked_ram_stat: tuple[int, int, int] | None = None
        files = (self.path, self.console_file) + ((self.ram_file,) if self.ram_file else ())
        remove = (lambda p=files, f=folder: _remove_snapshot_files(p, f)) if owned else _keep
        self._finalizer = track(self, remove)

    @classmethod
    def new_path(cls, path: str | Path | None) -> tuple[Path, Path | None]:
        """Where to write a snapshot: ``path``, or a fresh private folder
        (0700, in /dev/shm when possible) that the snapshot will own."""
        if path is not None:
            return Path(path), None
        folder = make_private_dir(f"wdfhil-snap-{os.getpid()}-", folder_parent())
        create_private_files(folder, STATE_FILE)  # `cat >` keeps its 0600
        return folder / STATE_FILE, folder

    @staticmethod
    def console_path(state_path: Path) -> Path:
        """Where the console text of the state file ``state_path`` goes."""
        return state_path.with_name(state_path.name + CONSOLE_SUFFIX)

    def console_history(self) -> str:
        """The saved guest's console text ("" when none was kept)."""
        try:
            return self.console_file.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""

    @staticmethod
    def ram_path(state_path: Path) -> Path:
        """Where the RAM copy of the state file ``state_path`` goes."""
        return state_path.with_name(state_path.name + RAM_COPY_SUFFIX)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Remove the state file (and its private folder); idempotent."""
        self._finalizer()

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def record(self) -> None:
        """Note the saved files' sizes and CRC-32s (right after the save)."""
        info = self.path.stat()
        self.size, self.crc32 = info.st_size, file_crc32(self.path)
        self._checked_stat = _stat_key(info)
        if self.ram_file is not None:
            info = self.ram_file.stat()
            self.ram_size, self.ram_crc32 = info.st_size, sparse_crc32(self.ram_file)
            self._checked_ram_stat = _stat_key(info)

    def _verify_ram(self, crc: bool) -> None:
        assert self.ram_file is not None
        where = str(self.ram_file)
        try:
            info = self.ram_file.stat()
        except OSError as exc:
            raise SnapshotCorrupted(f"the snapshot's RAM copy is unreadable: {exc.strerror}",
                                    file=where) from None
        if info.st_size != self.config.memory or (self.ram_size is not None
                                                  and info.st_size != self.ram_size):
            raise SnapshotCorrupted(f"the snapshot's RAM copy has {info.st_size} bytes, not the "
                                    f"guest's {self.config.memory}", file=where)
        if crc and self._ram_unchecked():
            self._check_ram_crc(sparse_crc32(self.ram_file), info)

    def _ram_unchecked(self) -> bool:
        """The RAM copy's CRC-32 is known and its file changed since it was checked."""
        assert self.ram_file is not None
        return self.ram_crc32 is not None and (
            _stat_key(self.ram_file.stat()) != self._checked_ram_stat)

    def _check_ram_crc(self, crc: int, info: os.stat_result) -> None:
        if crc != self.ram_crc32:
            raise SnapshotCorrupted(f"the snapshot's RAM copy is corrupted: CRC-32 {crc:08x}, "
                                    f"{self.ram_crc32:08x} when saved", file=str(self.ram_file))
        self._checked_ram_stat = _stat_key(info)

    def copy_ram(self, target: Path, *, into_holes: bool = False) -> None:
        """Copy the RAM copy into ``target`` (a new VM's RAM file). Its CRC-32 is
        checked in the same pass when the file changed since it was last checked
        (SnapshotCorrupted: the caller removes ``target``): a restore reads the file
        once, not twice (:meth:`check_compatible` leaves that check to here); later
        restores in this process copy in the kernel. ``into_holes``: ``target`` is
        a fresh file of the guest's RAM size, maybe already mapped by QEMU
        (:class:`RamCopy`), so it is not truncated."""
        assert self.ram_file is not None
        info = self.ram_file.stat()
        if not self._ram_unchecked():
            copy_sparse(self.ram_file, target, into_holes=into_holes)
            return
        crc = copy_sparse(self.ram_file, target, checksum=True, into_holes=into_holes)
        assert crc is not None
        self._check_ram_crc(crc, info)

    def verify(self, *, ram_crc: bool = True) -> None:
        """SnapshotCorrupted unless the files are whole and unchanged since the save
        (``ram_crc`` False: the RAM copy's size only; :meth:`copy_ram` checks the rest)."""
        try:
            info = self.path.stat()
            with open(self.path, "rb") as handle:
                head = handle.read(len(MIGRATION_MAGIC))
        except OSError as exc:
            raise ConfigError(f"cannot read the snapshot {self.path}: {exc.strerror}") from None
        where = str(self.path)
        if info.st_size == 0:
            raise SnapshotCorrupted("the snapshot file is empty", file=where)
        if self.size is not None and info.st_size != self.size:
            raise SnapshotCorrupted(f"the snapshot file is truncated or altered: "
                                    f"{info.st_size} bytes, {self.size} when saved", file=where)
        if head != MIGRATION_MAGIC:
            raise SnapshotCorrupted(f"not a QEMU saved state (starts {head!r}, not "
                                    f"{MIGRATION_MAGIC!r})", file=where)
        if self.ram_file is not None:
            self._verify_ram(ram_crc)
        stat_key = _stat_key(info)
        if self.crc32 is None or stat_key == self._checked_stat:
            return
        crc = file_crc32(self.path)
        if crc != self.crc32:
            raise SnapshotCorrupted(f"the snapshot file is corrupted: CRC-32 {crc:08x}, "
                                    f"{self.crc32:08x} when saved", file=where)
        self._checked_stat = stat_key

    def check_compatible(self, config: GuestConfig, image: "GuestImage", *,
                         ram_crc: bool = True) -> None:
        """Refuse to restore into a different machine, image, a closed snapshot
        or a file that is not whole (SnapshotCorrupted); ``ram_crc`` as for
        :meth:`verify`."""
        if self.closed or not self.path.is_file():
            raise ConfigError(f"the snapshot {self.path} is closed or its file is gone")
        if config != self.config:
            raise ConfigError(f"the snapshot was taken with guest config "
                              f"{self.config.name!r} ({self.config.source or 'built in code'}), "
                              f"not with {config.name!r} ({config.source or 'built in code'}) "
                              f"as given", field="config")
        if image.digest != self.image_digest:
            raise ConfigError(f"the snapshot was taken with image {self.image_digest[:12]}, not "
                              f"{image.name} {image.digest[:12]}", field="image")
        self.verify(ram_crc=ram_crc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else str(self.path)
        return f"Snapshot({self.config.name}, {self.accelerator}, {state})"


def _keep() -> None:
    """The finalizer of a snapshot that does not own its files."""


def _stat_key(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_size, info.st_ino, info.st_mtime_ns)


def set_ignore_shared(qmp: QmpSession, on: bool) -> None:
    """Leave shared RAM (guest RAM, the device's BAR2) out of the migration stream."""
    qmp.command("migrate-set-capabilities",
                capabilities=[{"capability": IGNORE_SHARED, "state": on}])


def _wait_for_migration(qmp: QmpSession, what: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.command("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise LaunchError(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise LaunchError(f"{what} did not complete within {timeout:g} s (status {status})")
        time.sleep(0.01)


def save_state(qmp: QmpSession, path: Path, timeout: float = MIGRATION_TIMEOUT, *,
               ram: tuple[Path, Path] | None = None) -> None:
    """Write the guest's state to ``path``; the guest runs on afterwards.

    ``ram`` = (the VM's RAM file, where its copy goes): RAM stays out of the
    stream and is copied while the guest is stopped; None: RAM in the stream."""
    qmp.command("stop")
    try:
        qmp.command("migrate-set-parameters", **{"max-bandwidth": _UNLIMITED_BANDWIDTH})
        set_ignore_shared(qmp, ram is not None)
        qmp.command("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        _wait_for_migration(qmp, "saving the guest", timeout)
        if ram is not None:   # zeroed free memory (boot_cache) is left out: holes
            copy_sparse(*ram, zero_pages_as_holes=True)
    finally:
        try:
            qmp.command("cont")
        except QmpError:
            pass  # QEMU is gone; the caller learns it from its next command


def load_state(qmp: QmpSession, path: Path, timeout: float = MIGRATION_TIMEOUT, *,
               ignore_shared: bool = False) -> None:
    """Load ``path`` into a QEMU started with ``-incoming defer`` and let it run
    (``ignore_shared``: RAM is not in the stream, its file already holds it).

    The file goes to QEMU as an open descriptor (``fd:``), not ``exec:cat`` (a shell
    and a ``cat`` less per restore); its end is QEMU's MIGRATION event, with a look
    at the run state between two waits for it (a QEMU that failed the load exits)."""
    qmp.command("migrate-set-capabilities", capabilities=[
        {"capability": "events", "state": True},
        {"capability": IGNORE_SHARED, "state": ignore_shared}])
    seen = len(qmp.events())
    with open(path, "rb") as state:
        qmp.pass_fd(state.fileno(), _STATE_FD_NAME)
    qmp.command("migrate-incoming", uri=f"fd:{_STATE_FD_NAME}")
    deadline = time.monotonic() + timeout
    while True:
        ended = qmp.wait_event("MIGRATION", 0.1, start=seen, match=_migration_ended)
        status = qmp.command("query-status")["status"]
        if ended is not None and ended["data"]["status"] != "completed":
            raise LaunchError(f"loading the saved guest failed (migration "
                              f"{ended['data']['status']})")
        if status != "inmigrate":
            break
        if time.monotonic() > deadline:
            raise LaunchError(f"loading the saved guest did not finish within {timeout:g} s")
    if status != "running":
        qmp.command("cont")


_STATE_FD_NAME = "wdfhil-state"


def _migration_ended(event: dict) -> bool:
    return event.get("data", {}).get("status") in ("completed", "failed", "cancelled")


class RamCopy:
    """A restore's RAM copy, made in a thread while QEMU starts: QEMU 7.2 reads and
    writes no guest RAM before ``migrate-incoming`` (checked by
    tests/integration/test_incoming_ram.py), so the copy and QEMU's start overlap.
    The load must wait for it (:meth:`wait`): devices read guest RAM as their state
    loads (virtio checks its rings' indexes). The target must already have the
    guest's RAM size (QEMU maps it as it is): the copy only writes data into it,
    never truncates it."""

    def __init__(self, snapshot: Snapshot, target: Path) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(snapshot, target),
                                        name="wdfhil-ram-copy", daemon=True)
        self._thread.start()

    def _run(self, snapshot: Snapshot, target: Path) -> None:
        try:
            snapshot.copy_ram(target, into_holes=True)
        except BaseException as exc:   # handed to wait(), in the caller's thread
            self._error = exc

    def wait(self) -> None:
        """Until the copy is done; its error (SnapshotCorrupted, OSError) if it failed."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
