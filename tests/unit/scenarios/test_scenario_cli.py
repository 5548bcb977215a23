"""``wdfhil scenarios``, ``guests``, ``--version`` and ``run``'s usage errors (no guest boots)."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main
from orchestrator.scenario import SCHEMA_FILE


def test_scenarios_lists_and_validates_the_builtin_ones(capsys):
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    assert "ok      echo-roundtrip" in out and "ok      baseline-q35-3g-highmem" in out


def test_an_invalid_scenario_is_listed_with_file_line_field_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.scenario.yaml"
    bad.write_text("description: x\nsteps:\n  - alloc: {buffer: a, size: 1, where: middle}\n")
    good = tmp_path / "good.scenario.yaml"
    good.write_text("description: fine\nsteps:\n  - device_info: {}\n")
    assert main(["scenarios", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"INVALID {bad}:3: field 'steps[0].alloc.where'" in out
    assert "ok      good" in out


def test_schema_prints_the_published_file(capsys):
    assert main(["scenarios", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(SCHEMA_FILE.read_text())


def test_guests_and_version(capsys):
    assert main(["guests"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("pc-256m", "q35-1g", "q35-3g-highmem", "q35-iommu"))
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("wdfhil ")


@pytest.mark.parametrize("argv,words", [
    (["run", "no-such-scenario"], "no scenario file or built-in scenario"),
    (["run", "echo-roundtrip", "--guest", "pc-512m"], "no guest config named"),
    (["run", "--tag", "nothing-has-this"], "no scenario has the tag"),
    (["matrix", "no/such/matrix.yaml"], "cannot read file"),
])
def test_run_usage_errors_exit_2_before_any_boot(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err
