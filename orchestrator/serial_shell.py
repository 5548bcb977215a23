"""Guest commands over the guest's command relay on its second serial port.

A guest restored from a saved state must log in again over SSH before its
first command: under TCG that login (key exchange, a fork of dropbear, all of
it through an empty translation cache) cost ~0.3-0.4 s of a restore that is
otherwise ~0.1 s. The image's init starts ``wdfhil-agent relay /dev/ttyS1``
(``guest_images/guest/agent/relay.c``) before the guest is ready, so in a
saved guest the relay is already waiting on its serial port: a restored
guest's first command costs what the command costs. The serial port is a
QEMU ``isa-serial`` (no PCI device: no ACPI routing at boot) whose chardev
is one end of a socket pair this process holds, so no network is involved.

The relay runs one shell at a time, like an SSH exec channel: started with a
command line, its stdin fed, its stdout and stderr sent back apart, then its
exit status. :class:`RelayChannel` offers what :class:`~orchestrator.guest_shell.
ShellCommands` needs of paramiko's ``Channel``, so :class:`SerialShell` runs
exactly the protocol the SSH session runs. Frames and their meaning are in
``relay.c`` and docs/guest-side.md: ``'W'``, type, u32 shell id, u32 length,
payload.

A serial port carries ~400 KB/s under TCG (QEMU writes each byte on its
own), a tenth of an SSH channel; so when the host can read guest RAM (the VM
passes a reader of its shared RAM file) the relay puts output in a ring in its
locked memory and the line carries only where each piece is (``'o'``/``'e'``
frames, acknowledged with ``'A'``): 64 KiB of output then costs ~what it costs
over SSH, small commands less. The ring's guest-physical pages come in a
``'B'`` frame after the sync; an offset or length outside the ring is refused
(the guest is untrusted; reads go through the guest-RAM view, which refuses
anything outside guest RAM).

The stream has no beginning a restored host can trust (a saved guest may have
been mid-frame), so the first use sends a sync frame with a random nonce and
drops everything until the relay echoes it; the exec and the first command
follow in the same write, without waiting. Each shell has a fresh id; frames
of an older shell are dropped on both sides.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Callable

from orchestrator.guest_shell import (DEFAULT_COMMAND_TIMEOUT, SHELL_COMMAND, SHELL_PRELUDE,
                                      GuestCommandTimeout, GuestHealth, ShellCommands)
from wdfhil.errors import GuestError

log = logging.getLogger(__name__)

RELAY_DEVICE = "/dev/ttyS1"          # the guest's end (the second serial port)
MAGIC = ord("W")
MAGIC_BYTE = b"W"
HEADER = struct.Struct("<BcII")       # magic, type, shell id, payload length
PAYLOAD_MAX = 1 << 20                 # relay.c RELAY_PAYLOAD_MAX
_INPUT_PIECE = 16 << 10               # stdin bytes a frame
# The guest UART's receive trigger level (relay.c sets it): QEMU passes it that many
# bytes at a time, and a tail shorter than that waits for the FIFO timeout (~0.35 ms),
# so every write is padded with zeros (not a magic: the relay skips them) to a multiple.
RX_TRIGGER = 14
_GUEST_TYPES = (b"S", b"B", b"O", b"E", b"o", b"e", b"Z", b"F")
SYNC_BULK = 1                          # relay.c RELAY_SYNC_*: output through the ring,
SYNC_ADOPT = 2                         # the next exec adopts the relay's idle shell,
SYNC_CLOCK = 4                         # the guest's clock set to the host's
PAGE = 4096
ReadMemory = Callable[[int, int], bytes]   # (guest-physical address, length) -> bytes


class RelayClosed(GuestError):
    """The relay's socket is gone (QEMU exited or the VM was closed)."""


