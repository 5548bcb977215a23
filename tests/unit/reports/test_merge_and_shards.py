"""Shards of the matrix and the merge of their reports: a stable split that
covers every cell once, the CI emitters with one job per shard, and
``wdfhil report merge`` making one report of several."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import xmlschema
import yaml

from orchestrator import matrix as mx
from orchestrator.cli import main
from orchestrator.report_command import write_run_report
from orchestrator.report_json import load_results, merge_results, write_results
from orchestrator.scenario_result import ScenarioResult
from wdfhil.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
SCHEMA = xmlschema.XMLSchema(Path(__file__).with_name("JUnit.xsd"))


@pytest.fixture
def repo_matrix(monkeypatch):
    monkeypatch.chdir(REPO)
    return mx.load_matrix(Path("ci/matrix.yaml"))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_cover_every_cell_once_and_are_stable(repo_matrix, n):
    shards = [mx.shard(repo_matrix, k, n) for k in range(1, n + 1)]
    names = [c.name for s in shards for c in s.cells]
    assert sorted(names) == sorted(c.name for c in repo_matrix.cells)      # all, once
    assert max(len(s.cells) for s in shards) - min(len(s.cells) for s in shards) <= 1
    again = [mx.shard(mx.load_matrix(Path("ci/matrix.yaml")), k, n) for k in range(1, n + 1)]
    assert [[c.name for c in s.cells] for s in again] == [[c.name for c in s.cells]
                                                            for s in shards]


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_bad_shard_is_named(text):
    with pytest.raises(ConfigError, match="K/N"):
        mx.parse_shard(text)


def test_more_shards_than_cells_is_an_error(repo_matrix):
    with pytest.raises(ConfigError, match="has no cell"):
        mx.shard(repo_matrix, 1, len(repo_matrix.cells) + 1)


def test_emitters_give_one_job_per_shard(repo_matrix):
    jobs = yaml.safe_load(mx.emit_github(repo_matrix, shards=3))["strategy"]["matrix"]["include"]
    assert [j["shard"] for j in jobs] == ["1/3", "2/3", "3/3"]
    assert jobs[1]["command"] == "wdfhil matrix ci/matrix.yaml --shard 2/3"
    assert sum(j["cells"] for j in jobs) == len(repo_matrix.cells)
    gitlab = yaml.safe_load(mx.emit_gitlab(repo_matrix, shards=3))
    job = gitlab["wdfhil-scenarios"]
    assert job["parallel"]["matrix"] == [{"WDFHIL_SHARD": ["1/3", "2/3", "3/3"]}]
    assert "--shard $WDFHIL_SHARD --report-dir" in job["script"][0]
    merge = gitlab["wdfhil-report"]
    assert merge["needs"] == [{"job": "wdfhil-scenarios", "artifacts": True}]
    assert merge["script"] == ["wdfhil report merge wdfhil-report-*/ --report-dir wdfhil-report"]


def test_the_github_example_uploads_and_merges_reports():
    jobs = yaml.safe_load((REPO / "ci" / "github-workflow.yml").read_text())["jobs"]
    assert "--report-dir wdfhil-report-${{ matrix.name }}" in str(jobs["scenarios"]["steps"])
    assert jobs["report"]["needs"] == "scenarios"
    assert "wdfhil report merge wdfhil-report-*/" in str(jobs["report"]["steps"])


def _shard_results(failing_result, tmp_path):
    ok = ScenarioResult("baseline", "/s/baseline.scenario.yaml", "q35-1g", "PASS", seconds=2.0)
    one = write_run_report([failing_result], tmp_path / "shard-1", header="image A")
    two = tmp_path / "shard-2"
    two.mkdir()
    write_results(two / "results.json", [ok], "image A")
    return one, two


def test_merge_makes_one_report_of_the_shards(failing_result, tmp_path, capsys):
    one, two = _shard_results(failing_result, tmp_path)
    results, header = merge_results([one, two / "results.json"])
    assert [(r.scenario, r.verdict) for r in results] == [("fx", "FAIL"), ("baseline", "PASS")]
    assert header == "image A"
    assert main(["report", "merge", str(one), str(two), "--report-dir", str(tmp_path / "all"),
                 "--junitxml", str(tmp_path / "all.xml")]) == 1
    out = capsys.readouterr().out
    assert "1 passed, 1 failed" in out and "report: " in out
    merged, _ = load_results(tmp_path / "all")
    assert [r.scenario for r in merged] == ["fx", "baseline"]
    assert merged[0].evidence.findings[0]["rule"] == "MemAfterReqCompletedWriteA"
    SCHEMA.validate(str(tmp_path / "all.xml"))
    assert "MemAfterReqCompletedWriteA" in (tmp_path / "all" / "report.html").read_text()
    assert [p.name for p in (tmp_path / "all" / "bundles").iterdir()] == [
        "fx-pc-256m.bundle.tar.gz"]                                  # the shard's bundle


def test_merge_refuses_overlapping_shards_and_bad_files(failing_result, tmp_path):
    one, _two = _shard_results(failing_result, tmp_path)
    shutil.copytree(one, tmp_path / "copy")
    with pytest.raises(ConfigError, match="shards must not overlap"):
        merge_results([one, tmp_path / "copy"])
    (tmp_path / "bad.json").write_text("{\n  \"results\": 3,")
    with pytest.raises(ConfigError, match=r"bad\.json:2: not JSON"):
        load_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"something": []}))
    with pytest.raises(ConfigError, match="not a wdfhil results file"):
        load_results(tmp_path / "other.json")
    assert main(["report", "merge", str(tmp_path / "missing")]) == 2


def test_a_reused_report_folder_keeps_only_this_runs_bundles(failing_result, tmp_path):
    folder = write_run_report([failing_result], tmp_path / "r")
    (folder / "bundles" / "old-pc-256m.bundle.tar.gz").write_bytes(b"from an earlier run")
    ok = ScenarioResult("baseline", "/s/baseline.scenario.yaml", "q35-1g", "PASS")
    write_run_report([ok], folder)
    assert list((folder / "bundles").iterdir()) == []
    assert [r.scenario for r in load_results(folder)[0]] == ["baseline"]
