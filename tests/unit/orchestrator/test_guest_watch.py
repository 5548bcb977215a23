"""A guest that KVM kills is reported at once, with its run state, and ``auto``
boots it again under TCG (issue 7); the watcher behind every wait (issue 12).

The dying guest is tests/unit/orchestrator/fake_qemu.py: a stand-in QEMU that
speaks QMP on the VM's socket, prints early boot text on its console and then
goes to run state ``internal-error`` with KVM's message in its log, as QEMU
7.2 does on a KVM emulation failure; under TCG it can exec the real QEMU.
"""

from __future__ import annotations

import logging
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from orchestrator import kvm_probe
from orchestrator.guest_config import load_guest_config
from orchestrator.guest_watch import GuestWatch
from orchestrator.qemu_process import QemuProcess
from orchestrator.qmp_session import QmpSession
from orchestrator.serial_console import SerialConsole
from orchestrator.vm import VM
from wdfhil.errors import ConfigError, GuestDied, LaunchError

FAKE_QEMU = Path(__file__).with_name("fake_qemu.py")


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    """The path of a stand-in QEMU (``fail_when``: always or kvm), its probe verdict
    set to "KVM usable" and the probe's disk cache in tmp_path."""
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WDFHIL_ACCEL", raising=False)
    monkeypatch.setattr(kvm_probe, "_cache", {})
    monkeypatch.setattr(kvm_probe, "_warned", False)
    monkeypatch.setattr(kvm_probe, "run_probe_kernel",  # stage 2 of a probe that passed
                        lambda *args, **kw: kvm_probe.KvmProbeResult(True, "set by the test"))

    def make(fail_when: str = "always") -> str:
        script = tmp_path / f"qemu-{fail_when}"
        script.write_text(f"#!/bin/sh\nFAKE_QEMU_FAIL_WHEN={fail_when} "
                          f"exec {sys.executable} {FAKE_QEMU} \"$@\"\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        kvm_probe._cache[str(script)] = kvm_probe.KvmProbeResult(True, "set by the test")
        return str(script)
    return make


def config(accelerator: str):
    return load_guest_config("pc-256m").with_changes(accelerator=accelerator)


def test_internal_error_during_boot_fails_within_seconds_with_the_run_state(fake_qemu,
                                                                            fake_image):
    began = time.monotonic()
    with pytest.raises(LaunchError) as info:
        with VM(config("kvm"), fake_image(""), qemu_binary=fake_qemu(), boot_timeout=120):
            pytest.fail("the VM should not have started")
    assert time.monotonic() - began < 30  # not the boot timeout
    error = info.value
    assert error.run_state == "internal-error" and "internal-error" in str(error)
    assert "KVM internal error" in error.log_tail and "SMP" in error.console_tail


def test_auto_marks_kvm_unusable_warns_once_and_boots_again_under_tcg(fake_qemu, fake_image,
                                                                      caplog, tmp_path):
    """The retry really runs the real QEMU under TCG: its kernel panics at once, so
    the error that ends the test is TCG's, after the one warning naming KVM's error."""
    binary = fake_qemu("kvm")
    image = fake_image("Kernel panic - not syncing: under TCG\n")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(LaunchError) as info:
            with VM(config("auto"), image, qemu_binary=binary, boot_timeout=120):
                pytest.fail("the stand-in kernel should panic")
    assert "(pc-256m, tcg)" in str(info.value) and "under TCG" in info.value.console_tail
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "KVM internal error" in warnings[0]
    verdict = kvm_probe.kvm_usable(binary)
    assert not verdict.usable and "KVM internal error" in verdict.reason
    assert "KVM internal error" in (tmp_path / "cache" / "kvm-probe.json").read_text()
    assert kvm_probe.choose_accelerator("auto", binary) == "tcg"  # later boots skip KVM


def test_kvm_insisted_on_says_how_to_select_tcg(fake_qemu, monkeypatch):
    binary = fake_qemu()
    kvm_probe._cache[binary] = kvm_probe.KvmProbeResult(False, "probe hung")
    with pytest.raises(LaunchError) as info:
        kvm_probe.choose_accelerator("kvm", binary)
    assert "probe hung" in str(info.value) and "WDFHIL_ACCEL=tcg" in str(info.value)


def test_the_environment_overrides_every_config(fake_qemu, monkeypatch):
    binary = fake_qemu()  # KVM "usable"
    monkeypatch.setenv("WDFHIL_ACCEL", "tcg")
    assert kvm_probe.choose_accelerator("kvm", binary) == "tcg"
    assert kvm_probe.choose_accelerator("auto", binary) == "tcg"
    monkeypatch.setenv("WDFHIL_ACCEL", "KVM")
    assert kvm_probe.choose_accelerator("tcg", binary) == "kvm"
    monkeypatch.setenv("WDFHIL_ACCEL", "fast")
    with pytest.raises(ConfigError, match="WDFHIL_ACCEL"):
        kvm_probe.choose_accelerator("auto", binary)


@pytest.fixture
def watched_fake_guest(fake_qemu, tmp_path, monkeypatch):
    """(watch, trigger): a running stand-in QEMU whose guest dies when ``trigger`` exists."""
    trigger = tmp_path / "die-now"
    monkeypatch.setenv("FAKE_QEMU_TRIGGER", str(trigger))
    console_ours, console_theirs = socket.socketpair()
    qmp_ours, qmp_theirs = socket.socketpair()
    argv = [fake_qemu(), "-accel", "kvm",
            "-chardev", f"socket,id=wdfhil-console,fd={console_theirs.fileno()}",
            "-chardev", f"socket,id=wdfhil-qmp,fd={qmp_theirs.fileno()}"]
    process = QemuProcess(argv, log_path=tmp_path / "qemu.log",
                          pass_fds=(console_theirs.fileno(), qmp_theirs.fileno()))
    process.start()
    console_theirs.close()
    qmp_theirs.close()
    console = SerialConsole(console_ours, tmp_path / "console.log").start()
    qmp = QmpSession("fake")
    qmp.connect(qmp_ours, timeout=30)
    yield GuestWatch(process, console, qmp, name="VM fake"), trigger
    process.stop(lambda: qmp.command("quit", timeout=3))
    qmp.close()
    console.close()


def test_the_watch_sees_the_run_state_turn_fatal_at_once(watched_fake_guest):
    watch, trigger = watched_fake_guest
    assert watch.failure() is None and watch.run_state() == "running"
    assert watch.note() == ""
    trigger.touch()
    deadline = time.monotonic() + 30
    while watch.failure() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    found = watch.failure()
    assert found is not None and found.run_state == "internal-error"
    with pytest.raises(GuestDied) as info:
        watch.check("some command")
    error = info.value
    assert error.run_state == "internal-error" and error.qemu_exit_code is None
    assert "KVM internal error" in error.log_tail and "fake" in error.console_tail
    assert "run state: internal-error" in str(error) and error.command == "some command"


def test_the_watch_reports_qemu_gone_with_its_exit_status(watched_fake_guest):
    watch, _ = watched_fake_guest
    watch.process._signal(9)
    found = watch.failure(grace=10)
    assert found is not None and found.exit_code == -9 and "QEMU exited" in found.reason
