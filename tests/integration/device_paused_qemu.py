"""A real QEMU started paused (-S, no guest OS) for the device model's integration tests.

Small on purpose: the device needs only QEMU's side of things (the ivshmem
handshake, PCI BARs, the RAM file, QMP), which a paused machine provides in
a fraction of a second. Everything it starts or creates is gone after
``close()``, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from device_model.device import EchoDevice
from orchestrator.qmp_session import QmpSession
from wdfhil.private_dirs import make_private_dir, remove_tree

QEMU = "qemu-system-x86_64"
_XP_WORD = re.compile(r"0x([0-9a-fA-F]{8})")


class PausedQemu:
    """``qemu-system-x86_64 -S`` with file-backed shared RAM and a QMP socket."""

    def __init__(self, machine: str, memory: str, extra_args: list[str] | tuple[str, ...] = ()) -> None:
        self.run_dir = make_private_dir("wdfhil-qemu-")
        self.ram_file = self.run_dir / "ram"
        self.qmp_path = self.run_dir / "qmp.sock"
        self.log_path = self.run_dir / "qemu.log"
        self.command_line = [
            QEMU, "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
            "-machine", machine, "-m", memory,
            "-object", f"memory-backend-file,id=ram0,size={memory},mem-path={self.ram_file},share=on",
            "-machine", "memory-backend=ram0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *extra_args]
        self.process: subprocess.Popen[bytes] | None = None
        self.monitor: QmpSession | None = None
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(self.command_line, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
            self._connect(timeout=60.0)
        except BaseException:
            self.close()
            raise

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"QEMU exited with {self.process.returncode}: {self.log()}")
            if self.qmp_path.exists():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(self.qmp_path))
                except OSError:
                    sock.close()
                else:
                    monitor = QmpSession("paused-qemu")
                    try:
                        monitor.connect(sock, timeout=max(1.0, deadline - time.monotonic()))
                    except BaseException:
                        monitor.close()
                        raise
                    self.monitor = monitor
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no QMP socket from QEMU within {timeout} s: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    # The QMP session interface the VM layer's hot-plug takes.
    def command(self, name: str, **args: Any) -> Any:
        assert self.monitor is not None
        return self.monitor.command(name, **args)

    def events(self) -> list[dict[str, Any]]:
        assert self.monitor is not None
        return self.monitor.events()

    def wait_event(self, name: str, timeout: float, **kwargs: Any) -> dict[str, Any] | None:
        assert self.monitor is not None
        return self.monitor.wait_event(name, timeout, **kwargs)

    def hmp(self, line: str) -> str:
        return str(self.command("human-monitor-command", **{"command-line": line}))

    def read_words(self, gpa: int, count: int) -> list[int]:
        """``xp /Nwx``: u32 words of guest-physical memory as QEMU sees them."""
        return [int(w, 16) for w in _XP_WORD.findall(self.hmp(f"xp /{count}wx {gpa:#x}"))][:count]

    def run_until(self, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        """Let the firmware run (``cont``) until ``predicate()``, then pause again."""
        self.command("cont")
        try:
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"condition not reached within {timeout} s")
                time.sleep(0.05)
        finally:
            self.command("stop")

    def kill(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        remove_tree(self.run_dir)

    def __enter__(self) -> "PausedQemu":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qemu_available() -> bool:
    return any(os.access(Path(d) / QEMU, os.X_OK) for d in os.environ.get("PATH", "").split(":"))



@contextlib.contextmanager
def started_device(tmp_path: Path) -> Iterator[EchoDevice]:
    """A started EchoDevice with its socket in a private folder; checks it had no internal error."""
    run_dir = tmp_path / "dev"
    run_dir.mkdir(mode=0o700)
    with EchoDevice(run_dir) as dev:
        yield dev
        assert dev.errors == []
