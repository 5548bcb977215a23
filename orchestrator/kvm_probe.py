"""Is KVM usable here? Run a tiny guest and see; fall back to TCG if not.

``/dev/kvm`` existing proves little: under nested virtualisation QEMU may
open it, create a VM, even run the BIOS, and then hang forever once the
guest switches to 64-bit mode; on another host a long-mode boot sector ran
and the Debian kernel then died ("KVM internal error ... emulation failure")
on a ``lock cmpxchg16b``. So the probe has two stages, each a QEMU that
must exit by itself with the expected answer within its timeout:

1. a 512-byte boot sector that does what broke, in miniature: long mode
   with paging (a write through an aliased 2 MiB page read back through
   the identity mapping), 64-bit arithmetic, a locked 16-byte
   compare-exchange on a page-table page (where a shadow-paging KVM must
   emulate it), and real interrupts (PIC + PIT timer through a 64-bit IDT
   gate, ``hlt`` until they arrive); then a marker on the debug console and
   exit through ``isa-debug-exit``. A fraction of a second under KVM.
2. when the caller names it, the image's own kernel on two vCPUs, without
   an initramfs, to its "Unable to mount root fs" panic (``-no-reboot``
   turns the panic's reboot into an exit): SMP bring-up, the kernel's own
   paging, SLUB's cmpxchg16b, timers and interrupts, exactly as a boot
   would run them, for under a second under KVM.

A hanging probe costs its whole timeout, so the answers are kept for the
process and also on disk (``cache_dir()/kvm-probe.json``) for the rest of
the host's uptime: the key holds the boot id, the QEMU binary and /dev/kvm
(and the kernel, for stage 2), so a reboot, another QEMU or a reloaded KVM
module probes again. The first fallback to TCG in a process logs one warning.

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
KERNEL_PROBE_TIMEOUT = 15.0
PROBE_MARKER = b"WDFHIL-KVM-OK"
# What the image's kernel prints when it ran its whole init and found no root.
KERNEL_PROBE_MARKER = b"Unable to mount root fs"
KERNEL_PROBE_CMDLINE = "console=ttyS0 panic=-1 loglevel=1 rdinit=/wdfhil-no-init root=/dev/wdfhil-none"
_MAX_DISK_ENTRIES = 16
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
    mov $0x1000, %di            /* zero page tables, IDT and scratch at 0x1000-0x5fff */
    mov $0x2800, %cx
    rep stosw
    movw $0x2003, 0x1000        /* PML4[0] -> PDPT at 0x2000 */
    movw $0x3003, 0x2000        /* PDPT[0] -> PD at 0x3000 */
    movw $0x0083, 0x3000        /* PD[0] = 2 MiB page at 0 */
    movw $0x0083, 0x3008        /* PD[1] = the same page again, at 2 MiB: an alias */
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
    mov %ax, %es
    mov %ax, %ss
    movabs $0x0123456789abcdef, %rax   /* paging: write through the alias, read back */
    mov %rax, 0x205000
    cmp 0x5000, %rax
    jne 3f
    xor %rax, %rax              /* sum 1..100000 in 64-bit registers */
    mov $100000, %rcx
1:  add %rcx, %rax
    loop 1b
    mov $5000050000, %rbx
    cmp %rbx, %rax
    jne 3f
    mov $1, %eax                /* locked 16-byte compare-exchange (CPUID CX16) on a */
    cpuid                       /* page-table page, where a shadow-paging KVM must */
    bt $13, %ecx                /* emulate it: what killed the Debian kernel */
    jnc 3f
    xor %eax, %eax
    xor %edx, %edx
    movabs $0x5a5a5a5a5a5a5a5a, %rbx  /* bit 0 clear: PD[256], PD[257] stay not present */
    mov %rbx, %rcx
    lock cmpxchg16b 0x3800
    jne 3f
    cmp 0x3808, %rcx
    jne 3f
    lea tick(%rip), %rax        /* interrupts: IDT vector 0x20 -> tick (64-bit gate) */
    mov %ax, 0x4200
    movw $0x08, 0x4202
    movw $0x8e00, 0x4204
    lidt idtr(%rip)
    mov $0x11, %al              /* PICs: ICW1..4, master at vector 0x20, IRQ0 only */
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xfe, %al
    out %al, $0x21
    mov $0xff, %al
    out %al, $0xa1
    mov $0x34, %al              /* PIT channel 0, rate generator, divisor 0x1000 */
    out %al, $0x43
    xor %al, %al
    out %al, $0x40
    mov $0x10, %al
    out %al, $0x40
    sti
5:  hlt                         /* until the timer interrupt has run tick twice */
    cmpb $2, ticks(%rip)
    jb 5b
    cli
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
tick:
    incb ticks(%rip)
    push %rax
    mov $0x20, %al              /* EOI */
    out %al, $0x20
    pop %rax
    iretq
    .p2align 3
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 64-bit code */
    .quad 0x00cf92000000ffff    /* data */
gdtr:
    .word gdtr - gdt - 1
    .long gdt
idtr:
    .word 0x21 * 16 - 1
    .quad 0x4000
ticks:
    .byte 0
msg:
    .asciz "WDFHIL-KVM-OK\n"
    .org 510
    .byte 0x55, 0xaa
"""

