"""``wdfhil demo``: the main job on its default.

Builds (or takes from the cache) the default guest image, boots the default
guest with the echo device, runs the default checks against the guest's
real memory and prints the report. ``--framework-only`` runs the framework
tour on in-process memory instead (no VM).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build the default image, boot it, run the default job, print the report")
    parser.add_argument("--guest", default=None, help="guest config name or path (default: pc-256m)")
    parser.add_argument("--framework-only", action="store_true",
                        help="only the framework tour on in-process memory (no VM)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.framework_only:
        from framework_emu import demo

        return demo.main()
    from guest_images import build_image
    from guest_images.progress import StatusLine
    from orchestrator.demo_job import DEFAULT_GUEST, format_report, run_default_job

    print("building the default guest image (cached after the first time)...", flush=True)
    status = StatusLine()
    image = build_image(progress=status)
    status.clear()
    print(image.provenance, flush=True)
    results = run_default_job(image, guest=args.guest or DEFAULT_GUEST, out=sys.stdout)
    print(format_report(results, image.provenance))
    return 0 if all(r.passed for r in results) else 1
