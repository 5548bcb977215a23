"""ci/matrix.yaml: expansion, include/exclude, filters that match nothing, the emitters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import matrix as mx
from orchestrator.cli import main
from wdfhil.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
SCENARIO = """\
description: {name}
guests: {guests}
tags: {tags}
steps:
  - device_info: {{}}
"""


@pytest.fixture
def scenarios(tmp_path):
    folder = tmp_path / "scen"
    folder.mkdir()
    for name, guests, tags in (("a", "[pc-256m]", "[demo]"), ("b", "[pc-256m, q35-1g]", "[]"),
                               ("c", "[q35-3g-highmem]", "[highmem]")):
        (folder / f"{name}.scenario.yaml").write_text(SCENARIO.format(name=name, guests=guests,
                                                                      tags=tags))
    return folder


def write_matrix(tmp_path, text):
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    return path


def cells(matrix):
    return sorted((c.guest, c.scenario.name) for c in matrix.cells)


def test_cells_are_guests_the_scenario_names(tmp_path, scenarios):
    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n")
    matrix = mx.load_matrix(path)
    assert cells(matrix) == [("pc-256m", "a"), ("pc-256m", "b"), ("q35-1g", "b")]
    assert matrix.guests == ["pc-256m", "q35-1g"]


def test_include_adds_and_exclude_removes(tmp_path, scenarios):
    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n"
                                  "include:\n  - {guest: q35-1g, tag: demo}\n"
                                  "exclude:\n  - {guest: pc-256m, scenario: b}\n")
    assert cells(mx.load_matrix(path)) == [("pc-256m", "a"), ("q35-1g", "a"), ("q35-1g", "b")]


@pytest.mark.parametrize("extra,line,field,words", [
    ("exclude:\n  - {scenario: nope}\n", 4, "exclude[0]", "matches no cell"),
    ("include:\n  - {tag: nope}\n", 4, "include[0]", "matches no scenario"),
    ("exclude:\n  - {}\n", 4, "exclude[0]", "at least one of"),
    ("exclude:\n  - {guset: pc-256m}\n", 4, "exclude[0].guset", "unknown field"),
    ("shards: 2\n", 3, "shards", "unknown field"),
])
def test_a_filter_matching_nothing_or_a_bad_key_is_an_error(tmp_path, scenarios, extra, line,
                                                            field, words):
    path = write_matrix(tmp_path, f"guests: [pc-256m]\nscenarios: [{scenarios}]\n{extra}")
    with pytest.raises(ConfigError) as caught:
        mx.load_matrix(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), line, field)
    assert words in str(caught.value)


def test_unknown_guest_and_scenario_are_named(tmp_path, scenarios):
    path = write_matrix(tmp_path, f"guests: [pc-256m, pc-512m]\nscenarios: [{scenarios}]\n")
    with pytest.raises(ConfigError, match="guests\\[1\\]': no guest config named 'pc-512m'"):
        mx.load_matrix(path)
    path = write_matrix(tmp_path, "guests: [pc-256m]\nscenarios: [no-such-thing]\n")
    with pytest.raises(ConfigError) as caught:
        mx.load_matrix(path)
    assert caught.value.line == 2 and caught.value.field == "scenarios[0]"


def test_only_filters_are_a_union_and_must_match(tmp_path, scenarios):
    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n")
    assert cells(mx.load_matrix(path, only=["guest=q35-1g"])) == [("q35-1g", "b")]
    assert cells(mx.load_matrix(path, only=["guest=q35-1g", "scenario=a"])) == [
        ("pc-256m", "a"), ("q35-1g", "b")]
    with pytest.raises(ConfigError, match="--only guest=q35-iommu matches no cell"):
        mx.load_matrix(path, only=["guest=q35-iommu"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        mx.load_matrix(path, only=["pc-256m"])


def test_the_repo_matrix_covers_every_shipped_guest():
    matrix = mx.load_matrix(REPO / "ci" / "matrix.yaml")
    assert set(matrix.guests) == {"pc-256m", "q35-1g", "q35-3g-highmem", "q35-iommu"}
    names = {(c.guest, c.scenario.name) for c in matrix.cells}
    assert ("q35-1g", "echo-roundtrip") in names          # the include
    assert ("q35-1g", "stale-dma") not in names           # the exclude
    assert ("pc-256m", "stale-dma") in names


def test_github_emitter_parses_with_one_job_per_guest(tmp_path, scenarios):
    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g, q35-3g-highmem]\n"
                                  f"scenarios: [{scenarios}]\n")
    matrix = mx.load_matrix(path)
    strategy = yaml.safe_load(mx.emit_github(matrix))["strategy"]
    assert strategy["fail-fast"] is False
    jobs = strategy["matrix"]["include"]
    assert [j["guest"] for j in jobs] == ["pc-256m", "q35-1g", "q35-3g-highmem"]
    assert [j["cells"] for j in jobs] == [2, 1, 1]
    assert jobs[1]["command"] == f"wdfhil matrix {path} --only guest=q35-1g"
    assert yaml.safe_load(mx.emit_github(matrix, as_json=True)) == strategy["matrix"]


def test_gitlab_emitter_parses_with_a_parallel_matrix(tmp_path, scenarios):
    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n")
    job = yaml.safe_load(mx.emit_gitlab(mx.load_matrix(path)))["wdfhil-scenarios"]
    assert job["parallel"]["matrix"] == [{"WDFHIL_GUEST": ["pc-256m", "q35-1g"]}]
    assert any(f"wdfhil matrix {path} --only guest=$WDFHIL_GUEST" in line for line in job["script"])
    assert ".wdfhil-cache/" in job["cache"]["paths"]


def test_example_workflows_parse_and_run_the_matrix():
    github = yaml.safe_load((REPO / "ci" / "github-workflow.yml").read_text())
    jobs = github["jobs"]
    assert "wdfhil matrix ci/matrix.yaml --emit github-json" in str(jobs["plan"])
    run = jobs["scenarios"]
    assert run["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert any("actions/cache" in str(step.get("uses", "")) for step in run["steps"])
    assert "--only guest=${{ matrix.guest }}" in str(run["steps"])
    gitlab = yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text())
    assert "parallel" in str(gitlab) and "--only guest=$WDFHIL_GUEST" in str(gitlab)


GIB, MIB = 1 << 30, 1 << 20


@pytest.mark.parametrize("requested, memory, cores, available, jobs, why", [
    (2, [256 * MIB, GIB], 2, 24 * GIB, 2, None),                        # nothing lowers it
    (8, [256 * MIB] * 4, 2, 24 * GIB, 2, "this machine has 2 cores for it"),
    (1, [256 * MIB] * 4, 2, 24 * GIB, 1, None),
    (4, [256 * MIB, GIB], 8, 24 * GIB, 2, "the cells to run are on 2 guest configs"),
    # 3 GiB + 1 GiB + 2 x 0.25 GiB of QEMU = 4.5 GiB > 80 % of 5 GiB; 3.25 GiB fits
    (2, [3 * GIB, GIB], 2, 5 * GIB, 1,
     "2 guests at once (3G, 1G of RAM, 4.50 GiB with QEMU) would not fit in 80% of the "
     "5.00 GiB of memory available"),
    # the largest ones together: 1.25 + 1.25 + 0.5 GiB fit in 3.2 GiB, a fourth does not
    (4, [GIB, 256 * MIB, GIB, 256 * MIB], 4, 4 * GIB, 3,
     "4 guests at once (1G, 1G, 256M, 256M of RAM, 3.50 GiB with QEMU)"),
    (2, [3 * GIB], 2, 4 * GIB, 1, "the largest guest alone (3G of RAM, 3.25 GiB with QEMU) "
     "exceeds 80% of the 4.00 GiB of memory available: one at a time"),       # never 0
    (8, [3 * GIB] * 4, 2, 0, 2, "2 cores"),                 # memory unknown: cores only
])
def test_parallel_limit_is_bounded_by_cores_guests_and_memory(requested, memory, cores,
                                                              available, jobs, why):
    got = mx.parallel_limit(requested, memory, cores=cores, available=available)
    assert got.jobs == jobs
    if why is None:
        assert got.reasons == () and got.describe(requested) == ""
    else:
        assert why in got.describe(requested)
        assert got.describe(requested).startswith(f"-j {requested} lowered to {jobs}: ")


def test_parallel_limit_reads_this_machine(monkeypatch):
    monkeypatch.setattr(mx.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(mx, "available_memory", lambda: 64 * GIB)
    assert mx.parallel_limit(8, [256 * MIB] * 8).jobs == 3
    monkeypatch.setattr(mx, "available_memory", lambda: 2 * GIB)    # 0.8 x 2 GiB: three guests
    assert mx.parallel_limit(8, [256 * MIB] * 8).jobs == 3
    monkeypatch.setattr(mx, "available_memory", lambda: GIB)        # 0.8 GiB: one
    assert mx.parallel_limit(8, [256 * MIB] * 8).jobs == 1


def test_matrix_says_when_it_lowers_j(tmp_path, scenarios, capsys, monkeypatch):
    """``wdfhil matrix -j 8`` prints why it runs fewer guests at once, and runs that many."""
    from orchestrator import matrix_parallel

    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n")
    monkeypatch.setattr(mx, "usable_cores", lambda: 2)
    monkeypatch.setattr(mx, "available_memory", lambda: 24 * GIB)
    ran = []
    monkeypatch.setattr(matrix_parallel, "run_parallel",
                        lambda matrix, limit, args, outputs: ran.append(limit) or 0)
    assert main(["matrix", str(path), "-j", "8"]) == 0
    assert ran == [2]
    assert capsys.readouterr().out.splitlines() == [
        "-j 8 lowered to 2: this machine has 2 cores for it"]


def test_matrix_cli_emits_and_lists(tmp_path, scenarios, capsys):
    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n")
    assert main(["matrix", str(path), "--emit", "gitlab"]) == 0
    assert "WDFHIL_GUEST" in capsys.readouterr().out
    assert main(["matrix", str(path), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["pc-256m", "a", "pc-256m", "b", "q35-1g", "b"]
    assert main(["matrix", str(path), "--only", "tag=nothing"]) == 2
    assert "matches no cell" in capsys.readouterr().err


def test_the_gitlab_example_is_what_the_emitter_prints(monkeypatch):
    monkeypatch.chdir(REPO)
    emitted = yaml.safe_load(mx.emit_gitlab(mx.load_matrix(Path("ci/matrix.yaml"))))
    assert yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text()) == emitted


# A stand-in for the child ``python -m orchestrator.cli matrix ... --only guest=G --json F``
# of ``wdfhil matrix -j``: pc-256m's passes its cells, q35-1g's dies half-way with no results.
CHILD = """\
import sys
from pathlib import Path
from orchestrator.matrix import load_matrix
from orchestrator.report_json import write_results
from orchestrator.scenario_result import ScenarioResult