_CODE_HEX = (
    "fa31c08ed88ec08ed0bc007cbf0010b90028f3abc70600100320c70600200330c7060030"
    "8300c70608308300660f0116a07d0f20e06683c8200f22e066b8001000000f22d866b980"
    "0000c00f32660d000100000f300f20c0660d010000800f22c066ea697c0000080066b810"
    "008ed88ec08ed048b8efcdab89674523014889042500502000483b0425005000000f85e2"
    "0000004831c048c7c1a08601004801c8e2fb48bb50b5062a010000004839d80f85c00000"
    "00b8010000000fa20fbae10d0f83af00000031c031d248bb5a5a5a5a5a5a5a5a4889d9f0"
    "480fc70c25003800000f858e000000483b0c25083800000f8580000000488d057c000000"
    "668904250042000066c7042502420000080066c7042504420000008e0f011d87000000b0"
    "11e620e6a0b020e621b028e6a1b004e621b002e6a1b001e621e6a1b0fee621b0ffe6a1b0"
    "34e64330c0e640b010e640fbf4803d580000000272f6fa488d354f00000066ba0204ac84"
    "c07403eeebf8b02a66baf400eef4ebfdfe053200000050b020e6205848cf669000000000"
    "00000000ffff0000009aaf00ffff00000092cf001700887d00000f020040000000000000"
    "0057444648494c2d4b564d2d4f4b0a")
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


def run_probe_kernel(accel: str, kernel: str | Path, qemu_binary: str = DEFAULT_QEMU,
                     timeout: float = KERNEL_PROBE_TIMEOUT) -> KvmProbeResult:
    """Boot ``kernel`` (the image's) on two vCPUs without an initramfs under
    ``accel``; usable if it ran its init to the no-root panic and QEMU exited."""
    cpu = ["-cpu", "host"] if accel == "kvm" else []
    argv = [qemu_binary, "-accel", accel, "-machine", "pc", *cpu, "-m", "128", "-smp", "2",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", KERNEL_PROBE_CMDLINE, "-serial", "stdio"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        return KvmProbeResult(False, f"the image's kernel did not run to its end within "
                              f"{timeout:g} s under {accel.upper()}")
    except OSError as exc:
        return KvmProbeResult(False, f"cannot run {qemu_binary}: {exc.strerror}")
    if done.returncode == 0 and KERNEL_PROBE_MARKER in done.stdout:
        return KvmProbeResult(True, f"the image's kernel ran under {accel.upper()}")
    lines = (done.stderr + done.stdout).decode("utf-8", "replace").strip().splitlines()
    return KvmProbeResult(False, f"the image's kernel failed under {accel.upper()} (exit "
                          f"code {done.returncode}: {(lines or ['no message'])[-1].strip()})")


