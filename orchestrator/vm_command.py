"""``wdfhil vm``: check guest configs, boot a guest and run commands in it.

- ``wdfhil vm configs [NAME|FILE ...]`` validates guest configs (all of
  the built-in ones and yours by default) and prints each with its RAM split and pool
  window; an invalid one is reported with file, line and field (exit 2).
- ``wdfhil vm run [--config NAME] [--accel tcg] [--timeout S] -- COMMAND``
  boots the guest, runs the command over SSH, prints its output and returns
  its exit code; a guest that dies (panic, QEMU gone, fatal run state) or a
  command past its timeout is an error (exit 2), never a made-up exit code.
  ``--accel`` wins over ``$WDFHIL_ACCEL``, which wins over the config.
- ``wdfhil vm sweep`` removes run folders left by killed processes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from orchestrator.guest_config import (ACCELERATORS, DEFAULT_GUEST, list_guest_configs,
                                       load_guest_config, pool_window_warnings)
from wdfhil.errors import ConfigError
from wdfhil.units import format_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vm", help="check guest configs; boot a guest and run a command in it",
        description="Guest configs: the built-in ones (orchestrator/guests/) and your folders (wdfhil --guests-dir DIR, or WDFHIL_GUESTS_PATH); see docs/orchestrator.md.")
    commands = parser.add_subparsers(dest="vm_command", metavar="ACTION", required=True)

    configs = commands.add_parser("configs", help="validate and list guest configs")
    configs.add_argument("configs", nargs="*", metavar="NAME|FILE",
                         help="configs to check (default: every one found)")
    configs.set_defaults(func=_configs)

    run = commands.add_parser("run", help="boot a guest, run a shell command, print its output")
    run.add_argument("--config", default=DEFAULT_GUEST,
                     help="guest config name or file (default: %(default)s)")
    run.add_argument("--accel", choices=ACCELERATORS, default=None,
                     help="override the config's accelerator")
    run.add_argument("--boot-timeout", type=seconds, default=300.0, metavar="SECONDS",
                     help="boot (or restore) to SSH login (default: %(default)g)")
    run.add_argument("--timeout", type=seconds, default=120.0, metavar="SECONDS",
                     help="for the command itself (default: %(default)g)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    run.set_defaults(func=_run)

    sweep = commands.add_parser("sweep", help="remove run folders of processes that died")
    sweep.set_defaults(func=_sweep)


def seconds(text: str) -> float:
    """A duration argument: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds above 0")
    return value


def _configs(args: argparse.Namespace) -> int:
    names = args.configs or list_guest_configs()
    failed = 0
    for name in names:
        try:
            config = load_guest_config(name)
        except ConfigError as exc:
            print(f"INVALID {exc}")
            failed += 1
            continue
        extras = f", iommu {config.iommu}" if config.iommu != "none" else ""
        print(f"ok      {config.name:16} {config.machine:4} {format_size(config.memory):>4} "
              f"{config.cpus} cpu{extras}; RAM {config.ram_split.describe()}; "
              f"pool {config.pool.describe()}; low DMA {config.low_dma_window.describe()}")
        for warning in pool_window_warnings(config):
            print(f"warning {config.name}: {warning}")
    return 2 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from guest_images import build_image
    from guest_images.progress import StatusLine
    from orchestrator.vm import VM

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("wdfhil vm run: give the command after --, e.g. wdfhil vm run -- uname -a",
              file=sys.stderr)
        return 2
    config = load_guest_config(args.config)
    if args.accel:
        os.environ["WDFHIL_ACCEL"] = args.accel  # the user's word beats the environment's
    # Progress as one live line on stderr (stdout is the command's), only on a
    # terminal: a CI log gets neither the lines nor an escape code.
    status = StatusLine(sys.stderr)
    say = status if status.live else (lambda message: None)
    try:
        image = build_image(config.image, progress=say)
        with VM(config, image, boot_timeout=args.boot_timeout, progress=say) as machine:
            say("running the command")
            status.clear()
            result = machine.run(" ".join(command), timeout=args.timeout)
    finally:
        status.clear()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.truncated:
        print(f"wdfhil: the command's output was cut: {result.stdout_dropped} bytes of stdout "
              f"and {result.stderr_dropped} of stderr not kept", file=sys.stderr)
    return result.exit_code


def _sweep(args: argparse.Namespace) -> int:
    from orchestrator.cleanup import sweep_stale_folders

    for folder in sweep_stale_folders():
        print(f"removed {folder}")
    return 0
