"""A QEMU virtual machine running a guest image, as a context manager.

``with VM(config, image) as vm:`` boots the guest (or restores a saved one)
and, whatever happens inside, leaves nothing behind: no QEMU process, no
run folder, no RAM file. What it wires together:

- a private run folder (0700, under /dev/shm when it exists) holding the
  shared RAM file (``vm.ram_file``, for the device model to map), QEMU's
  log and the console log; removed on close;
- QEMU itself (:mod:`orchestrator.qemu_process`), killed by the kernel if
  this process dies; the accelerator chosen by probing KVM
  (:mod:`orchestrator.kvm_probe`);
- the serial console reader, which fails the boot at once on a kernel panic
  or QEMU exiting; QMP (``vm.qmp``); commands (``vm.run``) on one long-lived
  shell, over the image's command relay on a second serial port
  (:mod:`orchestrator.serial_shell`: a restored guest needs no login) or, for
  an image without one, over SSH; SSH with SFTP (``vm.put`` / ``vm.get``),
  logged into when first needed;
- a :class:`~orchestrator.guest_watch.GuestWatch` consulted by every wait
  (boot and commands), so a guest that panics, whose QEMU exits or whose
  run state turns fatal (``internal-error``) is reported at once: a
  LaunchError while booting, :class:`~wdfhil.errors.GuestDied` afterwards.
  Under ``accelerator: auto`` a boot that KVM kills is retried under TCG;
- :meth:`VM.save` / ``VM(..., restore_from=snapshot)`` for fast resets.

Every launch failure is one :class:`~wdfhil.errors.LaunchError` with QEMU's
exit code, command line, log tail and console tail.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from orchestrator.cleanup import (folder_parent, install_sigterm_handler, signals_deferred,
                                  sweep_stale_folders, track)
from orchestrator.guest_config import GuestConfig, check_reserved_windows_in_iomem
from orchestrator.guest_watch import GuestWatch
from orchestrator.kvm_probe import choose_accelerator, mark_kvm_unusable, requested_accelerator
from orchestrator.machine import GuestMachine
from orchestrator.qemu_command import DEFAULT_QEMU, build_qemu_argv, parse_hostfwd_port
from orchestrator.qemu_process import QemuProcess, tail_of_file
from orchestrator.qmp_session import QmpSession
from orchestrator.ram_layout import DEFAULT_INITRD_ADDR_MAX, read_ram_layout
from orchestrator.serial_console import ConsoleWait, SerialConsole
from orchestrator.guest_shell import ShellCommands
from orchestrator.serial_shell import SerialShell
from orchestrator.snapshot import RamCopy, Snapshot, load_state, save_state
from orchestrator.ssh_session import (DEFAULT_COMMAND_TIMEOUT, CommandResult, SshSession,
                                      wait_for_ssh_banner)
from wdfhil.errors import ConfigError, LaunchError, WdfhilError
from wdfhil.guest_ram import GuestRam
from wdfhil.private_dirs import create_private_files, make_private_dir, remove_tree

if TYPE_CHECKING:
    from guest_images import GuestImage

log = logging.getLogger(__name__)

SSH_HOST = "127.0.0.1"
RAM_FILE = "ram"
QEMU_LOG = "qemu.log"
CONSOLE_LOG = "console.log"
_names = itertools.count(1)
RESTORED_RUNNING = "the restored guest runs"   # a progress step (bench/matrix.py)


def read_initrd_addr_max(kernel: Path) -> int:
    """The highest initrd address a bzImage accepts (boot header 0x22c), as QEMU reads it."""
    try:
        with open(kernel, "rb") as handle:
            header = handle.read(0x230)
    except OSError:
        return DEFAULT_INITRD_ADDR_MAX
    if len(header) < 0x230 or header[0x202:0x206] != b"HdrS":
        return DEFAULT_INITRD_ADDR_MAX
    protocol = struct.unpack_from("<H", header, 0x206)[0]
    if protocol < 0x203:
        return 0x37FFFFFF
    return struct.unpack_from("<I", header, 0x22C)[0]


class _HostResources:
    """What a VM holds on the host; released by the VM, or as a last resort
    by the garbage collector / interpreter exit (without QMP, which may be gone)."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.process: QemuProcess | None = None
        self.console: SerialConsole | None = None
        self.qmp: QmpSession | None = None
        self.ssh: SshSession | None = None
        self.relay: SerialShell | None = None
        self.ram: GuestRam | None = None      # the relay's view of guest RAM
        self._ram_lock = threading.Lock()
        self.watch: GuestWatch | None = None
        self.ram_copy: RamCopy | None = None   # a restore's, writing into the run folder
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._released = False

    def release(self, graceful: bool = True) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        steps = [
            ("SSH", lambda: self.ssh and self.ssh.close()),
            ("command relay", lambda: self.relay and self.relay.close()),
            ("guest RAM view", lambda: self.ram and self.ram.close()),
            ("QEMU", lambda: self._stop_qemu(graceful)),
            ("QMP", lambda: self.qmp and self.qmp.close()),
            ("console", lambda: self.console and self.console.close()),
            ("sockets", self._close_sockets),
            ("RAM copy", lambda: self.ram_copy and self.ram_copy.wait()),
            ("run folder", lambda: self.run_dir and self._remove_run_dir()),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # one failing step must not keep the others from running
                log.warning("releasing the VM's %s failed: %s", what, exc)

    def release_last_resort(self) -> None:
        self.release(graceful=False)

    def _stop_qemu(self, graceful: bool) -> None:
        if self.process is None:
            return
        if not graceful:
            self.process.kill_now()
            return
        qmp = self.qmp
        quit_command = (lambda: qmp.command("quit", timeout=3.0)) if qmp else None
        self.process.stop(quit_command)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _remove_run_dir(self) -> None:
        assert self.run_dir is not None
        try:  # QEMU leaves its RAM file behind; unlink it explicitly, then the folder
            (self.run_dir / RAM_FILE).unlink()
        except FileNotFoundError:
            pass
        remove_tree(self.run_dir)


class VM(GuestMachine):
    """One guest in QEMU; start with ``with VM(config, image) as vm:``."""

    def __init__(self, config: GuestConfig, image: "GuestImage", *,
                 extra_qemu_args: Sequence[str] = (), name: str | None = None,
                 restore_from: Snapshot | None = None, boot_timeout: float = 120.0,
                 qemu_binary: str = DEFAULT_QEMU,
                 progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.image = image
        self.extra_qemu_args = tuple(extra_qemu_args)
        self.name = name or f"{config.name}-{os.getpid()}-{next(_names)}"
        self.restore_from = restore_from
        if not isinstance(boot_timeout, (int, float)) or not math.isfinite(boot_timeout) \
                or boot_timeout <= 0:
            raise ConfigError(f"boot_timeout must be a finite number of seconds above 0, "
                              f"not {boot_timeout!r}", field="boot_timeout")
        self.boot_timeout = boot_timeout
        self.qemu_binary = qemu_binary
        self.progress = progress  # told each step of a start (a StatusLine on a terminal)
        self.accelerator: str | None = None
        self.ssh_port: int | None = None
        self.start_seconds: float | None = None  # launch to ready for commands
        self._host = _HostResources()
        self._finalizer = track(self, self._host.release_last_resort)
        self._state = "new"

    # -- the public view ----------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self._need(self._host.run_dir, "run folder")

    @property
    def ram_file(self) -> Path:
        """The shared RAM file (``memory-backend-file``, ``share=on``) to map."""
        return self.run_dir / RAM_FILE

    @property
    def qmp(self) -> QmpSession:
        return self._need(self._host.qmp, "QMP session")

    @property
    def ssh(self) -> SshSession:
        """The SSH session, logged into now if this is its first use."""
        host = self._host
        if host.ssh is None:
            if self._state not in ("starting", "running"):
                self._need(None, "SSH session")
            host.ssh = self._login(time.monotonic() + self.boot_timeout)
        return host.ssh

    @property
    def commands(self) -> ShellCommands:
        """What ``run`` uses: the command relay (:class:`~orchestrator.serial_shell.
        SerialShell`) when the image has one, else the SSH session."""
        relay = self._host.relay
        return relay if relay is not None else self.ssh

    @property
    def qemu_pid(self) -> int | None:
        process = self._host.process
        return process.pid if process else None

    @property
    def command_line(self) -> list[str]:
        process = self._host.process
        return list(process.argv) if process else []

    @property
    def monitor(self) -> QmpSession:
        """QMP: the machine-level control of :class:`GuestMachine`."""
        return self.qmp

    @property
    def running(self) -> bool:
        process = self._host.process
        return self._state == "running" and process is not None and process.alive()

    def _need(self, value, what: str):
        if value is None:
            raise RuntimeError(f"the VM {self.name} has no {what}: it is {self._state}")
        return value

    # -- guest access -------------------------------------------------------
    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run ``command`` on the guest's long-lived shell (over the command relay when
        the image has one, else over SSH)."""
        if self._state not in ("running", "starting"):
            self._need(None, "command channel")
        return self.commands.run(command, timeout)

    def run_exec(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        """Run a command on a fresh SSH exec channel (slow; the benchmark's reference)."""
        return self.ssh.run_exec(command, timeout)

    def put(self, local: str | Path, remote: str,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        self.ssh.put(local, remote, timeout)

    def get(self, remote: str, local: str | Path,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        self.ssh.get(remote, local, timeout)

    def console_text(self) -> str:
        console = self._host.console
        return console.text() if console else ""

    def open_memory(self) -> GuestRam:
        """Guest RAM mapped from the shared RAM file, laid out as QEMU reports it."""
        return GuestRam.open(self.ram_file, read_ram_layout(self.qmp))

    def diagnose(self) -> str:
        """Run state, QEMU's exit code, and the console and QEMU log tails."""
        host = self._host
        lines = [f"VM {self.name} ({self.config.name}, {self.accelerator or '?'}): {self._state}"]
        process = host.process
        if process is not None:
            code = process.poll()
            lines.append("QEMU running" if code is None else f"QEMU exited (code {code})")
        if host.watch is not None and process is not None and process.alive():
            lines.append(f"run state: {host.watch.run_state() or 'unknown'}")
        console_tail = host.console.tail() if host.console else ""
        if console_tail:
            lines += ["console tail:", console_tail]
        log_tail = process.log_tail() if process else ""
        if log_tail:
            lines += ["QEMU log tail:", log_tail]
        return "\n".join(lines)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"the VM {self.name} was already started (it is {self._state})")
        self._state = "starting"
        install_sigterm_handler()
        sweep_stale_folders()
        began = time.monotonic()
        try:
            try:
                self._launch(began + self.boot_timeout)
            except WdfhilError as exc:  # a LaunchError, or SSH failing as KVM kills the guest
                reason = None if isinstance(exc, ConfigError) else self._kvm_failure(exc)
                if reason is None:
                    raise
                self._retry_under_tcg(reason)
        except BaseException as exc:
            error = None
            if isinstance(exc, LaunchError):
                error = self._launch_error(str(exc), exc.run_state)
            elif isinstance(exc, (WdfhilError, OSError, ValueError, TimeoutError)) \
                    and not isinstance(exc, ConfigError):
                error = self._launch_error(f"{type(exc).__name__}: {exc}")
            self.close()  # a failed __enter__ gets no __exit__: clean up here
            if error is not None:
                raise error from (None if isinstance(exc, LaunchError) else exc)
            raise
        self.start_seconds = time.monotonic() - began
        self._state = "running"
        log.info("VM %s up in %.2f s (%s, ssh port %d)", self.name, self.start_seconds,
                 self.accelerator, self.ssh_port)

    def _kvm_failure(self, error: WdfhilError) -> str | None:
        """What KVM did wrong, if ``error`` is KVM failing a real guest under
        ``accelerator: auto`` (then the boot is retried under TCG); else None."""
        if self.accelerator != "kvm" or self.restore_from is not None \
                or requested_accelerator(self.config.accelerator) != "auto":
            return None
        run_state = getattr(error, "run_state", None)
        if run_state is None and self._host.watch is not None:
            found = self._host.watch.failure()
            run_state = found.run_state if found else self._host.watch.last_run_state
        process = self._host.process
        log_text = process.log_tail() if process else ""
        kvm_lines = [line.strip() for line in log_text.splitlines() if "KVM" in line]
        if run_state != "internal-error" and not kvm_lines:
            return None
        what = kvm_lines[0] if kvm_lines else f"run state {run_state}"
        return f"a real guest failed under KVM ({what})"

    def _retry_under_tcg(self, reason: str) -> None:
        """Forget the KVM attempt (QEMU, run folder) and boot again under TCG."""
        mark_kvm_unusable(self.qemu_binary, reason)
        log.warning("KVM is not usable (%s); this and later guests run under TCG", reason)
        self._host.release(graceful=False)
        self._finalizer.detach()
        self._host = _HostResources()
        self._finalizer = track(self, self._host.release_last_resort)
        self._launch(time.monotonic() + self.boot_timeout, accelerator="tcg")

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(f"VM {self.name}: {message}")

    def _launch(self, deadline: float, accelerator: str | None = None) -> None:
        host = self._host
        self.image.verify()   # a truncated kernel is named here, not as "QEMU exited early"
        snapshot = self.restore_from
        if snapshot is not None:
            # the RAM copy's CRC is checked as it is copied (snapshot.copy_ram below)
            snapshot.check_compatible(self.config, self.image, ram_crc=False)
            self.accelerator = snapshot.accelerator
        else:
            if accelerator is None and requested_accelerator(self.config.accelerator) != "tcg":
                self._say("choosing the accelerator (the KVM probe runs once per host boot)")
            self.accelerator = accelerator or choose_accelerator(
                self.config.accelerator, self.qemu_binary, kernel=self.image.kernel)
        self._say(f"starting QEMU ({self.accelerator})")
        self.config.check_pool_clear_of_initrd(self.image.initramfs.stat().st_size,
                                               read_initrd_addr_max(self.image.kernel))
        host.run_dir = make_private_dir(f"wdfhil-vm-{os.getpid()}-", folder_parent())
        create_private_files(host.run_dir, RAM_FILE, QEMU_LOG, CONSOLE_LOG)  # 0600, not 0644
        if snapshot is not None and snapshot.ram_file is not None:
            self._say("copying the saved guest's RAM while QEMU starts")
            os.truncate(host.run_dir / RAM_FILE, self.config.memory)  # QEMU maps it as it is
            host.ram_copy = RamCopy(snapshot, host.run_dir / RAM_FILE)
        history = ""
        if snapshot is not None:   # the saved guest's boot, then what this QEMU adds
            history = snapshot.console_history()
            if history:
                history += f"\n[wdfhil: the guest above was saved; restored into {self.name}]\n"
                (host.run_dir / CONSOLE_LOG).write_text(history, errors="replace")
        console_ours, console_theirs = socket.socketpair()
        qmp_ours, qmp_theirs = socket.socketpair()
        host.sockets += [console_ours, console_theirs, qmp_ours, qmp_theirs]
        relay_ours = relay_theirs = None
        if self.image.command_relay:
            relay_ours, relay_theirs = socket.socketpair()
            host.sockets += [relay_ours, relay_theirs]
        theirs = [sock for sock in (console_theirs, qmp_theirs, relay_theirs) if sock]
        argv = build_qemu_argv(
            self.config, self.image, accelerator=self.accelerator,
            ram_file=host.run_dir / RAM_FILE, console_fd=console_theirs.fileno(),
            qmp_fd=qmp_theirs.fileno(), name=self.name, extra_args=self.extra_qemu_args,
            incoming=snapshot is not None, qemu_binary=self.qemu_binary,
            relay_fd=relay_theirs.fileno() if relay_theirs else None)
        host.process = QemuProcess(argv, log_path=host.run_dir / QEMU_LOG,
                                   pass_fds=tuple(sock.fileno() for sock in theirs))
        try:
            host.process.start()
        except OSError as exc:
            raise LaunchError(f"cannot run {self.qemu_binary}: {exc.strerror}") from None
        for sock in theirs:   # QEMU has its copies; EOF on ours now means QEMU is gone
            sock.close()
        host.console = SerialConsole(console_ours, host.run_dir / CONSOLE_LOG,
                                     history=history).start()
        host.watch = watch = GuestWatch(host.process, host.console, name=f"VM {self.name}")
        if relay_ours is not None:
            host.relay = SerialShell(relay_ours, f"VM {self.name}", health=watch,
                                     read_memory=self._read_guest_ram, set_clock=True)
        host.qmp = QmpSession(self.name)
        host.qmp.connect(qmp_ours, timeout=max(1.0, deadline - time.monotonic()))
        watch.qmp = host.qmp
        self.ssh_port = parse_hostfwd_port(host.qmp.hmp("info usernet"))
        if snapshot is not None:
            self._say("restoring the saved guest")
            if host.ram_copy is not None:
                host.ram_copy.wait()
            load_state(host.qmp, snapshot.path, timeout=max(1.0, deadline - time.monotonic()),
                       ignore_shared=snapshot.ram_file is not None)
            self._say(RESTORED_RUNNING)
        else:
            self._wait_for_ready_marker(deadline)
        if host.relay is None:   # commands need SSH: log in now
            host.ssh = self._login(deadline, wait_for_server=snapshot is None)
        if snapshot is not None:
            # the windows were checked before the save, same config; the relay sets the
            # clock as its stream starts (with the first command)
            if host.relay is None:
                self._set_guest_clock()
        else:
            # the guest really reserved the windows, and its kernel does not run in them
            check_reserved_windows_in_iomem(
                self.config, self.run("cat /proc/iomem",
                                      max(5.0, deadline - time.monotonic())).check())

    def _read_guest_ram(self, gpa: int, length: int) -> bytes:
        """Guest RAM bytes for the relay's ring output (the RAM file, mapped on first use)."""
        host = self._host
        with host._ram_lock:
            if host.ram is None:
                host.ram = GuestRam.open(self.ram_file, read_ram_layout(self.qmp))
            return bytes(host.ram.view(gpa, length))

    def _login(self, deadline: float, *, wait_for_server: bool = False) -> SshSession:
        """An SSH session to the guest. The ready marker comes only once dropbear listens,
        and a restored guest's server was listening when it was saved, so the banner is
        waited for only where asked (``wait_for_server``: the boot of an image without
        the relay, as before it)."""
        watch = self._host.watch
        assert watch is not None and self.ssh_port is not None
        if wait_for_server:
            self._say("waiting for the guest's SSH server")
            banner = wait_for_ssh_banner(SSH_HOST, self.ssh_port, deadline - time.monotonic(),
                                         alive=lambda: watch.failure() is None)
            if banner is None:
                self._raise_if_dead()
                raise LaunchError(f"the guest's SSH server did not answer on {SSH_HOST}:"
                                  f"{self.ssh_port} within {self.boot_timeout:g} s")
        return SshSession.connect(
            SSH_HOST, self.ssh_port, user=self.image.ssh_user, client_key=self.image.client_key,
            host_key=self.image.host_key, timeout=max(5.0, deadline - time.monotonic()),
            health=watch)

    def _raise_if_dead(self, grace: float = 0.0) -> None:
        """LaunchError naming the run state / exit / panic if the guest died while booting."""
        watch = self._host.watch
        found = watch.failure(grace) if watch else None
        if found is not None:
            raise LaunchError(f"{found.reason} while booting", run_state=found.run_state)

    def _wait_for_ready_marker(self, deadline: float) -> None:
        """The ready marker on the console; between two looks, the guest's health
        (a run state of internal-error is seen within a second, not at the timeout)."""
        console = self._host.console
        assert console is not None
        began = time.monotonic()
        while True:
            self._say(f"booting ({self.accelerator}), {time.monotonic() - began:.0f} s")
            remaining = deadline - time.monotonic()
            outcome = console.wait_for(self.image.ready_marker, max(0.0, min(0.25, remaining)))
            if outcome is ConsoleWait.FOUND:
                return
            if outcome is ConsoleWait.PANIC:
                raise LaunchError("the guest kernel panicked while booting")
            if outcome is ConsoleWait.CLOSED:
                self._host.process.wait(5.0)  # type: ignore[union-attr]
                raise LaunchError("QEMU exited before the guest was ready")
            self._raise_if_dead()
            if remaining <= 0.25:
                break
        raise LaunchError(f"the guest printed no {self.image.ready_marker!r} on its serial "
                          f"console within {self.boot_timeout:g} s")

    def _set_guest_clock(self) -> None:
        """A restored guest's clock stands where it was saved; set it to now."""
        self.run(f"date -s @{int(time.time())} >/dev/null").check()

    def _launch_error(self, message: str, run_state: str | None = None) -> LaunchError:
        """A LaunchError with everything that explains a failed start (read
        before close() removes the run folder)."""
        host = self._host
        process = host.process
        # a QEMU that is exiting (QMP or console just saw EOF) gets a moment to finish
        exit_code = process.wait(1.0) if process else None
        log_tail = process.log_tail() if process else ""
        if not log_tail and host.run_dir is not None:
            log_tail = tail_of_file(host.run_dir / QEMU_LOG)
        console_tail = host.console.tail() if host.console else ""
        if exit_code is not None and "QEMU exited" not in message:
            message = f"QEMU exited with code {exit_code} ({message})"
        return LaunchError(f"VM {self.name} ({self.config.name}, {self.accelerator or '?'}) "
                           f"did not start: {message}", exit_code=exit_code,
                           command=process.argv if process else (), log_tail=log_tail,
                           console_tail=console_tail, run_state=run_state)

    def save(self, path: str | Path | None = None, *, full: bool = False,
             owned: bool = True) -> Snapshot:
        """Save the running guest to a file (it runs on); new VMs can start from it.

        Without ``path`` the state goes to a private folder the snapshot owns.
        Close the snapshot (or use it as a context manager) to remove it
        (``owned=False``: the caller keeps the files, e.g. a cache).
        Guest RAM goes into a sparse copy beside the state file (``x-ignore-shared``),
        unless ``full``: then all of it is in the migration stream.
        """
        if not self.running:
            raise RuntimeError(f"the VM {self.name} is not running (it is {self._state})")
        target, folder = Snapshot.new_path(path)
        ram_copy = None if full else Snapshot.ram_path(target)
        snapshot = Snapshot(target, config=self.config, image_digest=self.image.digest,
                            accelerator=self.accelerator or "tcg",
                            extra_qemu_args=self.extra_qemu_args, folder=folder,
                            ram_file=ram_copy, owned=owned)
        try:
            create_private_files(target.parent, target.name)   # `cat >` keeps 0600
            create_private_files(target.parent, snapshot.console_file.name)
            snapshot.console_file.write_text(self.console_text(), errors="replace")
            if ram_copy is not None:
                create_private_files(ram_copy.parent, ram_copy.name)
            save_state(self.qmp, target,
                       ram=None if ram_copy is None else (self.ram_file, ram_copy))
            snapshot.record()
        except BaseException:
            snapshot.close()
            raise
        return snapshot

    def close(self) -> None:
        """Stop QEMU (QMP quit, SIGTERM, SIGKILL) and remove the run folder; idempotent."""
        if self._state == "closed":
            return
        self._state = "closing"
        with signals_deferred():
            self._host.release(graceful=True)
            self._finalizer.detach()
            self._state = "closed"

    def __enter__(self) -> "VM":
        self.start()
        return self

    def __repr__(self) -> str:
        return f"VM({self.name}, {self._state}, {self.accelerator or 'accelerator unknown'})"
