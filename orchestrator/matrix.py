"""The CI matrix: guest configs x scenarios, with include and exclude
(``ci/matrix.yaml``), run locally on N guests at once or handed to a CI engine.

A cell (guest, scenario) is in the matrix when the guest is one of the
matrix's ``guests`` and one of the scenario's own ``guests``; ``include``
entries add cells (also on guests a scenario does not name), ``exclude``
entries take cells away. Every filter (an include or exclude entry,
``--only``) must match at least one cell: a filter that matches nothing is a
typo, and an error naming its file and line.

CI engines get one job per guest config, each running
``wdfhil matrix FILE --only guest=NAME``, or one job per shard (``shards=N``),
each running ``wdfhil matrix FILE --shard K/N``: :func:`emit_github` prints a
GitHub Actions ``strategy`` (matrix ``include`` list), :func:`emit_gitlab` a
GitLab job with ``parallel:matrix`` and the job that merges their reports.

Shards (:func:`shard`) are a stable split: the cells in the matrix's order
(guest by guest, as written), cut into N contiguous runs as even as can be, so
the same matrix always gives a shard the same cells and a shard boots as few
guests as it can.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from orchestrator.guest_config import list_guest_configs, load_guest_config
from orchestrator.scenario import Scenario, load_scenario, resolve_scenarios
from orchestrator.scenario_schema import Field, List, Obj, Place, Str
from wdfhil.errors import ConfigError
from wdfhil.units import format_size
from wdfhil.yamlfile import load_yaml_mapping

DEFAULT_MATRIX = Path("ci/matrix.yaml")

_WORD = Str(pattern=r"^[A-Za-z0-9_.-]+$", pattern_hint="a name")
_FILTER = Obj({
    "guest": Field(_WORD),
    "scenario": Field(_WORD, ),
    "tag": Field(_WORD),
}, description="Cells whose guest, scenario name and tag all match the given keys.",
    rules=((lambda d: bool({"guest", "scenario", "tag"} & set(d)),
            "give at least one of guest, scenario, tag", "guest"),))

MATRIX_SCHEMA = Obj({
    "guests": Field(List(_WORD, min_items=1), required=True),
    "scenarios": Field(List(Str(description="A scenario file, a folder of *.scenario.yaml, "
                                "or a built-in scenario name; 'builtin' for all built-in ones."),
                            min_items=1), required=True),
    "include": Field(List(_FILTER), default=[]),
    "exclude": Field(List(_FILTER), default=[]),
}, description="wdfhil CI matrix (docs/scenarios.md).")


@dataclass(frozen=True)
class Cell:
    guest: str
    scenario: Scenario

    @property
    def name(self) -> str:
        return f"{self.scenario.name}[{self.guest}]"


@dataclass
class Matrix:
    path: Path
    guests: list[str]
    cells: list[Cell]

    def by_guest(self) -> dict[str, list[Cell]]:
        out: dict[str, list[Cell]] = {}
        for cell in self.cells:
            out.setdefault(cell.guest, []).append(cell)
        return out


def _matches(rule: dict[str, Any], guest: str, scenario: Scenario) -> bool:
    return (rule.get("guest", guest) == guest
            and rule.get("scenario", scenario.name) == scenario.name
            and ("tag" not in rule or rule["tag"] in scenario.tags))


def parse_only(items: Iterable[str]) -> list[dict[str, str]]:
    """``--only guest=pc-256m,tag=demo`` -> [{"guest": "pc-256m", "tag": "demo"}]."""
    rules = []
    for item in items:
        rule: dict[str, str] = {}
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or key not in ("guest", "scenario", "tag") or not value:
                raise ConfigError(f"--only {item!r}: write KEY=VALUE[,KEY=VALUE], keys guest, "
                                  f"scenario, tag", value=item)
            rule[key] = value
        rules.append(rule)
    return rules


def load_matrix(path: str | Path = DEFAULT_MATRIX, *, only: Iterable[str] = (),
                guests_dirs: tuple[str, ...] = ()) -> Matrix:
    """Read, check and expand a matrix file; ``only``: --only filters (union)."""
    path = Path(path)
    data = load_yaml_mapping(path)
    checked = MATRIX_SCHEMA.check(data, Place(None, ""))
    known_guests = set(list_guest_configs(guests_dirs))
    for index, guest in enumerate(checked["guests"]):
        if guest not in known_guests:
            raise ConfigError(f"no guest config named {guest!r} (known: "
                              f"{', '.join(sorted(known_guests))})", file=str(path),
                              line=data["guests"].line_of(index), field=f"guests[{index}]",
                              value=guest)
    scenarios: list[Scenario] = []
    for index, entry in enumerate(checked["scenarios"]):
        place = Place(data["scenarios"], index)
        try:
            if entry == "builtin":
                from orchestrator.scenario import builtin_scenarios
                found = builtin_scenarios()
            else:
                target = Path(entry)
                if not target.is_absolute() and (path.parent / target).exists():
                    target = path.parent / target
                elif not target.is_absolute() and (path.parent.parent / target).exists():
                    target = path.parent.parent / target      # ci/matrix.yaml names repo paths
                found = resolve_scenarios([target if target.exists() else entry])
        except ConfigError as exc:
            raise place.error(exc.reason, entry) from None
        for scenario_path in found:
            scenario = load_scenario(scenario_path)
            if all(s.path.resolve() != scenario.path.resolve() for s in scenarios):
                scenarios.append(scenario)
    matrix_guests = list(checked["guests"])
    cells = [Cell(g, s) for s in scenarios for g in matrix_guests if g in s.guests]
    for index, rule in enumerate(checked["include"]):
        added = [Cell(g, s) for s in scenarios for g in ([rule["guest"]] if "guest" in rule
                                                          else matrix_guests)
                 if _matches(rule, g, s)]
        if not added:
            raise rule.error(None, "this include matches no scenario")
        if "guest" in rule and rule["guest"] not in known_guests:
            raise rule.error("guest", f"no guest config named {rule['guest']!r}")
        cells += [c for c in added if c not in cells]
    for index, rule in enumerate(checked["exclude"]):
        kept = [c for c in cells if not _matches(rule, c.guest, c.scenario)]
        if len(kept) == len(cells):
            raise rule.error(None, "this exclude matches no cell of the matrix")
        cells = kept
    only_rules = parse_only(only)
    if only_rules:
        chosen = []
        for rule in only_rules:
            hit = [c for c in cells if _matches(rule, c.guest, c.scenario)]
            if not hit:
                what = ",".join(f"{k}={v}" for k, v in rule.items())
                raise ConfigError(f"--only {what} matches no cell of the matrix {path}",
                                  value=what)
            chosen += [c for c in hit if c not in chosen]
        cells = chosen
    if not cells:
        raise ConfigError("the matrix has no cell (no scenario names one of its guests)",
                          file=str(path))
    guests = [g for g in matrix_guests if any(c.guest == g for c in cells)]
    guests += sorted({c.guest for c in cells} - set(guests))
    return Matrix(path, guests, cells)


# -- shards ------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) -> (K, N)."""
    k, sep, n = str(text).partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n):
        raise ConfigError("write K/N with 1 <= K <= N (e.g. 2/4)", field="--shard", value=text)
    return int(k), int(n)


