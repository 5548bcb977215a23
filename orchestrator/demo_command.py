"""``wdfhil demo``: the main job on its default.

Builds (or takes from the cache) the default guest image, boots the default
guest with the echo device, runs the default scenario set (the built-in
scenarios tagged ``default``: docs/scenarios.md) against the guest's real
memory and prints the verdict table. ``--framework-only`` runs the framework
tour on in-process memory instead (no VM).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build the default image, boot it, run the default scenario set, print the verdict table")
    parser.add_argument("--guest", default=None, help="guest config name or path (default: pc-256m)")
    parser.add_argument("--framework-only", action="store_true",
                        help="only the framework tour on in-process memory (no VM)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.framework_only:
        from framework_emu import demo

        return demo.main()
    from guest_images import DEFAULT_RECIPE, build_image
    from guest_images.progress import StatusLine
    from orchestrator.guest_config import DEFAULT_GUEST
    from orchestrator.scenario import default_scenarios, load_scenario
    from orchestrator.scenario_command import run_pairs
    from orchestrator.scenario_runner import plan_runs

    print("building the default guest image (cached after the first time)...", flush=True)
    status = StatusLine()
    image = build_image(progress=status)
    status.clear()
    print(image.provenance, flush=True)
    # The default scenario set (orchestrator/scenarios, tagged default) on one guest.
    pairs = plan_runs([load_scenario(p) for p in default_scenarios()], [args.guest or DEFAULT_GUEST])
    return run_pairs(pairs, header=image.provenance, image_for=lambda recipe: (
        image if recipe in (None, DEFAULT_RECIPE) else build_image(recipe)))
