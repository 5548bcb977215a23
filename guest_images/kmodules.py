"""Kernel modules of the unpacked kernel package, in the order they must load.

The Debian package ships no ``modules.dep`` (``depmod`` runs at install
time, and nothing is installed here), so the dependencies come from each
module's own ``.modinfo`` ``depends=`` line, as ``depmod`` would read them.
The guest kernel cannot decompress modules itself (no MODULE_DECOMPRESS
in Debian 12's cloud kernel), so compressed ones are decompressed here.
"""

from __future__ import annotations

import gzip
import lzma
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from guest_images.apt import require_tool
from guest_images.elf import ElfFile, module_depends
from wdfhil.errors import ImageBuildError

COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")


def canonical_module_name(name: str) -> str:
    """The kernel treats '-' and '_' in module names alike; so do we."""
    return name.replace("-", "_")


def decompress_module(path: Path) -> bytes:
    """The plain ELF bytes of a ``.ko``, ``.ko.xz``, ``.ko.zst`` or ``.ko.gz``."""
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        zstd = require_tool("zstd")
        return subprocess.run([zstd, "-dcq", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


@dataclass(frozen=True)
class KernelModule:
    name: str                 # canonical, e.g. "virtio_net"
    source: Path              # file in the unpacked package (maybe compressed)
    guest_path: str           # "/lib/modules/<release>/kernel/.../virtio_net.ko" (plain)
    data: bytes               # the plain module
    depends: tuple[str, ...]  # canonical names from .modinfo
    vermagic: str


def read_module(data: bytes, source: Path) -> tuple[tuple[str, ...], str]:
    """(depends, vermagic) of a plain module's bytes."""
    info = ElfFile(data, str(source)).modinfo
    vermagic = (info.get("vermagic") or [""])[0]
    if not vermagic:
        raise ImageBuildError(f"{source}: module has no vermagic")
    return tuple(canonical_module_name(d) for d in module_depends(info)), vermagic


def module_file_depends(path: Path) -> tuple[str, ...]:
    """The canonical names a module file's ``depends=`` lists."""
    return read_module(decompress_module(path), path)[0]


class ModuleTree:
    """The modules of one kernel release under an unpacked package root."""

    def __init__(self, package_root: Path, release: str) -> None:
        self.release = release
        self.base = package_root / "lib" / "modules" / release
        if not self.base.is_dir():
            raise ImageBuildError(f"the kernel package has no modules folder lib/modules/{release}")
        self.files: dict[str, Path] = {}
        for path in sorted(self.base.rglob("*.ko*")):
            if path.name.endswith(".ko") or path.name.endswith(COMPRESSED_SUFFIXES):
                stem = path.name[:path.name.index(".ko")]
                self.files.setdefault(canonical_module_name(stem), path)
        self._loaded: dict[str, KernelModule] = {}

    def __contains__(self, name: str) -> bool:
        return canonical_module_name(name) in self.files

    def module(self, name: str) -> KernelModule:
        name = canonical_module_name(name)
        if name not in self._loaded:
            source = self.files.get(name)
            if source is None:
                raise ImageBuildError(f"kernel module '{name}' is not in the kernel package "
                                      f"of release {self.release} (built in, or misspelt?)")
            data = decompress_module(source)
            depends, vermagic = read_module(data, source)
            relative = source.relative_to(self.base).as_posix()
            relative = relative[:relative.index(".ko") + 3]
            self._loaded[name] = KernelModule(
                name, source, f"/lib/modules/{self.release}/{relative}", data, depends, vermagic)
        return self._loaded[name]

    def load_order(self, names: Iterable[str]) -> list[KernelModule]:
        """``names`` and everything they depend on, every module after its dependencies
        (and otherwise in the order asked)."""
        order: list[KernelModule] = []
        done: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = canonical_module_name(name)
            if name in done:
                return
            if name in chain:
                raise ImageBuildError(f"kernel modules depend on each other in a cycle: "
                                      f"{' -> '.join(chain + (name,))}")
            module = self.module(name)
            for dependency in module.depends:
                visit(dependency, chain + (name,))
            done.add(name)
            order.append(module)

        for name in names:
            visit(name, ())
        return order
