"""``wdfhil replay BUNDLE``: run a reproduction bundle's scenario again, on the
same guest config and the same image, and say whether the same findings came
back.

The image must be the bundle's (same digest): it is taken from the image
cache, else built from its recipe; if that build has another digest (the
recipe or its lock changed since), replay refuses rather than compare runs of
different guests. "The same" means: the same verdict, the same findings (rule,
severity, object, file name and line), the same failing steps, the same
injected faults and refusals.

Exit status: 0 reproduced, 1 not reproduced, 2 a bad bundle (or an image that
cannot be had again).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdfhil.errors import ConfigError

if TYPE_CHECKING:
    from guest_images import GuestImage
    from orchestrator.scenario_result import ScenarioResult


def register(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser(
        "replay", help="rerun a reproduction bundle; exit 0 if the same findings came back",
        description="Rerun the scenario of a reproduction bundle (written by wdfhil run / "
                    "matrix for a failing scenario) on its guest config and image. Exit 0 "
                    "reproduced, 1 not reproduced, 2 bad bundle.")
    replay.add_argument("bundle", metavar="BUNDLE")
    replay.add_argument("--boot-timeout", type=float, default=300.0)
    replay.add_argument("--report-dir", metavar="DIR",
                        help="also write the rerun's report here")
    replay.set_defaults(func=_replay)


def bundle_image(manifest: dict[str, Any]) -> "GuestImage":
    """The bundle's image: from the cache by digest, else built from its recipe
    (the same digest or a ConfigError saying why not)."""
    from guest_images import GuestImage, build_image
    from guest_images.cache import ImageStore

    image = manifest["image"]
    name, digest = image.get("name"), image.get("digest")
    if not name or not digest:
        raise ConfigError("the bundle names no image (name and digest)", field="image")
    store = ImageStore()
    if store.is_built(name, digest):
        cached = GuestImage.from_folder(store.folder(name, digest))
        cached.verify()
        return cached
    print(f"image {name} {digest[:12]} is not in the cache: building it from its recipe",
          flush=True)
    built = build_image(image.get("recipe") or name, locked=True)
    if built.digest != digest:
        raise ConfigError(
            f"the bundle was recorded on image {name} {digest[:12]}, and its recipe now builds "
            f"{built.digest[:12]} (the recipe or its lock changed since): replaying on another "
            f"image would not tell whether the bug reproduces. Rebuild the bundle's image "
            f"(its packages are in the bundle's manifest.json) or record a new bundle.",
            field="image.digest", value=digest)
    return built


def signature(findings: list[dict[str, Any]],
              failed_steps: list[dict[str, Any]], faults: dict[str, int],
              refusals: dict[str, int]) -> dict[str, Any]:
    from orchestrator.evidence import finding_signature

    return {"findings": sorted(collections.Counter(finding_signature(f) for f in findings).items()),
            "failed_steps": sorted((s["index"], s["kind"]) for s in failed_steps),
            "faults": dict(sorted(faults.items())), "refusals": dict(sorted(refusals.items()))}


def result_signature(result: "ScenarioResult") -> dict[str, Any]:
    findings = result.evidence.findings if result.evidence is not None else []
    failed = [{"index": s.index, "kind": s.kind} for s in result.steps if not s.ok]
    return signature(findings, failed, result.faults, result.refusals)


def compare(manifest: dict[str, Any], result: "ScenarioResult") -> list[str]:
    """What differs between the bundle's run and ``result`` (empty: reproduced)."""
    recorded = signature(manifest.get("findings", []), manifest.get("failed_steps", []),
                         manifest.get("faults", {}), manifest.get("refusals", {}))
    now = result_signature(result)
    out = []
    if manifest.get("verdict") != result.verdict:
        out.append(f"verdict {result.verdict}, recorded {manifest.get('verdict')}")
    for key in ("findings", "failed_steps", "faults", "refusals"):
        if recorded[key] != now[key]:
            out.append(f"{key}: now {_show(now[key])}, recorded {_show(recorded[key])}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], tuple) and len(value[0]) == 2 \
            and isinstance(value[0][0], tuple):
        return "; ".join(f"{rule} [{sev}] on {obj or '-'} at {file}:{line}" + (f" x{n}" if n > 1 else "")
                         for (rule, sev, obj, file, line), n in value) or "none"
    return str(value) if value else "none"


def _replay(args: argparse.Namespace) -> int:
    from orchestrator.bundle import open_bundle
    from orchestrator.scenario import load_scenario
    from orchestrator.scenario_command import run_with_progress
    from orchestrator.scenario_result import format_table
    from orchestrator.scenario_runner import plan_runs
    from wdfhil.private_dirs import private_dir

    with private_dir("wdfhil-replay-") as folder:
        manifest = open_bundle(args.bundle, folder)
        scenario = load_scenario(folder / manifest["scenario_file"])
        guests_dir = str((folder / manifest["guest_file"]).parent)
        image = bundle_image(manifest)
        print(f"replaying {manifest['scenario']} on {manifest['guest']} "
              f"(recorded {manifest.get('verdict')}, {len(manifest.get('findings', []))} "
              f"finding(s)); {image.provenance}", flush=True)
        results = run_with_progress(plan_runs([scenario], [manifest["guest"]]),
                                    boot_timeout=args.boot_timeout, guests_dirs=(guests_dir,),
                                    image_for=lambda recipe: image)
        result = results[0]
        print(format_table(results), flush=True)
        if args.report_dir:
            from orchestrator.report_command import describe_report, write_run_report

            print(describe_report(write_run_report(results, args.report_dir,
                                                   header=image.provenance)), flush=True)
    differences = compare(manifest, result)
    if differences:
        print("NOT REPRODUCED:", flush=True)
        for line in differences:
            print(f"  {line}", flush=True)
        return 1
    findings = result.evidence.findings if result.evidence is not None else []
    print(f"REPRODUCED: {result.verdict} with the same {len(findings)} finding(s)"
          + "".join(f"\n  [{f['severity']}] {f['rule']} at "
                    f"{Path((f.get('site') or {}).get('file', '?')).name}:"
                    f"{(f.get('site') or {}).get('line')}" for f in findings), flush=True)
    return 0
