"""The host's side of the guest agent (``/usr/bin/wdfhil-agent``), over SSH.

The agent's state (mlock'ed buffers, the BAR2 mapping) lives only as long
as its process, so there are two ways to drive it:

- :meth:`AgentClient.run`: one process runs a whole scenario step (allocate,
  fill, WRITE, READ, verify, ...) and answers with every step's result;
- :meth:`AgentClient.serve`: an :class:`AgentSession`, a long-lived agent
  (``serve --fifo``) that keeps buffers alive between host actions, for
  tests where the host acts in the middle (inject a stale DMA, then look).

Commands are plain text lines (see docs/guest-side.md); :class:`Step`
builds them so callers never hand-format one, and the ``from_result``
constructors turn answers into typed records. A failed command raises
:class:`~wdfhil.errors.GuestError` with the command and the agent's output;
a guest that dies meanwhile raises :class:`~wdfhil.errors.GuestDied` (from
the machine's ``run``), never a complaint about the image. Every call keeps
its timeout (the machine's ``run`` honours it end to end).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from device_model.abi import CompletionStatus, ErrorReason, Opcode, Segment
from wdfhil.errors import GuestError

AGENT_PATH = "/usr/bin/wdfhil-agent"
DEFAULT_TIMEOUT = 120.0
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")
_sessions = itertools.count(1)


class CommandRunner(Protocol):
    """What the client needs of a VM: run a shell command, get code and output."""

    def run(self, command: str, timeout: float = ...) -> Any: ...


def pattern_bytes(seed: int, length: int, start: int = 0) -> bytes:
    """The agent's fill pattern (agent/buffers.c ``pattern_byte``) for bytes
    ``start .. start+length`` of a buffer filled with ``seed``, so the host
    can check through QMP the very bytes the guest wrote or verified."""
    seed &= 0xFFFFFFFF
    base = (seed * 0x9E3779B1) & 0xFFFFFFFF
    out = bytearray(length)
    for i in range(length):
        v = ((start + i + base) * 0x85EBCA6B) & 0xFFFFFFFF
        v ^= v >> 13
        v = (v * 0xC2B2AE35) & 0xFFFFFFFF
        out[i] = v >> 24
    return bytes(out)


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"buffer name {value!r}: use 1-31 letters, digits, '_', '.', '-'")
    return value


def _options(**options: Any) -> str:
    words = []
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        words.append(f"{key}={value}")
    return (" " + " ".join(words)) if words else ""


class Step:
    """Builders of agent command lines (one per command the agent knows)."""

    @staticmethod
    def alloc(name: str, size: int, *, offset: int = 0, where: str = "any",
              merge: bool = True) -> str:
        """A locked user buffer of ``size`` bytes starting ``offset`` bytes into
        its first page; ``where`` is any, low (below 4 GiB) or high (above)."""
        if where not in ("any", "low", "high"):
            raise ValueError(f"where={where!r}: expected any, low or high")
        return f"alloc {_name(name)} {int(size)}" + _options(offset=offset, where=where,
                                                              merge=merge)

    @staticmethod
    def phys(name: str, gpa: int, size: int) -> str:
        """A guest-physical range (the reserved pool window) through /dev/mem."""
        return f"phys {_name(name)} {gpa:#x} {int(size)}"

    @staticmethod
    def free(name: str) -> str:
        return f"free {_name(name)}"

    @staticmethod
    def fill(name: str, seed: int, *, start: int | None = None, length: int | None = None) -> str:
        return f"fill {_name(name)} {int(seed)}" + _options(start=start, length=length)

    @staticmethod
    def memset(name: str, byte: int, *, start: int | None = None, length: int | None = None) -> str:
        return f"memset {_name(name)} {int(byte)}" + _options(start=start, length=length)

    @staticmethod
    def verify(name: str, seed: int, *, start: int | None = None, length: int | None = None) -> str:
        return f"verify {_name(name)} {int(seed)}" + _options(start=start, length=length)

    @staticmethod
    def watch(name: str, seed: int, *, timeout_ms: int = 5000) -> str:
        """Wait until the buffer stops holding the pattern (or the timeout)."""
        return f"watch {_name(name)} {int(seed)}" + _options(timeout=timeout_ms)

    @staticmethod
    def write(name: str, device_offset: int, *, request_id: int | None = None,
              indirect: bool | None = None, timeout_ms: int | None = None) -> str:
        """WRITE: the device reads the buffer into its memory at ``device_offset``."""
        return f"write {_name(name)} {int(device_offset)}" + _options(
            id=request_id, indirect=indirect, timeout=timeout_ms)

    @staticmethod
    def read(name: str, device_offset: int, *, request_id: int | None = None,
             indirect: bool | None = None, timeout_ms: int | None = None) -> str:
        """READ: the device writes its memory at ``device_offset`` into the buffer."""
        return f"read {_name(name)} {int(device_offset)}" + _options(
            id=request_id, indirect=indirect, timeout=timeout_ms)

    @staticmethod
    def submit(opcode: Opcode | str | int, device_offset: int, segments: Sequence[Segment],
               *, length: int | None = None, request_id: int | None = None,
               indirect: bool | None = None) -> str:
        """A hand-built descriptor (raw segments: for requests the device must refuse)."""
        op = opcode.name if isinstance(opcode, Opcode) else str(opcode)
        segs = "".join(f" seg={s.gpa:#x}:{s.length}" for s in segments)
        return f"submit {op} {int(device_offset)}{segs}" + _options(
            length=length, id=request_id, indirect=indirect)

    @staticmethod
    def device_fill(device_offset: int, length: int, seed: int) -> str:
        return f"device-fill {int(device_offset)} {int(length)} {int(seed)}"

    @staticmethod
    def device_verify(device_offset: int, length: int, seed: int) -> str:
        return f"device-verify {int(device_offset)} {int(length)} {int(seed)}"

    @staticmethod
    def pingpong(count: int, *, warmup: int = 10) -> str:
        return f"pingpong {int(count)}" + _options(warmup=warmup)

    # ---- guest I/O through /dev/wdfioN (the request ring) ----------------------------
    @staticmethod
    def io_open(path: str | None = None, *, nonblock: bool | None = None) -> str:
        """Open the guest I/O node (default /dev/wdfio0; the I/O commands open it if needed)."""
        return "io-open" + (f" {shlex.quote(path)}" if path else "") + _options(nonblock=nonblock)

    @staticmethod
    def io_close() -> str:
        return "io-close"

    @staticmethod
    def io_read(name: str, *, offset: int | None = None, start: int | None = None,
                length: int | None = None) -> str:
        """pread into buffer ``name`` (``start``/``length`` of it) at file ``offset``."""
        return f"io-read {_name(name)}" + _options(offset=offset, start=start, length=length)

    @staticmethod
    def io_write(name: str, *, offset: int | None = None, start: int | None = None,
                 length: int | None = None) -> str:
        """pwrite from buffer ``name`` at file ``offset``."""
        return f"io-write {_name(name)}" + _options(offset=offset, start=start, length=length)

    @staticmethod
    def io_call(major: str, code: int, *, input: str | None = None, output: str | None = None,
                in_start: int | None = None, in_length: int | None = None,
                out_start: int | None = None, out_length: int | None = None,
                offset: int | None = None, errno: bool | None = None,
                alarm_ms: int | None = None) -> str:
        """WH_IOC_CALL: ``major`` read|write|ioctl|internal with IOCTL ``code``, agent
        buffers as input/output; answers the exact NTSTATUS (and the errno with errno=1).
        ``alarm_ms``: a handled SIGALRM that long into the call (cancellation)."""
        return (f"io-call {major} {int(code):#x}"
                + _options(**{"in": input and _name(input), "out": output and _name(output)},
                           in_start=in_start, in_length=in_length, out_start=out_start,
                           out_length=out_length, offset=offset, errno=errno, alarm=alarm_ms))

    @staticmethod
    def io_status(status: int, code: int) -> str:
        """An IOCTL whose input is ``status``: the NTSTATUS and the errno it maps to."""
        return f"io-status {int(status):#x} {int(code):#x}"

    @staticmethod
    def io_poll(*, timeout_ms: int = 0) -> str:
        return "io-poll" + _options(timeout=timeout_ms)

    @staticmethod
    def io_stress(threads: int, count: int, size: int, *, page_offset: int = 0,
                  mode: str = "rw", code: int | None = None, offset: int | None = None) -> str:
        """``threads`` threads, each ``count`` rounds of a pattern through the device
        (rw: pwrite then pread at its own file offset; ioctl: an echo IOCTL ``code``),
        verified; buffers ``page_offset`` bytes into their first page."""
        if mode not in ("rw", "ioctl"):
            raise ValueError(f"mode={mode!r}: expected rw or ioctl")
        return (f"io-stress {int(threads)} {int(count)} {int(size)}"
                + _options(page_offset=page_offset, mode=mode, code=code, offset=offset))


@dataclass(frozen=True)
class GuestBuffer:
    """A buffer the agent holds: where it is, and the segments the device gets."""

    name: str
    kind: str                 # "user" (mlock'ed, pagemap) or "phys" (/dev/mem)
    size: int
    offset: int               # of its first byte within its first page
    gpa: int                  # guest-physical address of its first byte
    frames: tuple[int, ...]   # guest-physical address of each page
    segments: tuple[Segment, ...]
    above_4g: bool
    below_4g: bool

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> "GuestBuffer":
        return cls(name=result["name"], kind=result["kind"], size=result["size"],
                   offset=result["offset"], gpa=result["gpa"], frames=tuple(result["frames"]),
                   segments=tuple(Segment(s["gpa"], s["length"]) for s in result["segments"]),
                   above_4g=result["above_4g"], below_4g=result["below_4g"])


@dataclass(frozen=True)
class CompletionRecord:
    """A completion as the guest read it from the completion ring."""

    request_id: int
    status: CompletionStatus
    reason: ErrorReason
    transferred: int
    sequence: int
    latency_us: float

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> "CompletionRecord":
        c = result["completion"]
        return cls(request_id=c["request_id"], status=CompletionStatus(c["status_code"]),
                   reason=ErrorReason(c["reason_code"]), transferred=c["transferred"],
                   sequence=c["sequence"], latency_us=c["latency_us"])


@dataclass(frozen=True)
class IoResult:
    """A guest I/O call's outcome: the syscall's return value and errno; for
    io-call, the exact NTSTATUS and information the host completed it with."""

    result: int
    errno: int
    errno_name: str               # "" when errno is 0
    status: int | None = None
    information: int | None = None

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> "IoResult":
        return cls(result=result["result"], errno=result["errno"],
                   errno_name=result["errno_name"], status=result.get("status"),
                   information=result.get("information"))


@dataclass(frozen=True)
class Verification:
    """Whether a buffer (or device memory) holds the pattern, and the first difference."""

    match: bool
    checked: int
    mismatches: int
    first_mismatch: int       # -1 when it matches
    changed: bool | None = None   # watch only

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> "Verification":
        return cls(match=result["match"], checked=result["checked"],
                   mismatches=result["mismatches"], first_mismatch=result["first_mismatch"],
                   changed=result.get("changed"))


def _answer(command: str, result: Any, what: str = "guest agent") -> dict[str, Any]:
    """The agent's JSON answer to ``command``; GuestError when it is not one or says
    the command failed (with ``what`` failed first in the message)."""
    text = result.stdout.strip()
    try:
        answer = json.loads(text.splitlines()[-1] if text else "")
    except (ValueError, IndexError):
        answer = None
    if not isinstance(answer, dict):
        # only a missing or foreign agent program points at the image; a guest that
        # died raised GuestDied before we got here, and anything else is the agent's
        hint = " (is the image current?)" if result.exit_code in (126, 127) else ""
        raise GuestError(f"the guest agent did not answer with JSON{hint}",
                         command=command, exit_code=result.exit_code, stdout=result.stdout,
                         stderr=result.stderr)
    if not answer.get("ok"):
        raise GuestError(f"{what}: {answer.get('error', 'failed')}", command=command,
                         exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    return answer


class AgentClient:
    """Runs the guest agent on ``machine`` (a VM: anything with ``run``)."""

    def __init__(self, machine: CommandRunner, *, agent_path: str = AGENT_PATH,
                 device: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.machine = machine
        self.agent_path = agent_path
        self.device = device          # e.g. /dev/wdfhil1; None: the agent's default
        self.timeout = timeout

    def _argv(self) -> str:
        dev = f" --dev {shlex.quote(self.device)}" if self.device else ""
        return f"{shlex.quote(self.agent_path)}{dev}"

    def command(self, line: str, *, timeout: float | None = None) -> dict[str, Any]:
        """One command in its own agent process; its result (GuestError if it failed)."""
        shell = f"{self._argv()} {line}"
        return _answer(shell, self.machine.run(shell, timeout or self.timeout))

    def run(self, *steps: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """All ``steps`` in ONE agent process (buffers live across them); their results.

        GuestError names the step that failed and carries every answer."""
        for step in steps:
            if ";" in step or "\n" in step:
                raise ValueError(f"one step per string, no ';' or newline: {step!r}")
        shell = f"{self._argv()} run {shlex.quote('; '.join(steps))}"
        result = self.machine.run(shell, timeout or self.timeout)
        failed = None
        try:
            failed = json.loads(result.stdout.strip().splitlines()[-1]).get("failed_step")
        except (ValueError, IndexError, AttributeError):
            pass
        which = steps[failed] if isinstance(failed, int) and 0 <= failed < len(steps) else None
        what = f"guest agent step {failed} ({which})" if which else "guest agent"
        return _answer(shell, result, what)["results"]

    def version(self) -> dict[str, Any]:
        return self.command("version")

    def info(self) -> dict[str, Any]:
        """The device header as the guest sees it, plus the interrupt count."""
        return self.command("info")

    def pingpong(self, count: int, *, warmup: int = 10, timeout: float | None = None) -> dict[str, Any]:
        """Doorbell -> completion interrupt round trips (NOP): p50_us, p99_us, ..."""
        return self.command(Step.pingpong(count, warmup=warmup), timeout=timeout)

    def serve(self, *, folder: str | None = None) -> "AgentSession":
        """A long-lived agent keeping its buffers between commands (use ``with``)."""
        return AgentSession(self, folder or f"/run/wdfhil-agent-{next(_sessions)}")


class AgentSession:
    """A ``wdfhil-agent serve --fifo FOLDER`` process in the guest.

    Each :meth:`command` is one short SSH command (``wdfhil-agent call``), so
    it works over the VM's ordinary command channel; the server answers one
    request at a time. Closing asks it to quit and kills it if it does not.
    """

    def __init__(self, client: AgentClient, folder: str) -> None:
        self.client = client
        self.folder = folder
        self.pid: int | None = None

    def start(self) -> "AgentSession":
        folder = shlex.quote(self.folder)
        log = shlex.quote(self.folder + ".log")
        started = self.client.machine.run(
            f"rm -rf {folder}; setsid {self.client._argv()} serve --fifo {folder} "
            f"</dev/null >{log} 2>&1 & echo $!", self.client.timeout)
        try:
            self.pid = int(started.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise GuestError("could not start the guest agent server", command=started.command,
                             exit_code=started.exit_code, stdout=started.stdout,
                             stderr=started.stderr) from None
        self.command("version")   # waits until the FIFOs are there
        return self

    def command(self, line: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Send one command line to the server; its result (GuestError if it failed)."""
        seconds = timeout or self.client.timeout
        shell = (f"{shlex.quote(self.client.agent_path)} call {shlex.quote(self.folder)} "
                 f"{shlex.quote(line)} --timeout {int(seconds * 1000)}")
        return _answer(shell, self.client.machine.run(shell, seconds + 10))

    def close(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            self.command("quit", timeout=10)
        except GuestError:
            pass
        self.client.machine.run(f"kill {pid} 2>/dev/null; rm -rf {shlex.quote(self.folder)}", 30)

    def __enter__(self) -> "AgentSession":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and not issubclass(kind, Exception):
            # Ctrl-C or SIGTERM: the run stops and the guest goes with it. Asking it to
            # quit would wait up to 20 + 30 s on the command channel the interrupted command
            # still holds, while the user waits for the prompt.
            self.pid = None
            return
        self.close()