class RelayChannel:
    """One relay shell, with the part of paramiko's ``Channel`` interface that
    :class:`~orchestrator.guest_shell.ShellCommands` uses."""

    def __init__(self, link: "RelayLink", shell_id: int) -> None:
        self._link = link
        self.id = shell_id
        self._stdout = bytearray()
        self._stderr = bytearray()
        self.eof_received = False
        self.closed = False
        self.exit_status = -1
        self.status_event = threading.Event()
        self._timeout: float | None = None

    # -- paramiko.Channel's interface ----------------------------------------
    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def sendall(self, data: bytes) -> None:
        """Frames of stdin; socket.timeout if the guest takes none within the timeout."""
        deadline = time.monotonic() + (self._timeout if self._timeout is not None
                                       else DEFAULT_COMMAND_TIMEOUT)
        for start in range(0, max(1, len(data)), _INPUT_PIECE):
            self._link.send(b"I", self.id, data[start:start + _INPUT_PIECE], deadline)

    def recv_ready(self) -> bool:
        return bool(self._stdout)

    def recv_stderr_ready(self) -> bool:
        return bool(self._stderr)

    def recv(self, size: int) -> bytes:
        return self._take(self._stdout, size)

    def recv_stderr(self, size: int) -> bytes:
        return self._take(self._stderr, size)

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def close(self) -> None:
        """Close the shell's pipes in the guest (it reads EOF; nothing is killed), as
        closing an SSH channel does."""
        with self._link.changed:
            if self.closed:
                return
            self.closed = True
            ended = self.eof_received
            self.status_event.set()
            self._link.changed.notify_all()
        if not ended:
            try:
                self._link.send(b"C", self.id, b"", time.monotonic() + 1.0)
            except (OSError, GuestError) as exc:
                log.debug("relay: closing shell %d: %s", self.id, exc)

    # -- the link's side -------------------------------------------------------
    def _take(self, buffer: bytearray, size: int) -> bytes:
        with self._link.changed:
            data = bytes(buffer[:size])
            del buffer[:size]
            return data

    def has_news(self) -> bool:
        return bool(self._stdout or self._stderr or self.eof_received or self.closed)

    def deliver(self, kind: bytes, payload: bytes) -> None:
        """A frame of this shell, under the link's lock."""
        if kind == b"O":
            self._stdout += payload
        elif kind == b"E":
            self._stderr += payload
        elif kind == b"Z":
            self.exit_status = struct.unpack("<i", payload[:4])[0] if len(payload) >= 4 else -1
            self.eof_received = True
            self.status_event.set()
        elif kind == b"F":
            self._stderr += b"wdfhil relay: cannot start the shell: " + payload + b"\n"
            self.eof_received = True
            self.status_event.set()

    def lose(self) -> None:
        """The link is gone: an end without an exit status."""
        self.eof_received = True
        self.closed = True
        self.status_event.set()


