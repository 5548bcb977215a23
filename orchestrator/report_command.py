"""Where a run's report goes, and ``wdfhil report merge``.

:func:`write_run_report` writes a report folder (0700): ``results.json``
(orchestrator.report_json), ``junit.xml`` (orchestrator.report_junit),
``report.html`` (orchestrator.report_html) and, for each scenario run that did
not pass, a reproduction bundle under ``bundles/`` (orchestrator.bundle).
``wdfhil run`` and ``wdfhil matrix`` call it after the verdict table; the
default folder is ``wdfhil-reports/<UTC time>`` under the current directory.

``wdfhil report merge DIR_OR_FILE... [-o OUT]`` merges shard results (report
folders or results files) into one report folder (bundles are copied).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from wdfhil.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.scenario_result import ScenarioResult

DEFAULT_PARENT = Path("wdfhil-reports")
BUNDLES = "bundles"


def default_report_dir() -> Path:
    """A new folder under ./wdfhil-reports named after the time (UTC)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = DEFAULT_PARENT / stamp
    serial = 1
    while path.exists():
        serial += 1
        path = DEFAULT_PARENT / f"{stamp}-{serial}"
    return path


def _private_folder(path: Path) -> Path:
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    if not path.is_dir():
        raise ConfigError("not a folder", field="--report-dir", value=str(path))
    return path


def write_run_report(results: list["ScenarioResult"], report_dir: str | Path | None = None, *,
                     header: str = "", junitxml: str | Path | None = None,
                     bundles: bool = True) -> Path:
    """Write the report folder of a run (see the module's docstring); returns it."""
    from orchestrator.bundle import write_bundle
    from orchestrator.report_html import write_html
    from orchestrator.report_json import RESULTS_FILE, write_results
    from orchestrator.report_junit import write_junit

    from orchestrator.bundle import SUFFIX

    folder = _private_folder(Path(report_dir) if report_dir else default_report_dir())
    for stale in (folder / BUNDLES).glob(f"*{SUFFIX}"):    # a reused folder: this run's only
        stale.unlink()
    write_results(folder / RESULTS_FILE, results, header)
    write_junit(folder / "junit.xml", results)
    if junitxml:
        write_junit(junitxml, results)
    if bundles:
        for result in results:
            if not result.passed and result.evidence is not None and result.evidence.files:
                write_bundle(result, folder / BUNDLES)
    write_html(folder / "report.html", results, header)
    return folder


def describe_report(folder: Path) -> str:
    """The line a run prints under its verdict table."""
    bundles = sorted((folder / BUNDLES).glob("*.tar.gz")) if (folder / BUNDLES).is_dir() else []
    line = f"report: {folder / 'report.html'}"
    if bundles:
        line += f" ({len(bundles)} reproduction bundle(s) in {folder / BUNDLES})"
    return line


# -- wdfhil report merge -----------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser("report", help="merge shard reports into one")
    actions = report.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    merge = actions.add_parser(
        "merge", help="merge report folders (or results.json files) into one report",
        description="Merge the results of several runs (e.g. CI shards) into one report "
                    "folder: results.json, junit.xml, report.html, and their bundles.")
    merge.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE")
    merge.add_argument("-o", "--output", "--report-dir", dest="output", metavar="DIR",
                       help="the merged report folder (default: a new one under ./wdfhil-reports)")
    merge.add_argument("--junitxml", metavar="FILE", help="also write the merged JUnit XML here")
    merge.set_defaults(func=_merge)


def _merge(args: argparse.Namespace) -> int:
    from orchestrator.report_json import merge_results
    from orchestrator.scenario_result import format_table

    results, header = merge_results(args.inputs)
    folder = write_run_report(results, args.output, header=header, junitxml=args.junitxml,
                              bundles=False)
    for source in args.inputs:
        found = Path(source) / BUNDLES if Path(source).is_dir() else Path(source).parent / BUNDLES
        if found.is_dir():
            _private_folder(folder / BUNDLES)
            for bundle in found.glob("*.tar.gz"):
                shutil.copy2(bundle, folder / BUNDLES / bundle.name)
    print(format_table(results, header), flush=True)
    print(describe_report(folder), flush=True)
    return 0 if results and all(r.passed for r in results) else 1
