"""``wdfhil demo``: the main job on its default.

Until the VM parts land this runs the framework demonstration on in-process
memory; it then grows into: build the default image, boot it, run the
default scenarios, print the report.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on its default and print the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from framework_emu import demo

    return demo.main()
