"""A built guest image as the orchestrator sees it, and its manifest on disk.

An image is a folder in the cache named by its content digest. The
manifest (``image.json``) is written last, and the folder is renamed into
place only when complete, so a folder with a manifest is a whole image.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wdfhil.errors import ImageBuildError

MANIFEST = "image.json"
MANIFEST_FORMAT = 2   # 2: the manifest records each boot file's size and SHA256
KERNEL_FILE = "vmlinuz"
INITRAMFS_FILE = "initramfs.cpio"  # uncompressed: unpacking gzip cost the guest ~0.3 s under TCG
CLIENT_KEY_FILE = "client_key"

# (path, size, mtime_ns, inode) of files this process already hashed and found whole:
# verifying an image again (every cache hit, every boot) costs a stat, not a hash.
_VERIFIED: set[tuple[str, int, int, int]] = set()


class ImageDamaged(ImageBuildError):
    """A cached image file no longer matches what its build recorded (truncated,
    overwritten, deleted): booting it would fail in a way that names no file."""

    def __init__(self, message: str, *, folder: Path, file: str) -> None:
        super().__init__(message)
        self.folder = folder
        self.file = file


def file_record(path: Path) -> dict[str, Any]:
    """Size and SHA256 of ``path``, as the manifest keeps them."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


@dataclass(frozen=True)
class GuestImage:
    """Everything needed to boot an image and log into it.

    ``kernel_cmdline`` holds the recipe's base arguments; the orchestrator
    appends its own (``memmap=`` ...). ``host_key`` is the dropbear host
    key's public OpenSSH line, to pin. ``ready_marker`` is printed on ttyS0
    by init after dropbear listens.
    """

    name: str
    digest: str
    kernel: Path
    initramfs: Path
    kernel_cmdline: tuple[str, ...]
    client_key: Path
    host_key: str
    ssh_user: str
    ready_marker: str
    kernel_version: str
    agent_path: str
    module_path: str
    details: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    files: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def boot_files(self) -> tuple[Path, ...]:
        """What a boot reads from the image folder."""
        return (self.kernel, self.initramfs, self.client_key)

    def with_file_records(self) -> "GuestImage":
        """This image with the size and SHA256 of its boot files (taken when it is built)."""
        return replace(self, files={path.name: file_record(path) for path in self.boot_files})

    def verify(self) -> None:
        """Check every boot file against the size and SHA256 its build recorded;
        :class:`ImageDamaged` names the first file that differs."""
        for path in self.boot_files:
            expected = self.files.get(path.name)
            if expected is None:
                raise self._damaged(path, "the manifest records no digest for it")
            try:
                info = os.stat(path)
            except OSError as exc:
                raise self._damaged(path, exc.strerror or str(exc)) from None
            key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
            if key in _VERIFIED:
                continue
            if info.st_size != expected["size"]:
                raise self._damaged(path, f"{info.st_size} bytes, built with {expected['size']}")
            if file_record(path)["sha256"] != expected["sha256"]:
                raise self._damaged(path, "its SHA256 differs from the one recorded at build time")
            _VERIFIED.add(key)

    def _damaged(self, path: Path, why: str) -> ImageDamaged:
        return ImageDamaged(f"image {self.name} {self.digest[:12]} is damaged: {path.name} "
                            f"in {self.folder}: {why} (`wdfhil image build` rebuilds it)",
                            folder=self.folder, file=path.name)

    @property
    def command_relay(self) -> str:
        """The guest's serial port of the command relay (``/dev/ttyS1``), or '' for an
        image built without one (the host then runs commands over SSH only)."""
        return str(self.details.get("command_relay", ""))

    @property
    def folder(self) -> Path:
        return self.kernel.parent

    @property
    def kernel_release(self) -> str:
        """The guest kernel's release (``uname -r``), e.g. ``6.1.0-57-cloud-amd64``."""
        return self.kernel_version

    @property
    def package_versions(self) -> dict[str, str]:
        """Every Debian package the image was built from -> its exact version."""
        return dict(self.details.get("packages", {}))

    @property
    def lock_state(self) -> str:
        """``pinned`` (built from the lock as committed), ``re-resolved`` (the lock was
        stale and the archive's versions were used) or ``unknown`` (older manifest)."""
        return self.details.get("lock", {}).get("state", "unknown")

    @property
    def provenance(self) -> str:
        """One line for a report: image, kernel and where the package versions came from."""
        kernel_package = self.details.get("kernel_package", "")
        kernel = self.package_versions.get(kernel_package)
        line = (f"image {self.name} {self.digest[:12]}: kernel {self.kernel_release}"
                f"{f' ({kernel})' if kernel else ''}, {len(self.package_versions)} Debian "
                "packages")
        lock = self.details.get("lock", {})
        if lock.get("state") == "re-resolved":
            line += (f" re-resolved from the archive ({Path(lock.get('file', '')).name} "
                     f"is stale: {len(lock.get('changes', []))} changed)")
        elif lock.get("state") == "pinned":
            line += f" as pinned in {Path(lock.get('file', '')).name}"
        return line

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "name": self.name, "digest": self.digest,
            "kernel": self.kernel.name, "initramfs": self.initramfs.name,
            "kernel_cmdline": list(self.kernel_cmdline), "client_key": self.client_key.name,
            "host_key": self.host_key, "ssh_user": self.ssh_user,
            "ready_marker": self.ready_marker, "kernel_version": self.kernel_version,
            "agent_path": self.agent_path, "module_path": self.module_path,
            "details": self.details, "files": self.files,
        }

    def write_manifest(self) -> None:
        (self.folder / MANIFEST).write_text(json.dumps(self.to_manifest(), indent=2) + "\n")

    @classmethod
    def from_folder(cls, folder: Path) -> "GuestImage":
        """Load a published image; a missing or damaged one is an ImageBuildError."""
        try:
            data = json.loads((folder / MANIFEST).read_text())
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"manifest format {data.get('format')!r}")
            image = cls(
                name=data["name"], digest=data["digest"], kernel=folder / data["kernel"],
                initramfs=folder / data["initramfs"],
                kernel_cmdline=tuple(data["kernel_cmdline"]),
                client_key=folder / data["client_key"], host_key=data["host_key"],
                ssh_user=data["ssh_user"], ready_marker=data["ready_marker"],
                kernel_version=data["kernel_version"], agent_path=data["agent_path"],
                module_path=data["module_path"], details=data.get("details", {}),
                files=data.get("files", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImageBuildError(f"damaged image in {folder}: {exc}") from None
        for path in (image.kernel, image.initramfs, image.client_key):
            if not path.is_file():
                raise ImageBuildError(f"damaged image in {folder}: {path.name} is missing")
        return image
