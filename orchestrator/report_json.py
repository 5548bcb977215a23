"""The results file of a run (``results.json``): every scenario's verdict, steps,
findings and evidence, in one JSON document that the HTML report, the JUnit
file and ``wdfhil report merge`` are all made from (so a shard's results
merge without rerunning anything).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from wdfhil.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.scenario_result import ScenarioResult

FORMAT = "wdfhil-results/1"
RESULTS_FILE = "results.json"


def results_document(results: list["ScenarioResult"], header: str = "") -> dict[str, Any]:
    passed = sum(r.passed for r in results)
    return {"format": FORMAT, "created": time.time(), "header": header,
            "results": [r.to_json() for r in results],
            "passed": passed, "failed": len(results) - passed}


def write_results(path: str | Path, results: list["ScenarioResult"], header: str = "") -> Path:
    path = Path(path)
    path.write_text(json.dumps(results_document(results, header), indent=1) + "\n")
    return path


def load_results(path: str | Path) -> tuple[list["ScenarioResult"], str]:
    """The results and header of a results file, or of a report folder holding
    one; a file that is not one is a ConfigError naming it."""
    from orchestrator.scenario_result import ScenarioResult

    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the results: {exc.strerror or exc}", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc.msg}", file=str(path), line=exc.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ConfigError("not a wdfhil results file (no 'results' list)", file=str(path))
    try:
        results = [ScenarioResult.from_json(item) for item in data["results"]]
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"a result in it is malformed: {exc}", file=str(path)) from None
    return results, str(data.get("header", ""))


def merge_results(paths: Iterable[str | Path]) -> tuple[list["ScenarioResult"], str]:
    """Results of several runs (shards) as one: in the order given; a (scenario,
    guest) pair that appears twice is an error (two shards overlapped)."""
    merged: list["ScenarioResult"] = []
    headers: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        results, header = load_results(path)
        if header and header not in headers:
            headers.append(header)
        for result in results:
            key = (result.path, result.guest)
            if key in seen:
                raise ConfigError(f"{result.scenario} on {result.guest} is in both {seen[key]} "
                                  f"and {path}: shards must not overlap", file=str(path))
            seen[key] = str(path)
            merged.append(result)
    return merged, "\n".join(headers)