def shard(matrix: Matrix, k: int, n: int) -> Matrix:
    """Shard ``k`` of ``n`` (see the module's docstring); an empty shard is an error."""
    ordered = [c for cells in matrix.by_guest().values() for c in cells]
    cells = ordered[(k - 1) * len(ordered) // n: k * len(ordered) // n]
    if not cells:
        raise ConfigError(f"shard {k}/{n} has no cell: the matrix {matrix.path} has only "
                          f"{len(ordered)} cell(s)", field="--shard", value=f"{k}/{n}")
    return Matrix(matrix.path, [g for g in matrix.guests if any(c.guest == g for c in cells)],
                  cells)


# -- CI engines ------------------------------------------------------------------------
def _job_command(matrix: Matrix, guest: str) -> str:
    return f"wdfhil matrix {matrix.path} --only guest={guest}"


def _shard_command(matrix: Matrix, k: int, n: int) -> str:
    return f"wdfhil matrix {matrix.path} --shard {k}/{n}"


def github_matrix(matrix: Matrix, shards: int | None = None) -> dict[str, Any]:
    """The ``strategy.matrix`` object: one job per guest config, or per shard. Each
    entry has ``name`` (a file-name-safe job name for its report artifact)."""
    if shards:
        return {"include": [{"name": f"shard-{k}-of-{shards}", "shard": f"{k}/{shards}",
                             "cells": len(shard(matrix, k, shards).cells),
                             "command": _shard_command(matrix, k, shards)}
                            for k in range(1, shards + 1)]}
    return {"include": [{"name": g, "guest": g, "cells": len(matrix.by_guest()[g]),
                         "command": _job_command(matrix, g)} for g in matrix.guests]}


def emit_github(matrix: Matrix, *, as_json: bool = False, shards: int | None = None) -> str:
    """``strategy:`` for a GitHub Actions job (YAML), or the matrix alone as one
    JSON line for ``fromJSON()`` in a workflow that plans the matrix first."""
    if as_json:
        return json.dumps(github_matrix(matrix, shards), separators=(",", ":"))
    return yaml.safe_dump({"strategy": {"fail-fast": False,
                                        "matrix": github_matrix(matrix, shards)}},
                          sort_keys=False, width=1000)


def emit_gitlab(matrix: Matrix, *, job: str = "wdfhil-scenarios",
                shards: int | None = None) -> str:
    """GitLab CI: a job with ``parallel:matrix`` (one per guest config, or per
    shard), each keeping its report folder as an artifact, and ``wdfhil-report``
    merging them into one report (``wdfhil report merge``)."""
    if shards:
        for k in range(1, shards + 1):
            shard(matrix, k, shards)                   # an empty shard is an error now
        axis = {"WDFHIL_SHARD": [f"{k}/{shards}" for k in range(1, shards + 1)]}
        select = "--shard $WDFHIL_SHARD"
        folder = "wdfhil-report-$CI_NODE_INDEX"
    else:
        axis = {"WDFHIL_GUEST": list(matrix.guests)}
        select = "--only guest=$WDFHIL_GUEST"
        folder = "wdfhil-report-$WDFHIL_GUEST"
    setup = ["apt-get update -q && apt-get install -y -q make python3 python3-venv",
             "make install", 'export PATH="$PWD/.venv/bin:$PATH"']
    return yaml.safe_dump({job: {
        "stage": "test",
        "image": "debian:12",
        "parallel": {"matrix": [axis]},
        "variables": {"WDFHIL_CACHE_DIR": "$CI_PROJECT_DIR/.wdfhil-cache"},
        "cache": {"key": "wdfhil-images", "paths": [".wdfhil-cache/"]},
        "before_script": list(setup),
        "script": [f"wdfhil matrix {matrix.path} {select} --report-dir {folder} "
                   f"--junitxml {folder}/junit.xml"],
        "artifacts": {"when": "always", "paths": [f"{folder}/"],
                      "reports": {"junit": f"{folder}/junit.xml"}},
    }, "wdfhil-report": {
        "stage": ".post",
        "image": "debian:12",
        "when": "always",
        "needs": [{"job": job, "artifacts": True}],
        "before_script": list(setup),
        "script": ["wdfhil report merge wdfhil-report-*/ --report-dir wdfhil-report"],
        "artifacts": {"when": "always", "paths": ["wdfhil-report/"],
                      "reports": {"junit": "wdfhil-report/junit.xml"}},
    }}, sort_keys=False, width=1000)


# -- running N guests at once ---------------------------------------------------------
# Beyond its RAM (a file the size of the guest's memory), each guest at once costs
# its QEMU (device models, TCG's code cache) and the child wdfhil driving it: about
# 0.2 GiB resident for pc-256m under TCG, rounded up.
GUEST_OVERHEAD = 256 << 20
MEMORY_SHARE = 0.8            # of the available memory, the rest for the host and the tests


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or
    ``taskset`` can give fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Parallelism:
    """How many guests run at once, and why fewer than asked (one line each)."""

    jobs: int
    reasons: tuple[str, ...] = ()

    def describe(self, requested: int) -> str:
        """The line ``wdfhil matrix`` prints when it runs fewer guests than ``-j``."""
        if not self.reasons:
            return ""
        return f"-j {requested} lowered to {self.jobs}: " + "; ".join(self.reasons)


def parallel_limit(requested: int, guest_memory: list[int], *, cores: int | None = None,
                   available: int | None = None) -> Parallelism:
    """How many guests to run at once: at most ``requested``, one a core, one a
    guest config (``guest_memory``: each config's RAM, one child runs each), and as
    many as fit in MEMORY_SHARE of the available memory when the largest ones run
    together (each its RAM plus GUEST_OVERHEAD); at least one. ``cores`` and
    ``available`` default to this machine's (available 0: unknown, not bounded)."""
    cores = usable_cores() if cores is None else cores
    available = available_memory() if available is None else available
    jobs, reasons = max(1, requested), []
    if cores < jobs:
        jobs = max(1, cores)
        reasons.append(f"this machine has {cores} core{'s' * (cores != 1)} for it")
    if guest_memory and len(guest_memory) < jobs:
        jobs = len(guest_memory)
        reasons.append(f"the cells to run are on {len(guest_memory)} guest config"
                       f"{'s' * (len(guest_memory) != 1)} (one child runs each)")
    if available and guest_memory:
        budget = int(available * MEMORY_SHARE)
        largest = sorted(guest_memory, reverse=True)
        fit = 0
        while fit < jobs and sum(m + GUEST_OVERHEAD for m in largest[:fit + 1]) <= budget:
            fit += 1
        if fit < jobs:
            need = sum(m + GUEST_OVERHEAD for m in largest[:fit + 1])
            sizes = ", ".join(format_size(m) for m in largest[:fit + 1])
            room = f"{MEMORY_SHARE:.0%} of the {_gib(available)} of memory available"
            if fit:
                reasons.append(f"{fit + 1} guests at once ({sizes} of RAM, {_gib(need)} with "
                               f"QEMU) would not fit in {room}")
            else:
                reasons.append(f"the largest guest alone ({sizes} of RAM, {_gib(need)} with "
                               f"QEMU) exceeds {room}: one at a time")
            jobs = max(1, fit)
    return Parallelism(jobs, tuple(reasons))


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB"


def guest_memory(guests: list[str], guests_dirs: tuple[str, ...] = ()) -> list[int]:
    return [load_guest_config(g, guests_dirs).memory for g in guests]


def describe(matrix: Matrix) -> str:
    lines = []
    for guest, cells in matrix.by_guest().items():
        lines.append(f"{guest}: {', '.join(c.scenario.name for c in cells)}")
    return "\n".join(lines)


__all__ = ["Cell", "Matrix", "Parallelism", "emit_github", "emit_gitlab", "github_matrix", "load_matrix",
           "parallel_limit", "parse_only", "parse_shard", "shard"]
