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
from typing import IO, Any, Callable, Iterable, Iterator

TO_DEVICE = "to_device"   # WRITE: the device read guest RAM
TO_GUEST = "to_guest"     # READ: the device wrote guest RAM


def crc32_of(views: Iterable[memoryview | bytes]) -> int:
    """CRC-32 of the concatenation of ``views``, without joining them."""
    crc = 0
    for view in views:
        crc = zlib.crc32(view, crc)
    return crc


DEFAULT_MAX_BYTES = 256 << 20     # a guest drives the record rate: the file has a ceiling


class DmaTrace:
    """Appends JSON-lines records to a file (opened 0600, closed by :meth:`close`).

    A guest decides how many records there are (every descriptor it submits
    makes some), so the file is capped at ``max_bytes``: the record that would
    cross the cap is replaced by one ``trace_limit`` record, later ones are
    counted in :attr:`dropped`, and :meth:`close` appends one ``trace_dropped``
    record with that count. A reader therefore always knows whether it saw
    everything.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._file: IO[str] | None = os.fdopen(fd, "a", encoding="utf-8")
        self._written = os.fstat(fd).st_size
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if self.dropped:            # past the cap: count, do not even format
            with self._lock:
                self.dropped += 1
            return
        if "time" not in record:
            record = {"time": time.time(), **record}
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                return
            if self._written + len(line) > self.max_bytes - 256:   # room for the two notes
                self.dropped += 1
                line = json.dumps({"time": record["time"], "type": "trace_limit",
                                   "max_bytes": self.max_bytes,
                                   "message": "trace size limit reached; later records "
                                              "are counted, not written"}) + "\n"
            self._file.write(line)
            self._written += len(line)

    def dma(self, *, request_id: int, opcode: str, direction: str,
            ranges: list[tuple[int, int]], device_offset: int, length: int, crc32: int,
            fault: str | None = None) -> None:
        record: dict[str, Any] = {
            "type": "dma", "request_id": request_id, "opcode": opcode, "direction": direction,
            "ranges": [[int(gpa), int(n)] for gpa, n in ranges], "device_offset": device_offset,
            "length": length, "crc32": crc32}
        if fault:
            record["fault"] = fault
        self.write(record)

    @property
    def closed(self) -> bool:
        """Closed: later writes are ignored (a report swaps in a closed one to stop tracing)."""
        return self._file is None

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                if self.dropped:
                    self._file.write(json.dumps({"time": time.time(), "type": "trace_dropped",
                                                 "dropped": self.dropped}) + "\n")
                self._file.close()
                self._file = None


class RateLimit:
    """A token bucket: :meth:`allow` is True for at most ``burst`` calls at once and
    ``per_second`` on average; the calls it refused are counted until
    :meth:`take_suppressed` collects them. ``clock`` is injectable for tests."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


def read_trace(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a trace file, in order."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
