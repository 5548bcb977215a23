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


def test_parallel_limit_is_bounded_by_cores_and_memory(monkeypatch):
    monkeypatch.setattr(mx.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(mx, "available_memory", lambda: 4 << 30)
    assert mx.parallel_limit(8, [256 << 20]) == 2
    assert mx.parallel_limit(8, [3 << 30, 256 << 20]) == 1       # one 3 GiB guest fits in 80 %
    assert mx.parallel_limit(1, [256 << 20]) == 1
    monkeypatch.setattr(mx, "available_memory", lambda: 0)      # unknown: cores only
    assert mx.parallel_limit(8, [3 << 30]) == 2


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
