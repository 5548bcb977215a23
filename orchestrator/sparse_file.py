"""Guest RAM files handled by their data only: copy, checksum, scrub.

A guest's RAM file (``memory-backend-file``, ``share=on``) is sparse: a booted
pc-256m guest has touched a fraction of its 256 MiB and a q35-3g guest far
less of its 3 GiB. Restoring a saved guest starts from a pristine copy of that
file (QEMU's ``x-ignore-shared`` leaves RAM out of the migration stream), so
the copy and its checksum follow the file's data extents (``SEEK_DATA`` /
``SEEK_HOLE``) and leave the holes as holes: cost proportional to what the
guest touched, not to its RAM size. Scrubbing a range (the pool window between
two scenarios) punches a hole (``MADV_REMOVE``): the range reads as zeros at
once, without touching a page.
"""

from __future__ import annotations

import errno
import mmap
import os
import zlib
from pathlib import Path
from typing import Iterator

_PIECE = 8 << 20


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data run of an open file, in order; the whole
    file as one run where the file system cannot tell holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:      # only a hole after offset
                return
            if exc.errno == errno.EINVAL:     # no SEEK_DATA here: all data
                yield offset, size - offset
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            yield start, end - start
        offset = end


def file_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each data run of the file at ``path`` (see :func:`data_extents`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return list(data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def copy_sparse(source: Path, target: Path, *, checksum: bool = False,
                zero_pages_as_holes: bool = False, into_holes: bool = False) -> int | None:
    """Make ``target`` (created if missing, its mode kept otherwise) a copy of
    ``source`` with the same holes.

    ``checksum``: also return the source's :func:`sparse_crc32`, computed in the
    same pass (the data goes through this process: one read of the file, not two).
    Without it the kernel copies (``copy_file_range`` on one file system,
    ``sendfile`` across two: /dev/shm from the cache's disk), about twice as fast.
    ``zero_pages_as_holes``: all-zero pages of the source become holes (a saved
    guest's free memory, zeroed before the save, costs nothing to restore).
    ``into_holes``: ``target`` already has the source's size and holds only holes
    (a fresh RAM file that a starting QEMU may have mapped already): it is neither
    truncated nor resized, only the data is written."""
    if checksum and zero_pages_as_holes:
        raise ValueError("copy_sparse: checksum and zero_pages_as_holes do not go together "
                         "(the checksum is of the source's extents)")
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src).st_size
            if into_holes:
                if os.fstat(dst).st_size != size:
                    raise ValueError(f"copy_sparse: {target} has {os.fstat(dst).st_size} "
                                     f"bytes, not the {size} of {source}")
            else:
                os.ftruncate(dst, 0)              # drop whatever it held: holes read as zeros
                os.ftruncate(dst, size)
            crc = zlib.crc32(size.to_bytes(8, "little")) if checksum else None
            for start, length in data_extents(src, size):
                if zero_pages_as_holes:
                    for at, piece in _pieces(src, start, length, source):
                        _write_nonzero_pages(dst, piece, at)
                    continue
                if crc is None:
                    _copy_range(src, dst, start, length)
                    continue
                crc = zlib.crc32(start.to_bytes(8, "little"), crc)
                for at, piece in _pieces(src, start, length, source):
                    crc = zlib.crc32(piece, crc)
                    os.pwrite(dst, piece, at)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return crc


_ZERO_PAGE = bytes(mmap.PAGESIZE)


def _write_nonzero_pages(fd: int, piece: bytes, at: int) -> None:
    """Write the runs of ``piece`` (at file offset ``at``) that are not all-zero pages;
    offsets are page-aligned: data extents start and end on pages."""
    page = mmap.PAGESIZE
    run_start = None
    for offset in range(0, len(piece), page):
        zero = piece[offset:offset + page] == _ZERO_PAGE[:len(piece) - offset]
        if zero and run_start is not None:
            os.pwrite(fd, piece[run_start:offset], at + run_start)
            run_start = None
        elif not zero and run_start is None:
            run_start = offset
    if run_start is not None:
        os.pwrite(fd, piece[run_start:], at + run_start)


def _pieces(fd: int, start: int, length: int, path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of a data run, read in pieces."""
    done = 0
    while done < length:
        piece = os.pread(fd, min(length - done, _PIECE), start + done)
        if not piece:
            raise OSError(errno.EIO, f"{path}: file shrank while read")
        yield start + done, piece
        done += len(piece)


def _copy_range(src: int, dst: int, start: int, length: int) -> int:
    """Copy a data run in the kernel: ``copy_file_range``, else ``sendfile`` (across
    file systems), else through this process."""
    done = 0
    while done < length:
        at = start + done
        try:
            moved = os.copy_file_range(src, dst, length - done, at, at)
        except OSError as exc:
            if exc.errno not in _NOT_HERE:
                raise
            moved = _copy_by_sendfile(src, dst, at, length - done)
        if moved == 0:
            raise OSError(errno.EIO, f"short copy at offset {at}")
        done += moved
    return done


# copy_file_range / sendfile refusing this pair of files (not an I/O error)
_NOT_HERE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _copy_by_sendfile(src: int, dst: int, at: int, length: int) -> int:
    os.lseek(dst, at, os.SEEK_SET)        # sendfile writes at the target's position
    try:
        return os.sendfile(dst, src, at, min(length, 1 << 30))
    except OSError as exc:
        if exc.errno not in _NOT_HERE:
            raise
    piece = os.pread(src, min(length, _PIECE), at)
    return os.pwrite(dst, piece, at) if piece else 0


def sparse_crc32(path: Path) -> int:
    """CRC-32 over each data run's offset and bytes (holes skipped): checks a
    sparse file in time proportional to its data."""
    crc = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        crc = zlib.crc32(size.to_bytes(8, "little"), crc)
        for start, length in data_extents(fd, size):
            crc = zlib.crc32(start.to_bytes(8, "little"), crc)
            for _at, piece in _pieces(fd, start, length, path):
                crc = zlib.crc32(piece, crc)
    finally:
        os.close(fd)
    return crc


def zero_range(path: Path, offset: int, length: int) -> None:
    """Make ``length`` bytes at ``offset`` of a shared file read as zeros for
    every mapping of it (QEMU's, the device's): a punched hole where the file
    system allows it (nothing touched, memory given back), else written zeros.
    ``offset`` and ``length`` must be page-aligned."""
    if offset % mmap.PAGESIZE or length % mmap.PAGESIZE:
        raise ValueError(f"zero_range needs page-aligned offset and length, "
                         f"not {offset:#x}+{length:#x}")
    if length == 0:
        return
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        with mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=offset) as mapping:
            try:
                mapping.madvise(mmap.MADV_REMOVE)
            except OSError:
                for at in range(0, length, _PIECE):
                    count = min(_PIECE, length - at)
                    mapping[at:at + count] = bytes(count)
    finally:
        os.close(fd)
