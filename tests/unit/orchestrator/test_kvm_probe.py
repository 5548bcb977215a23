"""The KVM probe: its guest really runs 64-bit code, and the fallback rules."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from orchestrator import kvm_probe
from orchestrator.kvm_probe import (PROBE_ASSEMBLY, PROBE_BOOT_SECTOR, KvmProbeResult,
                                    choose_accelerator, run_probe_guest)
from wdfhil.errors import LaunchError


def test_probe_guest_reaches_its_end_under_tcg():
    """The probe's verdict means something: under TCG it finishes and exits."""
    result = run_probe_guest("tcg", timeout=60)
    assert result.usable, result.reason


def test_probe_boot_sector_is_its_assembly(tmp_path):
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils not installed")
    source = tmp_path / "probe.S"
    source.write_text(PROBE_ASSEMBLY)
    subprocess.run(["as", "--32", "-o", tmp_path / "probe.o", source], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x7c00", "--oformat=binary", "-o",
                    tmp_path / "probe.bin", tmp_path / "probe.o"], check=True)
    assert (tmp_path / "probe.bin").read_bytes() == PROBE_BOOT_SECTOR
    assert len(PROBE_BOOT_SECTOR) == 512 and PROBE_BOOT_SECTOR.endswith(b"\x55\xaa")


def test_probe_never_hangs_past_its_timeout():
    result = run_probe_guest("tcg", qemu_binary="/nonexistent/qemu", timeout=1)
    assert not result.usable and "cannot run" in result.reason


@pytest.fixture
def probe_answer(monkeypatch):
    def set_answer(usable: bool):
        monkeypatch.setitem(kvm_probe._cache, "qemu-for-test",
                            KvmProbeResult(usable, "set by the test"))
        monkeypatch.setattr(kvm_probe, "_warned", False)
    return set_answer


def test_auto_falls_back_to_tcg_with_one_warning(probe_answer, caplog):
    probe_answer(False)
    assert choose_accelerator("auto", "qemu-for-test") == "tcg"
    assert choose_accelerator("auto", "qemu-for-test") == "tcg"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "set by the test" in warnings[0].getMessage()


def test_kvm_when_usable_and_insisting_on_kvm_fails_clearly(probe_answer):
    probe_answer(True)
    assert choose_accelerator("auto", "qemu-for-test") == "kvm"
    probe_answer(False)
    with pytest.raises(LaunchError, match="KVM is not usable"):
        choose_accelerator("kvm", "qemu-for-test")
    assert choose_accelerator("tcg", "qemu-for-test") == "tcg"


def test_answer_is_kept_on_disk_for_the_rest_of_the_boot(monkeypatch, tmp_path):
    """A hanging probe costs its timeout once per boot, not once per process."""
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_probe(qemu_binary):
        calls.append(qemu_binary)
        return KvmProbeResult(False, "probed once")

    monkeypatch.setattr(kvm_probe, "probe_kvm", fake_probe)
    monkeypatch.setattr(kvm_probe, "_cache", {})
    assert kvm_probe.kvm_usable("qemu-system-x86_64").reason == "probed once"
    monkeypatch.setattr(kvm_probe, "_cache", {})  # a new process, same boot
    assert kvm_probe.kvm_usable("qemu-system-x86_64").reason == "probed once"
    assert calls == ["qemu-system-x86_64"]
    assert "probed once" in (tmp_path / "kvm-probe.json").read_text()


def test_probe_guest_fails_without_cmpxchg16b(tmp_path, monkeypatch):
    """Without CX16 the boot sector never reaches its end (the verdict means something)."""
    real_run = subprocess.run

    def run_without_cx16(argv, **options):
        return real_run([*argv, "-cpu", "qemu64,-cx16"], **options)

    monkeypatch.setattr(kvm_probe.subprocess, "run", run_without_cx16)
    result = run_probe_guest("tcg", timeout=3)
    assert not result.usable and "did not finish" in result.reason


def test_the_kernel_stage_is_asked_only_after_the_boot_sector_passed(monkeypatch, tmp_path):
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kvm_probe, "_cache", {})
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    calls = []
    monkeypatch.setattr(kvm_probe, "probe_kvm",
                        lambda binary: calls.append("sector") or KvmProbeResult(True, "ok"))
    monkeypatch.setattr(kvm_probe, "run_probe_kernel",
                        lambda accel, k, binary: calls.append(("kernel", accel))
                        or KvmProbeResult(False, "the image's kernel did not run"))
    verdict = kvm_probe.kvm_usable("qemu-system-x86_64", kernel)
    assert not verdict.usable and calls == ["sector", ("kernel", "kvm")]
    monkeypatch.setattr(kvm_probe, "_cache", {})  # another process, same boot: from disk
    assert not kvm_probe.kvm_usable("qemu-system-x86_64", kernel).usable
    assert len(calls) == 2
    assert choose_accelerator("auto", "qemu-system-x86_64", kernel) == "tcg"


def test_a_real_guest_failing_under_kvm_overrides_a_passing_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kvm_probe, "_cache", {})
    monkeypatch.setattr(kvm_probe, "probe_kvm", lambda binary: KvmProbeResult(True, "ok"))
    assert kvm_probe.kvm_usable("qemu-system-x86_64").usable
    kvm_probe.mark_kvm_unusable("qemu-system-x86_64", "KVM internal error. Suberror: 1")
    monkeypatch.setattr(kvm_probe, "_cache", {})  # a new process reads the disk
    verdict = kvm_probe.kvm_usable("qemu-system-x86_64", tmp_path / "any-kernel")
    assert not verdict.usable and "Suberror" in verdict.reason
