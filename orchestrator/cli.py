"""The ``wdfhil`` command line.

Each sub-command lives in the module that owns its job and registers itself
through a ``register(subparsers)`` function; this module only assembles them
and turns the project's errors into a clear message and exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from wdfhil.errors import WdfhilError

# Modules that add sub-commands; each has register(subparsers) -> None.
COMMAND_MODULES = [
    "orchestrator.demo_command",
    "guest_images.cli",
    "orchestrator.vm_command",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wdfhil",
        description="Run WDF-style memory and DMA code against a real QEMU guest.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except WdfhilError as exc:
        print(f"wdfhil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wdfhil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
