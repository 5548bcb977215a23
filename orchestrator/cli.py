"""The ``wdfhil`` command line.

Each sub-command lives in the module that owns its job and registers itself
through a ``register(subparsers)`` function; this module only assembles them
and turns the project's errors into a clear message and exit status.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_loading(signum: int, frame: object) -> None:
    """Ctrl-C before any command runs: nothing to clean up, so no traceback."""
    sys.stderr.write("wdfhil: interrupted\n")
    os._exit(130)


if os.path.basename(sys.argv[0]) == "wdfhil" or __name__ == "__main__":
    # installed first: the imports below (and those of the sub-commands) take a while
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402

from wdfhil.errors import WdfhilError  # noqa: E402

# Modules that add sub-commands; each has register(subparsers) -> None.
COMMAND_MODULES = [
    "orchestrator.demo_command",
    "guest_images.cli",
    "orchestrator.vm_command",
    "orchestrator.scenario_command",
    "orchestrator.report_command",
    "orchestrator.replay_command",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("wdfhil")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wdfhil",
        description="Run WDF-style memory and DMA code against a real QEMU guest.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--guests-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own guest configs, searched before the built-in "
                             "ones (repeatable; also WDFHIL_GUESTS_PATH)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_guest_config_dirs(dirs: list[str]) -> None:
    """``--guests-dir``: put the folders ahead of WDFHIL_GUESTS_PATH, which every
    config lookup (and any child process, e.g. a pytest run of scenarios) reads."""
    from orchestrator.guest_config import GUESTS_PATH_ENV, guest_config_dirs

    guest_config_dirs(dirs)  # a folder that does not exist is a ConfigError now, not later
    current = os.environ.get(GUESTS_PATH_ENV, "")
    os.environ[GUESTS_PATH_ENV] = os.pathsep.join([*dirs, *([current] if current else [])])


def main(argv: list[str] | None = None) -> int:
    loading = signal.getsignal(signal.SIGINT) is _interrupted_while_loading
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        if loading:  # from here on a Ctrl-C unwinds, so VMs stop and clean up
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.guests_dir:
            add_guest_config_dirs(args.guests_dir)
        return int(args.func(args) or 0)
    except WdfhilError as exc:
        print(f"wdfhil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wdfhil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
