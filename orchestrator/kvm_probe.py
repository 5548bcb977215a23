"""Is KVM usable here? Run a tiny guest and see; fall back to TCG if not.

``/dev/kvm`` existing proves little: under nested virtualisation QEMU may
open it, create a VM, even run the BIOS, and then hang forever once the
guest switches to 64-bit mode. So the probe boots a 512-byte boot sector
that enters long mode, does some 64-bit arithmetic, prints a marker on the
debug console and makes QEMU exit through ``isa-debug-exit``. Working KVM
finishes in a fraction of a second; anything else within the timeout is
"not usable". A hanging probe costs its whole timeout, so the answer is
kept for the process and also on disk (``cache_dir()/kvm-probe.json``) for
the rest of the host's uptime: the key holds the boot id, the QEMU binary
and /dev/kvm, so a reboot, another QEMU or a reloaded KVM module probes
again. The first fallback to TCG in a process logs one warning.

A probe that passes proves less than a real boot: the VM reports a KVM
failure of a real guest (run state ``internal-error``) through
:func:`mark_kvm_unusable`, which overwrites the cached verdict, and an
``auto`` boot is retried under TCG. ``WDFHIL_ACCEL=tcg|kvm|auto`` overrides
every guest config's ``accelerator`` (CI runners whose KVM is known bad).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.qemu_process import die_with_parent
from wdfhil.errors import ConfigError, LaunchError
from wdfhil.private_dirs import cache_dir

log = logging.getLogger(__name__)

DEFAULT_QEMU = "qemu-system-x86_64"
ACCEL_ENV = "WDFHIL_ACCEL"
ACCEL_CHOICES = ("auto", "tcg", "kvm")
PROBE_TIMEOUT = 4.0
PROBE_MARKER = b"WDFHIL-KVM-OK"
# isa-debug-exit turns the byte 0x2a written to port 0xf4 into exit code 0x2a*2+1.
PROBE_EXIT_CODE = 0x2A * 2 + 1

# The boot sector, assembled from PROBE_ASSEMBLY with
#   as --32 -o p.o p.S && ld -m elf_i386 -Ttext=0x7c00 --oformat=binary -o p.bin p.o
# (tests/unit/orchestrator/test_kvm_probe.py re-assembles it when binutils exist).
PROBE_ASSEMBLY = r"""
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $0x1000, %di            /* zero the page tables at 0x1000-0x3fff */
    mov $0x1800, %cx
    rep stosw
    movw $0x2003, 0x1000        /* PML4[0] -> PDPT at 0x2000 */
    movw $0x3003, 0x2000        /* PDPT[0] -> PD at 0x3000 */
    movw $0x0083, 0x3000        /* PD[0] = 2 MiB page at 0 */
    lgdtl gdtr
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0x1000, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax             /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    ljmpl $0x08, $long_mode
    .code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    xor %rax, %rax              /* sum 1..100000 in 64-bit registers */
    mov $100000, %rcx
1:  add %rcx, %rax
    loop 1b
    mov $5000050000, %rbx
    cmp %rbx, %rax
    jne 3f
    lea msg(%rip), %rsi
    mov $0x402, %dx             /* debug console */
2:  lodsb
    test %al, %al
    jz 4f
    outb %al, %dx
    jmp 2b
4:  mov $0x2a, %al              /* isa-debug-exit */
    mov $0xf4, %dx
    outb %al, %dx
3:  hlt
    jmp 3b
    .p2align 3
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 64-bit code */
    .quad 0x00cf92000000ffff    /* data */
gdtr:
    .word gdtr - gdt - 1
    .long gdt
msg:
    .asciz "WDFHIL-KVM-OK\n"
    .org 510
    .byte 0x55, 0xaa
