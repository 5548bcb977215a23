"""The warm reset's health verdict on the guest's answers (the e2e tests run it
on a real guest: tests/e2e/test_guest_fast.py)."""

from __future__ import annotations

import json

import pytest

from orchestrator.warm_reset import WarmResetFailed, check_health, guest_reset_command

IDLE = "wdfhil-warm-reset-io 0 0\n"


def info(status: str, ok: bool = True) -> str:
    return json.dumps({"ok": ok, "header": {"status_name": status}}) + "\n"


def test_an_idle_driver_passes_and_the_command_reads_its_counters():
    check_health(IDLE, 0, "cmd", agent_info=False)
    check_health(IDLE + info("READY"), 0, "cmd", agent_info=True)
    command = guest_reset_command("/dev/wdfhil3")
    assert "/sys/class/wdfhil/wdfhil3/io_in_flight" in command and " info" not in command
    assert guest_reset_command("/dev/wdfhil0", "AGENT --dev /dev/wdfhil0").endswith(
        "AGENT --dev /dev/wdfhil0 info")


@pytest.mark.parametrize("stdout, exit_code, agent_info, words", [
    ("", 1, False, "no device node"),                              # node gone (rmmod)
    ("wdfhil-warm-reset-io 2 0\n", 0, False, "['2', '0']"),       # I/O still in flight
    ("wdfhil-warm-reset-io 0 5\n", 0, False, "['0', '5']"),       # requests leaked
    (IDLE + info("FAILED"), 0, True, "status FAILED"),
    (IDLE + info("READY", ok=False), 0, True, "status READY"),
    (IDLE + "not json\n", 0, True, "status None"),
    (IDLE + info("READY"), 1, True, "exit code 1"),
])
def test_anything_else_fails_the_reset_naming_what_was_seen(stdout, exit_code, agent_info,
                                                            words):
    with pytest.raises(WarmResetFailed) as caught:
        check_health(stdout, exit_code, "cmd", agent_info=agent_info)
    assert words in str(caught.value)
