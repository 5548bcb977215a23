"""Errors explain themselves: file/line/field, QEMU command and console tails."""

from wdfhil.errors import ConfigError, GuestError, LaunchError, WdfhilError


def test_config_error_message():
    err = ConfigError("bad value", file="a.yaml", line=3, field="memory", value="x")
    assert str(err) == "a.yaml:3: field 'memory': bad value"
    assert isinstance(err, WdfhilError)


def test_launch_error_carries_its_evidence():
    err = LaunchError("guest did not boot", exit_code=1, command=["qemu", "-m", "256"],
                      log_tail="qemu: oops", console_tail="Kernel panic")
    text = str(err)
    assert "exit code: 1" in text and "qemu -m 256" in text
    assert "qemu: oops" in text and "Kernel panic" in text


def test_guest_error_carries_output():
    err = GuestError("command failed", command="false", exit_code=1, stderr="nope")
    assert "false" in str(err) and "nope" in str(err) and err.exit_code == 1