class RelayLink:
    """The host's end of the relay: a socket (QEMU's chardev), a thread reading frames."""

    def __init__(self, sock: socket.socket, description: str, *,
                 read_memory: ReadMemory | None = None, set_clock: bool = False) -> None:
        self.description = description
        self._set_clock = set_clock
        self._read_memory = read_memory
        self._ring: list[int] = []            # guest-physical address of each ring page
        self._ring_size = 0
        self._consumed = 0                    # ring bytes read
        self._acknowledged = 0                # of which told to the relay ('A' frames)
        self.ring_bytes = 0                   # output received through the ring, in all
        self._sock = sock
        sock.setblocking(False)
        self.changed = threading.Condition()
        self._send_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        self._nonce: bytes | None = None      # the sync we wait for; None once synced
        self._current: RelayChannel | None = None
        self._next_id = int.from_bytes(os.urandom(4), "little") or 1
        self.lost: str | None = None
        self._synced = False
        self._cut = False                     # a frame was sent only in part
        self._ever_synced = False
        self._thread = threading.Thread(target=self._read_loop, name="wdfhil-relay",
                                        daemon=True)
        self._thread.start()

    # -- sending ------------------------------------------------------------
    def send(self, kind: bytes, shell_id: int, payload: bytes, deadline: float) -> None:
        """One frame, whole; socket.timeout if it is not taken by ``deadline``."""
        self._send_raw(HEADER.pack(MAGIC, kind, shell_id, len(payload)) + payload, deadline)

    def open_shell(self, command: str, prelude: bytes, deadline: float) -> RelayChannel:
        """A new shell running ``command``, and ``prelude`` already sent to it; the
        sync, when needed, goes in front (nothing is waited for)."""
        frames = []
        with self.changed:
            if self._current is not None:
                self._current.lose()
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
            channel = RelayChannel(self, self._next_id)
            self._current = channel
            if not self._synced or self._nonce is not None:
                # after a frame cut short, zeros finish it in the relay (which then skips
                # them looking for a magic) so that the sync frame is read as one
                padding = bytes(HEADER.size + _INPUT_PIECE) if self._cut else b""
                # The link's first sync adopts the shell a saved guest kept (idle: it is
                # saved between commands), sparing a restored guest a fork and an exec
                # through TCG's empty translation cache; later syncs follow a cut frame,
                # after which that shell's state is unknown. The clock goes with every
                # sync: a restored guest's stands where it was saved.
                flags = (SYNC_CLOCK if self._set_clock else 0) \
                    | (SYNC_BULK if self._read_memory is not None else 0)
                if not self._ever_synced:
                    flags |= SYNC_ADOPT
                self._ever_synced = True
                now = time.time_ns()
                self._nonce = os.urandom(16) + struct.pack("<IQI", flags, now // 10**9,
                                                           now % 10**9)
                self._synced, self._cut = True, False
                self._ring, self._ring_size = [], 0
                self._consumed = self._acknowledged = 0
                frames.append(padding + HEADER.pack(MAGIC, b"S", 0, len(self._nonce))
                              + self._nonce)
        body = command.encode()
        frames.append(HEADER.pack(MAGIC, b"X", channel.id, len(body)) + body)
        if prelude:
            frames.append(HEADER.pack(MAGIC, b"I", channel.id, len(prelude)) + prelude)
        self._send_raw(b"".join(frames), deadline)
        return channel

    def _send_raw(self, data: bytes, deadline: float) -> None:
        data += bytes(-len(data) % RX_TRIGGER)
        with self._send_lock:
            view = memoryview(data)
            while view:
                if self.lost is not None:
                    raise RelayClosed(f"the serial command relay of {self.description} is "
                                      f"closed: {self.lost}")
                try:
                    view = view[self._sock.send(view):]
                    continue
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._lose(str(exc))
                    continue
                wait = deadline - time.monotonic()
                if wait <= 0:
                    # a frame cut here leaves the relay mid-frame: the next shell syncs again
                    self._synced = False
                    self._cut = len(view) < len(data)
                    raise socket.timeout("the guest's serial relay takes no input")
                select.select([], [self._sock], [], min(wait, 0.25))

    # -- receiving ------------------------------------------------------------
    def _read_loop(self) -> None:
        pending = bytearray()
        while self.lost is None:
            try:
                ready = select.select([self._sock, self._wake_read], [], [])[0]
            except (OSError, ValueError):
                break
            if self._wake_read in ready:
                break
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._lose(str(exc))
                break
            if not data:
                self._lose("QEMU closed the serial port")
                break
            pending += data
            self._frames(pending)

    def _frames(self, pending: bytearray) -> None:
        at = 0
        with self.changed:
            if self._nonce is not None:
                # before the sync answer, bytes are leftovers of an earlier life (a saved
                # guest may have been mid-frame): look for the answer's exact bytes only
                answer = HEADER.pack(MAGIC, b"S", 0, len(self._nonce)) + self._nonce
                found = pending.find(answer)
                if found < 0:
                    del pending[:max(0, len(pending) - len(answer) + 1)]
                    return
                self._nonce = None
                at = found + len(answer)
            while len(pending) - at >= HEADER.size:
                magic, kind, shell_id, length = HEADER.unpack_from(pending, at)
                if magic != MAGIC or kind not in _GUEST_TYPES or length > PAYLOAD_MAX:
                    # not a frame: resynchronise on the next magic (found by bytes.find,
                    # so a guest sending garbage costs the host little)
                    found = pending.find(MAGIC_BYTE, at + 1)
                    at = found if found >= 0 else len(pending)
                    continue
                if len(pending) - at < HEADER.size + length:
                    break
                payload = bytes(pending[at + HEADER.size:at + HEADER.size + length])
                at += HEADER.size + length
                self._dispatch(kind, shell_id, payload)
            del pending[:at]
            self.changed.notify_all()
            consumed = self._consumed
            # an ack costs the guest a receive: sent once half the ring is read, so the
            # relay (which stops at a full ring) never waits and small outputs cost none
            due = consumed - self._acknowledged >= max(1, self._ring_size // 2)
            if due:
                self._acknowledged = consumed
        if due:
            try:
                self.send(b"A", 0, struct.pack("<Q", consumed), time.monotonic() + 30.0)
            except (OSError, GuestError) as exc:
                self._lose(f"cannot acknowledge output: {exc}")

    def _dispatch(self, kind: bytes, shell_id: int, payload: bytes) -> None:
        if kind == b"B":
            self._take_ring(payload)
            return
        if kind in (b"o", b"e"):
            payload = self._from_ring(payload)
            kind = kind.upper()
        current = self._current
        if current is not None and shell_id == current.id and not current.closed:
            current.deliver(kind, payload)

    def _take_ring(self, payload: bytes) -> None:
        if self._read_memory is None or len(payload) < 4:
            return
        size = struct.unpack_from("<I", payload)[0]
        pages = size // PAGE
        if size % PAGE or len(payload) != 4 + 8 * pages:
            self._lose(f"the relay announced a malformed ring ({len(payload)} bytes)")
            return
        self._ring = list(struct.unpack_from(f"<{pages}Q", payload, 4))
        self._ring_size = size

    def _from_ring(self, payload: bytes) -> bytes:
        """The bytes a ring frame points at (the guest's locked pages, read from RAM)."""
        offset, length = struct.unpack_from("<II", payload) if len(payload) == 8 else (0, -1)
        if not self._ring or length < 0 or offset + length > self._ring_size:
            self._lose(f"the relay sent ring output outside its ring ({payload.hex()})")
            return b""
        assert self._read_memory is not None
        data = bytearray()
        try:
            while length:
                page, within = divmod(offset, PAGE)
                piece = min(length, PAGE - within)
                data += self._read_memory(self._ring[page] + within, piece)
                offset, length = offset + piece, length - piece
        except Exception as exc:    # a page outside guest RAM: the guest lied
            self._lose(f"cannot read the relay's ring in guest RAM: {exc}")
            return b""
        self._consumed += len(data)
        self.ring_bytes += len(data)
        return bytes(data)

    def _lose(self, why: str) -> None:
        with self.changed:
            if self.lost is None:
                self.lost = why
            if self._current is not None:
                self._current.lose()
            self.changed.notify_all()

    def wait(self, channel: RelayChannel, seconds: float) -> bool:
        """Wait up to ``seconds`` for news of ``channel``; True if it has some."""
        with self.changed:
            return self.changed.wait_for(channel.has_news, seconds)

    def close(self) -> None:
        self._lose("closed")
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass
        self._thread.join(timeout=5.0)
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._sock.close()


class SerialShell(ShellCommands):
    """Guest commands on a relay shell (the protocol the SSH session runs)."""

    _send_errors = (OSError, GuestError)

    def __init__(self, sock: socket.socket, description: str, *,
                 health: GuestHealth | None = None,
                 read_memory: ReadMemory | None = None, set_clock: bool = False) -> None:
        """``read_memory``: guest RAM, for output through the relay's ring (else all of
        it crosses the serial line); ``set_clock``: the guest's clock is set to the
        host's as the stream starts (a restored guest's stands where it was saved)."""
        super().__init__(health)
        self.description = f"{description}'s serial relay"
        self._link = RelayLink(sock, self.description, read_memory=read_memory,
                               set_clock=set_clock)

    @property
    def ring_bytes(self) -> int:
        """Output bytes that came through the relay's ring rather than the serial line."""
        return self._link.ring_bytes

    @property
    def lost(self) -> str | None:
        """Why the relay's socket is gone, or None."""
        return self._link.lost

    def _open_shell(self, deadline: float, command: str) -> tuple[Any, str]:
        shell = self._shell
        if shell is not None and not shell.closed and not shell.eof_received:
            return shell, ""
        self._drop_shell()
        if self._link.lost is not None:
            self.health.check(command, grace=1.0)
            raise RelayClosed(f"the serial command relay of {self.description} is closed: "
                              f"{self._link.lost}", command=command)
        try:
            self._shell = self._link.open_shell(SHELL_COMMAND, SHELL_PRELUDE.encode(), deadline)
        except socket.timeout:
            self.health.check(command)
            raise GuestCommandTimeout(f"the guest's serial relay took no command in time "
                                      f"({self.description})", command=command) from None
        return self._shell, ""

    def _wait_readable(self, channel: Any, seconds: float) -> bool:
        return self._link.wait(channel, seconds)

    def close(self) -> None:
        self._drop_shell()
        self._link.close()