"""

_CODE_HEX = (
    "fa31c08ed88ec08ed0bc007cbf0010b90018f3abc70600100320c70600200330c706003083"
    "00660f0116c07c0f20e06683c8200f22e066b8001000000f22d866b9800000c00f32660d00"
    "0100000f300f20c0660d010000800f22c066ea637c0000080066b810008ed88ed04831c048"
    "c7c1a08601004801c8e2fb48bb50b5062a010000004839d8751a488d353600000066ba0204"
    "ac84c07403eeebf8b02a66baf400eef4ebfd66900000000000000000ffff0000009aaf00ff"
    "ff00000092cf001700a87c000057444648494c2d4b564d2d4f4b0a")
_CODE = bytes.fromhex(_CODE_HEX)
PROBE_BOOT_SECTOR = _CODE + bytes(510 - len(_CODE)) + b"\x55\xaa"


@dataclass(frozen=True)
class KvmProbeResult:
    usable: bool
    reason: str


_cache: dict[str, KvmProbeResult] = {}
_cache_lock = threading.Lock()
_warned = False


def probe_kvm(qemu_binary: str = DEFAULT_QEMU, timeout: float = PROBE_TIMEOUT) -> KvmProbeResult:
    """Run the probe guest under KVM (not cached; see :func:`kvm_usable`)."""
    if not os.path.exists("/dev/kvm"):
        return KvmProbeResult(False, "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return KvmProbeResult(False, "/dev/kvm is not readable and writable by this user")
    return run_probe_guest("kvm", qemu_binary, timeout)


def run_probe_guest(accel: str, qemu_binary: str = DEFAULT_QEMU,
                    timeout: float = PROBE_TIMEOUT) -> KvmProbeResult:
    """Boot the probe sector under ``accel``; whether it ran to its end."""
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    with tempfile.TemporaryDirectory(prefix="wdfhil-kvm-probe-") as folder:
        disk = Path(folder) / "probe.img"
        disk.write_bytes(PROBE_BOOT_SECTOR)
        argv = [qemu_binary, "-accel", accel, "-machine", "pc", *cpu, "-m", "16",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-drive", f"file={disk},format=raw,if=floppy,readonly=on",
                "-chardev", "stdio,id=probe", "-device", "isa-debugcon,iobase=0x402,chardev=probe",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, preexec_fn=die_with_parent)
        except subprocess.TimeoutExpired:
            return KvmProbeResult(False, f"a tiny 64-bit guest did not finish within "
                                  f"{timeout:g} s under {accel.upper()}")
        except OSError as exc:
            return KvmProbeResult(False, f"cannot run {qemu_binary}: {exc.strerror}")
    if done.returncode == PROBE_EXIT_CODE and PROBE_MARKER in done.stdout:
        return KvmProbeResult(True, f"a tiny 64-bit guest ran under {accel.upper()}")
    detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
    return KvmProbeResult(False, f"the probe guest failed under {accel.upper()} (exit code "
                          f"{done.returncode}: {detail[0]})")


def _host_key(qemu_binary: str) -> str | None:
    """What the answer depends on: this boot, this QEMU, this /dev/kvm (None: unknown)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        binary = Path(shutil.which(qemu_binary) or qemu_binary).resolve()
        qemu = binary.stat()
        kvm = os.stat("/dev/kvm") if os.path.exists("/dev/kvm") else None
    except OSError:
        return None
    kvm_part = f"{kvm.st_rdev}:{kvm.st_ctime_ns}" if kvm else "none"
    return f"{boot_id}|{binary}:{qemu.st_size}:{qemu.st_mtime_ns}|{kvm_part}"


def _disk_cache() -> Path:
    return cache_dir() / "kvm-probe.json"


def _read_disk_cache(key: str) -> KvmProbeResult | None:
    try:
        entry = json.loads(_disk_cache().read_text()).get(key)
        return KvmProbeResult(bool(entry["usable"]), str(entry["reason"])) if entry else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_disk_cache(key: str, result: KvmProbeResult) -> None:
    path = _disk_cache()
    try:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({key: asdict(result)}))  # one host: one entry
        temporary.replace(path)
    except OSError as exc:
        log.debug("cannot keep the KVM probe answer in %s: %s", path, exc)


def kvm_usable(qemu_binary: str = DEFAULT_QEMU) -> KvmProbeResult:
    """The probe's answer, computed once per process (and per boot, on disk)."""
    with _cache_lock:
        if qemu_binary not in _cache:
            key = _host_key(qemu_binary)
            result = _read_disk_cache(key) if key else None
            if result is None:
                result = probe_kvm(qemu_binary)
                if key:
                    _write_disk_cache(key, result)
            _cache[qemu_binary] = result
            log.debug("KVM probe: %s", result)
        return _cache[qemu_binary]


def requested_accelerator(configured: str) -> str:
    """What to run a config asking for ``configured`` with: ``$WDFHIL_ACCEL`` if set."""
    override = os.environ.get(ACCEL_ENV, "").strip().lower()
    if not override:
        return configured
    if override not in ACCEL_CHOICES:
        raise ConfigError(f"{ACCEL_ENV}={os.environ[ACCEL_ENV]!r}: expected one of "
                          f"{', '.join(ACCEL_CHOICES)}", field=ACCEL_ENV)
    return override


def mark_kvm_unusable(qemu_binary: str, reason: str) -> None:
    """A real guest failed under KVM: keep "not usable" for this host (process and
    disk cache) whatever the probe said, so later boots go straight to TCG."""
    result = KvmProbeResult(False, reason)
    with _cache_lock:
        _cache[qemu_binary] = result
        key = _host_key(qemu_binary)
        if key:
            _write_disk_cache(key, result)


def choose_accelerator(requested: str, qemu_binary: str = DEFAULT_QEMU) -> str:
    """``"kvm"`` or ``"tcg"`` for a config's ``accelerator`` (auto, tcg, kvm),
    after ``$WDFHIL_ACCEL``.

    ``auto`` falls back to TCG with one warning per process; ``kvm`` insists
    and raises LaunchError when KVM is not usable.
    """
    global _warned
    requested = requested_accelerator(requested)
    if requested == "tcg":
        return "tcg"
    result = kvm_usable(qemu_binary)
    if result.usable:
        return "kvm"
    if requested == "kvm":
        raise LaunchError(f"KVM was asked for (guest config or {ACCEL_ENV}), but KVM is not "
                          f"usable here: {result.reason}. Select TCG with {ACCEL_ENV}=tcg, "
                          f"'accelerator: tcg' (or auto) in the guest config, or "
                          f"'wdfhil vm run --accel tcg'")
    with _cache_lock:
        if not _warned:
            _warned = True
            log.warning("KVM is not usable (%s); running guests under TCG", result.reason)
    return "tcg"
