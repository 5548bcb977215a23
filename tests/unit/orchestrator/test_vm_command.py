"""``wdfhil vm``: config checks from the command line."""

from __future__ import annotations

import math
import signal
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("option", ["--boot-timeout", "--timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_odd_durations_are_refused_with_a_clear_message(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["vm", "run", option, value, "--", "true"])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}" in error and repr(value) in error


def test_odd_timeouts_are_refused_by_the_api_too():
    from orchestrator.guest_config import load_guest_config
    from orchestrator.ssh_session import deadline_after
    from orchestrator.vm import VM
    from wdfhil.errors import ConfigError

    for value in (math.nan, math.inf, -5.0, 0):
        with pytest.raises(ValueError):
            deadline_after(value)
        with pytest.raises(ConfigError, match="boot_timeout"):
            VM(load_guest_config("pc-256m"), None, boot_timeout=value)


def test_ctrl_c_while_the_cli_loads_prints_no_traceback():
    """Interrupting while the command line imports its sub-commands (the slow part
    of its start) exits quietly with 130; it used to print a KeyboardInterrupt
    traceback. The child interrupts itself exactly as a chosen module is imported."""
    program = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv[0] = "wdfhil"
from orchestrator.cli import main
sys.exit(main(["vm", "configs"]))
"""
    for module in ("argparse", "orchestrator.demo_command", "guest_images.cli",
                   "orchestrator.vm_command", "yaml"):
        child = subprocess.run([sys.executable, "-c", program, module], capture_output=True,
                               timeout=120)
        assert b"Traceback" not in child.stderr, (module, child.stderr.decode())
        assert child.returncode == 130 and b"interrupted" in child.stderr, module


def test_guests_dir_adds_the_users_configs(tmp_path, capsys, monkeypatch):
    from orchestrator.guest_config import BUILTIN_GUESTS_DIR, GUESTS_PATH_ENV
    monkeypatch.setenv(GUESTS_PATH_ENV, "")   # restored after: --guests-dir writes it
    (tmp_path / "lab-box.yaml").write_text((BUILTIN_GUESTS_DIR / "pc-256m.yaml").read_text())
    assert main(["--guests-dir", str(tmp_path), "vm", "configs"]) == 0
    out = capsys.readouterr().out
    assert "lab-box" in out and "pc-256m" in out
    assert main(["--guests-dir", str(tmp_path / "missing"), "vm", "configs"]) == 2
    assert "--guests-dir names" in capsys.readouterr().err
