"""The initramfs archive: cpio "newc" written (and read back) in Python.

Why not ``cpio -o``: it takes owners, modes and times from the files on
disk, so a build by an ordinary user would give the guest a ``/root`` owned
by that user's uid (dropbear then refuses ``authorized_keys``), and device
nodes such as ``/dev/console`` (which the kernel needs before ``/init``
mounts devtmpfs) could only be made as root. Writing the format here, every
entry gets uid/gid 0, an exact mode, mtime 0 (the archive is reproducible)
and device nodes need no privilege. The format is the kernel's
(Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
ASCII header, the NUL-terminated name, the data, each padded to 4 bytes,
and a ``TRAILER!!!`` entry.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from wdfhil.errors import ImageBuildError

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_SIZE = 110


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``path`` is relative to the guest root ("bin/sh").

    ``mode`` carries the file type bits (stat.S_IFREG | 0o755 ...); ``data``
    is a regular file's content or a symlink's target; ``rdev`` is
    (major, minor) for device nodes.
    """

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: CpioEntry, name: bytes, size: int) -> bytes:
    nlink = 2 if entry.is_dir else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, size, 0, 0, entry.rdev[0], entry.rdev[1],
              len(name) + 1, 0)
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)


def write_newc(entries: Iterable[CpioEntry], out: BinaryIO) -> None:
    """Write ``entries`` (parents before children) and the trailer to ``out``."""
    ino = 1
    for entry in entries:
        name = entry.path.strip("/").encode()
        if not name:
            raise ImageBuildError("a cpio entry needs a non-empty path")
        ino += 1
        out.write(_header(ino, entry, name, len(entry.data)) + name + b"\0")
        out.write(_pad(_HEADER_SIZE + len(name) + 1))
        out.write(entry.data)
        out.write(_pad(len(entry.data)))
    trailer = TRAILER.encode()
    out.write(_header(0, CpioEntry(TRAILER, 0), trailer, 0) + trailer + b"\0")
    out.write(_pad(_HEADER_SIZE + len(trailer) + 1))


def write_initramfs(entries: Iterable[CpioEntry], path: Path, *, compress: bool = True) -> None:
    """Write a (gzip-compressed) newc archive at ``path``; the kernel unpacks both."""
    with open(path, "wb") as raw:
        if compress:
            # No file name and mtime=0 keep the gzip header reproducible as well.
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6,
                               mtime=0) as packed:
                write_newc(entries, packed)
        else:
            write_newc(entries, raw)


def read_newc(data: bytes) -> Iterator[CpioEntry]:
    """The entries of a newc archive (gzip-compressed or not), trailer excluded."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    offset = 0
    while True:
        header = data[offset:offset + _HEADER_SIZE]
        if len(header) < _HEADER_SIZE or header[:6] != NEWC_MAGIC:
            raise ImageBuildError(f"not a newc cpio archive at byte {offset}")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev_major, rdev_minor, namesize = (
            fields[1], fields[6], fields[9], fields[10], fields[11])
        name_start = offset + _HEADER_SIZE
        name = data[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(_HEADER_SIZE + namesize) % 4)
        if name == TRAILER:
            return
        yield CpioEntry(name, mode, data[data_start:data_start + size], (rdev_major, rdev_minor))
        offset = data_start + size + (-size % 4)


def read_initramfs(path: Path) -> dict[str, CpioEntry]:
    """The members of an initramfs file by path (for inspection and tests)."""
    return {entry.path: entry for entry in read_newc(Path(path).read_bytes())}
