"""Boot benchmark: restore vs cold boot, long-lived shell (relay, SSH) vs exec channel.

Every figure is printed next to its reference, measured in the same run on
the same machine, so the ratios mean something on a loaded CI host:

- cold start to first command (QEMU launch, kernel boot, ready marker, one
  ``true`` over the command relay) against the kernel-to-init floor: the same QEMU
  machine booting the image's kernel with the guest's command line but no
  initramfs, to the panic where it would run /init (``-no-reboot`` makes
  that an exit). Everything above the floor is the initramfs, init, dropbear
  and the SSH login. Target: cold start within 1.3x the floor (2.5 s where
  the floor is 1.9 s, a quiet host of this kind; was 3.4 s).
- restore to first command (QEMU with ``-incoming``, load of a saved guest,
  one ``true`` over the relay, which sets the clock) against the cold start.
  Target: restore at least 4 times faster.
- one command (``true``) on the VM's long-lived shell, over the serial command relay
  (what ``VM.run`` uses) and over SSH, against one on a fresh SSH exec channel,
  interleaved, medians. Target: at least 20 times faster.
  Printed beside them: the SSH round-trip floor, a line echoed by ``cat`` on a
  channel of its own over the same connection (no shell, one packet each way),
  which no command over SSH can beat, and its ratio to the exec channel.

Run: ``python3 bench/boot.py`` (``--check`` exits 1 when a target is missed;
``--config`` picks the guest, ``--cold``/``--restores`` the repetitions).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

import paramiko

from guest_images import DEFAULT_RECIPE, build_image
from orchestrator.guest_config import DEFAULT_GUEST, load_guest_config
from orchestrator.qemu_command import DEFAULT_QEMU, TCG_CPU, kernel_command_line
from orchestrator.vm import VM

RESTORE_TARGET = 4.0
CHANNEL_TARGET = 20.0
FLOOR_TARGET = 1.3   # cold start / kernel-to-init floor


def kernel_to_init_floor(config, image, accelerator: str) -> tuple[float, float]:
    """Seconds and QEMU CPU seconds from launching QEMU to its exit, for the image's
    kernel with the guest's command line, no initramfs and no root: it runs its whole
    init and panics where it would start /init (``panic=-1`` + ``-no-reboot``: exit)."""
    cpu = ["-cpu", "host"] if accelerator == "kvm" else ["-cpu", TCG_CPU]
    argv = [DEFAULT_QEMU, "-accel", accelerator, "-machine", config.machine, *cpu,
            "-m", f"{config.memory >> 20}M", "-smp", str(config.cpus), "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "null",
            "-kernel", str(image.kernel), "-append", kernel_command_line(config, image)
            + " rdinit=/wdfhil-floor root=/dev/wdfhil-floor panic=-1"]
    began = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return time.perf_counter() - began, usage.ru_utime + usage.ru_stime


def time_to_first_command(make_vm) -> tuple[float, str]:
    """Seconds from creating the VM to the answer of its first command; its accelerator."""
    began = time.perf_counter()
    with make_vm() as machine:
        machine.run_checked("true")
        return time.perf_counter() - began, machine.accelerator or "tcg"


def command_times(machine: VM, shell_count: int, exec_count: int
                  ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Seconds per ``true`` on the long-lived shell (the relay's, SSH's) and on fresh
    exec channels, and per bare SSH echo, interleaved so that all see the same load on
    a shared machine."""
    machine.run_checked("true")  # warm: the first use opens the shell channel
    machine.ssh.run_checked("true")
    echo = EchoChannel(machine.ssh.transport)
    echo.round_trip()
    shell: list[float] = []
    ssh_shell: list[float] = []
    exec_channel: list[float] = []
    floor: list[float] = []
    every = max(1, shell_count // max(1, exec_count))
    try:
        for number in range(shell_count):
            shell.append(timed(machine.run))
            ssh_shell.append(timed(machine.ssh.run))
            floor.append(echo.timed_round_trip())
            if number % every == 0 and len(exec_channel) < exec_count:
                exec_channel.append(timed(machine.run_exec))
    finally:
        echo.close()
    return shell, ssh_shell, exec_channel, floor


class EchoChannel:
    """``cat`` on an exec channel of its own: one line out, the same line back.
    The least any command over this SSH connection can cost."""

    LINE = b"wdfhil-echo\n"

    def __init__(self, transport: paramiko.Transport) -> None:
        self.channel = transport.open_session()
        self.channel.settimeout(60.0)
        self.channel.exec_command("exec cat")

    def round_trip(self) -> None:
        self.channel.sendall(self.LINE)
        back = b""
        while not back.endswith(self.LINE):
            chunk = self.channel.recv(4096)
            if not chunk:
                raise RuntimeError(f"the guest's cat channel ended early: {back!r}")
            back += chunk

    def timed_round_trip(self) -> float:
        began = time.perf_counter()
        self.round_trip()
        return time.perf_counter() - began

    def close(self) -> None:
        self.channel.close()


def timed(run) -> float:
    began = time.perf_counter()
    result = run("true")
    elapsed = time.perf_counter() - began
    if result.exit_code != 0:
        raise RuntimeError(f"'true' failed in the guest: {result}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_GUEST, help="guest config (default %(default)s)")
    parser.add_argument("--cold", type=int, default=3, help="cold boots (and floors) to time")
    parser.add_argument("--restores", type=int, default=4, help="restores to time")
    parser.add_argument("--shell-commands", type=int, default=300)
    parser.add_argument("--exec-commands", type=int, default=30)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    image = build_image(DEFAULT_RECIPE)
    config = load_guest_config(args.config)
    print(f"guest {config.name} ({config.machine}, {config.memory >> 20} MiB), image "
          f"{image.name} {image.digest[:12]}")

    cold: list[float] = []
    floors: list[tuple[float, float]] = []
    accelerator = None
    for _ in range(args.cold):  # interleaved: both see the same load
        seconds, accelerator = time_to_first_command(lambda: VM(config, image))
        cold.append(seconds)
        floors.append(kernel_to_init_floor(config, image, accelerator))
    with VM(config, image) as machine:
        accelerator = machine.accelerator
        shell_times, ssh_times, exec_times, floor_times = command_times(
            machine, args.shell_commands, args.exec_commands)
        save_began = time.perf_counter()
        snapshot = machine.save()
        save_seconds = time.perf_counter() - save_began
    with snapshot:
        size = snapshot.path.stat().st_size
        restored = [time_to_first_command(lambda: VM(config, image, restore_from=snapshot))[0]
                    for _ in range(args.restores)]

    cold_s, restore_s = statistics.median(cold), statistics.median(restored)
    shell, exec_channel = statistics.median(shell_times), statistics.median(exec_times)
    floor = statistics.median(floor_times)
    restore_ratio, channel_ratio = cold_s / restore_s, exec_channel / shell
    floor_s = statistics.median(f[0] for f in floors)
    floor_cpu = statistics.median(f[1] for f in floors)
    floor_ratio = cold_s / floor_s
    print(f"accelerator: {accelerator}")
    print(f"cold start to first command:        {cold_s:7.3f} s  (median of {len(cold)}: "
          f"{', '.join(f'{t:.2f}' for t in cold)})")
    print(f"kernel-to-init floor:               {floor_s:7.3f} s  (median of {len(floors)}, "
          f"interleaved; QEMU CPU {floor_cpu:.2f} s)")
    print(f"  cold start is {floor_ratio:.2f}x the floor, {cold_s - floor_s:.2f} s above it "
          f"(target <= {FLOOR_TARGET:g}x: {'met' if floor_ratio <= FLOOR_TARGET else 'MISSED'})")
    print(f"restore to first command:           {restore_s:7.3f} s  (median of {len(restored)}: "
          f"{', '.join(f'{t:.2f}' for t in restored)})")
    print(f"  restore is {restore_ratio:.1f}x faster than a cold boot "
          f"(target >= {RESTORE_TARGET:g}x: {'met' if restore_ratio >= RESTORE_TARGET else 'MISSED'})")
    print(f"  (save took {save_seconds:.2f} s, state file {size / (1 << 20):.1f} MiB)")
    print(f"one command, long-lived shell:      {shell * 1000:7.2f} ms  "
          f"(median of {len(shell_times)}, mean {statistics.mean(shell_times) * 1000:.2f}; "
          "over the serial command relay)")
    ssh_shell = statistics.median(ssh_times)
    print(f"one command, SSH long-lived shell:  {ssh_shell * 1000:7.2f} ms  "
          f"(median of {len(ssh_times)}; the relay takes {shell / ssh_shell:.2f}x its time)")
    print(f"one command, new exec channel:      {exec_channel * 1000:7.2f} ms  "
          f"(median of {len(exec_times)}, mean {statistics.mean(exec_times) * 1000:.2f}; "
          f"interleaved with the shell commands)")
    print(f"  the long-lived channel is {channel_ratio:.1f}x faster "
          f"(target >= {CHANNEL_TARGET:g}x: {'met' if channel_ratio >= CHANNEL_TARGET else 'MISSED'})")
    print(f"SSH round-trip floor (cat echo):    {floor * 1000:7.2f} ms  (median of {len(floor_times)}; "
          f"an exec channel costs {exec_channel / floor:.1f}x this, the shell command "
          f"{(shell - floor) * 1000:.2f} ms more)")
    missed = restore_ratio < RESTORE_TARGET or channel_ratio < CHANNEL_TARGET \
        or floor_ratio > FLOOR_TARGET
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
