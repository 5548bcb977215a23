"""The guest's root file system, assembled in memory before it becomes a cpio.

:class:`GuestTree` holds the entries (exact modes, owner root) and creates
parent folders as needed. :class:`StagingTree` is the folder the recipe's
packages were unpacked into; installing a program from it brings along the
symlinks it goes through and, for an ELF program, its interpreter and every
shared library its ``NEEDED`` entries name, looked up INSIDE the staging tree
(never on the host, whose libraries may differ from the packages pinned).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path, PurePosixPath

from guest_images.cpio import CpioEntry
from guest_images.elf import ElfFile, is_elf
from wdfhil.errors import ImageBuildError

# Where the guest's dynamic loader looks (Debian's multiarch layout first).
LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                "/lib", "/usr/lib")
_MAX_SYMLINKS = 40


def _norm(path: str) -> str:
    """A guest path without a leading slash, '.' or '..' ("usr/lib/x")."""
    parts: list[str] = []
    for part in PurePosixPath("/" + path).parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


class GuestTree:
    """The entries of the guest root, by normalized path."""

    def __init__(self) -> None:
        self._entries: dict[str, CpioEntry] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._entries

    def get(self, path: str) -> CpioEntry | None:
        return self._entries.get(_norm(path))

    def _put(self, entry: CpioEntry) -> None:
        path = _norm(entry.path)
        if not path:
            raise ImageBuildError("cannot replace the guest root folder")
        parent = path.rpartition("/")[0]
        if parent and parent not in self._entries:
            self.add_dir(parent)
        existing = self._entries.get(path)
        if existing is not None and existing.is_dir and not entry.is_dir:
            raise ImageBuildError(f"/{path} is a folder in the image and cannot become a file")
        self._entries[path] = CpioEntry(path, entry.mode, entry.data, entry.rdev)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        existing = self.get(path)
        if existing is not None and existing.is_symlink:
            return  # e.g. /lib64 is a folder in one package and a link in none: keep it
        self._put(CpioEntry(path, stat.S_IFDIR | mode))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._put(CpioEntry(path, stat.S_IFREG | mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        self._put(CpioEntry(path, stat.S_IFLNK | 0o777, target.encode()))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._put(CpioEntry(path, stat.S_IFCHR | mode, b"", (major, minor)))

    def entries(self) -> list[CpioEntry]:
        """All entries, every folder before what it contains. The root itself comes
        first: without it the kernel leaves the guest's "/" world-writable (1777)."""
        root = CpioEntry(".", stat.S_IFDIR | 0o755)
        return [root] + [self._entries[path] for path in sorted(self._entries)]

    @property
    def data_size(self) -> int:
        return sum(len(entry.data) for entry in self._entries.values())


class StagingTree:
    """A folder with packages unpacked into it, seen as the guest would see it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def host_path(self, guest_path: str) -> Path:
        return self.root / _norm(guest_path)

    def resolve(self, guest_path: str) -> str:
        """Follow symlinks of ``guest_path`` inside the tree (absolute targets stay inside)."""
        parts = _norm(guest_path).split("/")
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            candidate = "/".join(resolved + [part])
            host = self.root / candidate
            if host.is_symlink():
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise ImageBuildError(f"too many symlinks resolving {guest_path}")
                target = os.readlink(host)
                base = "" if target.startswith("/") else "/".join(resolved)
                parts = _norm(f"{base}/{target}").split("/") + parts
                resolved = []
            else:
                resolved.append(part)
        return "/".join(resolved)

    def exists(self, guest_path: str) -> bool:
        return os.path.lexists(self.host_path(guest_path))

    def install(self, tree: GuestTree, guest_path: str, *, needed_by: str | None = None) -> None:
        """Copy ``guest_path`` into ``tree`` with the symlinks it goes through and, for an
        ELF program or library, its interpreter and shared libraries."""
        path = _norm(guest_path)
        if path in tree:
            return
        self._install_parents(tree, path)
        host = self.root / path
        if host.is_symlink():
            target = os.readlink(host)
            tree.add_symlink(path, target)
            base = "" if target.startswith("/") else path.rpartition("/")[0]
            self.install(tree, f"{base}/{target}", needed_by=needed_by or f"/{path}")
            return
        if not host.is_file():
            who = f" (needed by {needed_by})" if needed_by else ""
            raise ImageBuildError(f"/{path}{who} is not in any of the staged packages")
        tree.add_file(path, host.read_bytes(), stat.S_IMODE(host.stat().st_mode))
        if is_elf(host):
            self._install_elf_dependencies(tree, path, ElfFile(host))

    def _install_parents(self, tree: GuestTree, path: str) -> None:
        """Parent folders that are symlinks in the staging tree stay symlinks."""
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in tree and (self.root / parent).is_symlink():
                self.install(tree, parent)

    def _install_elf_dependencies(self, tree: GuestTree, path: str, elf: ElfFile) -> None:
        if elf.interpreter:
            self.install(tree, elf.interpreter, needed_by=f"/{path}")
        for soname in elf.needed:
            self.install(tree, self.find_library(soname, needed_by=f"/{path}"),
                         needed_by=f"/{path}")

    def find_library(self, soname: str, *, needed_by: str) -> str:
        for folder in LIBRARY_DIRS:
            candidate = f"{folder}/{soname}"
            if self.exists(candidate):
                return candidate
        raise ImageBuildError(
            f"the shared library {soname} needed by {needed_by} is in none of the staged "
            "packages: add the Debian package that provides it to the recipe's `packages:` "
            f"(on a Debian host, `dpkg -S {soname}` names it)")

    def busybox_applets(self, busybox: str) -> list[str]:
        """Guest paths of every applet of the staged busybox (it must be static: it runs
        here, on the build host, to list them)."""
        host = self.host_path(self.resolve(busybox))
        if not is_elf(host) or ElfFile(host).is_dynamic:
            raise ImageBuildError(f"{busybox} must be a static busybox (busybox-static)")
        try:
            listing = subprocess.run([str(host), "--list-full"], capture_output=True, text=True,
                                     check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ImageBuildError(f"cannot list the applets of {busybox}: {exc}") from None
        # "linuxrc" has no folder: it is only for initrd boots, not an applet to keep.
        return ["/" + line.strip() for line in listing.splitlines() if "/" in line.strip()]
