"""Guest configurations: the machine a scenario runs on, read from YAML.

A guest config names the QEMU machine (``pc`` or ``q35``), its RAM and CPUs,
the accelerator, the IOMMU, extra kernel arguments, the image recipe, and
the *pool window*: a range of guest RAM the guest kernel is told never to
use (``memmap=SIZE$BASE``), where the emulated framework keeps its pools, and
the *low DMA window* (``low_dma``), reserved the same way below 4 GiB: the
platform's map registers (bounce pages) and the common buffers of devices that
cannot reach the pool window (``framework_emu/low_dma.py``). Without a
``low_dma`` field a 1 MiB window is placed at 64 MiB (or just above the pool
window when that is where the pool lies).
The built-in files ship with the package (``orchestrator/guests/NAME.yaml``);
a user adds their own directories (``--guests-dir DIR`` or ``WDFHIL_GUESTS_PATH``,
searched first, so a same-named file there shadows a built-in one). Every
mistake in one is reported
with the file, the line and the field, and the pool window is checked
against the RAM layout QEMU will give the guest, because a window outside
RAM (or across the PCI hole) would silently reserve nothing.

Where the guest kernel itself lands is only known once it runs: KASLR
moves it out of the window (the decompressor avoids ``memmap=`` ranges),
but without KASLR (``nokaslr``, or no free slot) it runs from 16 MiB up,
over a window placed there, and the framework's writes then corrupt the
kernel. So a booted guest's ``/proc/iomem`` is checked
(:func:`check_pool_window_in_iomem`, called by the VM once SSH is up), and
``wdfhil vm configs`` warns about windows that rely on KASLR
(:func:`pool_window_warnings`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.ram_layout import DEFAULT_INITRD_ADDR_MAX, MACHINES, RamSplit
from wdfhil.errors import ConfigError, GuestError
from wdfhil.units import format_size, parse_size
from wdfhil.yamlfile import YamlMap, brief, load_yaml_mapping, reject_unknown_keys, take

BUILTIN_GUESTS_DIR = Path(__file__).resolve().parent / "guests"   # package data
GUESTS_PATH_ENV = "WDFHIL_GUESTS_PATH"   # the user's own config folders, os.pathsep-separated
DEFAULT_GUEST = "pc-256m"

ACCELERATORS = ("auto", "tcg", "kvm")
IOMMUS = ("none", "intel")
PAGE_SIZE = 4096
MIN_MEMORY = 64 << 20
MAX_CPUS = 64
# QEMU loads the compressed kernel at 1 MiB and the kernel decompresses to
# 16 MiB; a pool window below that would be overwritten while booting.
MIN_POOL_BASE = 16 << 20
# Without KASLR the x86-64 kernel runs from LOAD_PHYSICAL_ADDR (16 MiB) up.
# Debian 12's cloud kernel (6.1) then occupies 0x1000000-0x37fffff (code to
# bss, measured in /proc/iomem with nokaslr); rounded up, this is where a
# window depends on KASLR moving the kernel elsewhere.
UNRANDOMIZED_KERNEL = (16 << 20, 64 << 20)

_FIELDS = ("description", "machine", "memory", "cpus", "accelerator", "iommu",
           "kernel_args", "pool", "low_dma", "image")
_POOL_FIELDS = ("base", "size")
FOUR_GIB = 1 << 32
DEFAULT_LOW_DMA_SIZE = 1 << 20   # 256 map registers' pages: 16 adapters of 16 [I]


@dataclass(frozen=True)
class PoolWindow:
    """A reserved guest-physical range ``[base, base+size)`` (the pool window, the low DMA window)."""

    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def window(self) -> tuple[int, int]:
        """``(base, size)``: what the framework's pools are given."""
        return self.base, self.size

    def kernel_arg(self) -> str:
        """``memmap=SIZE$BASE``: the guest kernel marks the range reserved."""
        return f"memmap={format_size(self.size)}${self.base:#x}"

    def overlaps(self, start: int, end: int) -> bool:
        return self.base < end and start < self.end

    def describe(self) -> str:
        return f"{self.base:#x}-{self.end:#x} ({format_size(self.size)})"


