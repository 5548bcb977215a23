"""The few ELF facts the image builder needs, read with pyelftools.

For files that stay inside a staging tree and are never run on the host:
which shared libraries a program needs (``DT_NEEDED``) and its program
interpreter, whether a program is static, and the ``.modinfo`` strings of a
kernel module (``depends=``, ``vermagic=``). pyelftools is pure Python, so
the builder needs neither ``readelf``/``modinfo`` nor the host's libraries.
"""

from __future__ import annotations

import io
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile

from wdfhil.errors import ImageBuildError

ELF_MAGIC = b"\x7fELF"


def is_elf(path: Path) -> bool:
    """True when ``path`` is a regular file that starts with the ELF magic."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == ELF_MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


class ElfFile:
    """An ELF file held in memory (programs and modules are small)."""

    def __init__(self, source: str | Path | bytes, name: str | None = None) -> None:
        """Parse a file, or bytes already in memory (``name`` then labels errors)."""
        if isinstance(source, bytes):
            self.path = Path(name or "<memory>")
            self.data = source
        else:
            self.path = Path(source)
            self.data = self.path.read_bytes()
        if self.data[:4] != ELF_MAGIC:
            raise ImageBuildError(f"{self.path}: not an ELF file")
        try:
            self._elf = ELFFile(io.BytesIO(self.data))
            self._segments = list(self._elf.iter_segments())
            self._sections = list(self._elf.iter_sections())
        except (ELFError, ValueError, OSError) as exc:
            raise ImageBuildError(f"{self.path}: damaged ELF file: {exc}") from None

    def section(self, name: str) -> bytes | None:
        """The bytes of the section called ``name``, or None."""
        for section in self._sections:
            if section.name == name:
                return section.data()
        return None

    @property
    def interpreter(self) -> str | None:
        """The program interpreter (``PT_INTERP``), e.g. ``/lib64/ld-linux-x86-64.so.2``."""
        for segment in self._segments:
            if segment["p_type"] == "PT_INTERP":
                return segment.get_interp_name()
        return None

    @property
    def is_dynamic(self) -> bool:
        """True when the file has a dynamic segment (needs a loader or is a shared library)."""
        return any(segment["p_type"] == "PT_DYNAMIC" for segment in self._segments)

    @property
    def needed(self) -> list[str]:
        """The ``DT_NEEDED`` sonames, in file order."""
        tables = [s for s in self._sections if isinstance(s, DynamicSection)] or \
                 [s for s in self._segments if isinstance(s, DynamicSegment)]
        try:
            return [tag.needed for table in tables[:1] for tag in table.iter_tags()
                    if tag.entry.d_tag == "DT_NEEDED"]
        except (ELFError, ValueError) as exc:
            raise ImageBuildError(f"{self.path}: damaged dynamic table: {exc}") from None

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
