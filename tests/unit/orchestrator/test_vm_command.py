"""``wdfhil vm``: config checks from the command line."""

from __future__ import annotations

from orchestrator.cli import main


def test_configs_lists_every_shipped_config(capsys):
    assert main(["vm", "configs"]) == 0
    out = capsys.readouterr().out
    for name in ("pc-256m", "q35-1g", "q35-3g-highmem", "q35-iommu"):
        assert f"ok      {name}" in out
    assert "0x110000000-0x120000000 (256M)" in out  # the highmem pool window


def test_an_invalid_config_is_reported_with_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("machine: pc\nmemory: 256M\npool:\n  base: 200M\n  size: 64M\n")
    assert main(["vm", "configs", "pc-256m", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "ok      pc-256m" in out
    assert f"INVALID {bad}:4: field 'pool.base'" in out


def test_run_without_a_command_explains_itself(capsys):
    assert main(["vm", "run"]) == 2
    assert "after --" in capsys.readouterr().err
