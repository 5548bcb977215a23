"""Saved guests: a booted VM written to a file, and new VMs started from it.

A cold boot costs seconds under TCG; restoring a saved guest costs a
fraction of that, so the scenario runner resets a guest between scenarios
by restoring one snapshot again and again. QEMU 7.2 has no ``file:``
migration URI, so the state goes through ``exec:cat``: ``migrate`` to
``exec:cat > FILE`` with the guest stopped (one pass, nothing dirtied
meanwhile), and ``migrate-incoming`` from ``exec:cat FILE`` into a QEMU
started with ``-incoming defer`` and the same machine.

A :class:`Snapshot` owns its file: closing it (or leaving its ``with``
block, or losing the last reference, or the interpreter exiting) removes
it. It remembers the guest config, the image digest and the accelerator
it was taken with, and refuses to restore into anything else.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Sequence

from orchestrator.cleanup import folder_parent, track
from orchestrator.guest_config import GuestConfig
from orchestrator.qmp_session import QmpError, QmpSession
from wdfhil.errors import ConfigError, LaunchError
from wdfhil.private_dirs import create_private_files, make_private_dir, remove_tree

if TYPE_CHECKING:
    from guest_images import GuestImage

STATE_FILE = "vm.state"
MIGRATION_TIMEOUT = 300.0
_UNLIMITED_BANDWIDTH = 1 << 40  # bytes/s; the default (128 MiB/s) would throttle the save


def _remove_snapshot_files(path: Path, folder: Path | None) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    if folder is not None:
        remove_tree(folder)


class Snapshot:
    """A saved guest state file and what it belongs to."""

    def __init__(self, path: Path, *, config: GuestConfig, image_digest: str, accelerator: str,
                 extra_qemu_args: Sequence[str] = (), folder: Path | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.image_digest = image_digest
        self.accelerator = accelerator
        self.extra_qemu_args = tuple(extra_qemu_args)
        self._finalizer = track(self, lambda p=self.path, f=folder: _remove_snapshot_files(p, f))

    @classmethod
    def new_path(cls, path: str | Path | None) -> tuple[Path, Path | None]:
        """Where to write a snapshot: ``path``, or a fresh private folder
        (0700, in /dev/shm when possible) that the snapshot will own."""
        if path is not None:
            return Path(path), None
        folder = make_private_dir(f"wdfhil-snap-{os.getpid()}-", folder_parent())
        create_private_files(folder, STATE_FILE)  # `cat >` keeps its 0600
        return folder / STATE_FILE, folder

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

    def check_compatible(self, config: GuestConfig, image: "GuestImage") -> None:
        """Refuse to restore into a different machine, image, or a closed snapshot."""
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

    def __repr__(self) -> str:
        state = "closed" if self.closed else str(self.path)
        return f"Snapshot({self.config.name}, {self.accelerator}, {state})"


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


def save_state(qmp: QmpSession, path: Path, timeout: float = MIGRATION_TIMEOUT) -> None:
    """Write the guest's state to ``path``; the guest runs on afterwards."""
    qmp.command("stop")
    try:
        qmp.command("migrate-set-parameters", **{"max-bandwidth": _UNLIMITED_BANDWIDTH})
        qmp.command("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        _wait_for_migration(qmp, "saving the guest", timeout)
    finally:
        try:
            qmp.command("cont")
        except QmpError:
            pass  # QEMU is gone; the caller learns it from its next command


def load_state(qmp: QmpSession, path: Path, timeout: float = MIGRATION_TIMEOUT) -> None:
    """Load ``path`` into a QEMU started with ``-incoming defer`` and let it run."""
    qmp.command("migrate-incoming", uri=f"exec:cat {shlex.quote(str(path))}")
    deadline = time.monotonic() + timeout
    while True:
        status = qmp.command("query-status")["status"]
        if status != "inmigrate":
            break
        if time.monotonic() > deadline:
            raise LaunchError(f"loading the saved guest did not finish within {timeout:g} s")
        time.sleep(0.005)
    if status != "running":
        qmp.command("cont")