def _file_key(path: str | Path) -> str:
    resolved = Path(path).resolve()
    info = resolved.stat()
    return f"{resolved}:{info.st_size}:{info.st_mtime_ns}"


def _host_key(qemu_binary: str) -> str | None:
    """What the answer depends on: this boot, this QEMU, this /dev/kvm (None: unknown)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        binary = _file_key(shutil.which(qemu_binary) or qemu_binary)
        kvm = os.stat("/dev/kvm") if os.path.exists("/dev/kvm") else None
    except OSError:
        return None
    kvm_part = f"{kvm.st_rdev}:{kvm.st_ctime_ns}" if kvm else "none"
    return f"{boot_id}|{binary}|{kvm_part}"


def _disk_cache() -> Path:
    return cache_dir() / "kvm-probe.json"


def _read_disk_entries() -> dict:
    try:
        entries = json.loads(_disk_cache().read_text())
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_disk_cache(key: str) -> KvmProbeResult | None:
    try:
        entry = _read_disk_entries().get(key)
        return KvmProbeResult(bool(entry["usable"]), str(entry["reason"])) if entry else None
    except (KeyError, TypeError, AttributeError):
        return None


def _write_disk_cache(key: str, result: KvmProbeResult) -> None:
    path = _disk_cache()
    boot_id = key.split("|", 1)[0]
    entries = {k: v for k, v in _read_disk_entries().items()
               if k.split("|", 1)[0] == boot_id}  # answers of earlier boots mean nothing
    entries.pop(key, None)
    entries[key] = asdict(result)
    entries = dict(list(entries.items())[-_MAX_DISK_ENTRIES:])
    try:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(entries))
        temporary.replace(path)
    except OSError as exc:
        log.debug("cannot keep the KVM probe answer in %s: %s", path, exc)


def _cached(key: str | None, probe) -> KvmProbeResult:
    """The answer under ``key`` (process, then disk), else ``probe()``'s, kept. Lock held."""
    if key is not None and key in _cache:
        return _cache[key]
    result = _read_disk_cache(key) if key else None
    if result is None:
        result = probe()
        if key:
            _write_disk_cache(key, result)
    if key is not None:
        _cache[key] = result
    log.debug("KVM probe (%s): %s", key, result)
    return result


def kvm_usable(qemu_binary: str = DEFAULT_QEMU, kernel: str | Path | None = None) -> KvmProbeResult:
    """The probe's answer (with ``kernel``, stage 2 too), computed once per process
    and per boot (on disk)."""
    with _cache_lock:
        if qemu_binary in _cache:  # set by mark_kvm_unusable (or a test)
            host = _cache[qemu_binary]
        else:
            host = _cached(_host_key(qemu_binary), lambda: probe_kvm(qemu_binary))
            _cache[qemu_binary] = host
        if not host.usable or kernel is None:
            return host
        try:
            key = f"{_host_key(qemu_binary)}|kernel {_file_key(kernel)}"
        except OSError as exc:
            return KvmProbeResult(False, f"cannot read the kernel {kernel}: {exc.strerror}")
        return _cached(key, lambda: run_probe_kernel("kvm", kernel, qemu_binary))


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


def choose_accelerator(requested: str, qemu_binary: str = DEFAULT_QEMU,
                       kernel: str | Path | None = None) -> str:
    """``"kvm"`` or ``"tcg"`` for a config's ``accelerator`` (auto, tcg, kvm),
    after ``$WDFHIL_ACCEL``.

    ``auto`` falls back to TCG with one warning per process; ``kvm`` insists
    and raises LaunchError when KVM is not usable. With ``kernel`` (the image's)
    the probe boots that kernel too.
    """
    global _warned
    requested = requested_accelerator(requested)
    if requested == "tcg":
        return "tcg"
    result = kvm_usable(qemu_binary, kernel)
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
