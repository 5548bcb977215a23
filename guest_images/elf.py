"""Just enough ELF reading for the image builder and its tests.

The builder must know, for files that stay inside a staging tree and are
never run on the host: which shared libraries a program needs (``DT_NEEDED``)
and its program interpreter, whether a program is static, and the
``.modinfo`` strings of a kernel module (``depends=``, ``vermagic=``).
``readelf``/``modinfo`` would answer too, but parsing the few tables here
keeps the builder free of host tools and of the host's own libraries.
Only 64-bit little-endian ELF (x86_64) is read: that is what the images are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from wdfhil.errors import ImageBuildError

ELF_MAGIC = b"\x7fELF"
_PT_INTERP = 3
_PT_DYNAMIC = 2
_SHT_DYNAMIC = 6
_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5


def is_elf(path: Path) -> bool:
    """True when ``path`` is a regular file that starts with the ELF magic."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == ELF_MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


@dataclass(frozen=True)
class Section:
    name: str
    kind: int
    addr: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class Segment:
    kind: int
    offset: int
    vaddr: int
    filesz: int


class ElfFile:
    """A parsed ELF64 LSB file held in memory (programs and modules are small)."""

    def __init__(self, source: str | Path | bytes, name: str | None = None) -> None:
        """Parse a file, or bytes already in memory (``name`` then labels errors)."""
        if isinstance(source, bytes):
            self.path = Path(name or "<memory>")
            self.data = source
        else:
            self.path = Path(source)
            self.data = self.path.read_bytes()
        data = self.data
        if data[:4] != ELF_MAGIC:
            raise ImageBuildError(f"{self.path}: not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ImageBuildError(f"{self.path}: only 64-bit little-endian ELF is supported")
        (self.kind, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize,
         phnum, shentsize, shnum, shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        self.segments = [
            Segment(*self._unpack("<IIQQQQ", phoff + i * phentsize, (0, 2, 3, 5)))
            for i in range(phnum)
        ]
        raw = [self._unpack("<IIQQQQIIQQ", shoff + i * shentsize, (0, 1, 3, 4, 5, 6))
               for i in range(shnum)]
        names_offset = raw[shstrndx][3] if shnum and shstrndx < shnum else 0
        self.sections = [
            Section(self._cstr(names_offset + name), kind, addr, offset, size, link)
            for name, kind, addr, offset, size, link in raw
        ]

    def _unpack(self, fmt: str, offset: int, pick: tuple[int, ...]) -> tuple[int, ...]:
        try:
            values = struct.unpack_from(fmt, self.data, offset)
        except struct.error:
            raise ImageBuildError(f"{self.path}: truncated ELF header tables") from None
        return tuple(values[i] for i in pick)

    def _cstr(self, offset: int) -> str:
        end = self.data.find(b"\0", offset)
        return self.data[offset:end if end >= 0 else len(self.data)].decode("utf-8", "replace")

    def section(self, name: str) -> bytes | None:
        """The bytes of the section called ``name``, or None."""
        for section in self.sections:
            if section.name == name:
                return self.data[section.offset:section.offset + section.size]
        return None

    @property
    def interpreter(self) -> str | None:
        """The program interpreter (``PT_INTERP``), e.g. ``/lib64/ld-linux-x86-64.so.2``."""
        for segment in self.segments:
            if segment.kind == _PT_INTERP:
                raw = self.data[segment.offset:segment.offset + segment.filesz]
                return raw.rstrip(b"\0").decode()
        return None

    @property
    def is_dynamic(self) -> bool:
        """True when the file has a dynamic segment (needs a loader or is a shared library)."""
        return any(segment.kind == _PT_DYNAMIC for segment in self.segments)

    @property
    def needed(self) -> list[str]:
        """The ``DT_NEEDED`` sonames, in file order."""
        dynamic = next((s for s in self.sections if s.kind == _SHT_DYNAMIC), None)
        if dynamic is None:
            return []
        strtab = self.sections[dynamic.link] if dynamic.link < len(self.sections) else None
        if strtab is None:
            return []
        names = []
        for offset in range(dynamic.offset, dynamic.offset + dynamic.size, 16):
            tag, value = struct.unpack_from("<qQ", self.data, offset)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                names.append(self._cstr(strtab.offset + value))
        return names

    @property
    def modinfo(self) -> dict[str, list[str]]:
        """A kernel module's ``.modinfo`` as key -> values (a key may repeat, e.g. alias)."""
        raw = self.section(".modinfo")
        if raw is None:
            raise ImageBuildError(f"{self.path}: no .modinfo section (not a kernel module?)")
        info: dict[str, list[str]] = {}
        for entry in raw.split(b"\0"):
            if b"=" in entry:
                key, _, value = entry.decode("utf-8", "replace").partition("=")
                info.setdefault(key, []).append(value)
        return info


def module_depends(info: dict[str, list[str]]) -> list[str]:
    """The module names of a ``.modinfo``'s ``depends=`` line (empty when it has none)."""
    return [name for value in info.get("depends", []) for name in value.split(",") if name]
