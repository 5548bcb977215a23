"""``wdfhil run``, ``wdfhil matrix``, ``wdfhil scenarios``, ``wdfhil guests``.

- ``wdfhil run [SCENARIO...] [--guest CFG]`` runs scenario files (or folders,
  or built-in names; the default set without any) and prints the verdict table.
- ``wdfhil matrix [ci/matrix.yaml] [-j N] [--only guest=X] [--shard K/N]`` runs
  the matrix (or one shard of it), up to N guests at once (each in a child
  ``wdfhil matrix --only guest=X``: orchestrator.matrix_parallel); ``--emit
  github|github-json|gitlab [--shards N]`` prints the CI engine's matrix instead.

Both write a report folder after the verdict table (``--report-dir``, default
``./wdfhil-reports/<time>``: results.json, junit.xml, report.html, a bundle per
failing scenario; orchestrator.report_command) and ``--junitxml FILE``.
- ``wdfhil scenarios [PATH...] [--schema]`` lists and validates scenarios, or
  prints the JSON Schema.
- ``wdfhil guests`` lists the guest configs.

Exit status: 0 all passed, 1 a scenario failed, 2 bad usage or configuration
(a ConfigError, turned into one line by orchestrator.cli).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from orchestrator.scenario import (default_scenarios, json_schema_text, load_scenario,
                                   resolve_scenarios, scenario_name, tag_ok)
from wdfhil.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run", help="run scenarios on guests, print the verdict table",
        description="Run scenario files (paths, folders of *.scenario.yaml, built-in names); "
                    "without any, the default set. See docs/scenarios.md.")
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    run.add_argument("--guest", action="append", default=[], metavar="CFG",
                     help="run on this guest config instead of the scenarios' own (repeatable)")
    run.add_argument("--tag", action="append", default=[],
                     help="only scenarios with this tag (repeatable: any of them)")
    _common(run)
    run.set_defaults(func=_run)

    matrix = subparsers.add_parser(
        "matrix", help="run the CI matrix (guest configs x scenarios) or emit it for a CI engine")
    matrix.add_argument("file", nargs="?", default="ci/matrix.yaml",
                        help="the matrix file (default: %(default)s)")
    matrix.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="guests at once (bounded by cores and memory; default 1)")
    matrix.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,...]",
                        help="only cells matching guest=/scenario=/tag= (repeatable: union)")
    matrix.add_argument("--emit", choices=("github", "github-json", "gitlab"),
                        help="print the CI engine's matrix (one job per guest config, or per "
                             "shard with --shards) and exit")
    matrix.add_argument("--shard", metavar="K/N",
                        help="run only shard K of N (a stable split of the cells)")
    matrix.add_argument("--shards", type=int, metavar="N",
                        help="with --emit: one job per shard (N of them) instead of per guest")
    matrix.add_argument("--list", action="store_true", help="print the cells and exit")
    _common(matrix)
    matrix.set_defaults(func=_matrix)

    scenarios = subparsers.add_parser("scenarios", help="list and validate scenarios")
    scenarios.add_argument("paths", nargs="*", metavar="PATH",
                           help="files or folders (default: the built-in scenarios)")
    scenarios.add_argument("--schema", action="store_true",
                           help="print the scenario JSON Schema and exit")
    scenarios.set_defaults(func=_scenarios)

    guests = subparsers.add_parser("guests", help="list the guest configs")
    guests.add_argument("--guests-dir", action="append", default=[], metavar="DIR")
    guests.set_defaults(func=_guests)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests-dir", action="append", default=[], metavar="DIR",
                        help="a folder of your own guest configs (searched first)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--report-dir", metavar="DIR",
                        help="the report folder: results.json, junit.xml, report.html, "
                             "bundles/ (default: a new folder under ./wdfhil-reports)")
    parser.add_argument("--junitxml", metavar="FILE", help="also write JUnit XML here")
    parser.add_argument("--boot-timeout", type=float, default=300.0)


def _positive(jobs: int) -> int:
    if jobs < 1:
        raise ConfigError("-j must be at least 1", field="-j", value=jobs)
    return jobs


# -- running ---------------------------------------------------------------------------
def run_pairs(pairs, *, boot_timeout: float = 300.0, guests_dirs: tuple[str, ...] = (),
              json_path: str | None = None, image_for=None, header: str = "",
              report_dir: str | None = None, junitxml: str | None = None) -> int:
    """Run (scenario, guest) pairs with progress, print the verdict table (under
    ``header``), write ``json_path`` and the report folder (``report_dir``, or a
    new one: its path is printed); the exit status (0 all passed, else 1)."""
    from orchestrator.scenario_result import format_table

    results = run_with_progress(pairs, boot_timeout=boot_timeout, guests_dirs=guests_dirs,
                                image_for=image_for)
    print(format_table(results, header), flush=True)
    _outputs(results, header, json_path, report_dir, junitxml)
    return 0 if results and all(r.passed for r in results) else 1


def run_with_progress(pairs, *, boot_timeout: float = 300.0, guests_dirs: tuple[str, ...] = (),
                      image_for=None) -> list:
    """The results of (scenario, guest) pairs, run with the progress line (boots,
    scenarios done and left)."""
    from orchestrator.guest_sessions import GuestSessions
    from orchestrator.scenario_progress import RunProgress
    from orchestrator.scenario_runner import run_scenarios

    progress = RunProgress(len(pairs))
    try:
        with GuestSessions(progress=progress.event, boot_timeout=boot_timeout,
                           guests_dirs=guests_dirs, image_for=image_for) as sessions:
            return run_scenarios(pairs, sessions, on_result=progress.result)
    finally:
        progress.close()


def _outputs(results, header: str, json_path: str | None, report_dir: str | None,
             junitxml: str | None, bundles_from: Path | None = None) -> None:
    """The results file, the report folder (its path printed), the JUnit file;
    ``bundles_from``: bundles written elsewhere (by matrix children) to add."""
    from orchestrator.report_command import BUNDLES, describe_report, write_run_report
    from orchestrator.report_json import write_results

    if json_path:
        write_results(json_path, results, header)
    if results:
        folder = write_run_report(results, report_dir, header=header, junitxml=junitxml)
        if bundles_from is not None and bundles_from.is_dir():
            shutil.copytree(bundles_from, folder / BUNDLES, dirs_exist_ok=True)
        print(describe_report(folder), flush=True)


def _execute(pairs, args: argparse.Namespace) -> int:
    return run_pairs(pairs, boot_timeout=args.boot_timeout, guests_dirs=tuple(args.guests_dir),
                     json_path=args.json, report_dir=args.report_dir, junitxml=args.junitxml)


def _run(args: argparse.Namespace) -> int:
    from orchestrator.guest_config import load_guest_config
    from orchestrator.scenario_runner import plan_runs

    paths = resolve_scenarios(args.scenarios) if args.scenarios else default_scenarios()
    scenarios = [load_scenario(p) for p in paths]
    chosen = [s for s in scenarios if tag_ok(s, args.tag)]
    if not chosen:
        raise ConfigError(f"no scenario has the tag(s) {', '.join(args.tag)}", field="--tag")
    for guest in args.guest or {g for s in chosen for g in s.guests}:
        load_guest_config(guest, tuple(args.guests_dir))     # a typo fails before any boot
    return _execute(plan_runs(chosen, args.guest or None), args)


def _matrix(args: argparse.Namespace) -> int:
    from orchestrator import matrix as mx

    matrix = mx.load_matrix(args.file, only=args.only, guests_dirs=tuple(args.guests_dir))
    if args.shards is not None and (args.shards < 1 or not args.emit):
        raise ConfigError("--shards N (N >= 1) goes with --emit", field="--shards",
                          value=args.shards)
    if args.emit == "github":
        sys.stdout.write(mx.emit_github(matrix, shards=args.shards))
        return 0
    if args.emit == "github-json":
        print(mx.emit_github(matrix, as_json=True, shards=args.shards))
        return 0
    if args.emit == "gitlab":
        sys.stdout.write(mx.emit_gitlab(matrix, shards=args.shards))
        return 0
    if args.shard:
        matrix = mx.shard(matrix, *mx.parse_shard(args.shard))
    if args.list:
        for cell in matrix.cells:
            print(f"{cell.guest:16} {cell.scenario.name}")
        return 0
    jobs = _positive(args.jobs)
    parallel = mx.parallel_limit(jobs, mx.guest_memory(matrix.guests, tuple(args.guests_dir)))
    if parallel.reasons:
        print(parallel.describe(jobs), flush=True)
    if parallel.jobs > 1:
        from orchestrator.matrix_parallel import run_parallel

        return run_parallel(matrix, parallel.jobs, args, outputs=_outputs)
    from orchestrator.scenario_runner import plan_runs

    pairs = []
    for guest, cells in matrix.by_guest().items():
        pairs += plan_runs([c.scenario for c in cells], [guest])
    return _execute(pairs, args)


# -- listing -----------------------------------------------------------------------------
def _scenarios(args: argparse.Namespace) -> int:
    from orchestrator.scenario import builtin_scenarios

    if args.schema:
        sys.stdout.write(json_schema_text())
        return 0
    paths = resolve_scenarios(args.paths) if args.paths else builtin_scenarios()
    bad = 0
    for path in paths:
        try:
            scenario = load_scenario(path)
        except ConfigError as exc:
            print(f"INVALID {exc}")
            bad += 1
            continue
        tags = f" [{', '.join(scenario.tags)}]" if scenario.tags else ""
        print(f"ok      {scenario.name:34} {', '.join(scenario.guests):24} "
              f"{len(scenario.steps):3} steps{tags}  {scenario.description}")
    return 2 if bad else 0


def _guests(args: argparse.Namespace) -> int:
    from orchestrator.guest_config import list_guest_configs, load_guest_config
    from wdfhil.units import format_size

    bad = 0
    for name in list_guest_configs(args.guests_dir):
        try:
            config = load_guest_config(name, tuple(args.guests_dir))
        except ConfigError as exc:
            print(f"INVALID {exc}")
            bad += 1
            continue
        print(f"{config.name:16} {config.machine:4} {format_size(config.memory):>4} "
              f"iommu {config.iommu:5} pool {config.pool.describe()}  {config.description}")
    return 2 if bad else 0


__all__ = ["register", "scenario_name"]
