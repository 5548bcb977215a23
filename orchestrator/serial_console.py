"""The guest's serial console: read continuously, logged, searched for markers.

QEMU writes the console (ttyS0) into one end of a socket pair whose other
end this module reads from a thread, so nothing is lost before anyone
looks, the text goes to a log file in the run folder, and waiting for a
marker wakes up as soon as the line arrives. The reader notices at once
when the guest kernel panics (``Kernel panic``) and when QEMU goes away
(end of stream), so a failed boot is reported in a second rather than at
the end of the boot timeout.
"""

from __future__ import annotations

import codecs
import enum
import socket
import threading
import time
from pathlib import Path

PANIC_MARKER = "Kernel panic"
_MAX_KEPT_CHARS = 4 << 20  # keep at most this much console text in memory


class ConsoleWait(enum.Enum):
    """How a wait for a console marker ended."""

    FOUND = "found"
    PANIC = "kernel panic"
    CLOSED = "console closed (QEMU exited)"
    TIMEOUT = "timeout"


class SerialConsole:
    """Reader of a console socket; ``text()`` is everything read so far."""

    def __init__(self, sock: socket.socket, log_path: Path, *, history: str = "") -> None:
        """``history``: console text from before this QEMU (a restored guest's boot),
        already in ``log_path``; ``text()`` starts with it."""
        self._sock = sock
        self.log_path = Path(log_path)
        self._chunks: list[str] = []
        self._length = 0
        self._dropped = 0  # characters dropped from the front to bound memory
        self._closed = False
        self._panic_at: int | None = None
        self._recent = ""  # the last characters read, for a marker split across reads
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read_loop, name="wdfhil-console",
                                        daemon=True)
        self._append(history)

    def start(self) -> "SerialConsole":
        self._thread.start()
        return self

    # -- reading ------------------------------------------------------------
    def _read_loop(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with open(self.log_path, "ab", buffering=0) as log_file:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                log_file.write(data)
                self._append(decoder.decode(data))
        self._append(decoder.decode(b"", final=True))
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _append(self, text: str) -> None:
        if not text:
            return
        with self._changed:
            # The marker can straddle any number of chunks (under load QEMU's serial
            # output arrives a few characters per recv): the last len(marker) - 1
            # characters read are kept apart rather than taken from the last chunks.
            overlap = self._recent
            self._recent = (overlap + text)[-(len(PANIC_MARKER) - 1):]
            self._chunks.append(text)
            self._length += len(text)
            if self._panic_at is None:
                where = (overlap + text).find(PANIC_MARKER)
                if where >= 0:
                    self._panic_at = self._dropped + self._length - len(text) - len(overlap) + where
            if self._length > _MAX_KEPT_CHARS:
                joined = "".join(self._chunks)
                keep = joined[-(_MAX_KEPT_CHARS // 2):]
                self._dropped += len(joined) - len(keep)
                self._chunks = [keep]
                self._length = len(keep)
            self._changed.notify_all()

    # -- queries ------------------------------------------------------------
    def text(self) -> str:
        """The console output read so far (the oldest part may be trimmed)."""
        with self._changed:
            if len(self._chunks) > 1:
                self._chunks = ["".join(self._chunks)]
            return self._chunks[0] if self._chunks else ""

    def tail(self, max_chars: int = 4000) -> str:
        return self.text()[-max_chars:]

    @property
    def position(self) -> int:
        """Characters read so far, counting any trimmed ones (a marker search start)."""
        with self._changed:
            return self._dropped + self._length

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    @property
    def panicked(self) -> bool:
        with self._changed:
            return self._panic_at is not None

    def wait_closed(self, timeout: float) -> bool:
        """Wait until QEMU's end of the console is closed and all of it read."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def wait_for(self, marker: str, timeout: float, *, start: int = 0) -> ConsoleWait:
        """Wait until ``marker`` appears after position ``start``.

        Returns early with PANIC when the kernel panics and CLOSED when QEMU
        closes the console; a marker printed before the panic still counts.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                text = "".join(self._chunks)
                self._chunks = [text] if text else []
                where = text.find(marker, max(0, start - self._dropped))
                if where >= 0 and (self._panic_at is None
                                   or self._dropped + where < self._panic_at):
                    return ConsoleWait.FOUND
                if self._panic_at is not None:
                    return ConsoleWait.PANIC
                if self._closed:
                    return ConsoleWait.CLOSED
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return ConsoleWait.TIMEOUT
                self._changed.wait(remaining)

    def close(self, timeout: float = 10.0) -> None:
        """Stop reading (QEMU is gone or going) and wait for the reader thread."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
