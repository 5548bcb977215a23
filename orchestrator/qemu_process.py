"""One QEMU process: spawned so it cannot outlive us, stopped by a ladder.

QEMU must never outlive the Python process that started it, even when that
process is killed with SIGKILL and no cleanup code runs. The kernel can do
that for us: ``PR_SET_PDEATHSIG`` (set in the child between fork and exec)
sends QEMU SIGKILL when the thread that forked it dies. QEMU also gets its
own session so a Ctrl-C at the terminal reaches only the test process, which
then shuts QEMU down in order (QMP ``quit``, SIGTERM, SIGKILL) instead of
QEMU dying half-way through a migration.

The death signal is set by ``setpriv --pdeathsig`` in front of QEMU (so Python
spawns with vfork instead of forking its whole address space); a ``preexec_fn``
does it where ``setpriv`` is missing.

Caveat of the kernel mechanism: the death signal follows the *thread* that
spawned QEMU. Start VMs from a thread that lives as long as they do (the
main thread, normally).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                   ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def die_with_parent() -> None:
    """``preexec_fn``: ask the kernel to SIGKILL this child when its parent dies.

    Runs in the forked child before exec; it only calls prctl (prepared in
    the parent) so it is safe in a threaded parent. If the parent is already
    gone (it died between fork and prctl) the child kills itself.
    """
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


@functools.lru_cache(maxsize=None)
def _death_watch_wrapper() -> tuple[str, ...]:
    """What :func:`die_with_parent` does, as a command prefix: util-linux's ``setpriv``
    sets the death signal, then a shell checks that its parent is still the process
    given as ``$0`` (else it exits) and becomes QEMU (the same pid throughout). Empty
    without ``setpriv`` (then a ``preexec_fn`` does it, which costs a full fork)."""
    setpriv, shell = shutil.which("setpriv"), shutil.which("sh")
    if setpriv is None or shell is None:
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--", shell, "-c",
            '[ "$PPID" = "$0" ] || exit 125; exec "$@"')


def tail_of_file(path: Path, max_chars: int = 4000) -> str:
    """The last ``max_chars`` characters of a text file ('' if unreadable)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_chars * 4))
            data = handle.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[-max_chars:]


class QemuProcess:
    """A spawned QEMU with its stdout/stderr in ``log_path``."""

    def __init__(self, argv: Sequence[str], *, log_path: Path,
                 pass_fds: Sequence[int] = ()) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self._pass_fds = tuple(pass_fds)
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn QEMU; raises OSError when the binary cannot be run."""
        binary = shutil.which(self.argv[0])
        if binary is None:
            raise FileNotFoundError(errno.ENOENT, "not found or not executable", self.argv[0])
        wrapper = _death_watch_wrapper()
        spawn = dict(stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                     pass_fds=self._pass_fds, close_fds=True, start_new_session=True)
        with open(self.log_path, "ab") as log_file:
            if wrapper:   # no preexec_fn: Python spawns with vfork (a fork cost 4-10 ms)
                self._popen = subprocess.Popen([*wrapper, str(os.getpid()), binary,
                                                *self.argv[1:]], stdout=log_file, **spawn)
            else:
                self._popen = subprocess.Popen(self.argv, stdout=log_file,
                                               preexec_fn=die_with_parent, **spawn)
        log.debug("started QEMU pid %d: %s", self._popen.pid, " ".join(self.argv))

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def started(self) -> bool:
        return self._popen is not None

    def poll(self) -> int | None:
        """QEMU's exit code, or None while it runs (or was never started)."""
        return self._popen.poll() if self._popen else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit code, or None if still running."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, max_chars: int = 4000) -> str:
        return tail_of_file(self.log_path, max_chars)

    def stop(self, ask_to_quit: Callable[[], None] | None = None, *,
             quit_grace: float = 10.0, term_grace: float = 5.0) -> int | None:
        """Stop QEMU politely, then firmly: ``ask_to_quit`` (QMP quit), SIGTERM, SIGKILL.

        Each step gets its grace period; errors of the polite steps are logged
        and the ladder goes on. Returns QEMU's exit code.
        """
        if self._popen is None:
            return None
        if self.alive() and ask_to_quit is not None:
            try:
                ask_to_quit()
            except Exception as exc:  # the process may be wedged or already gone
                # no grace to wait out: nobody asked QEMU to quit (a Ctrl-C early
                # in a boot used to wait 10 s here for nothing)
                log.debug("QMP quit failed (%s); sending SIGTERM", exc)
            else:
                self.wait(quit_grace)
        for sig, grace in ((signal.SIGTERM, term_grace), (signal.SIGKILL, 30.0)):
            if not self.alive():
                break
            log.debug("sending %s to QEMU pid %d", sig.name, self._popen.pid)
            self._signal(sig)
            self.wait(grace)
        return self.poll()

    def kill_now(self) -> None:
        """SIGKILL without ceremony (last resort at interpreter exit)."""
        if self.alive():
            self._signal(signal.SIGKILL)
            self.wait(10.0)

    def _signal(self, sig: int) -> None:
        assert self._popen is not None
        try:
            os.kill(self._popen.pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