argv = sys.argv[3:]                       # after -m orchestrator.cli
guest = argv[argv.index("--only") + 1].split("guest=")[1].split(",")[0]
if guest == "q35-1g":
    print("booting q35-1g")
    print("Killed")
    sys.exit(137)
cells = [c for c in load_matrix(argv[1]).cells if c.guest == guest]
write_results(argv[argv.index("--json") + 1],
              [ScenarioResult(c.scenario.name, str(c.scenario.path), guest, "PASS") for c in cells])
"""


def test_a_child_that_dies_leaves_its_cells_in_the_report_as_errors(tmp_path, scenarios, capsys,
                                                                   monkeypatch):
    import json
    import sys

    path = write_matrix(tmp_path, f"guests: [pc-256m, q35-1g]\nscenarios: [{scenarios}]\n")
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} {child} -m orchestrator.cli \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr(mx, "usable_cores", lambda: 2)
    monkeypatch.setattr(mx, "available_memory", lambda: 24 * GIB)
    assert main(["matrix", str(path), "-j", "2", "--report-dir", str(tmp_path / "report")]) == 1
    out = capsys.readouterr().out
    assert "q35-1g: the run failed (exit 137)" in out
    assert "guest configs whose run failed: q35-1g" in out
    results = json.loads((tmp_path / "report" / "results.json").read_text())["results"]
    assert [(r["guest"], r["scenario"], r["verdict"]) for r in results] == [
        ("pc-256m", "a", "PASS"), ("pc-256m", "b", "PASS"), ("q35-1g", "b", "ERROR")]
    assert results[2]["problems"] == [
        "not run: the wdfhil matrix run of q35-1g failed (exit 137: Killed)"]
