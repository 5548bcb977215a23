"""A built-looking image in a private image store (manifest and stand-in files, no
build), for the tests of ``wdfhil image list|clean`` and of the post-boot states
that live in an image's folder."""

from __future__ import annotations

from pathlib import Path

from guest_images.image import GuestImage


def stored_image(cache_root: Path, digest: str, name: str = "debian12-cloud") -> Path:
    """The folder of a stand-in image ``name``/``digest`` under ``cache_root``'s store."""
    folder = cache_root / "images" / name / digest
    folder.mkdir(parents=True)
    for file_name in ("vmlinuz", "initramfs.cpio.gz", "client_key"):
        (folder / file_name).write_bytes(b"x")
    GuestImage(name, digest, folder / "vmlinuz", folder / "initramfs.cpio.gz",
               ("console=ttyS0",), folder / "client_key", "ssh-ed25519 AAAA", "root",
               "WDFHIL-READY", "6.1.0-0-test", "/usr/bin/wdfhil-agent",
               "/lib/modules/wdfhil/wdfhil_pci.ko").write_manifest()
    return folder