@dataclass(frozen=True)
class GuestConfig:
    """One guest configuration, validated when it is made.

    Build it from YAML with :func:`load_guest_config`, or directly (tests,
    scripts); either way an invalid combination raises ConfigError. ``source``
    and ``field_lines`` only serve error messages and are not part of the
    config's identity (two equal configs restore each other's snapshots).
    """

    name: str
    machine: str
    memory: int
    pool: PoolWindow
    cpus: int = 1
    accelerator: str = "auto"
    iommu: str = "none"
    kernel_args: tuple[str, ...] = ()
    image: str | None = None  # image recipe name or path; None = the builder's default
    low_dma: PoolWindow | None = None   # None: the default window (see low_dma_window)
    description: str = ""
    source: str | None = field(default=None, compare=False, repr=False)
    field_lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_args", tuple(self.kernel_args))
        self._validate()

    # -- errors that point into the file ------------------------------------
    def error(self, field_name: str, message: str, value: Any = None) -> ConfigError:
        """A ConfigError naming this config's file, the field's line and the field."""
        line = self.field_lines.get(field_name)
        if line is None and "." in field_name:
            line = self.field_lines.get(field_name.split(".")[0])
        return ConfigError(message, file=self.source or f"<guest config {self.name}>",
                           line=line, field=field_name, value=value)

    # -- derived facts ------------------------------------------------------
    @property
    def ram_split(self) -> RamSplit:
        """Where QEMU will put this guest's RAM (below 4 GiB / from 4 GiB up)."""
        return RamSplit.for_machine(self.machine, self.memory)

    @property
    def low_dma_window(self) -> PoolWindow:
        """The low DMA window: ``low_dma``, or the default (:func:`default_low_dma_window`)."""
        if self.low_dma is not None:
            return self.low_dma
        window = default_low_dma_window(self.ram_split, self.pool)
        if window is None:
            raise self.error("low_dma", f"no room for a {format_size(DEFAULT_LOW_DMA_SIZE)} low DMA "
                             f"window below 4 GiB beside the pool window {self.pool.describe()}; set "
                             "low_dma.base and low_dma.size")
        return window

    def kernel_arguments(self) -> list[str]:
        """Kernel arguments the config adds to the image's base command line."""
        args = [self.pool.kernel_arg(), self.low_dma_window.kernel_arg()]
        if self.iommu == "intel":
            args.append("intel_iommu=on")
        args.extend(self.kernel_args)
        return args

    def with_changes(self, **changes: Any) -> "GuestConfig":
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def check_pool_clear_of_initrd(self, initrd_size: int,
                                   initrd_addr_max: int = DEFAULT_INITRD_ADDR_MAX) -> None:
        """Refuse a pool window where QEMU will put the initramfs at boot.

        Known only once the image is known (it depends on the initramfs size),
        so the VM calls this before it launches QEMU.
        """
        start, end = self.ram_split.initrd_region(initrd_size, initrd_addr_max)
        for name, window in (("pool", self.pool), ("low_dma", self.low_dma_window)):
            if window.overlaps(start, end):
                raise self.error(
                    f"{name}.base",
                    f"{_LABELS[name]} {window.describe()} overlaps {start:#x}-{end:#x}, where QEMU "
                    f"loads the {format_size(initrd_size)} initramfs and the firmware keeps its "
                    f"tables; move the window lower", window.base)

    # -- validation ---------------------------------------------------------
    def _validate(self) -> None:
        if self.machine not in MACHINES:
            raise self.error("machine", f"{self.machine!r} is not one of "
                             f"{', '.join(MACHINES)}", self.machine)
        if self.accelerator not in ACCELERATORS:
            raise self.error("accelerator", f"{self.accelerator!r} is not one of "
                             f"{', '.join(ACCELERATORS)}", self.accelerator)
        if self.iommu not in IOMMUS:
            raise self.error("iommu", f"{self.iommu!r} is not one of {', '.join(IOMMUS)}",
                             self.iommu)
        if self.iommu == "intel" and self.machine != "q35":
            raise self.error("iommu", "the intel IOMMU needs machine q35", self.iommu)
        if self.memory < MIN_MEMORY or self.memory % (1 << 20):
            raise self.error("memory", f"memory must be a whole number of MiB, at least "
                             f"{format_size(MIN_MEMORY)} (got {self.memory})", self.memory)
        if not 1 <= self.cpus <= MAX_CPUS:
            raise self.error("cpus", f"cpus must be between 1 and {MAX_CPUS} "
                             f"(got {self.cpus})", self.cpus)
        for index, arg in enumerate(self.kernel_args):
            where = f"kernel_args[{index}]"
            if not isinstance(arg, str) or not arg or any(c.isspace() for c in arg):
                raise self.error(where, "each kernel argument must be one non-empty word "
                                 f"without spaces (got {brief(arg)})", arg)
            if arg.startswith("memmap="):
                raise self.error(where, "memmap= comes from the pool window and the low DMA window; set "
                                 "pool.base and pool.size (low_dma.base, low_dma.size) instead", arg)
        self._validate_window("pool", self.pool)
        low = self.low_dma_window
        if self.low_dma is not None:
            self._validate_window("low_dma", low)
        if low.end > FOUR_GIB:
            raise self.error("low_dma.base", f"the low DMA window {low.describe()} must end at or "
                             "below 4 GiB (a 32-bit device reaches nothing above)", low.base)
        if low.overlaps(self.pool.base, self.pool.end):
            raise self.error("low_dma.base", f"the low DMA window {low.describe()} overlaps the "
                             f"pool window {self.pool.describe()}", low.base)

    def _validate_window(self, name: str, window: PoolWindow) -> None:
        label = _LABELS[name]
        if window.size <= 0 or window.size % PAGE_SIZE:
            raise self.error(f"{name}.size", f"the {label} size must be a positive multiple of "
                             f"the {PAGE_SIZE}-byte page (got {window.size:#x})", window.size)
        if window.base % PAGE_SIZE:
            raise self.error(f"{name}.base", f"the {label} base must be page aligned "
                             f"(got {window.base:#x})", window.base)
        if window.base < MIN_POOL_BASE:
            raise self.error(f"{name}.base", f"the {label} base must be at least "
                             f"{MIN_POOL_BASE:#x} (16M): QEMU loads the kernel below that "
                             f"(got {window.base:#x})", window.base)
        split = self.ram_split
        if not split.holds(window.base, window.size):
            raise self.error(f"{name}.base", f"{label} {window.describe()} is not inside one "
                             f"RAM range of this {self.machine} guest with "
                             f"{format_size(self.memory)}: {split.describe()}", window.base)


