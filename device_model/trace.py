"""The DMA trace: one JSON object per line for every transfer the device made.

When a driver test fails, the question is what the device actually did to
guest memory and when. Each ``dma`` record says when, which direction, which
guest-physical ranges, how many bytes, for which request, and a CRC-32 of the
bytes as they were moved; ``refused``, ``completion``, ``fault`` and
``event`` records fill in the rest. Lines are flushed after every device
pass, so the file is useful even if the process dies.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

TO_DEVICE = "to_device"   # WRITE: the device read guest RAM
TO_GUEST = "to_guest"     # READ: the device wrote guest RAM


def crc32_of(views: Iterable[memoryview | bytes]) -> int:
    """CRC-32 of the concatenation of ``views``, without joining them."""
    crc = 0
    for view in views:
        crc = zlib.crc32(view, crc)
    return crc


class DmaTrace:
    """Appends JSON-lines records to a file (opened 0600, closed by :meth:`close`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._file: IO[str] | None = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if "time" not in record:
            record = {"time": time.time(), **record}
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)

    def dma(self, *, request_id: int, opcode: str, direction: str,
            ranges: list[tuple[int, int]], device_offset: int, length: int, crc32: int,
            fault: str | None = None) -> None:
        record: dict[str, Any] = {
            "type": "dma", "request_id": request_id, "opcode": opcode, "direction": direction,
            "ranges": [[gpa, n] for gpa, n in ranges], "device_offset": device_offset,
            "length": length, "crc32": crc32}
        if fault:
            record["fault"] = fault
        self.write(record)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_trace(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a trace file, in order."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
