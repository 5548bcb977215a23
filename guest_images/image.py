"""A built guest image as the orchestrator sees it, and its manifest on disk.

An image is a folder in the cache named by its content digest. The
manifest (``image.json``) is written last, and the folder is renamed into
place only when complete, so a folder with a manifest is a whole image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdfhil.errors import ImageBuildError

MANIFEST = "image.json"
MANIFEST_FORMAT = 1
KERNEL_FILE = "vmlinuz"
INITRAMFS_FILE = "initramfs.cpio.gz"
CLIENT_KEY_FILE = "client_key"


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
            "details": self.details,
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
                module_path=data["module_path"], details=data.get("details", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImageBuildError(f"damaged image in {folder}: {exc}") from None
        for path in (image.kernel, image.initramfs, image.client_key):
            if not path.is_file():
                raise ImageBuildError(f"damaged image in {folder}: {path.name} is missing")
        return image