_LABELS = {"pool": "pool window", "low_dma": "low DMA window"}


def default_low_dma_window(split: RamSplit, pool: PoolWindow,
                           size: int = DEFAULT_LOW_DMA_SIZE) -> PoolWindow | None:
    """Where a config without ``low_dma`` gets it: at 64 MiB (above where the kernel runs
    without KASLR), else right above the pool window, else right below it; the first of
    these inside low RAM and clear of the pool. None when none fits."""
    for base in (UNRANDOMIZED_KERNEL[1], pool.end, pool.base - size):
        window = PoolWindow(base, size)
        if (base >= MIN_POOL_BASE and window.end <= FOUR_GIB and split.holds(base, size)
                and not pool.overlaps(base, window.end)):
            return window
    return None


# -- the window against the running guest ------------------------------------
@dataclass(frozen=True)
class IomemRange:
    """One line of ``/proc/iomem``: ``[start, end)``, its name and nesting depth."""

    start: int
    end: int
    name: str
    depth: int

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end

    def describe(self) -> str:
        return f"'{self.name}' {self.start:#x}-{self.end - 1:#x}"


_IOMEM_LINE = re.compile(r"^(?P<indent> *)(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+) : "
                         r"(?P<name>.*?)\s*$")


def parse_iomem(text: str) -> list[IomemRange]:
    """The ranges of ``/proc/iomem`` (two spaces of indent a level)."""
    ranges = []
    for line in text.splitlines():
        match = _IOMEM_LINE.match(line)
        if match:
            ranges.append(IomemRange(int(match["start"], 16), int(match["end"], 16) + 1,
                                     match["name"], len(match["indent"]) // 2))
    return ranges


def check_pool_window_in_iomem(config: GuestConfig, iomem_text: str) -> None:
    """Refuse a running guest whose pool window is not what the framework may write.

    ``iomem_text`` is the guest's ``/proc/iomem`` as root. The window must be
    wholly covered by top-level ``Reserved`` ranges (the guest honoured
    ``memmap=``), and no ``Kernel code/rodata/data/bss`` range may overlap it
    (the kernel was placed there before it read ``memmap=``: without KASLR
    it runs from 16 MiB up). A ConfigError naming ``pool.base`` otherwise.
    """
    _check_window_in_iomem(config, "pool", config.pool, iomem_text)


def check_reserved_windows_in_iomem(config: GuestConfig, iomem_text: str) -> None:
    """:func:`check_pool_window_in_iomem` for the pool window and the low DMA window."""
    _check_window_in_iomem(config, "pool", config.pool, iomem_text)
    _check_window_in_iomem(config, "low_dma", config.low_dma_window, iomem_text)


def _check_window_in_iomem(config: GuestConfig, name: str, pool: PoolWindow, iomem_text: str) -> None:
    label, field_name = _LABELS[name], f"{name}.base"
    ranges = parse_iomem(iomem_text)
    if not ranges or all(r.start == 0 and r.end == 1 for r in ranges):
        raise GuestError(f"cannot check the {label}: the guest's /proc/iomem shows no "
                         "addresses (read it as root)", stdout=iomem_text[:2000])
    for entry in ranges:
        if entry.name.startswith("Kernel ") and entry.overlaps(pool.base, pool.end):
            raise config.error(
                field_name, f"the guest kernel runs inside the {label} "
                f"{pool.describe()}: {entry.describe()} (its placement depends on KASLR; "
                f"without it the kernel runs from 0x1000000 up); framework writes there "
                f"would corrupt the kernel. Move the window to "
                f"{UNRANDOMIZED_KERNEL[1]:#x} ({format_size(UNRANDOMIZED_KERNEL[1])}) or higher",
                pool.base)
    covered = pool.base
    for entry in sorted((r for r in ranges if r.depth == 0), key=lambda r: r.start):
        if entry.end <= covered or entry.start >= pool.end:
            continue
        if entry.start > covered or entry.name.lower() != "reserved":
            what = (f"{entry.describe()} is in it" if entry.start <= covered
                    else f"{covered:#x}-{entry.start - 1:#x} is not reserved")
            raise config.error(
                field_name, f"the guest did not reserve the {label} {pool.describe()}: "
                f"{what}; the guest kernel may use that memory", pool.base)
        covered = entry.end
        if covered >= pool.end:
            return
    raise config.error(field_name, f"the guest did not reserve the {label} "
                       f"{pool.describe()}: {covered:#x}-{pool.end - 1:#x} is not reserved",
                       pool.base)


def pool_window_warnings(config: GuestConfig) -> list[str]:
    """What ``wdfhil vm configs`` warns about: a window that only works while
    KASLR moves the kernel out of it (refused at start when it does not)."""
    start, end = UNRANDOMIZED_KERNEL
    if not config.pool.overlaps(start, end):
        return []
    nokaslr = "nokaslr" in config.kernel_args
    return [f"pool window {config.pool.describe()} overlaps {start:#x}-{end - 1:#x}, where the "
            f"kernel runs without KASLR; "
            + ("with nokaslr in kernel_args every start will be refused"
               if nokaslr else "it works only while KASLR places the kernel elsewhere, "
               "and a start is refused when it does not")
            + f"; a base of {format_size(end)} or more does not depend on it"]


def guest_config_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Where configs are looked up, first match wins: ``extra`` (the command line's
    ``--guests-dir``), then ``WDFHIL_GUESTS_PATH``, then the built-in folder. A folder
    named there that does not exist is an error, not silently skipped."""
    env = [part for part in os.environ.get(GUESTS_PATH_ENV, "").split(os.pathsep) if part]
    dirs: list[Path] = []
    for where, entries in (("--guests-dir", extra), (GUESTS_PATH_ENV, env)):
        for entry in entries:
            folder = Path(entry).expanduser()
            if not folder.is_dir():
                raise ConfigError(f"{where} names {str(entry)!r}, which is not a folder of "
                                  "guest configs", value=str(entry))
            dirs.append(folder)
    return [*dirs, BUILTIN_GUESTS_DIR]


def list_guest_configs(dirs: Sequence[str | Path] = ()) -> list[str]:
    """Names of the guest configs found (the user's folders, then the built-in ones)."""
    return sorted({path.stem for folder in guest_config_dirs(dirs) for path in folder.glob("*.yaml")})


def resolve_guest_config(name_or_path: str | Path, dirs: Sequence[str | Path] = ()) -> Path:
    """The file of a guest config given by name (``q35-1g``) or path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    searched = guest_config_dirs(dirs)
    for folder in searched:
        path = folder / f"{text}.yaml"
        if path.is_file():
            return path
    known = ", ".join(list_guest_configs(dirs)) or "none"
    raise ConfigError(f"no guest config named {brief(text)} in "
                      f"{', '.join(str(folder) for folder in searched)} (known: {known})",
                      value=text)


def load_guest_config(name_or_path: str | Path = DEFAULT_GUEST,
                      dirs: Sequence[str | Path] = ()) -> GuestConfig:
    """Read and validate a guest config by name or path (``dirs``: extra folders to
    search first, as ``--guests-dir`` gives them)."""
    path = resolve_guest_config(name_or_path, dirs)
    data = load_yaml_mapping(path)
    reject_unknown_keys(data, _FIELDS)
    lines = {key: data.line_of(key) for key in data}

    def size_field(mapping: YamlMap, key: str, default: Any = None) -> int:
        kwargs = {} if default is None else {"default": default}
        return take(mapping, key, (int, str), convert=parse_size, **kwargs)

    def window_field(name: str) -> PoolWindow | None:
        if name not in data and name == "low_dma":
            return None
        mapping = take(data, name, object)
        if not isinstance(mapping, YamlMap):
            raise data.error(name, "expected a mapping with 'base' and 'size'", mapping)
        reject_unknown_keys(mapping, _POOL_FIELDS)
        for key in mapping:
            lines[f"{name}.{key}"] = mapping.line_of(key)
        return PoolWindow(base=size_field(mapping, "base"), size=size_field(mapping, "size"))

    pool = window_field("pool")
    assert pool is not None

    args = take(data, "kernel_args", object, default=[])
    if not isinstance(args, list):
        raise data.error("kernel_args", "expected a list of strings, one argument each", args)
    for index, arg in enumerate(args):
        lines[f"kernel_args[{index}]"] = args.line_of(index)
        if not isinstance(arg, str):
            raise ConfigError(f"expected a string, got {type(arg).__name__} {brief(arg)}",
                              file=str(path), line=args.line_of(index),
                              field=f"kernel_args[{index}]", value=arg)

    return GuestConfig(
        name=path.stem,
        machine=take(data, "machine", str, choices=MACHINES),
        memory=size_field(data, "memory"),
        pool=pool,
        low_dma=window_field("low_dma"),
        cpus=take(data, "cpus", int, default=1),
        accelerator=take(data, "accelerator", str, default="auto", choices=ACCELERATORS),
        iommu=take(data, "iommu", str, default="none", choices=IOMMUS),
        kernel_args=tuple(args),
        image=take(data, "image", str, default=None),
        description=take(data, "description", str, default=""),
        source=str(path),
        field_lines=lines,
    )
